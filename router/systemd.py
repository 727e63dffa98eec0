"""systemd's notify protocol (``Type=notify``), without a library.

`Notifier` sends datagrams to ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the
abstract namespace): ``READY=1`` once the daemon serves, ``STATUS=...`` lines,
``RELOADING=1`` / ``STOPPING=1``, and ``WATCHDOG=1`` (`watchdog`; the daemon calls
it every `interval` seconds from an asyncio task, so a blocked event loop stops the
pings and systemd restarts the service after ``WatchdogSec``). Without
``NOTIFY_SOCKET`` every call does nothing.

Sends never block and never raise: a notification lost (the socket gone, its
queue full) is logged once and the daemon goes on.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("router.systemd")

# Variables a child process (the embedded redis-server) must not inherit: it would
# talk to systemd on our behalf.
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def child_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: ours) without systemd's notify and watchdog variables."""
    source = os.environ if env is None else env
    return {k: v for k, v in source.items() if k not in SYSTEMD_VARIABLES}


def _address(value: str) -> str | None:
    """NOTIFY_SOCKET as a socket address: a path, or '@name' for the abstract
    namespace (a leading NUL byte)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock:... and the like: not supported here


class Notifier:
    """Notifications to systemd (all no-ops without ``NOTIFY_SOCKET``)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = _address(raw) if raw else None
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET not supported; not notifying systemd", socket=raw)
        # Seconds between WATCHDOG=1 pings, or None when systemd watches no watchdog.
        self.interval = _watchdog_interval(env)
        self._socket: socket.socket | None = None
        self._failed = False
        self._status = ""

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; True if it went out."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("systemd notification not sent", error=f"{type(exc).__name__}: {exc}")
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str | None = None) -> None:
        """Start-up (or a reload) is over: the daemon serves."""
        self.send("READY=1", *self._status_field(status))

    def reloading(self, status: str = "reloading configuration") -> None:
        """A reload starts; `ready` ends it. MONOTONIC_USEC is what systemd >= 253 wants
        with RELOADING=1 (older ones ignore it)."""
        self.send(
            "RELOADING=1",
            f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
            *self._status_field(status),
        )

    def stopping(self, status: str = "stopping") -> None:
        """Shutdown has begun."""
        self.send("STOPPING=1", *self._status_field(status))

    def status(self, text: str) -> None:
        """A STATUS= line (systemctl status shows it); sent only when it changes."""
        if text != self._status:
            self.send(*self._status_field(text))

    def watchdog(self) -> None:
        """The service is alive (see `interval`)."""
        self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _status_field(self, text: str | None) -> list[str]:
        if text is None:
            return []
        self._status = text
        return [f"STATUS={' '.join(text.split())}"]  # one line


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between pings: half of WATCHDOG_USEC, when it is set for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we are a child of the service's main)
    return int(usec) / 2 / 1_000_000
