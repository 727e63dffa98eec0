"""systemd's notify protocol on a real unix datagram socket, as systemd listens on it."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from router.config import Settings
from router.systemd import Notifier, child_environment

from ..conftest import RunningDaemon, wait_for


class Listener:
    """A datagram socket playing systemd: records (monotonic time, message), in a thread
    of its own so the times stay true while the event loop is blocked."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.got: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.got.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def messages(self) -> list[str]:
        return [m for _, m in self.got]

    def index(self, field: str) -> int:
        """The first message with `field` as one of its lines (-1: none yet)."""
        return next((i for i, m in enumerate(self.messages()) if field in m.split("\n")), -1)

    def pings(self) -> list[float]:
        return [t for t, m in self.got if m == "WATCHDOG=1"]


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    """NOTIFY_SOCKET (a short path: sun_path holds 108 bytes) with a 0.2 s watchdog."""
    folder = tempfile.mkdtemp(prefix="notify")
    path = os.path.join(folder, "notify.sock")
    heard = Listener(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    yield heard
    heard.close()
    os.unlink(path)
    os.rmdir(folder)


async def test_ready_watchdog_and_stopping_reach_systemd(
    listener: Listener,
    make_settings: Callable[..., Settings],
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    running = run_daemon(make_settings())
    await wait_for(lambda: listener.index("READY=1") >= 0, 20, "READY=1")
    ready = listener.messages()[listener.index("READY=1")]
    # Sent once start-up is over: Redis reached, binds and workers started.
    assert ready == "READY=1\nSTATUS=serving 2 profiles; binds ready 2/2"
    assert len(running.daemon.workers) == 2 and not running.task.done()
    assert 0 <= listener.index("STATUS=starting: connecting to Redis") < listener.index("READY=1")

    # WATCHDOG=1 every half of WATCHDOG_USEC (0.1 s).
    await wait_for(lambda: len(listener.pings()) >= 5, 10, "five watchdog pings")
    pings = listener.pings()
    gaps = [b - a for a, b in zip(pings[-4:], pings[-3:], strict=False)]
    assert all(0.05 < gap < 0.5 for gap in gaps), gaps

    # A blocked event loop stops the pings (systemd would restart the service).
    blocked_at = time.monotonic()
    time.sleep(0.8)  # noqa: ASYNC251 - blocking the loop on purpose
    unblocked_at = time.monotonic()
    await asyncio.sleep(0.3)
    during = [t for t in listener.pings() if blocked_at + 0.05 < t < unblocked_at]
    assert during == []
    assert any(t > unblocked_at for t in listener.pings()), "pings resume with the loop"

    assert await running.stop() == 0
    assert listener.index("STOPPING=1") > listener.index("READY=1")
    stopping = listener.messages()[listener.index("STOPPING=1")]
    assert stopping.startswith("STOPPING=1\nSTATUS=stopping")
    # The pings end with the daemon.
    count = len(listener.pings())
    await asyncio.sleep(0.3)
    assert len(listener.pings()) == count


async def test_abstract_socket_and_reload_messages() -> None:
    name = f"sms-router-test-{uuid.uuid4().hex}"
    heard = Listener("\0" + name)
    notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
    try:
        notifier.reloading()
        notifier.ready("serving 1 profiles")
        notifier.status("serving 1 profiles")  # unchanged: not sent again
        notifier.status("Redis unreachable\nsince now")  # one line
        await wait_for(lambda: len(heard.got) >= 3, 5, "three messages")
        await asyncio.sleep(0.1)
    finally:
        notifier.close()
        heard.close()
    reloading, ready, status = heard.messages()
    lines = reloading.split("\n")
    assert lines[0] == "RELOADING=1" and lines[2] == "STATUS=reloading configuration"
    assert lines[1].startswith("MONOTONIC_USEC=")
    # CLOCK_MONOTONIC in microseconds, as systemd compares it with its own clock.
    sent = int(lines[1].removeprefix("MONOTONIC_USEC="))
    assert abs(sent - time.monotonic_ns() // 1000) < 5_000_000
    assert ready == "READY=1\nSTATUS=serving 1 profiles"
    assert status == "STATUS=Redis unreachable since now"


def test_without_notify_socket_nothing_is_sent_and_watchdogs_of_others_are_ignored() -> None:
    quiet = Notifier({})
    assert not quiet.enabled and quiet.send("READY=1") is False and quiet.interval is None
    other = Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"})
    assert other.interval is None
    mine = Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.interval == 15.0
    # A socket that is gone: the daemon goes on (logged once), nothing raises.
    gone = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify.sock"})
    assert gone.send("READY=1") is False


async def test_the_embedded_redis_does_not_inherit_notify_socket(
    listener: Listener,
    make_settings: Callable[..., Settings],
    run_daemon: Callable[[Settings], RunningDaemon],
    tmp_path: Path,
) -> None:
    settings = make_settings()
    state = tmp_path / "embedded"
    router = settings.router.model_copy(update={"redis": "embedded", "state_dir": state})
    running = run_daemon(settings.model_copy(update={"router": router}))
    await wait_for(lambda: listener.index("READY=1") >= 0, 30, "READY=1")
    children = [pid for pid in _redis_servers() if str(state) in _cmdline(pid)]
    assert len(children) == 1
    environ = _environ(children[0])
    assert not any(v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_")) for v in environ)
    assert "NOTIFY_SOCKET" in os.environ and "NOTIFY_SOCKET" not in child_environment()
    assert await running.stop() == 0


def _redis_servers() -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and "redis-server" in _cmdline(int(p.name))
    ]


def _environ(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
