"""One API worker process (`[api] workers`): serves `[api] listen` beside the others.

Started by the daemon (router/daemon/api_workers.py) as ``python -m
router.daemon.api_worker FD``: FD is its end of a socket pair to the daemon, over
which it first receives its start (the settings, its number, the address, the
daemon's private URL) and answers ``ready`` once it listens; later the daemon sends
new settings (a reload), the profiles' readiness, or ``stop``.

It binds the API's port with SO_REUSEPORT, so the kernel spreads connections over
the workers, and runs the same application as the daemon (router/api/app.py): the
same authentication, validation, errors and `Client` enqueue, its own Redis
connections; a 2xx answer still comes only once the job is in Redis. Endpoints that
read the daemon's own state are forwarded to it (router/api/forward.py).

SIGTERM or SIGINT (or ``stop``, or the daemon's end of the pair closing: the daemon
is gone) stops it: it stops accepting, lets the requests in progress finish within
``[router] shutdown_grace``, and exits 0. SIGHUP is the daemon's (a reload reaches
the workers as new settings), so it is ignored here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import structlog

from router.api.app import ApiServer
from router.api.common import ApiContext
from router.api.forward import Forwarder
from router.client import Client
from router.config import Settings
from router.logs import configure
from router.store.connections import open_redis
from router.store.ledger import Ledger

__all__ = ["Start", "main"]

log = structlog.get_logger("router.api_worker")


@dataclass(frozen=True)
class Start:
    """What the daemon sends a worker first."""

    settings: Settings
    index: int  # 1..N, in logs and metrics
    host: str
    port: int
    daemon_url: str  # the daemon's private listener, for `in_daemon` endpoints


@dataclass
class ProfileReady:
    """A profile's readiness as the daemon last told it (Kannel's sendsms answers
    "Queued for later delivery" while the profile cannot send)."""

    name: str
    ready: bool


def _apply(context: ApiContext, kind: str, value: Any, stop: asyncio.Event) -> None:
    if kind == "settings":
        context.settings = value
        context.client.configure(value)  # the doors judge by the new configuration
    elif kind == "ready":
        context.workers = [ProfileReady(name, ready) for name, ready in value.items()]
    elif kind == "stop":
        stop.set()


async def serve(conn: Connection, start: Start) -> int:
    """Serve until told to stop; returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    settings = start.settings
    router = settings.router
    async with open_redis(settings) as redis:
        ledger = Ledger(
            redis,
            retention=settings.queue.retention,
            events_maxlen=settings.queue.events_maxlen,
            replicas_ack=router.replicas_ack,
            replicas_ack_timeout_ms=router.replicas_ack_timeout_ms,
        )
        forward = Forwarder(start.daemon_url)
        context = ApiContext(
            settings=settings,
            redis=redis,
            ledger=ledger,
            client=Client.from_settings(redis, settings),
            forward=forward,
        )
        server = ApiServer(
            context,
            (start.host, start.port),
            reuse_port=True,
            shutdown_timeout=router.shutdown_grace,
        )
        await server.start()

        def readable() -> None:
            try:
                while conn.poll():
                    kind, value = conn.recv()
                    _apply(context, kind, value, stop)
            except (EOFError, OSError):
                if not stop.is_set():
                    log.warning("api worker: the daemon is gone; stopping")
                stop.set()
                loop.remove_reader(conn.fileno())

        loop.add_reader(conn.fileno(), readable)
        conn.send(("ready", os.getpid()))
        await stop.wait()
        log.info("api worker stopping", worker=start.index)
        # Stops accepting, then waits for the requests in progress (each answered
        # only once its job is in Redis) up to the grace.
        await server.stop()
        await forward.close()
    return 0


def main(argv: list[str]) -> int:
    """The worker process: ``python -m router.daemon.api_worker FD``."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Until the loop's own handlers are in place, SIGTERM ends it at once: nothing has
    # been accepted yet.
    conn = Connection(int(argv[1]))
    start: Start = conn.recv()
    router = start.settings.router
    configure(router.log_format, router.log_level)
    structlog.contextvars.bind_contextvars(api_worker=start.index)
    if router.uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(serve(conn, start))
    return asyncio.run(serve(conn, start))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
