"""API worker processes (`[api] workers = N`): the daemon's side.

With workers, the daemon's own process no longer serves `[api] listen`: N worker
processes (router/daemon/api_worker.py) bind it together with SO_REUSEPORT and the
kernel spreads the connections over them; each authenticates, validates and
enqueues to Redis itself, so the submit doors take no CPU from the daemon, which
keeps sending. The daemon holds the port (bound, not listening, so that it stays
ours while a worker restarts, and so that ``:0`` means one port for all) and serves
the API on a private listener on 127.0.0.1, where the workers forward what only the
daemon knows (router/api/forward.py: readiness, metrics, provider webhooks, live
route health).

Supervision follows gunicorn's arbiter: a worker that exits while the daemon serves
is logged (its exit code or signal) and started again; a worker that cannot start
(it exits or stays silent for `BOOT_TIMEOUT` before it listens) stops the daemon
with exit code 1, at start-up or later, since starting it again would fail the same
way. A reload sends the workers the new settings; a stop sends them SIGTERM and
waits for them (each finishes the requests in progress within ``shutdown_grace``).

``GET /metrics`` (answered by the daemon) shows the workers: how many run
(``sms_router_api_workers``), restarts (``sms_router_api_worker_restarts_total``),
and each one's CPU and memory (``sms_router_api_worker_cpu_seconds_total``,
``sms_router_api_worker_resident_memory_bytes``, label ``worker``), beside the
daemon's own ``process_*``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import router
from router.config import Settings
from router.daemon.api_worker import Start
from router.errors import RouterError

__all__ = ["ApiWorkers", "WorkerBootError", "WorkersCollector", "reserve"]

log = structlog.get_logger("router.api_workers")

BOOT_TIMEOUT: Final = 30.0  # seconds a worker may take to listen
# The least time between two starts of the same worker: one that dies at once keeps
# the log readable and the machine usable.
RESTART_PAUSE: Final = 1.0
# Seconds a worker's exit is held before it counts: the daemon's own signal may follow.
STOP_WAIT: Final = 0.2
READY_EVERY: Final = 1.0  # seconds between looks at the profiles' readiness
# The systemd variables are the daemon's: a worker must not notify (NotifyAccess=main).
_DAEMON_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_ROOT = str(Path(router.__file__).resolve().parents[1])  # where `router` was imported from


class WorkerBootError(RouterError):
    """An API worker did not start listening."""


def reserve(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT and not listening: it keeps the
    port for the workers (a port 0 becomes one chosen port) and takes no connection
    (only listening sockets share a port's connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    conn: Connection | None = None
    started: float = 0.0
    restarts: int = 0
    listening: bool = False  # said ready, not exited since

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def send(self, kind: str, value: Any) -> None:
        if self.conn is None:
            return
        try:
            self.conn.send((kind, value))
        except OSError:
            pass  # it is gone: supervision notices and restarts it


@dataclass
class ApiWorkers:
    """N API worker processes serving (host, port), forwarding to `daemon_url`."""

    settings: Settings
    count: int
    host: str
    port: int
    daemon_url: str
    workers: list[_Worker] = field(default_factory=list)
    _ready: dict[str, bool] | None = None

    def __post_init__(self) -> None:
        self.workers = [_Worker(i) for i in range(1, self.count + 1)]

    @property
    def pids(self) -> list[int]:
        """The workers' process ids now."""
        return [pid for w in self.workers if (pid := w.pid) is not None]

    @property
    def listening(self) -> int:
        """How many workers listen now."""
        return sum(1 for w in self.workers if w.listening and w.pid is not None)

    async def start(self) -> None:
        """Start every worker and wait until each listens (WorkerBootError if one
        does not; those started are stopped again)."""
        try:
            await asyncio.gather(*(self._spawn(w) for w in self.workers))
        except BaseException:
            await self.stop(0.0)
            raise
        log.info("api workers listening", count=self.count, port=self.port, pids=self.pids)

    async def _spawn(self, worker: _Worker) -> None:
        """Start `worker`'s process and wait until it listens (WorkerBootError)."""
        ours, theirs = socket.socketpair()
        env = {k: v for k, v in os.environ.items() if k not in _DAEMON_ONLY}
        # The worker imports this same router package, wherever it was loaded from.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "router.daemon.api_worker",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:  # no process could be made (fork, exec, limits)
            ours.close()
            raise WorkerBootError(f"api worker {worker.index} could not be started: {exc}") from exc
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        conn = worker.conn = Connection(ours.detach())
        worker.started = time.monotonic()
        try:
            conn.send(Start(self.settings, worker.index, self.host, self.port, self.daemon_url))
            await asyncio.wait_for(_readable(conn), BOOT_TIMEOUT)
            conn.recv()  # ("ready", its pid)
            worker.listening = True
        except (OSError, EOFError, TimeoutError, ValueError) as exc:
            code = worker.proc.returncode
            if code is None:
                worker.proc.kill()
                code = await worker.proc.wait()
            raise WorkerBootError(
                f"api worker {worker.index} did not start listening on "
                f"{self.host}:{self.port} ({type(exc).__name__}, exit code {code}; "
                "see its log lines above)"
            ) from None
        if self._ready is not None:
            worker.send("ready", self._ready)

    def configure(self, settings: Settings) -> None:
        """A reload: the workers judge jobs by `settings` from now on."""
        self.settings = settings
        for worker in self.workers:
            worker.send("settings", settings)

    def tell_ready(self, ready: dict[str, bool]) -> None:
        """Each profile's readiness, sent to the workers when it changed."""
        if ready != self._ready:
            self._ready = dict(ready)
            for worker in self.workers:
                worker.send("ready", ready)

    async def supervise(
        self,
        stopping: asyncio.Event,
        fatal: Callable[[str], None],
        readiness: Callable[[], dict[str, bool]] | None = None,
    ) -> None:
        """Until `stopping`: start again each worker that exits; call `fatal` (and
        return) when one cannot start. Every `READY_EVERY` seconds the profiles'
        `readiness` goes to the workers when it changed."""
        stop: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
        exits: dict[asyncio.Future[Any], _Worker] = {}
        try:
            while not stopping.is_set():
                if readiness is not None:
                    self.tell_ready(readiness())
                for worker in self.workers:
                    if worker.proc is not None and worker not in exits.values():
                        exits[asyncio.ensure_future(worker.proc.wait())] = worker
                done, _ = await asyncio.wait(
                    [stop, *exits], timeout=READY_EVERY, return_when=asyncio.FIRST_COMPLETED
                )
                if stopping.is_set():
                    return
                for task in done:
                    exited = exits.pop(task, None)
                    if exited is not None:
                        await self._restart(exited, task.result(), stopping)
                        if stopping.is_set():
                            return
        except WorkerBootError as exc:
            if stopping.is_set():
                return  # stopped while it started: nothing went wrong
            log.error("api worker could not start; stopping the daemon", error=str(exc))
            fatal(str(exc))
        finally:
            stop.cancel()
            for task in exits:
                task.cancel()

    async def _restart(self, worker: _Worker, code: int, stopping: asyncio.Event) -> None:
        worker.listening = False
        pid = worker.proc.pid if worker.proc else None
        if worker.conn is not None:
            worker.conn.close()
            worker.conn = None
        worker.proc = None
        # A pause first: at least RESTART_PAUSE between two starts, and a worker stopped
        # by the same SIGTERM as the daemon (systemd signals the whole control group,
        # a terminal's Ctrl-C the process group) is not started again.
        pause = max(STOP_WAIT, worker.started + RESTART_PAUSE - time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), pause)
        if stopping.is_set():
            return
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        log.error("api worker exited; starting it again", worker=worker.index, pid=pid,
                  status=how)  # fmt: skip
        worker.restarts += 1
        await self._spawn(worker)
        log.info("api worker started again", worker=worker.index, pid=worker.pid)

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker; wait until they exit (each lets its requests in
        progress finish within `grace`), SIGKILL what is left after grace + 5 s."""
        running = [w for w in self.workers if w.pid is not None]
        for worker in running:
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGTERM)
        waits = [w.proc.wait() for w in running if w.proc is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), grace + 5.0)
        except TimeoutError:
            for worker in running:
                if worker.pid is not None and worker.proc is not None:
                    log.warning("api worker did not stop in time; killed", worker=worker.index)
                    worker.proc.kill()
                    await worker.proc.wait()
        for worker in self.workers:
            if worker.conn is not None:
                worker.conn.close()
                worker.conn = None

    def health(self) -> list[dict[str, Any]]:
        """Each worker for the health record: pid (None: not running), restarts."""
        return [{"worker": w.index, "pid": w.pid, "restarts": w.restarts} for w in self.workers]


def _proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds, resident bytes) of `pid`, from /proc; zeros when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0, 0
    return (int(fields[11]) + int(fields[12])) / _TICK, int(fields[21]) * _PAGE


class WorkersCollector(Collector):
    """The workers' metrics, read at each scrape (registered on the daemon's registry)."""

    def __init__(self, workers: ApiWorkers) -> None:
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "sms_router_api_workers", "API worker processes listening on the API's port."
        )
        running.add_metric([], self.workers.listening)
        yield running
        restarts = CounterMetricFamily(
            "sms_router_api_worker_restarts",
            "API worker processes started again after they exited.",
        )
        restarts.add_metric([], sum(w.restarts for w in self.workers.workers))
        yield restarts
        cpu = CounterMetricFamily(
            "sms_router_api_worker_cpu_seconds",
            "CPU time of each API worker process (from 0 again after a restart).",
            labels=["worker"],
        )
        rss = GaugeMetricFamily(
            "sms_router_api_worker_resident_memory_bytes",
            "Resident memory of each API worker process.",
            labels=["worker"],
        )
        for worker in self.workers.workers:
            pid = worker.pid
            used, resident = _proc_stat(pid) if pid is not None else (0.0, 0)
            cpu.add_metric([str(worker.index)], used)
            rss.add_metric([str(worker.index)], resident)
        yield cpu
        yield rss


async def _readable(conn: Connection) -> None:
    """Until `conn` has something to read (or its other end closed)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = conn.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
