"""Prometheus metrics of one daemon (``GET /metrics``, router/api/metrics.py).

The hot path keeps plain integers only: `ProfileMetrics` counts statuses and
retries per batch and keeps the submit latency histogram as a list of bucket
counts (one event loop writes them, so no lock). Everything else is read when
scraped: the binds' state, window and throttles from the bind objects, and from
Redis, in one pipelined round trip (`Metrics.refresh`), the work streams'
length, pending entries and oldest entry, the schedules, the dead letters, the
profiles' stats hashes, the callback streams, today's campaign counters and each
sender number's delivery ratio over its profile's ``health_window``
(router/store/health.py).

Two kinds of numbers: counters of this instance (``sms_router_messages_total``,
``..._submit_latency_seconds``, ``..._retries_total``, ``..._throttles_total``,
``..._redis_errors_total``) add up across instances (``sum``); numbers read from
Redis (queue, schedule, dead letters, stats, callbacks, caps) are the same from
every instance (``max``).

Each daemon has its own `CollectorRegistry` (several daemons may share a process
in tests); the process collector (CPU, memory, file descriptors) is registered
on it too.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from binds.base import Bind
from router.config import Settings
from router.policy.rules import daily_cap
from router.store import keys
from router.store.connections import as_text
from router.store.health import NumberHealth
from router.store.outages import REDIS_ERRORS, RedisOutages
from router.store.queue import QUEUE_READS, no_group, queue_counts, queue_reads

__all__ = ["LATENCY_BUCKETS", "Latency", "Metrics", "ProfileMetrics"]

log = structlog.get_logger("router.metrics")

PREFIX = "sms_router"
# Seconds from handing a message to a bind to its outcome: a fast SMSC answers in
# milliseconds, an HTTP provider in tens to hundreds; a throttled hold lasts minutes.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0
)  # fmt: skip
SMPP_STATES = ("disconnected", "connecting", "binding", "bind_failed", "bound", "closed")
REFRESH_TIMEOUT = 2.0  # seconds a scrape waits for Redis before answering without it
REDIS_WAIT: tuple[type[BaseException], ...] = (*REDIS_ERRORS, TimeoutError)
# Fields of a profile's stats hash (keys.stats) exported as counters of their own
# (sms_router_<field>_total), with their help text.
STATS = {
    "dead_lettered": "Work entries moved to the dead-letter stream.",
    "possible_duplicates": "Messages sent again that the provider may have taken.",
    "duplicates_dropped": "Jobs dropped as duplicates of a job id already recorded.",
    "reports_missing": "Sent messages whose delivery report did not come in time.",
    "replica_ack_short": "Messages recorded final with fewer replica acks than replicas_ack.",
    "clicks": "Clicks on the profile's tracked links (GET /l/<code>, link previews not counted).",
    "link_previews": "Fetches of the profile's tracked links by link previews (not clicks).",
}
REJECTED_PREFIX = "rejected_"


class Latency:
    """A histogram as plain ints: `observe` is a bisect and two additions."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        # bisect_left: the first bound >= seconds, Prometheus' `le` (less or equal).
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs, ending with +Inf."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class ProfileMetrics:
    """The hot path's counters of one profile (this instance's)."""

    __slots__ = ("latency", "name", "retries", "statuses")

    def __init__(self, name: str) -> None:
        self.name = name
        self.statuses: dict[str, int] = {}  # status -> messages recorded in it
        self.retries: dict[str, int] = {}  # Retry code -> outcomes
        self.latency = Latency()

    def count(self, status: str, n: int = 1) -> None:
        """`n` messages were recorded in `status`."""
        if n:
            self.statuses[status] = self.statuses.get(status, 0) + n

    def retry(self, code: str) -> None:
        """A bind answered Retry (the router schedules the message again)."""
        self.retries[code] = self.retries.get(code, 0) + 1


CONNECTOR_STATES = ("up", "down", "open", "half-open")


class ConnectorView(Protocol):
    """What the collector reads of a connector (router/engine/connectors.py)."""

    name: str

    @property
    def state(self) -> str: ...

    def failed_share(self) -> tuple[int, int]: ...


class WorkerView(Protocol):
    """What the collector reads of a profile's worker."""

    name: str

    @property
    def binds(self) -> list[Bind]: ...

    @property
    def in_progress(self) -> int: ...

    @property
    def capacity(self) -> int: ...


@dataclass
class _Queue:
    """One profile's numbers read from Redis."""

    depth: int = 0
    pending: int = 0
    oldest_ms: int | None = None  # the oldest entry's id time (ms), None when empty
    scheduled: int = 0
    dead_letters: int = 0
    inbound: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    spend: dict[str, float] = field(default_factory=dict)  # today's: total, per connector


@dataclass
class _Snapshot:
    """What one scrape read from Redis."""

    at: float
    queues: dict[str, _Queue]
    callbacks: int
    callback_dead_letters: int
    caps_used: dict[str, int]
    # profile -> number -> (delivered, reports) over the profile's health_window
    numbers: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)


class Metrics:
    """One daemon's metrics: its registry, the profiles' counters, the scrape-time reads."""

    def __init__(self, instance: str, settings: Settings) -> None:
        self.instance = instance
        self.registry = CollectorRegistry(auto_describe=False)
        self.profiles: dict[str, ProfileMetrics] = {}
        self.caps: dict[str, int] = {}
        # Per profile: its numbers and their delivery ratios' reader.
        self.numbers: dict[str, tuple[tuple[str, ...], NumberHealth]] = {}
        self.configure(settings)
        self.started = time.time()
        self.workers: Sequence[WorkerView] = ()
        # The daemon's connectors, read at each scrape (their health changes).
        self.connectors: Callable[[], Sequence[ConnectorView]] = tuple
        self.outages = RedisOutages()  # the daemon's, from `watch`
        self.redis: Redis | None = None
        self._snapshot: _Snapshot | None = None
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)

    def configure(self, settings: Settings) -> None:
        """Take the profiles and campaign caps of `settings` (at start and on a reload;
        counters of a profile that went away are kept: they only ever grow)."""
        for name in settings.profiles:
            self.profile(name)
        self.caps = {
            cid: cap
            for cid, campaign in settings.campaigns.items()
            if (cap := daily_cap(campaign)) is not None
        }
        numbers = {}
        for name, profile in settings.profiles.items():
            kept = self.numbers.get(name)
            if kept is None or kept[1].window != profile.health_window:
                kept = ((), NumberHealth(name, profile.health_window))
            numbers[name] = (tuple(profile.numbers), kept[1])
        self.numbers = numbers

    def profile(self, name: str) -> ProfileMetrics:
        """The counters of profile `name` (handed to its worker, pipeline and reports)."""
        return self.profiles.setdefault(name, ProfileMetrics(name))

    def watch(
        self, workers: Sequence[WorkerView], outages: RedisOutages, redis: Redis | None
    ) -> None:
        """What scrapes read: the workers (binds) and Redis."""
        self.workers = workers
        self.outages = outages
        self.redis = redis

    async def refresh(self, timeout: float = REFRESH_TIMEOUT) -> bool:  # noqa: ASYNC109
        """Read the Redis-side numbers (one round trip); False when Redis did not
        answer in time (the scrape then shows ``sms_router_redis_up 0`` without them)."""
        if self.redis is None:
            self._snapshot = None
            return False
        try:
            self._snapshot = await asyncio.wait_for(self._read(self.redis), timeout)
            return True
        except REDIS_WAIT as exc:
            log.info("metrics: redis not read", error=type(exc).__name__)
            self._snapshot = None
            return False

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (after `refresh`) and its content type: the format the
        `accept` header asks for (Prometheus' text format by default, or OpenMetrics)."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

    async def _read(self, redis: Redis) -> _Snapshot:
        names = list(self.profiles)
        day = time.strftime("%Y%m%d", time.gmtime())
        today = keys.utc_day()
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                queue_reads(pipe, name)
                pipe.xlen(keys.inbound(name))
                pipe.hgetall(keys.stats(name))
                pipe.xlen(keys.callbacks(name))
                pipe.xlen(keys.callback_dead_letters(name))
                pipe.hgetall(keys.spend(name, today))
            pipe.hgetall(keys.campaign_counts(day))
            health = list(self.numbers.items())
            reads = [reader.commands(pipe) for _, (_, reader) in health]
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            # A missing consumer group (nothing read yet) answers XPENDING with an error.
            if isinstance(reply, Exception) and not no_group(reply):
                raise reply
        queues: dict[str, _Queue] = {}
        callbacks = callback_dead = 0
        each = QUEUE_READS + 5  # the queue's reads, inbound, stats, callbacks, spend
        for i, name in enumerate(names):
            row = replies[i * each : i * each + each]
            queue = queue_counts(row[:QUEUE_READS])
            inbound, stats, posts, given_up, spend = row[QUEUE_READS:]
            callbacks += int(posts)
            callback_dead += int(given_up)
            queues[name] = _Queue(
                depth=queue.depth,
                pending=queue.pending,
                oldest_ms=queue.oldest_ms,
                scheduled=queue.scheduled,
                dead_letters=queue.dead_letters,
                inbound=int(inbound),
                stats={as_text(k): int(v) for k, v in stats.items()},
                spend={as_text(k): keys.spend_amount(v) for k, v in spend.items()},
            )
        at = len(replies) - sum(reads)  # the numbers' health replies come last
        caps = replies[at - 1]
        numbers: dict[str, dict[str, tuple[int, int]]] = {}
        for (name, (owned, reader)), count in zip(health, reads, strict=True):
            reader.take(replies[at : at + count])
            at += count
            numbers[name] = {n: reader.sample(n) for n in owned}
        return _Snapshot(
            at=time.time(),
            queues=queues,
            callbacks=callbacks,
            callback_dead_letters=callback_dead,
            caps_used={as_text(k): int(v) for k, v in caps.items()},
            numbers=numbers,
        )


def _bind_state(bind: Bind) -> str:
    """An SMPP session's state; an HTTP sender is ``ready`` (it has no session)."""
    state = getattr(bind, "state", None)
    if isinstance(state, str):
        return state
    return "ready" if bind.ready else "not_ready"


class _Collector(Collector):
    """Builds every family at scrape time from `Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield from self._instance(m)
        yield from self._hot_path(m)
        yield from self._binds(m.workers)
        yield from self._connectors(m.connectors())
        yield from self._redis(m)

    def _instance(self, m: Metrics) -> Iterator[Metric]:
        info = GaugeMetricFamily(f"{PREFIX}_info", "This router instance.", labels=["instance"])
        info.add_metric([m.instance], 1)
        yield info
        yield GaugeMetricFamily(
            f"{PREFIX}_start_time_seconds", "When the daemon started (Unix time).", m.started
        )

    def _hot_path(self, m: Metrics) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            f"{PREFIX}_messages",
            "Messages this instance recorded in a status (sent, failed, delivered, "
            "undelivered, rejected, expired, scheduled).",
            labels=["profile", "status"],
        )
        retries = CounterMetricFamily(
            f"{PREFIX}_retries",
            "Retry outcomes of binds handled by this instance, by code.",
            labels=["profile", "code"],
        )
        latency = HistogramMetricFamily(
            f"{PREFIX}_submit_latency_seconds",
            "Time from handing a message to a bind to its outcome (this instance).",
            labels=["profile"],
        )
        for name, pm in m.profiles.items():
            for status, count in list(pm.statuses.items()):
                messages.add_metric([name, status], count)
            for code, count in list(pm.retries.items()):
                retries.add_metric([name, code], count)
            lat = pm.latency
            latency.add_metric([name], lat.buckets(), lat.sum)
        yield messages
        yield retries
        yield latency

    def _binds(self, workers: Sequence[WorkerView]) -> Iterator[Metric]:
        binds = GaugeMetricFamily(f"{PREFIX}_binds", "Binds by state.", labels=["profile", "state"])
        ready = GaugeMetricFamily(
            f"{PREFIX}_binds_ready", "Binds that can send now.", labels=["profile"]
        )
        in_use = GaugeMetricFamily(
            f"{PREFIX}_window_in_use", "Messages in flight on a bind.", labels=["profile", "bind"]
        )
        size = GaugeMetricFamily(
            f"{PREFIX}_window_size", "A bind's window.", labels=["profile", "bind"]
        )
        throttles = CounterMetricFamily(
            f"{PREFIX}_throttles",
            "Submits the provider throttled (SMPP throttled / queue full, HTTP 429).",
            labels=["profile", "bind"],
        )
        held = GaugeMetricFamily(
            f"{PREFIX}_worker_in_progress",
            "Work entries a worker holds (reading, sending, recording).",
            labels=["profile"],
        )
        capacity = GaugeMetricFamily(
            f"{PREFIX}_worker_capacity", "Work entries a worker may hold.", labels=["profile"]
        )
        for worker in workers:
            states: dict[str, int] = {}
            if any(hasattr(b, "state") for b in worker.binds):
                states = dict.fromkeys(SMPP_STATES, 0)
            for bind in worker.binds:
                state = _bind_state(bind)
                states[state] = states.get(state, 0) + 1
                in_use.add_metric([worker.name, bind.name], bind.in_flight)
                size.add_metric([worker.name, bind.name], bind.window)
                throttles.add_metric([worker.name, bind.name], getattr(bind, "throttles", 0))
            for state, count in states.items():
                binds.add_metric([worker.name, state], count)
            ready.add_metric([worker.name], sum(1 for b in worker.binds if b.ready))
            held.add_metric([worker.name], worker.in_progress)
            capacity.add_metric([worker.name], worker.capacity)
        yield from (binds, ready, in_use, size, throttles, held, capacity)

    def _connectors(self, connectors: Sequence[ConnectorView]) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            f"{PREFIX}_connector_state",
            "1 for a connector's current state (up, down: no bound session, open or "
            "half-open: its circuit breaker), 0 for the others.",
            labels=["connector", "state"],
        )
        failed = GaugeMetricFamily(
            f"{PREFIX}_connector_failed_ratio",
            "Share of the submits in the breaker's window that failed at the route level.",
            labels=["connector"],
        )
        for connector in connectors:
            now = connector.state
            for name in CONNECTOR_STATES:
                state.add_metric([connector.name, name], 1 if name == now else 0)
            bad, total = connector.failed_share()
            failed.add_metric([connector.name], bad / total if total else 0.0)
        yield state
        yield failed

    def _redis(self, m: Metrics) -> Iterator[Metric]:
        snap = m._snapshot
        yield GaugeMetricFamily(
            f"{PREFIX}_redis_up", "Whether Redis answered this scrape.", 0 if snap is None else 1
        )
        yield CounterMetricFamily(
            f"{PREFIX}_redis_errors",
            "Redis errors this instance's loops met (each waited out).",
            m.outages.errors,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_redis_outages", "Redis outages since start.", m.outages.count
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_redis_down",
            "1 while this instance sees Redis unreachable.",
            0 if m.outages.down_since is None else 1,
        )
        if snap is None:
            return
        yield from _queues(snap)
        yield from _stats(snap)
        yield GaugeMetricFamily(
            f"{PREFIX}_callbacks_pending",
            "Status callbacks waiting to be posted (sms:{P}:callbacks).",
            snap.callbacks,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_callbacks_dead_letters",
            "Status callbacks given up on (sms:{P}:callbacks:dlq).",
            snap.callback_dead_letters,
        )
        used = GaugeMetricFamily(
            f"{PREFIX}_campaign_daily_used",
            "Messages counted today (UTC) against a campaign's daily cap.",
            labels=["campaign"],
        )
        cap = GaugeMetricFamily(
            f"{PREFIX}_campaign_daily_cap", "A campaign's daily cap.", labels=["campaign"]
        )
        for campaign, limit in m.caps.items():
            used.add_metric([campaign], snap.caps_used.get(campaign, 0))
            cap.add_metric([campaign], limit)
        yield from _numbers(snap)
        yield used
        yield cap


def _queues(snap: _Snapshot) -> Iterator[Metric]:
    gauges = {
        "queue_depth": "Entries on the work stream (unread, or read and not finished).",
        "queue_pending": "Entries read by a worker and not finished yet.",
        "queue_oldest_age_seconds": "Age of the oldest entry on the work stream.",
        "scheduled": "Jobs in the schedule (send-at, retries, deferred past a cap).",
        "dead_letters": "Entries in the dead-letter stream.",
        "inbound_pending": "Inbound messages waiting to be posted to callback_url.",
    }
    families = {
        name: GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=["profile"])
        for name, text in gauges.items()
    }
    for profile, q in snap.queues.items():
        families["queue_depth"].add_metric([profile], q.depth)
        families["queue_pending"].add_metric([profile], q.pending)
        age = 0.0 if q.oldest_ms is None else max(0.0, snap.at - q.oldest_ms / 1000)
        families["queue_oldest_age_seconds"].add_metric([profile], age)
        families["scheduled"].add_metric([profile], q.scheduled)
        families["dead_letters"].add_metric([profile], q.dead_letters)
        families["inbound_pending"].add_metric([profile], q.inbound)
    yield from families.values()
    spend = GaugeMetricFamily(
        f"{PREFIX}_spend_today",
        "What the profile's sent messages cost today (UTC, all instances), by connector "
        "('total' for all of them).",
        labels=["profile", "connector"],
    )
    for profile, q in snap.queues.items():
        for connector, amount in sorted(q.spend.items()):
            spend.add_metric([profile, connector], amount)
    yield spend


def _stats(snap: _Snapshot) -> Iterator[Metric]:
    """The profiles' stats hashes (every instance's counts, kept in Redis)."""
    families = {
        field_: CounterMetricFamily(f"{PREFIX}_{field_}", text, labels=["profile"])
        for field_, text in STATS.items()
    }
    rejections = CounterMetricFamily(
        f"{PREFIX}_rule_rejections",
        "Jobs the profile's rules refused, by code (all instances).",
        labels=["profile", "code"],
    )
    for profile, q in snap.queues.items():
        for field_, family in families.items():
            family.add_metric([profile], q.stats.get(field_, 0))
        for field_, count in q.stats.items():
            if field_.startswith(REJECTED_PREFIX):
                rejections.add_metric([profile, field_[len(REJECTED_PREFIX) :]], count)
    yield from families.values()
    yield rejections


def _numbers(snap: _Snapshot) -> Iterator[Metric]:
    """Each sender number's delivery ratio over its profile's health_window (every
    instance's reports, kept in Redis); a number without reports has no ratio."""
    ratio = GaugeMetricFamily(
        f"{PREFIX}_number_delivery_ratio",
        "Delivered share of a sender number's final delivery reports over the "
        "profile's health_window.",
        labels=["profile", "number"],
    )
    reports = GaugeMetricFamily(
        f"{PREFIX}_number_delivery_reports",
        "Final delivery reports of a sender number over the profile's health_window.",
        labels=["profile", "number"],
    )
    for profile, numbers in snap.numbers.items():
        for number, (delivered, total) in numbers.items():
            reports.add_metric([profile, number], total)
            if total:
                ratio.add_metric([profile, number], delivered / total)
    yield ratio
    yield reports
