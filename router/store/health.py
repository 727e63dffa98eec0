"""Delivery outcomes over a sliding window, shared by every router instance.

Each delivery report that makes a message final (delivered, undelivered, failed) is
counted twice, by `OutcomeCounter`, in one pipelined round trip per batch of reports:

- per connector and destination country, for routes with the ``quality`` strategy:
  ``sms:quality:<connector>:<size>:<bucket>``, fields ``<country>:d`` (delivered) and
  ``<country>:u`` (not delivered), the country as `router.numbers.country_of` names it
  (``44``, ``US``);
- per sender number of the profile, for number health:
  ``sms:{P}:numhealth:<size>:<bucket>``, fields ``<number>:d`` and ``<number>:u``.

Time is cut in buckets of `size` seconds (``bucket = floor(unix time / size)``), each
bucket a hash that expires by itself. Every outcome goes into a minute bucket (kept
`FINE_UP_TO` seconds and a little more) and an hour bucket (kept `MAX_WINDOW` and a
little more): a window up to `FINE_UP_TO` is read from minute buckets, a longer one
from hour buckets, so a reader never reads more than a few hundred hashes. A window
covers the buckets from ``now - window`` to now (the oldest one partly).

Reading is periodic, never per message: `QualityBoard` (one per daemon, its `run`
task refreshing every `REFRESH_EVERY` seconds) and `NumberHealth` (one per profile,
read in a round trip the sender pick makes anyway). A bucket that can no longer change
(ended more than `SETTLE` seconds ago) is kept in memory once read, so a refresh reads
the current bucket and the ones just closed, not the whole window again.

Each key is written and read by single-key commands (pipelined), so they run on Redis
Cluster: a quality bucket stands alone, a number-health bucket carries its profile's
hash tag.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, NamedTuple

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from router.numbers import country_of
from router.store.connections import as_text
from router.store.outages import REDIS_ERRORS

__all__ = [
    "FINE_UP_TO",
    "MAX_WINDOW",
    "NumberHealth",
    "Outcome",
    "OutcomeCounter",
    "QualityBoard",
    "bucket_size",
    "number_health_key",
    "quality_key",
]

log = structlog.get_logger("router.health")

MINUTE: Final = 60
HOUR: Final = 3600
FINE_UP_TO: Final = 6 * HOUR  # windows up to this are read from minute buckets
MAX_WINDOW: Final = 30 * 86_400  # the longest window a route or profile may ask for
# (bucket size, seconds a bucket lives): every outcome is counted in both.
GRAINS: Final = ((MINUTE, FINE_UP_TO + 2 * MINUTE), (HOUR, MAX_WINDOW + 2 * HOUR))
# Seconds after its end before a bucket is taken as closed: instances' clocks differ a
# little, and a count may be on its way.
SETTLE: Final = 10.0
REFRESH_EVERY: Final = 5.0

DELIVERED: Final = "d"
NOT_DELIVERED: Final = "u"
_MARKS: Final = {"delivered": DELIVERED, "undelivered": NOT_DELIVERED, "failed": NOT_DELIVERED}


def quality_key(connector: str, size: int, bucket: int) -> str:
    """Hash of one time bucket of `connector`'s outcomes, by destination country."""
    return f"sms:quality:{connector}:{size}:{bucket}"


def number_health_key(profile: str, size: int, bucket: int) -> str:
    """Hash of one time bucket of `profile`'s outcomes, by sender number."""
    return f"sms:{{{profile}}}:numhealth:{size}:{bucket}"


def bucket_size(window: float) -> int:
    """The buckets a window of `window` seconds is read from."""
    return MINUTE if window <= FINE_UP_TO else HOUR


class Outcome(NamedTuple):
    """A message made final by a delivery report: its status and what it is counted by."""

    status: str  # delivered | undelivered | failed
    to: str
    sender: str  # the record's `from`
    connector: str  # the connector of its latest attempt ('' = none recorded)


class OutcomeCounter:
    """Counts final outcomes into the time buckets (writes only)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def count(self, profile: str, outcomes: Sequence[Outcome]) -> None:
        """Count a batch in one pipelined round trip (nothing when none counts)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            if self.commands(pipe, profile, outcomes, time.time()):
                await pipe.execute()

    @staticmethod
    def commands(pipe: Pipeline, profile: str, outcomes: Iterable[Outcome], now: float) -> int:
        """Queue the increments of a batch on `pipe` (one per bucket and field, each
        bucket's expiry after them); returns how many commands."""
        # A batch has few distinct (connector, country, sender, mark): they are counted
        # first, then named once each in every bucket (not once per outcome).
        groups: Counter[tuple[str, str, str, str]] = Counter()
        for status, to, sender, connector in outcomes:
            mark = _MARKS.get(status)
            if mark is not None:
                country = country_of(to) if to.startswith("+") else ""
                groups[(connector if country else "", country, sender, mark)] += 1
        by_key: dict[str, Counter[str]] = {}
        ttls: dict[str, int] = {}
        for size, ttl in GRAINS:
            bucket = int(now // size)
            for (connector, country, sender, mark), n in groups.items():
                if connector:
                    key = quality_key(connector, size, bucket)
                    by_key.setdefault(key, Counter())[f"{country}:{mark}"] += n
                    ttls[key] = ttl
                if sender:
                    key = number_health_key(profile, size, bucket)
                    by_key.setdefault(key, Counter())[f"{sender}:{mark}"] += n
                    ttls[key] = ttl
        commands = 0
        for key, fields in by_key.items():
            for name, n in fields.items():
                pipe.hincrby(key, name, n)
            pipe.expire(key, ttls[key])
            commands += len(fields) + 1
        return commands


class _Window:
    """The buckets of one series (a connector's, a profile's) over one window: which
    to read now, and their sum. Closed buckets are read once and kept."""

    def __init__(self, key: Callable[[int, int], str], window: float) -> None:
        self.key = key
        self.window = window
        self.size = bucket_size(window)
        self._closed: dict[int, dict[str, int]] = {}  # bucket -> its fields
        self._reading: list[int] = []
        self._pending = False  # a plan whose replies `take` has not had yet
        self._at = 0.0
        self.totals: dict[str, int] = {}

    def plan(self, now: float) -> list[str]:
        """The keys to read for a refresh at `now`, in the order `take` wants their
        replies."""
        size = self.size
        first, last = int((now - self.window) // size), int(now // size)
        for bucket in [b for b in self._closed if b < first]:
            del self._closed[bucket]  # slid out of the window
        self._reading = [b for b in range(first, last + 1) if b not in self._closed]
        self._at = now
        self._pending = True
        return [self.key(size, b) for b in self._reading]

    def take(self, replies: Sequence[Any]) -> None:
        """The HGETALL replies of the last `plan`, in its order; sets `totals`."""
        if not self._pending or len(replies) != len(self._reading):
            return  # not the replies of the last plan: the totals stay as they were
        self._pending = False
        still_open: list[dict[str, int]] = []
        for bucket, reply in zip(self._reading, replies, strict=True):
            fields = {as_text(k): int(v) for k, v in (reply or {}).items()}
            if (bucket + 1) * self.size + SETTLE <= self._at:
                self._closed[bucket] = fields  # it can no longer change: read once
            else:
                still_open.append(fields)
        totals: Counter[str] = Counter()
        for fields in (*self._closed.values(), *still_open):
            totals.update(fields)
        self.totals = dict(totals)


def _split(totals: dict[str, int]) -> dict[str, tuple[int, int]]:
    """``{"44:d": 9, "44:u": 1}`` -> ``{"44": (9, 10)}``: delivered and all, per name."""
    found: dict[str, list[int]] = {}
    for name, n in totals.items():
        what, _, mark = name.rpartition(":")
        row = found.setdefault(what, [0, 0])
        if mark == DELIVERED:
            row[0] += n
        row[1] += n
    return {what: (row[0], row[1]) for what, row in found.items()}


class QualityBoard:
    """Delivery ratios per connector and destination country, for ``quality`` routes;
    one per daemon, shared by every profile's routing.

    `sample` answers from memory; a (connector, window) asked for the first time is read
    from the next refresh on (`run` wakes for it at once). `generation` changes with
    every refresh, so a caller can keep what it derived from the ratios until then."""

    def __init__(self, redis: Redis, *, every: float = REFRESH_EVERY) -> None:
        self._redis = redis
        self.every = every
        self._windows: dict[tuple[str, float], _Window] = {}
        self._samples: dict[tuple[str, float], dict[str, tuple[int, int]]] = {}
        self.generation = 0
        self._wake = asyncio.Event()
        self._failing = False

    def sample(self, connector: str, window: float, country: str) -> tuple[int, int]:
        """(delivered, reports) of `connector` to `country` over the last `window`
        seconds, as last read; (0, 0) before the first read."""
        key = (connector, window)
        found = self._samples.get(key)
        if found is None:
            if key not in self._windows:
                self._windows[key] = _Window(
                    lambda size, bucket: quality_key(connector, size, bucket), window
                )
                self._wake.set()
            return (0, 0)
        return found.get(country, (0, 0))

    def want(self, connector: str, window: float) -> None:
        """Read `connector` over `window` from the next refresh on."""
        self.sample(connector, window, "")

    async def refresh(self, now: float | None = None) -> None:
        """Read every wanted window in one pipelined round trip."""
        at = time.time() if now is None else now
        windows = list(self._windows.items())
        if not windows:
            return
        plans = [w.plan(at) for _, w in windows]
        async with self._redis.pipeline(transaction=False) as pipe:
            for plan in plans:
                for key in plan:
                    pipe.hgetall(key)
            replies = await pipe.execute() if any(plans) else []
        start = 0
        for (series, window), plan in zip(windows, plans, strict=True):
            window.take(replies[start : start + len(plan)])
            start += len(plan)
            self._samples[series] = _split(window.totals)
        self.generation += 1

    async def run(self, stopping: asyncio.Event) -> None:
        """Refresh every `every` seconds (and when a new window is wanted) until
        `stopping`; a Redis error keeps the last ratios and is tried again later."""
        while not stopping.is_set():
            self._wake.clear()
            try:
                await self.refresh()
                if self._failing:
                    log.info("quality ratios read again")
                self._failing = False
            except REDIS_ERRORS as exc:
                if not self._failing:
                    log.warning("quality ratios not read; keeping the last", error=repr(exc))
                self._failing = True
            waits = [asyncio.create_task(stopping.wait()), asyncio.create_task(self._wake.wait())]
            try:
                await asyncio.wait(waits, timeout=self.every, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
                await asyncio.gather(*waits, return_exceptions=True)


class NumberHealth:
    """Delivery ratio of each sender number of one profile over `window` seconds.

    Read at most every `every` seconds: `commands` adds the reads to a round trip the
    caller makes anyway (the sender pick's) when they are due, `take` reads their
    replies; `refresh` is the same in a round trip of its own (the CLI, /metrics)."""

    def __init__(self, profile: str, window: float, *, every: float = REFRESH_EVERY) -> None:
        self.profile = profile
        self.window = window
        self.every = every
        self._series = _Window(
            lambda size, bucket: number_health_key(profile, size, bucket), window
        )
        self._next = 0.0  # monotonic time of the next read
        self.samples: dict[str, tuple[int, int]] = {}  # number -> (delivered, reports)

    def due(self) -> bool:
        """Whether a read is due."""
        return time.monotonic() >= self._next

    def commands(self, pipe: Pipeline, now: float | None = None) -> int:
        """Queue a read of the window on `pipe` (HGETALLs); returns how many replies
        `take` wants."""
        self._next = time.monotonic() + self.every
        plan = self._series.plan(time.time() if now is None else now)
        for key in plan:
            pipe.hgetall(key)
        return len(plan)

    def take(self, replies: Sequence[Any]) -> None:
        """The replies of the last `commands`, in order."""
        self._series.take(replies)
        self.samples = _split(self._series.totals)

    async def refresh(self, redis: Redis, now: float | None = None) -> None:
        """Read the window now, in a round trip of its own."""
        async with redis.pipeline(transaction=False) as pipe:
            count = self.commands(pipe, now)
            replies = await pipe.execute() if count else []
        self.take(replies)

    def sample(self, number: str) -> tuple[int, int]:
        """(delivered, reports) of `number` over the window, as last read."""
        return self.samples.get(number, (0, 0))

    def unhealthy(self, threshold: float, min_sample: int) -> frozenset[str]:
        """The numbers with at least `min_sample` reports whose delivered share is below
        `threshold`."""
        return frozenset(
            number
            for number, (delivered, reports) in self.samples.items()
            if reports >= min_sample and delivered < threshold * reports
        )
