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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from . import keys
from .connections import as_text
from .ledger import Ledger

__all__ = ["LogPage", "message_log", "parse_since"]

_CHUNK = 1000  # events read per round trip
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_SCALE = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class LogPage:
    """Records of one page, newest first, and where the next page starts (a position
    ``<event id>@<profile>`` to continue below, exclusive), or None when the log has no
    more."""

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
) -> LogPage:
    """Up to `limit` records whose latest change is at or after `since` (unix
    seconds) and below position `before` (exclusive; ``+`` for the top), matching the
    filters (`to` is compared as given: pass it in E.164). The events of `profiles`
    (only `profile`'s when given) are merged newest first.

    `scan` bounds the events read (so a narrow filter cannot make one call read the
    whole stream): a page may then hold fewer than `limit` records and still have a
    `next`.
    """
    start = f"{max(0, int(since * 1000))}-0"
    found: list[dict[str, Any]] = []
    scanned = 0
    streams = [_Stream(p, before) for p in ([profile] if profile is not None else profiles)]
    while True:
        count = _CHUNK if scan is None else max(1, min(_CHUNK, scan - scanned))
        events = await _merged(redis, streams, start, count)
        scanned += len(events)
        pairs = list(dict.fromkeys((p, job_id) for _o, p, job_id, _s, _a in events))
        records = dict(zip(pairs, await ledger.get_many(pairs), strict=True)) if pairs else {}
        for order, name, job_id, event_status, at in events:
            record = records.get((name, job_id))
            if record is None or not _latest(record, event_status, at):
                continue
            if status is not None and record.get("status") != status:
                continue
            if to is not None and record.get("to") != to:
                continue
            found.append(record)
            if len(found) == limit:
                return LogPage(found, _position(order, name))
        if len(events) < count:
            return LogPage(found, None)  # reached `since` or the streams' start
        if scan is not None and scanned >= scan:
            order, name = events[-1][0], events[-1][1]
            return LogPage(found, _position(order, name))


# An event's place in the merged log: (event id as numbers, profile), newest highest;
# a position names the last event returned: "<event id>@<profile>".
_Order = tuple[int, int]
_Event = tuple[_Order, str, str, str, str]  # order, profile, job id, status, at


def _order(event_id: str) -> _Order:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def _position(order: _Order, profile: str) -> str:
    return f"{order[0]}-{order[1]}@{profile}"


class _Stream:
    """One profile's events, read newest first a chunk at a time."""

    def __init__(self, profile: str, before: str) -> None:
        self.profile = profile
        self.key = keys.events(profile)
        self.buffer: list[_Event] = []
        self.done = False
        self.upper = "+"
        if before != "+":
            event_id, _, after = before.partition("@")
            # Events at the same id sort by profile: this stream's event at exactly
            # `event_id` comes after the position when its profile sorts lower.
            self.upper = event_id if profile < after else f"({event_id}"

    async def fill(self, redis: Redis, start: str, count: int) -> None:
        rows: Any = await redis.xrevrange(self.key, self.upper, start, count=count)
        if len(rows) < count:
            self.done = True
        if rows:
            self.upper = "(" + as_text(rows[-1][0])
        for eid, fields in rows:
            job_id = as_text(fields.get(b"id", b""))
            if job_id and as_text(fields.get(b"profile", b"")) == self.profile:
                self.buffer.append(
                    (_order(as_text(eid)), self.profile, job_id,
                     as_text(fields.get(b"status", b"")), as_text(fields.get(b"at", b"")))
                )  # fmt: skip
        self.buffer.reverse()  # oldest last read first: pop() takes the newest


async def _merged(redis: Redis, streams: list[_Stream], start: str, count: int) -> list[_Event]:
    """Up to `count` events, newest first, merged over the streams (each refilled when
    it runs dry, so the order is exact)."""
    out: list[_Event] = []
    while len(out) < count:
        for stream in streams:
            if not stream.buffer and not stream.done:
                await stream.fill(redis, start, _CHUNK)
        heads = [s for s in streams if s.buffer]
        if not heads:
            break
        newest = max(heads, key=lambda s: (s.buffer[-1][0], s.profile))
        out.append(newest.buffer.pop())
    return out


def _latest(record: dict[str, Any], status: str, at: str) -> bool:
    """Whether an event (its status and time) is the record's latest change."""
    if record.get("status") != status:
        return False
    try:
        return float(at) == record.get("updated_at")
    except ValueError:
        return False
