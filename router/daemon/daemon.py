"""The daemon: startup, serve, shutdown.

Startup opens Redis (starting the embedded server if configured), starts the HTTP
API when `[api] listen` is set, builds each profile's binds and worker
(router/daemon/runtime.py) and takes back this instance's unfinished entries. Serve reads
the work streams until a signal. Shutdown stops reading, gives in-flight messages
`shutdown_grace` seconds, cancels what is left (it stays pending for the next
start) and stops the embedded Redis. Signal handlers only set flags; a second
signal exits at once; SIGHUP reloads the configuration (router/daemon/reload.py) from
the serving loop.

Every serving loop waits out Redis outages (router/store/outages.py); a serving task
that still fails met a bug, and the daemon stops with exit code 1. So does a
daemon whose instance lease (router/daemon/lease.py) was taken by another one.

Under systemd (router/systemd.py) it sends READY=1 once started, STATUS= lines,
STOPPING=1 when shutdown begins and WATCHDOG=1 from the event loop. Its metrics
(router/metrics.py) are handed to every worker and served at GET /metrics.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import structlog
from redis.asyncio import Redis

from router.api.app import ApiServer, SendsmsServer
from router.api.common import ApiContext, ConfigFile
from router.api.metrics import METRICS_KEY
from router.api.providers import PROVIDERS, ProviderHooks
from router.client import Client
from router.config import ConfigError, Settings, load_settings
from router.daemon.api_workers import ApiWorkers, WorkerBootError, WorkersCollector, reserve
from router.daemon.lease import Lease
from router.daemon.reload import Reloader, publish_verdict
from router.daemon.runtime import ProfileRuntime, Shared, build, build_connector
from router.daemon.wiring import build_binds
from router.engine.callbacks import StatusPoster
from router.engine.connectors import ConnectorRuntime
from router.engine.worker import ProfileWorker
from router.metrics import Metrics
from router.policy.routes import RouteTable
from router.policy.spend import today
from router.smpp_server import SmppServer
from router.store import instances, keys
from router.store.connections import as_text, open_redis
from router.store.health import QualityBoard
from router.store.ledger import Ledger
from router.store.outages import REDIS_ERRORS, Pause, RedisOutages
from router.systemd import Notifier

log = structlog.get_logger("router.daemon")

HEALTH_EVERY = 5.0


def health_key(instance: str) -> str:
    """Where an instance publishes its health (read by `sms-router health` and the
    web console)."""
    return keys.health(instance)


def _signing(settings: Settings) -> dict[str, bytes]:
    """Profile -> webhook key, for the profiles whose callbacks are signed."""
    return {n: p.webhook_key for n, p in settings.profiles.items() if p.webhook_key}


class Daemon:
    """One router instance."""

    def __init__(
        self, settings: Settings, config_path: str | os.PathLike[str] | None = None
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.instance = settings.router.instance_name
        self.stopping = asyncio.Event()
        self.runtimes: dict[str, ProfileRuntime] = {}
        self.posters: list[StatusPoster] = []
        self.reloads = 0
        self._reload = asyncio.Event()
        # One reload at a time: the web console reloads from a request, SIGHUP from
        # the serving loop.
        self._reloading = asyncio.Lock()
        # (when, messages handed to each bind) at the last health record: bind rates.
        self._handed_before: tuple[float, dict[str, int]] = (time.monotonic(), {})
        self._shared: Shared | None = None
        self._api_context: ApiContext | None = None
        self._signals = 0
        self._started = time.time()
        self.outages = RedisOutages()
        self.exit_code = 0
        self.lease: Lease | None = None
        self.hangups = 0
        self.api: ApiServer | None = None
        # [api] workers: the processes serving [api] listen; self.api is then the
        # daemon's private listener they forward to.
        self.api_workers: ApiWorkers | None = None
        self.sendsms: SendsmsServer | None = None  # [sendsms] listen: Kannel's port
        self.smpp_server: SmppServer | None = None  # [smpp_server] listen: clients bind here
        # Profiles whose provider reports back over HTTP (router/api/providers.py).
        self.providers: dict[str, ProviderHooks] = {}
        self.metrics = Metrics(self.instance, settings)
        self.notify = Notifier()  # systemd (no-op unless NOTIFY_SOCKET is set)
        self._up = False  # serving (STATUS= lines are sent)

    def request_stop(self, signum: int | None = None) -> None:
        """Signal handler: first time stop gracefully, second time exit at once."""
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: exiting now", signal=signum)
            os._exit(1)
        log.info("stopping", signal=signum, grace=self.settings.router.shutdown_grace)
        self._stop_all()

    @property
    def workers(self) -> list[ProfileWorker]:
        """The workers of the profiles running now."""
        return [runtime.worker for runtime in self.runtimes.values()]

    def _stop_all(self) -> None:
        self.stopping.set()
        for runtime in self.runtimes.values():
            runtime.request_stop()

    def hang_up(self) -> None:
        """SIGHUP: reload the configuration (done by the serving loop, not here)."""
        self.hangups += 1
        self._reload.set()

    def notify_reloading(self) -> None:
        """Tell systemd a reload began (RELOADING=1); `notify_ready` when it is over."""
        self.notify.reloading()

    def notify_ready(self) -> None:
        """Tell systemd the daemon serves (READY=1 and the current status)."""
        self.notify.ready(self._status_text())

    def _status_text(self) -> str:
        """The STATUS= line: what the daemon does now."""
        binds = [b for c in self.connectors for b in c.binds]
        text = (
            f"serving {len(self.workers)} profiles; "
            f"binds ready {sum(1 for b in binds if b.ready)}/{len(binds)}"
        )
        if self.api_workers is not None:
            text += f"; api workers {self.api_workers.listening}/{self.api_workers.count}"
        down = self.outages.down_since
        if down is not None:
            since = time.strftime("%H:%M:%SZ", time.gmtime(down))
            text += f"; Redis unreachable since {since}, waiting"
        return text

    async def _systemd(self) -> None:
        """WATCHDOG=1 every half of WATCHDOG_USEC, and STATUS= when it changes. Runs on
        the event loop: a loop that blocks stops the pings, and systemd restarts us."""
        notify = self.notify
        if not notify.enabled:
            return
        tick = min(1.0, notify.interval or 1.0)
        next_ping = 0.0
        while True:
            now = time.monotonic()
            if notify.interval is not None and now >= next_ping:
                notify.watchdog()
                next_ping = now + notify.interval
            if self._up and not self.stopping.is_set():
                notify.status(self._status_text())
            await asyncio.sleep(tick)

    async def run(self, *, install_signals: bool = True) -> int:
        """Run until stopped; returns the exit code.

        Raises `InstanceTaken` (before touching any entry) when another live daemon
        holds this instance name."""
        if install_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.request_stop, signum)
            loop.add_signal_handler(signal.SIGHUP, self.hang_up)
        self.notify.status("starting: connecting to Redis")
        systemd = asyncio.create_task(self._systemd())
        try:
            return await self._run()
        finally:
            systemd.cancel()
            await asyncio.gather(systemd, return_exceptions=True)
            self.notify.close()

    async def _run(self) -> int:
        async with AsyncExitStack() as stack:
            redis = await stack.enter_async_context(open_redis(self.settings, daemon=True))
            self.outages.redis = redis
            self.lease = Lease(redis, self.instance, HEALTH_EVERY * 3)
            await self.lease.acquire()
            stack.push_async_callback(self._release_lease)
            # The beat renews the lease from now on: recovering many pending entries
            # at start-up may take longer than its TTL.
            health = asyncio.create_task(self._health(redis))
            try:
                self.notify.status("starting: binds and workers")
                await self._startup(redis, stack)
            except WorkerBootError as exc:
                # As gunicorn halts when a worker cannot boot: trying again would fail
                # the same way (the log shows the worker's own error above this line).
                health.cancel()
                log.error("an api worker could not start; stopping", error=str(exc))
                return 1
            except BaseException:
                health.cancel()
                raise
            self._up = True
            self.notify_ready()
            await self._serve(health)
        log.info("stopped", exit_code=self.exit_code)
        return self.exit_code

    async def _release_lease(self) -> None:
        if self.lease is None:
            return
        try:
            await self.lease.release()
        except REDIS_ERRORS:
            pass  # Redis is away: the lease runs out by itself

    async def _startup(self, redis: Redis, stack: AsyncExitStack) -> None:
        queue = self.settings.queue
        router = self.settings.router
        ledger = Ledger(
            redis,
            retention=queue.retention,
            events_maxlen=queue.events_maxlen,
            replicas_ack=router.replicas_ack,
            replicas_ack_timeout_ms=router.replicas_ack_timeout_ms,
            recipient_index=queue.recipient_index,
        )
        self.posters.append(
            StatusPoster(
                redis,
                consumer=self.instance,
                timeout=router.callback_timeout,
                grace=router.shutdown_grace,
                outages=self.outages,
                signing=_signing(self.settings),
                profiles=self.settings.profiles,
            )
        )
        self._shared = Shared(
            redis,
            ledger,
            self.instance,
            self.outages,
            self.providers,
            metrics=self.metrics,
            quality=QualityBoard(redis),
        )
        stack.push_async_callback(self._close_binds)
        if self.settings.api.listen is not None or self.settings.sendsms.listen is not None:
            # Before the binds: a Twilio bind's StatusCallback names the bound port.
            context = ApiContext(
                settings=self.settings,
                redis=redis,
                ledger=ledger,
                client=Client.from_settings(redis, self.settings),
                workers=self.workers,  # filled below; readiness reads it per request
                extras={PROVIDERS: self.providers, METRICS_KEY: self.metrics},
                config_file=(
                    ConfigFile(self.config_path, self.reload) if self.config_path else None
                ),
            )
            self._api_context = context
            if self.settings.api.workers:
                self._shared.api_port = await self._start_api_workers(context, stack)
            elif self.settings.api.listen is not None:
                self.api = ApiServer(context)
                await self.api.start()
                stack.push_async_callback(self.api.stop)
                self._shared.api_port = self.api.port
            if self.settings.sendsms.listen is not None:
                # Kannel's sendsms alone, for applications that expect Kannel's port.
                self.sendsms = SendsmsServer(context)
                await self.sendsms.start()
                stack.push_async_callback(self.sendsms.stop)
        self._shared.table = RouteTable(self.settings)
        self._shared.settings = self.settings
        for name in self.settings.connectors:
            self._shared.connectors[name] = await build_connector(
                name, self.settings, self._shared, build_binds
            )
        for name in self.settings.profiles:
            self.runtimes[name] = await build(
                name, self.settings, self._shared, make_binds=build_binds
            )
        if self._api_context is not None:
            self._api_context.workers = self.workers
        self.metrics.watch(self.workers, self.outages, redis)
        self.metrics.connectors = lambda: self.connectors
        if self.settings.smpp_server.listen is not None:
            # Last: clients bind once this instance can send what they submit; the API's
            # Client (when there is one) is shared, so both doors batch Redis calls.
            api = self._api_context
            self.smpp_server = SmppServer(
                self.settings,
                redis,
                client=api.client if api is not None else None,
                outages=self.outages,
            )
            await self.smpp_server.start()
            # Unwinds before Redis closes (last in, first out).
            stack.push_async_callback(self.smpp_server.stop, self.settings.router.shutdown_grace)
        # What start-up built (configuration, libphonenumber's metadata, codecs, the
        # binds) lives as long as the process: keep it out of the collector's full
        # passes, which otherwise stall the loop for tens of milliseconds at a time.
        gc.collect()
        gc.freeze()
        log.info(
            "started",
            instance=self.instance,
            profiles=[w.name for w in self.workers],
            redis="embedded" if self.settings.router.redis == "embedded" else "external",
        )

    async def _start_api_workers(self, context: ApiContext, stack: AsyncExitStack) -> int:
        """`[api] workers` processes on `[api] listen`, and the daemon's private
        listener they forward to (router/daemon/api_workers.py); returns the port."""
        host, port = self.settings.api.address
        held = reserve(host, port)  # ours while workers come and go; :0 becomes one port
        stack.callback(held.close)
        port = int(held.getsockname()[1])
        self.api = ApiServer(context, ("127.0.0.1", 0))
        await self.api.start()
        stack.push_async_callback(self.api.stop)
        workers = ApiWorkers(
            self.settings,
            self.settings.api.workers,
            host,
            port,
            f"http://127.0.0.1:{self.api.port}",
        )
        await workers.start()  # stops those it started when one cannot start
        stack.push_async_callback(workers.stop, self.settings.router.shutdown_grace)
        self.api_workers = workers  # once every one listens
        self.metrics.registry.register(WorkersCollector(workers))
        return port

    def _fatal(self, reason: str) -> None:
        """Stop with exit code 1 (an API worker could not start)."""
        log.error("stopping", reason=reason)
        self.exit_code = 1
        self._stop_all()

    def _readiness(self) -> dict[str, bool]:
        return {w.name: w.ready for w in self.workers}

    @property
    def connectors(self) -> list[ConnectorRuntime]:
        """Every connector: the shared ones and the inline profiles' own."""
        shared = list(self._shared.connectors.values()) if self._shared is not None else []
        return shared + [r.own for r in self.runtimes.values() if r.own is not None]

    async def _serve(self, health: asyncio.Task[None]) -> None:
        for runtime in self.runtimes.values():
            runtime.run()
        watches = [asyncio.create_task(c.watch(self.stopping)) for c in self._shared_connectors()]
        if self._shared is not None and self._shared.quality is not None:
            watches.append(asyncio.create_task(self._shared.quality.run(self.stopping)))
        posters = [asyncio.create_task(p.run(self.stopping)) for p in self.posters]
        if self.api_workers is not None:
            watches.append(
                asyncio.create_task(
                    self.api_workers.supervise(self.stopping, self._fatal, self._readiness)
                )
            )
        stop = asyncio.create_task(self.stopping.wait())
        failed: list[asyncio.Task[Any]] = []
        while not failed and not self.stopping.is_set():
            reload = asyncio.create_task(self._reload.wait())
            serving = [t for t in [health, *posters, *self._serving()] if not t.done()]
            done, _ = await asyncio.wait(
                [stop, reload, *serving], return_when=asyncio.FIRST_COMPLETED
            )
            reload.cancel()
            failed = [
                t
                for t in done
                if t not in (stop, reload) and not t.cancelled() and t.exception() is not None
            ]
            if self._reload.is_set() and not failed and not self.stopping.is_set():
                self._reload.clear()
                await self.reload()
        self._up = False
        grace = self.settings.router.shutdown_grace
        self.notify.stopping(f"stopping: finishing in-flight messages (grace {grace:g}s)")
        # Clients stop submitting first: what they submitted meanwhile is answered.
        workers_stopped = (
            asyncio.create_task(self.api_workers.stop(grace))
            if self.api_workers is not None
            else None
        )
        smpp_stopped = (
            asyncio.create_task(self.smpp_server.stop(grace))
            if self.smpp_server is not None
            else None
        )
        for task in failed:
            # Redis errors are waited out inside the loops: this is a bug.
            log.error(
                "a serving task failed; stopping",
                error=repr(task.exception()),
                exc_info=task.exception(),
            )
        self._stop_all()
        # Readers stop first (nothing new is dispatched), then in-flight messages and
        # status callbacks share one grace period.
        loops = [*self._serving(), health]
        results = list(await asyncio.gather(*loops, return_exceptions=True))
        drained = asyncio.create_task(self._shutdown())
        results += await asyncio.gather(*posters, return_exceptions=True)
        await drained
        await asyncio.gather(*watches, return_exceptions=True)
        if smpp_stopped is not None:
            await smpp_stopped  # stop() runs once; the exit stack's call then does nothing
        if workers_stopped is not None:
            await workers_stopped
        for result in results:
            if isinstance(result, Exception) and not failed:
                log.error("serving task ended with an error", error=repr(result))
        with_errors = [r for r in results if isinstance(r, Exception)]
        if with_errors and not self._signals:
            raise with_errors[0]

    def _serving(self) -> list[asyncio.Task[None]]:
        return [task for runtime in self.runtimes.values() for task in runtime.all_tasks()]

    async def _shutdown(self) -> None:
        grace = self.settings.router.shutdown_grace
        left = await asyncio.gather(*(w.drain(grace) for w in self.workers))
        if sum(left):
            log.warning(
                "cancelled in-flight messages at the grace limit; they stay "
                "pending for the next start",
                count=sum(left),
            )

    def _shared_connectors(self) -> list[ConnectorRuntime]:
        return list(self._shared.connectors.values()) if self._shared is not None else []

    async def _close_binds(self) -> None:
        binds = [bind for runtime in self.runtimes.values() for bind in runtime.binds]
        binds += [bind for connector in self._shared_connectors() for bind in connector.binds]
        await asyncio.gather(*(bind.close() for bind in binds), return_exceptions=True)

    async def reload(self) -> bool:
        """Read the configuration file again and apply it (SIGHUP). A file with problems
        is logged and changes nothing. Returns whether the new one was applied; the
        verdict is published for `sms-router reload` (router/daemon/reload.py). One at a
        time: a second waits for the first, then reads the file again."""
        async with self._reloading:
            return await self._reload_once()

    async def _reload_once(self) -> bool:
        began = time.time()
        if self.config_path is None:
            log.warning("reload asked for, but the daemon was not started from a file")
            await self._verdict(began, ["the daemon was not started from a configuration file"])
            return False
        try:
            new = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("reload refused: the configuration has problems; keeping the old one",
                      problems=exc.problems)  # fmt: skip
            await self._verdict(began, exc.problems)
            return False
        assert self._shared is not None
        self.notify_reloading()
        reloader = Reloader(self.settings, new, self.runtimes, self._shared, build_binds)
        # The workers' records ([queue] changes give every profile a new worker).
        self._shared.ledger.recipient_index = new.queue.recipient_index
        try:
            await reloader.apply()
        finally:
            self.metrics.configure(reloader.settings)
            self.metrics.watch(self.workers, self.outages, self._shared.redis)
            self.notify_ready()
        self.settings = reloader.settings
        self._shared.settings = reloader.settings
        if self.smpp_server is not None:
            self.smpp_server.configure(reloader.settings)
        for poster in self.posters:
            poster.signing = _signing(self.settings)
            poster.serve(self.settings.profiles)
        if self._api_context is not None:
            self._api_context.settings = reloader.settings
            # The doors judge jobs by the configuration the new workers run.
            self._api_context.client.configure(reloader.settings)
            self._api_context.workers = self.workers
        if self.api_workers is not None:
            self.api_workers.configure(reloader.settings)
        self.reloads += 1
        await self._verdict(began, [], reloader.changes)
        return True

    def _config_file(self) -> str | None:
        """The configuration file as an absolute path (what a reload reads again)."""
        return None if self.config_path is None else str(Path(self.config_path).absolute())

    async def _verdict(
        self, began: float, problems: list[str], changes: list[str] | None = None
    ) -> None:
        """Publish a reload's verdict where `sms-router reload` waits for it."""
        if self._shared is not None:
            await publish_verdict(
                self._shared.redis,
                self.instance,
                began=began,
                config=self._config_file(),
                problems=problems,
                changes=changes,
            )

    async def _health(self, redis: Redis) -> None:
        """Publish a small health record every few seconds (read by `sms-router health`)
        and renew the instance lease; both wait out Redis outages."""
        pause = Pause(self.outages)
        while not self.stopping.is_set():
            try:
                await self._beat(redis)
            except REDIS_ERRORS as exc:
                await pause.after_error("writing health", exc, self.stopping)
                continue
            pause.reset()
            try:
                await asyncio.wait_for(self.stopping.wait(), HEALTH_EVERY)
            except TimeoutError:
                pass
        try:
            await redis.delete(health_key(self.instance))
        except REDIS_ERRORS:
            pass  # it expires by itself

    async def _spend(self, redis: Redis) -> dict[str, dict[str, float]]:
        """Today's spend of each profile that has any: total and per connector."""
        day = today()
        # Taken once: start-up adds workers while this waits for Redis.
        names = [worker.name for worker in self.workers]
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(keys.spend(name, day))
            rows = await pipe.execute()
        return {
            name: {as_text(k): keys.spend_amount(v) for k, v in row.items()}
            for name, row in zip(names, rows, strict=True)
            if row
        }

    def _bind_rates(self) -> dict[str, float]:
        """Messages handed to each bind per second since the last health record."""
        now = time.monotonic()
        handed = {n: v for c in self.connectors for n, v in c.handed.items()}
        then, before = self._handed_before
        self._handed_before = (now, handed)
        span = now - then
        if span <= 0:
            return {}
        return {n: round(max(0, v - before.get(n, 0)) / span, 1) for n, v in handed.items()}

    async def _beat(self, redis: Redis) -> None:
        if self.lease is not None:
            renewed = await self.lease.renew()
            if renewed == 0:
                holder = await self.lease.holder()
                log.error(
                    "instance lease taken by another daemon while Redis was away; stopping",
                    instance=self.instance,
                    other_host=holder.get("host"),
                    other_pid=holder.get("pid"),
                )
                self.exit_code = 1
                self._stop_all()
                return
            if renewed == 2:
                log.warning("instance lease had lapsed (Redis outage); taken again")
        rates = self._bind_rates()
        body = {
            "instance": self.instance,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self._started,
            "at": time.time(),
            "config": self._config_file(),  # the file `sms-router reload` checks
            **self.outages.health(),
            "profiles": {
                w.name: {"in_flight": w.in_progress, "capacity": w.capacity, "ready": w.ready}
                for w in self.workers
            },
            "backlog": {w.name: await w.backlog() for w in self.workers},
            "spend": await self._spend(redis),
            "smpp_server": self.smpp_server.health() if self.smpp_server is not None else None,
            "api_workers": self.api_workers.health() if self.api_workers is not None else None,
            "binds": {
                b.name: {
                    "state": getattr(b, "state", "ready"),
                    "error": getattr(b, "last_error", None),
                    "ready": b.ready,
                    "window": b.window,
                    "in_flight": b.in_flight,
                    "throttles": getattr(b, "throttles", 0),
                    "rate": rates.get(b.name, 0.0),
                }
                for c in self.connectors
                for b in c.binds
            },
            "connectors": {c.name: {"state": c.state} for c in self.connectors},
        }
        await instances.publish(redis, self.instance, body, int(HEALTH_EVERY * 3))
