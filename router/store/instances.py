"""The running instances' health records: each daemon publishes one every few seconds
(`keys.health`, a short TTL: it vanishes with the daemon) and names itself in
`keys.health_index` (a sorted set by the time of its latest record), so readers find
the records without walking the keyspace. A SCAN for ``sms:health:*`` walks every key
Redis holds: with a million message records each read of the web console's overview
walked them all (bench/console_overhead.py: ten open consoles took 14 % of the drain).
"""

from __future__ import annotations

import json
import time
from typing import Any, Final

from redis.asyncio import Redis

from router.store import keys
from router.store.connections import as_text

__all__ = ["INDEX_KEEP", "publish", "read_records"]

# Seconds an instance that stopped publishing stays named in the index (its record is
# long gone; the name is only looked up).
INDEX_KEEP: Final = 86_400


async def publish(redis: Redis, instance: str, record: dict[str, Any], ttl: int) -> None:
    """Write `instance`'s health record (expiring after `ttl` seconds) and name it in
    the index; names not seen for `INDEX_KEEP` seconds leave it."""
    now = time.time()
    index = keys.health_index()
    # Not a transaction: on a cluster the record and the index live in other slots.
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(keys.health(instance), json.dumps(record), ex=ttl)
        pipe.zadd(index, {instance: now})
        pipe.zremrangebyscore(index, "-inf", now - INDEX_KEEP)
        await pipe.execute()


async def read_records(redis: Redis, *, scan_fallback: bool = False) -> list[dict[str, Any]]:
    """The health records of the instances named in the index (a record that expired
    meanwhile, or is not JSON, is left out). `scan_fallback`: when the index names
    none, look for records by SCAN (daemons of a version before the index, during a
    rolling upgrade; the operator's commands, not the console's polls)."""
    names = [as_text(n) for n in await redis.zrange(keys.health_index(), 0, -1)]
    found = [keys.health(n) for n in names]
    if not found and scan_fallback:
        found = [as_text(k) async for k in redis.scan_iter(match=keys.health("*"), count=500)]
    if not found:
        return []
    # One GET each, not MGET: on a cluster the records live in different slots.
    async with redis.pipeline(transaction=False) as pipe:
        for key in found:
            pipe.get(key)
        values = await pipe.execute()
    records = []
    for raw in values:
        if not raw:
            continue  # that instance stopped: its record expired
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
