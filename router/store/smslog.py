"""The SMS log: message records that changed status recently, newest first.

The log is read from the profiles' event streams (``sms:{P}:events``), merged newest
event first. A record
is listed at its *latest* event only (the event whose status and time are the
record's own), so a record appears once however many events it has, and a page that
ends at an event can be continued below it without repeating or skipping anything.
A message that changes status while someone pages moves to the top of the log (newer
than the first page) instead of appearing twice. `sms-router log` and
``GET /v1/messages`` both read it through `message_log`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from router.store import keys
from router.store.connections import as_text
from router.store.ledger import Ledger

__all__ = ["LogPage", "message_log", "parse_position", "parse_since", "position_above"]

_CHUNK = 1000  # events read per round trip
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_SCALE = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class LogPage:
    """Records of one page, newest first, and where the next page starts (a position
    ``<profile>=<event id>,...``: each profile's stream continues below its event), or
    None when the log has no more."""

    records: list[dict[str, Any]]
    next: str | None


def parse_since(text: str, now: float | None = None) -> float:
    """Unix seconds for `text`: a duration back from `now` (``90s``, ``15m``, ``2h``,
    ``1d``, a bare number is seconds) or an ISO 8601 time with a time zone.
    Raises ValueError naming the problem."""
    match = _DURATION.fullmatch(text)
    if match:
        now = time.time() if now is None else now
        return now - float(match.group(1)) * _SCALE[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (e.g. 15m, 2h, 1d) nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z or +00:00)")
    try:
        return moment.timestamp()
    except (OverflowError, ValueError, OSError):
        raise ValueError(f"{text!r} is out of range") from None


async def message_log(
    redis: Redis,
    ledger: Ledger,
    *,
    profiles: Sequence[str],
    since: float,
    limit: int,
    profile: str | None = None,
    status: str | None = None,
    to: str | None = None,
    before: str = "+",
    scan: int | None = None,
    match: Callable[[dict[str, Any]], bool] | None = None,
    account: str | None = None,
) -> LogPage:
    """Up to `limit` records whose latest change is at or after `since` (unix
    seconds) and below position `before` (exclusive; ``+`` for the top), matching the
    filters (`to` is compared as given: pass it in E.164; `account`: only the messages
    that account submitted; `match` is any further test of a record). The events of
    `profiles` (only `profile`'s when given) are merged newest change first.

    `scan` bounds the events read (so a narrow filter cannot make one call read the
    whole stream): a page may then hold fewer than `limit` records and still have a
    `next`. Raises ValueError for a `before` that is no position.
    """
    start = f"{max(0, int(since * 1000))}-0"
    found: list[dict[str, Any]] = []
    scanned = 0
    after = parse_position(before)
    names = [profile] if profile is not None else list(profiles)
    streams = [_Stream(name, after.get(name)) for name in names]
    while True:
        count = _CHUNK if scan is None else max(1, min(_CHUNK, scan - scanned))
        events = await _merged(redis, streams, start, count)
        scanned += len(events)
        pairs = list(dict.fromkeys((e.profile, e.job_id) for e in events))
        records = dict(zip(pairs, await ledger.get_many(pairs), strict=True)) if pairs else {}
        for n, event in enumerate(events):
            record = records.get((event.profile, event.job_id))
            if record is None or not _listed(record, event, status, to, match, account):
                continue
            found.append(record)
            if len(found) == limit:
                return LogPage(found, _position(streams, events[: n + 1]))
        if len(events) < count:
            return LogPage(found, None)  # reached `since` or the streams' start
        if scan is not None and scanned >= scan:
            return LogPage(found, _position(streams, events))


async def position_above(
    redis: Redis,
    ledger: Ledger,
    *,
    after: str,
    since: float,
    limit: int,
    status: str | None = None,
    to: str | None = None,
    match: Callable[[dict[str, Any]], bool] | None = None,
    scan: int | None = None,
    account: str | None = None,
) -> str:
    """Where the page before the one that starts at position `after` starts (paging
    back): the position below which lie the `limit` listed records nearest above
    `after` (each stream's event at `after` counts as above: the page that ended there
    took it). ``+`` when fewer than `limit` are listed above `after` (the page before
    is the first). Filters and `scan` as for `message_log`; a profile `after` does not
    name has nothing above it. Raises ValueError for an `after` that is no position.
    """
    lowest = f"{max(0, int(since * 1000))}-0"
    streams = [_Rising(name, at, lowest) for name, at in sorted(parse_position(after).items())]
    found = scanned = 0
    while True:
        count = _CHUNK if scan is None else max(1, min(_CHUNK, scan - scanned))
        events = await _rising(redis, streams, count)
        scanned += len(events)
        pairs = list(dict.fromkeys((e.profile, e.job_id) for e in events))
        records = dict(zip(pairs, await ledger.get_many(pairs), strict=True)) if pairs else {}
        for n, event in enumerate(events):
            record = records.get((event.profile, event.job_id))
            if record is not None and _listed(record, event, status, to, match, account):
                found += 1
                if found == limit:
                    return await _bound_above(redis, streams, events[n + 1 :])
        if len(events) < count:
            return "+"  # reached the top of every stream
        if scan is not None and scanned >= scan:
            return await _bound_above(redis, streams, [])


def parse_position(text: str) -> dict[str, str]:
    """A position (``+``, or ``<profile>=<event id>,...``: each profile's last event
    listed) as profile -> event id; ValueError when it is not one."""
    if text == "+":
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        name, _, event_id = part.rpartition("=")
        if not name or not _EVENT_ID.fullmatch(event_id):
            raise ValueError(f"{text!r} is not a log position")
        out[name] = event_id
    return out


_EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}")


@dataclass(frozen=True, slots=True)
class _Event:
    order: tuple[float, int, int]  # the change's time, then the event id
    event_id: str
    profile: str
    job_id: str
    status: str
    at: str


def _position(streams: list[_Stream], taken: list[_Event]) -> str:
    """Where a page that listed `taken` (the last of the merged events it read) ends:
    each stream below its last event taken, or where it started."""
    last = {s.profile: s.start_after for s in streams if s.start_after}
    for event in taken:
        last[event.profile] = event.event_id
    return ",".join(f"{name}={event_id}" for name, event_id in sorted(last.items()))


class _Stream:
    """One profile's events, read newest first a chunk at a time."""

    def __init__(self, profile: str, start_after: str | None) -> None:
        self.profile = profile
        self.key = keys.events(profile)
        self.start_after = start_after
        self.buffer: list[_Event] = []
        self.done = False
        self.upper = f"({start_after}" if start_after else "+"

    async def fill(self, redis: Redis, start: str, count: int) -> None:
        rows: Any = await redis.xrevrange(self.key, self.upper, start, count=count)
        if len(rows) < count:
            self.done = True
        if rows:
            self.upper = "(" + as_text(rows[-1][0])
        self.buffer += [e for eid, fields in rows if (e := _event(self.profile, eid, fields))]
        self.buffer.reverse()  # oldest last read first: pop() takes the newest


class _Rising:
    """One profile's events from an event id upward (inclusive), oldest first, a chunk
    at a time."""

    def __init__(self, profile: str, from_id: str, lowest: str) -> None:
        self.profile = profile
        self.key = keys.events(profile)
        self.lower = max(from_id, lowest, key=_id_order)
        self.buffer: list[_Event] = []
        self.done = False

    async def fill(self, redis: Redis, count: int) -> None:
        rows: Any = await redis.xrange(self.key, self.lower, "+", count=count)
        if len(rows) < count:
            self.done = True
        if rows:
            self.lower = "(" + as_text(rows[-1][0])
        self.buffer += [e for eid, fields in rows if (e := _event(self.profile, eid, fields))]
        self.buffer.reverse()  # newest last read first: pop() takes the oldest


async def _rising(redis: Redis, streams: list[_Rising], count: int) -> list[_Event]:
    """Up to `count` events, oldest change first, merged over the streams."""
    out: list[_Event] = []
    while len(out) < count:
        for stream in streams:
            if not stream.buffer and not stream.done:
                await stream.fill(redis, _CHUNK)
        heads = [s for s in streams if s.buffer]
        if not heads:
            break
        oldest = min(heads, key=lambda s: (s.buffer[-1].order, s.profile))
        out.append(oldest.buffer.pop())
    return out


async def _bound_above(redis: Redis, streams: list[_Rising], rest: list[_Event]) -> str:
    """The position just above the events taken so far: each stream at its first event
    not taken (in `rest`, read but not taken, or next in the stream); a stream with
    none left is left out (read from its top)."""
    bound: dict[str, str] = {}
    for event in reversed(rest):  # oldest last: each stream keeps its oldest
        bound[event.profile] = event.event_id
    for stream in streams:
        if stream.profile in bound:
            continue
        while not stream.buffer and not stream.done:
            await stream.fill(redis, _CHUNK)
        if stream.buffer:
            bound[stream.profile] = stream.buffer[-1].event_id
    return ",".join(f"{name}={at}" for name, at in sorted(bound.items())) or "+"


def _id_order(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


async def _merged(redis: Redis, streams: list[_Stream], start: str, count: int) -> list[_Event]:
    """Up to `count` events, newest change first, merged over the streams (each
    refilled when it runs dry, so no stream's event is passed over)."""
    out: list[_Event] = []
    while len(out) < count:
        for stream in streams:
            if not stream.buffer and not stream.done:
                await stream.fill(redis, start, _CHUNK)
        heads = [s for s in streams if s.buffer]
        if not heads:
            break
        newest = max(heads, key=lambda s: (s.buffer[-1].order, s.profile))
        out.append(newest.buffer.pop())
    return out


def _event(profile: str, eid: Any, fields: Any) -> _Event | None:
    """One entry of a profile's event stream, or None for an inbound message's."""
    job_id = as_text(fields.get(b"id", b""))
    if not job_id or as_text(fields.get(b"profile", b"")) != profile:
        return None
    event_id, at = as_text(eid), as_text(fields.get(b"at", b""))
    ms, _, seq = event_id.partition("-")
    try:
        when = float(at)
    except ValueError:
        when = 0.0
    status = as_text(fields.get(b"status", b""))
    return _Event((when, int(ms), int(seq or 0)), event_id, profile, job_id, status, at)


def _listed(
    record: dict[str, Any],
    event: _Event,
    status: str | None,
    to: str | None,
    match: Callable[[dict[str, Any]], bool] | None,
    account: str | None = None,
) -> bool:
    """Whether the log lists `record` at `event`: its latest change, and it passes
    the filters."""
    return (
        _latest(record, event.status, event.at)
        and (status is None or record.get("status") == status)
        and (to is None or record.get("to") == to)
        and (account is None or record.get("account") == account)
        and (match is None or match(record))
    )


def _latest(record: dict[str, Any], status: str, at: str) -> bool:
    """Whether an event (its status and time) is the record's latest change."""
    if record.get("status") != status:
        return False
    try:
        return float(at) == record.get("updated_at")
    except ValueError:
        return False
