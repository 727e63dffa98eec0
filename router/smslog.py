"""The SMS log: message records that changed status recently, newest first.

The log is read from the event stream (``sms:events``), newest event first. A record
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
    """Records of one page, newest first, and where the next page starts (an event id
    to continue below, exclusive), or None when the log has no more."""

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
    since: float,
    limit: int,
    profile: str | None = None,
    status: str | None = None,
    to: str | None = None,
    before: str = "+",
    scan: int | None = None,
) -> LogPage:
    """Up to `limit` records whose latest change is at or after `since` (unix
    seconds) and below event `before` (exclusive; ``+`` for the top), matching the
    filters (`to` is compared as given: pass it in E.164).

    `scan` bounds the events read (so a narrow filter cannot make one call read the
    whole stream): a page may then hold fewer than `limit` records and still have a
    `next`.
    """
    start = f"{max(0, int(since * 1000))}-0"
    upper = before if before == "+" else f"({before}"
    found: list[dict[str, Any]] = []
    scanned = 0
    while True:
        count = _CHUNK if scan is None else max(1, min(_CHUNK, scan - scanned))
        rows: Any = await redis.xrevrange(keys.EVENTS, upper, start, count=count)
        scanned += len(rows)
        events: list[tuple[str, str, str, str]] = []  # event id, job id, status, at
        for eid, fields in rows:
            job_id = as_text(fields.get(b"id", b""))
            if not job_id:
                continue
            if profile is not None and as_text(fields.get(b"profile", b"")) != profile:
                continue
            events.append(
                (
                    as_text(eid),
                    job_id,
                    as_text(fields.get(b"status", b"")),
                    as_text(fields.get(b"at", b"")),
                )
            )
        ids = list(dict.fromkeys(job_id for _e, job_id, _s, _a in events))
        records = dict(zip(ids, await ledger.get_many(ids), strict=True)) if ids else {}
        for eid, job_id, event_status, at in events:
            record = records.get(job_id)
            if record is None or not _latest(record, event_status, at):
                continue
            if status is not None and record.get("status") != status:
                continue
            if to is not None and record.get("to") != to:
                continue
            found.append(record)
            if len(found) == limit:
                return LogPage(found, eid)
        if len(rows) < count:
            return LogPage(found, None)  # reached `since` or the stream's start
        upper = "(" + as_text(rows[-1][0])
        if scan is not None and scanned >= scan:
            return LogPage(found, as_text(rows[-1][0]))


def _latest(record: dict[str, Any], status: str, at: str) -> bool:
    """Whether an event (its status and time) is the record's latest change."""
    if record.get("status") != status:
        return False
    try:
        return float(at) == record.get("updated_at")
    except ValueError:
        return False
