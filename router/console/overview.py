"""What the console's overview shows, read from Redis so any process can serve it.

- Instances: the health records every running daemon publishes
  (`keys.health`, every few seconds): host, pid, uptime, profiles' load, binds and
  connectors with their state (and window, rate and throttles when the record has
  them), Redis outages the daemon saw.
- Profiles: the work stream's depth, entries in progress, the oldest waiting entry's
  age (the first entry of the stream: acknowledged entries are deleted, so the stream
  holds only waiting work), scheduled sends and retries, dead letters, spend today.
- Messages per second by status: what the running instances recorded since their
  previous health record (`RATE_WINDOW` seconds apart), summed. Counting the event
  streams instead cost each poll ~35 ms of CPU during a 10,000 msg/s drain (5,000
  events read and decoded per profile): ten open consoles took a fifth of the drain
  (bench/console_overhead.py); the records cost nothing per poll.
- Campaigns: today's count against each daily cap (the counts the senders' cap
  script keeps).
- Redis: version, role, memory, clients, uptime (INFO).
"""

from __future__ import annotations

import time
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

# Seconds between an instance's health records, over which its rates are counted.
RATE_WINDOW: Final = 5


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
    rates = _rates(instances)
    counts = replies[len(names) * each]
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


def _rates(instances: list[dict[str, Any]]) -> dict[str, float]:
    """Messages per second by status, summed over the instances' health records."""
    rates: dict[str, float] = {}
    for record in instances:
        given = record.get("rates")
        if not isinstance(given, dict):
            continue  # an older daemon's record
        for status, rate in given.items():
            if isinstance(rate, int | float) and rate > 0:
                rates[str(status)] = rates.get(str(status), 0.0) + float(rate)
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
