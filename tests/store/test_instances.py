"""The instances' health records, found through their index (no SCAN of the keyspace)."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis

from router.store import instances, keys


async def test_records_are_found_through_the_index(redis: Redis) -> None:
    await instances.publish(redis, "a", {"instance": "a"}, 15)
    await instances.publish(redis, "b", {"instance": "b"}, 1)
    # Ten thousand message records: the readers never walk them.
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(10_000):
            pipe.hset(keys.record("p", f"m{i}"), "status", "sent")
        await pipe.execute()
    assert {r["instance"] for r in await instances.read_records(redis)} == {"a", "b"}
    await asyncio.sleep(1.2)  # b stopped: its record expired, its name is only looked up
    assert [r["instance"] for r in await instances.read_records(redis)] == ["a"]
    assert await redis.zscore(keys.health_index(), "b") is not None


async def test_an_older_daemons_record_is_found_by_scan_only_when_asked(redis: Redis) -> None:
    await redis.set(keys.health("old"), json.dumps({"instance": "old"}), ex=15)
    assert await instances.read_records(redis) == []
    found = await instances.read_records(redis, scan_fallback=True)
    assert [r["instance"] for r in found] == ["old"]
