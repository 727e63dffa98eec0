"""What the console's overview shows, read from Redis so any process can serve it.

- Instances: the health records every running daemon publishes
  (`keys.health`, every few seconds): host, pid, uptime, profiles' load, binds and
  connectors with their state (and window, rate and throttles when the record has
  them), Redis outages the daemon saw.
- Profiles: the work stream's depth, entries in progress, the oldest waiting entry's
  age (the first entry of the stream: acknowledged entries are deleted, so the stream
  holds only waiting work), scheduled sends and retries, dead letters, spend today.
- Messages per second by status (and inbound, click) over the last `RATE_WINDOW`
  seconds, from the profiles' event streams: at most `RATE_SAMPLE` of the newest
  events per profile, so a busy stream's rate is the sample's count over the time it
  spans. Reading every event of the window (up to 5,000 per profile) cost each poll
  ~35 ms of CPU during a 10,000 msg/s drain: ten open consoles took a fifth of the
  drain (bench/console_overhead.py).
- Campaigns: today's count against each daily cap (the counts the senders' cap
  script keeps).
- Redis: version, role, memory, clients, uptime (INFO).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from redis.asyncio import Redis

from router.config import Settings
from router.policy.rules import daily_cap
from router.store import instances, keys
from router.store.connections import as_text
from router.store.queue import QUEUE_READS, no_group, queue_counts, queue_reads
from router.summary import today

__all__ = ["RATE_WINDOW", "Overview", "ProfileRow", "read_overview"]

RATE_WINDOW: Final = 10  # seconds of events counted for messages per second
RATE_SAMPLE: Final = 250  # at most this many of a profile's newest events read for it


@dataclass
class ProfileRow:
    """One profile's queue and spend."""

    name: str
    depth: int
    in_progress: int
    oldest_age: float | None
    scheduled: int
    dead_letters: int
    spend_today: float
    spend_limit: float | None


@dataclass
class Overview:
    """Everything the overview shows, read at `at`."""

    at: float
    instances: list[dict[str, Any]]
    profiles: list[ProfileRow]
    rates: dict[str, float]
    campaigns: list[dict[str, Any]]
    redis: dict[str, Any]
    problems: list[str] = field(default_factory=list)


async def read_overview(redis: Redis, settings: Settings) -> Overview:
    """The overview now (raises the Redis errors when Redis does not answer)."""
    now = time.time()
    instances = await _instances(redis, now)
    names = sorted(settings.profiles)
    day = today()
    spend_day = keys.utc_day(now)
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            queue_reads(pipe, name)
            pipe.hget(keys.spend(name, spend_day), "total")
        low = f"{int((now - RATE_WINDOW) * 1000)}-0"
        for name in names:
            pipe.xrevrange(keys.events(name), "+", low, count=RATE_SAMPLE)
        pipe.hgetall(keys.campaign_counts(day))
        replies = await pipe.execute(raise_on_error=False)
    info = await redis.info()  # alone: a cluster pipeline routes by key, INFO has none
    for reply in replies:
        # A profile whose consumer group is not made yet answers XPENDING with NOGROUP.
        if isinstance(reply, Exception) and not no_group(reply):
            raise reply
    profiles = []
    each = QUEUE_READS + 1  # the queue's reads and the spend
    for i, name in enumerate(names):
        row = replies[i * each : i * each + each]
        queue = queue_counts(row[:QUEUE_READS])
        oldest = None
        if queue.oldest_ms is not None:
            oldest = max(0.0, now - queue.oldest_ms / 1000)
        profiles.append(
            ProfileRow(
                name=name,
                depth=queue.depth,
                in_progress=queue.pending,
                oldest_age=oldest,
                scheduled=queue.scheduled,
                dead_letters=queue.dead_letters,
                spend_today=keys.spend_amount(row[QUEUE_READS]),
                spend_limit=settings.profiles[name].daily_spend_limit,
            )
        )
    at = len(names) * each
    rates = _rates(replies[at : at + len(names)], now)
    counts = replies[at + len(names)]
    return Overview(
        at=now,
        instances=instances,
        profiles=profiles,
        rates=rates,
        campaigns=_campaigns(settings, {as_text(k): int(v) for k, v in counts.items()}),
        redis=_redis_facts(info),
    )


async def _instances(redis: Redis, now: float) -> list[dict[str, Any]]:
    out = []
    for record in await instances.read_records(redis):
        record["age"] = max(0.0, now - float(record.get("at", now)))
        record["uptime"] = max(0.0, now - float(record.get("started_at", now)))
        out.append(record)
    return sorted(out, key=lambda r: str(r.get("instance", "")))


def _rates(streams: list[Any], now: float) -> dict[str, float]:
    """Events per second by status (or type: inbound, click), summed over the
    profiles: a profile's events of the window, or, when it had more than
    `RATE_SAMPLE`, its newest ones over the time they span."""
    rates: dict[str, float] = {}
    for rows in streams:
        if not isinstance(rows, list) or not rows:
            continue
        span = float(RATE_WINDOW)
        if len(rows) >= RATE_SAMPLE:
            oldest = int(as_text(rows[-1][0]).split("-", 1)[0]) / 1000
            span = max(0.001, now - oldest)
        seen: Counter[str] = Counter()
        for _eid, fields in rows:
            status = fields.get(b"status") or fields.get(b"type") or b"other"
            seen[as_text(status)] += 1
        for status, count in seen.items():
            rates[status] = rates.get(status, 0.0) + count / span
    return dict(sorted(rates.items()))


def _campaigns(settings: Settings, counts: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    for name, campaign in sorted(settings.campaigns.items()):
        cap = daily_cap(campaign)
        used = counts.get(name, 0)
        rows.append(
            {
                "name": name,
                "status": campaign.status,
                "tier": campaign.tier,
                "used": used,
                "cap": cap,
                "share": None if not cap else min(1.0, used / cap),
            }
        )
    return rows


def _redis_facts(info: Any) -> dict[str, Any]:
    info = info if isinstance(info, dict) else {}
    return {
        "version": info.get("redis_version", "?"),
        "role": info.get("role", "?"),
        "memory": info.get("used_memory_human", "?"),
        "clients": info.get("connected_clients", "?"),
        "uptime": info.get("uptime_in_seconds", 0),
    }
