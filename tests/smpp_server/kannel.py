"""Kannel 1.4.5 (Debian's package `kannel`: bearerbox + smsbox) run for a test, bound
to an SMSC we choose (here, sms-router's SMPP server) as one transceiver, or as a
transmitter and a receiver.

`Kannel.start` writes a kannel.conf in a directory of its own (free loopback ports,
its logs there), starts bearerbox and then smsbox, and waits until the SMSC link is
online; `stop` ends both by their process ids. The fixture that makes one must call
`stop` whatever happens: nothing is left on any port.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import aiohttp

from ..conftest import listening

BEARERBOX = "/usr/sbin/bearerbox"
SMSBOX = "/usr/sbin/smsbox"
SENDSMS_USER, SENDSMS_PASSWORD = "tester", "tester-pw"
ADMIN_PASSWORD = "admin-pw"


def installed() -> bool:
    """Whether Debian's kannel package is there (`make kannel` installs it)."""
    return Path(BEARERBOX).exists() and Path(SMSBOX).exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SmscLink:
    """What Kannel's `group = smsc` says about the SMSC it binds to."""

    port: int
    system_id: str
    password: str
    smsc_id: str = "router"
    window: int = 20  # max-pending-submits: at least a long message's parts
    # One bind_transceiver; else a bind_transmitter and a bind_receiver (receive-port).
    transceiver: bool = True
    enquire_link: int = 30  # enquire-link-interval, seconds


def smsc_groups(run: Path, smsc: SmscLink) -> str:
    """The `group = smsc` part: one transceiver, or (Kannel 1.4.5 refuses `port` and
    `receive-port` in one group) a transmitter group and a receiver group under one
    smsc-id, so receipts on the receiver match messages sent on the transmitter."""
    links = [(smsc.port, 0, "true")] if smsc.transceiver else [(smsc.port, 0, "false")]
    if not smsc.transceiver:
        links.append((0, smsc.port, "false"))
    return "".join(
        f"""\
group = smsc
smsc = smpp
smsc-id = {smsc.smsc_id}
host = 127.0.0.1
port = {port}
receive-port = {receive}
transceiver-mode = {transceiver}
smsc-username = {smsc.system_id}
smsc-password = {smsc.password}
system-type = ""
address-range = ""
max-pending-submits = {smsc.window}
enquire-link-interval = {smsc.enquire_link}
reconnect-delay = 1
log-file = "{run}/smsc.log"
log-level = 0

"""
        for port, receive, transceiver in links
    )


def config_text(
    run: Path, smsc: SmscLink, admin: int, box: int, sendsms: int, max_messages: int
) -> str:
    """kannel.conf for one run: every listener on 127.0.0.1, logs in `run`."""
    return f"""\
group = core
admin-port = {admin}
admin-interface = 127.0.0.1
admin-password = {ADMIN_PASSWORD}
status-password = {ADMIN_PASSWORD}
admin-allow-ip = "127.0.0.1"
smsbox-port = {box}
smsbox-interface = 127.0.0.1
box-allow-ip = "127.0.0.1"
log-file = "{run}/bearerbox.log"
log-level = 0
access-log = "{run}/bearerbox-access.log"
dlr-storage = internal

{smsc_groups(run, smsc)}group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {box}
sendsms-port = {sendsms}
sendsms-interface = 127.0.0.1
log-file = "{run}/smsbox.log"
log-level = 0
access-log = "{run}/smsbox-access.log"

group = sendsms-user
username = {SENDSMS_USER}
password = {SENDSMS_PASSWORD}
max-messages = {max_messages}
concatenation = true

group = sms-service
keyword = default
catch-all = true
text = "ok"
"""


@dataclass
class Kannel:
    """bearerbox + smsbox in `run` (a directory of the test's own)."""

    run: Path
    smsc: SmscLink
    max_messages: int = 5
    admin: int = field(default_factory=free_port)
    box: int = field(default_factory=free_port)
    sendsms_port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def sendsms_url(self) -> str:
        return f"http://127.0.0.1:{self.sendsms_port}/cgi-bin/sendsms"

    def _spawn(self, binary: str, name: str, conf: Path) -> subprocess.Popen[bytes]:
        # -v 3: only errors on stderr (the default, debug, slows Kannel 2-3x); the
        # log files above keep everything at level 0 for a failure's diagnosis.
        out = (self.run / f"{name}.out").open("ab")
        try:
            proc = subprocess.Popen([binary, "-v", "3", str(conf)], stdout=out, stderr=out)
        finally:
            out.close()
        self.procs.append(proc)
        return proc

    async def _wait_port(self, port: int, proc: subprocess.Popen[bytes], what: str) -> None:
        deadline = time.monotonic() + 20
        while True:
            if await listening(port):
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{what} did not listen on {port}: {self.logs()}")
            await asyncio.sleep(0.05)

    async def start(self) -> None:
        """Start bearerbox and smsbox; return once every SMPP link is bound."""
        self.run.mkdir(parents=True, exist_ok=True)
        conf = self.run / "kannel.conf"
        conf.write_text(
            config_text(
                self.run, self.smsc, self.admin, self.box, self.sendsms_port, self.max_messages
            )
        )
        bearerbox = self._spawn(BEARERBOX, "bearerbox", conf)
        await self._wait_port(self.admin, bearerbox, "bearerbox admin")
        await self._wait_port(self.box, bearerbox, "bearerbox smsbox port")
        smsbox = self._spawn(SMSBOX, "smsbox", conf)
        await self._wait_port(self.sendsms_port, smsbox, "smsbox sendsms")
        deadline = time.monotonic() + 20
        links = 1 if self.smsc.transceiver else 2
        while (await self.status()).count("(online") < links:
            if time.monotonic() > deadline:
                raise AssertionError(f"Kannel's SMSC link never came online: {self.logs()}")
            await asyncio.sleep(0.1)

    async def status(self) -> str:
        """bearerbox's status.txt (the SMSC link's state and counters)."""
        url = f"http://127.0.0.1:{self.admin}/status.txt?password={ADMIN_PASSWORD}"
        async with aiohttp.ClientSession() as http:
            try:
                async with http.get(url) as response:
                    return await response.text()
            except aiohttp.ClientError as exc:
                return f"status unavailable: {exc}"

    async def sendsms(self, http: aiohttp.ClientSession, **params: str) -> tuple[int, str]:
        """One sendsms request: its HTTP status and body."""
        query = {"username": SENDSMS_USER, "password": SENDSMS_PASSWORD, **params}
        async with http.get(f"{self.sendsms_url}?{urlencode(query)}") as response:
            return response.status, await response.text()

    def logs(self, tail: int = 3000) -> str:
        """The end of each log file, for an assertion's message."""
        parts = []
        for path in sorted(self.run.glob("*.log")) + sorted(self.run.glob("*.out")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM smsbox then bearerbox (by pid), SIGKILL what is still up after 10 s."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
