"""The per-profile work queue on Redis Streams.

Jobs arrive on ``sms:{P}:q`` and are read through consumer group ``router``.
An entry leaves the stream only once its outcome is recorded: acknowledged and
deleted, moved to the schedule (``sms:{P}:sched``) for a later attempt, or
moved to the dead-letter stream (``sms:{P}:dlq``). Each of those moves is one
Lua script, so a crash between its steps cannot lose or double the entry.
Acknowledged entries are deleted, never trimmed: the stream only ever holds
work that is waiting or in progress.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from router.store import keys, scripts
from router.store.connections import as_text

# Each move is one script (lua/<name>.lua), so a crash between its steps cannot lose
# or double the entry.
_ACK = scripts.source("ack")
_DEFER = scripts.source("defer")
_DEAD_LETTER = scripts.source("dead_letter")
_PROMOTE = scripts.source("promote")
_REPLAY = scripts.source("replay")


@dataclass(slots=True)
class Entry:
    """One stream entry as read from the work queue."""

    entry_id: str
    fields: dict[str, bytes]
    deliveries: int = 1

    @property
    def raw_job(self) -> bytes | None:
        return self.fields.get("job")

    @property
    def owner(self) -> str:
        """The entry that first carried this job; records belong to it."""
        origin = self.fields.get("origin")
        # Any producer can write this field: bytes that are not UTF-8 must not raise
        # here (that stopped the daemon), they only need to name the same owner each time.
        return origin.decode(errors="backslashreplace") if origin else self.entry_id

    @property
    def attempt(self) -> int:
        """Attempts already made before this delivery (0 for a fresh job)."""
        try:
            return int(self.fields.get("attempt", b"0"))
        except ValueError:
            return 0

    @property
    def replay(self) -> bool:
        return self.fields.get("replay") == b"1"


@dataclass(slots=True)
class DeadLetter:
    """One entry of a dead-letter stream."""

    entry_id: str
    reason: str
    fields: dict[str, bytes] = field(default_factory=dict)


class WorkQueue:
    """The work stream of one profile, seen by one consumer."""

    def __init__(self, redis: Redis, profile: str, consumer: str) -> None:
        self.profile = profile
        self.consumer = consumer
        self.key = keys.queue(profile)
        self._redis = redis
        self._ack = redis.register_script(_ACK)
        self._defer = redis.register_script(_DEFER)
        self._dead = redis.register_script(_DEAD_LETTER)
        self._promote = redis.register_script(_PROMOTE)

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if they do not exist yet."""
        try:
            await self._redis.xgroup_create(self.key, keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_own_pending(self, count: int, after: str = "0") -> list[Entry]:
        """Entries delivered to this consumer before and never acknowledged."""
        entries = await self._read(after, count, block=None)
        await self._count_deliveries(entries)
        return entries

    async def read_new(self, count: int, block_ms: int) -> list[Entry]:
        """Entries no consumer has seen yet (blocks up to `block_ms`)."""
        try:
            return await self._read(">", count, block=block_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()  # the stream was deleted under us
            return []

    async def autoclaim(self, min_idle: float, count: int) -> list[Entry]:
        """Take over entries idle longer than `min_idle` s (a crashed consumer's work)."""
        result = await self._redis.xautoclaim(
            self.key, keys.GROUP, self.consumer, int(min_idle * 1000), "0-0", count=count
        )
        entries = [_entry(eid, f) for eid, f in result[1] if f is not None]
        await self._count_deliveries(entries)
        return entries

    async def heartbeat(self, entry_ids: Iterable[str]) -> None:
        """Reset the idle time of entries still in progress so nobody claims them."""
        ids: list[Any] = list(entry_ids)
        if ids:
            await self._redis.xclaim(self.key, keys.GROUP, self.consumer, 0, ids, justid=True)

    async def ack(self, *entry_ids: str) -> None:
        """Acknowledge and delete finished entries."""
        if entry_ids:
            await self._ack(keys=[self.key], args=[keys.GROUP, *entry_ids])

    async def defer(self, entry: Entry, job: bytes, owner: str, attempt: int, due: float) -> None:
        """Move an entry to the schedule, to come back at `due` (unix seconds)."""
        member = owner.encode() + b"|" + str(attempt).encode() + b"|" + job
        await self._defer(
            keys=[self.key, keys.schedule(self.profile)],
            args=[keys.GROUP, entry.entry_id, f"{due:.3f}", member],
        )

    async def dead_letter(self, entry: Entry, reason: str) -> None:
        """Move an entry to the dead-letter stream with `reason`."""
        body: list[str | bytes] = ["reason", reason, "entry", entry.entry_id, "origin", entry.owner]
        body += ["consumer", self.consumer, "at", f"{time.time():.3f}"]
        if entry.raw_job is not None:
            body += ["job", entry.raw_job]
        await self._dead(
            keys=[self.key, keys.dead_letters(self.profile), keys.stats(self.profile)],
            args=[keys.GROUP, entry.entry_id, *body],
        )

    async def promote_due(self, limit: int = 500) -> int:
        """Move schedule members that are due onto the stream; returns how many."""
        moved = await self._promote(
            keys=[keys.schedule(self.profile), self.key], args=[f"{time.time():.3f}", limit]
        )
        return int(moved)

    async def _read(self, start: str, count: int, block: int | None) -> list[Entry]:
        reply: Any = await self._redis.xreadgroup(
            keys.GROUP, self.consumer, {self.key: start}, count=count, block=block
        )
        entries: list[Entry] = []
        for _stream, rows in reply or []:
            for eid, fields in rows:
                if fields:
                    entries.append(_entry(eid, fields))
                elif eid is not None:
                    # Deleted while pending (someone XDEL'd it): nothing to do but ack.
                    await self.ack(as_text(eid))
        return entries

    async def _count_deliveries(self, entries: list[Entry]) -> None:
        if not entries:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.xpending_range(self.key, keys.GROUP, entry.entry_id, entry.entry_id, 1)
            replies = await pipe.execute()
        for entry, rows in zip(entries, replies, strict=True):
            if rows:
                entry.deliveries = int(rows[0]["times_delivered"])


async def list_dead_letters(
    redis: Redis, profile: str, count: int = 100, after: str | None = None
) -> list[DeadLetter]:
    """The oldest `count` dead letters of a profile (after entry `after`, when given:
    the next page)."""
    low = "-" if after is None else f"({after}"
    rows: Any = await redis.xrange(keys.dead_letters(profile), min=low, count=count)
    out = []
    for eid, raw in rows:
        fields = {as_text(k): v for k, v in raw.items()}
        out.append(DeadLetter(as_text(eid), as_text(fields.get("reason", b"")), fields))
    return out


async def replay_dead_letters(redis: Redis, profile: str, entry_ids: list[str]) -> int:
    """Put dead letters back on the work stream; returns how many moved."""
    script = redis.register_script(_REPLAY)
    moved = 0
    for eid in entry_ids:
        result = await script(keys=[keys.dead_letters(profile), keys.queue(profile)], args=[eid])
        moved += 1 if int(result) == 1 else 0
    return moved


async def drop_dead_letters(redis: Redis, profile: str, entry_ids: list[str]) -> int:
    """Delete dead letters for good; returns how many were deleted."""
    if not entry_ids:
        return 0
    return int(await redis.xdel(keys.dead_letters(profile), *entry_ids))


QUEUE_READS: Final = 5  # the commands `queue_reads` queues


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """A profile's queue as one round trip read it (`queue_reads`, `queue_counts`)."""

    depth: int  # entries on the stream
    pending: int  # of which read and not finished
    oldest_ms: int | None  # the oldest entry's id time (ms), None when empty
    scheduled: int  # in the schedule (send-at and retries)
    dead_letters: int


def queue_reads(pipe: Pipeline, profile: str) -> int:
    """Queue on `pipe` (the caller's round trip) the reads of `profile`'s queue that
    `queue_counts` turns into counts: XLEN, XPENDING, the first entry, the schedule's
    ZCARD, the dead letters' XLEN. Returns how many (`QUEUE_READS`)."""
    stream = keys.queue(profile)
    pipe.xlen(stream)
    pipe.xpending(stream, keys.GROUP)
    pipe.xrange(stream, "-", "+", count=1)
    pipe.zcard(keys.schedule(profile))
    pipe.xlen(keys.dead_letters(profile))
    return QUEUE_READS


def queue_counts(replies: Sequence[Any]) -> QueueCounts:
    """The counts from the `QUEUE_READS` replies of `queue_reads` (a pipeline run with
    ``raise_on_error=False``: XPENDING's NOGROUP error, no group made yet, counts as
    none pending; check the others with `no_group` first)."""
    depth, pending, first, scheduled, dead = replies
    oldest = None
    if isinstance(first, list) and first:
        oldest = int(as_text(first[0][0]).split("-", 1)[0])
    return QueueCounts(
        depth=int(depth),
        pending=int(pending["pending"]) if isinstance(pending, dict) else 0,
        oldest_ms=oldest,
        scheduled=int(scheduled),
        dead_letters=int(dead),
    )


def no_group(reply: object) -> bool:
    """Whether a pipeline reply is the error of a consumer group not made yet (a
    profile nothing has read from answers XPENDING so)."""
    return isinstance(reply, ResponseError) and "NOGROUP" in str(reply)


def _entry(eid: Any, fields: dict[Any, Any]) -> Entry:
    return Entry(as_text(eid), {as_text(k): v for k, v in fields.items()})
