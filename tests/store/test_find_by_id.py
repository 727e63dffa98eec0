"""A record found by job id alone: `Ledger.enqueue` writes no locator any more, and
`Ledger.find` looks in each profile given (an HGETALL per id and profile, in one
round trip: one find.lua call on a single server, a pipeline on a cluster),
the first given that holds an id winning; a locator an older version wrote is still
read for an id no profile given holds. Real Redis, a script cache flushed between
calls (the call loads its scripts again and stores nothing twice)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from router.policy.jobs import encode_job
from router.store import keys
from router.store.ledger import Ledger

RETENTION = 3600


def item(job_id: str, profile: str, text: str = "hello") -> tuple[str, str, bytes, dict[str, str]]:
    wire = {"id": job_id, "to": "+447911100001", "text": text}
    fields = {"profile": profile, "to": wire["to"], "text": text}
    return job_id, profile, encode_job(wire), fields


async def calls(redis: Redis, command: str) -> int:
    """Calls of `command` that ran (a first script call answered NOSCRIPT is made again)."""
    stats = (await redis.info("commandstats")).get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0)) - int(stats.get("failed_calls", 0))


async def test_a_batch_writes_no_locator_and_each_job_is_found_in_its_profile(
    redis: Redis,
) -> None:
    ledger = Ledger(redis, retention=RETENTION, events_maxlen=1000)
    batch = [item(f"job-{n}", "alerts" if n % 3 else "bulk") for n in range(50)]
    assert await ledger.enqueue(batch) == [True] * 50
    assert [k async for k in redis.scan_iter(match="sms:loc:*")] == []
    assert await redis.xlen(keys.queue("alerts")) == 33
    assert await redis.xlen(keys.queue("bulk")) == 17
    await redis.config_resetstat()
    found = await ledger.find([j for j, *_ in batch], profiles=["alerts", "bulk"])
    assert [r["profile"] if r else None for r in found] == [p for _j, p, *_ in batch]
    assert all(r and r["status"] == "queued" for r in found)
    # Many probes on a single server: one script call, an HGETALL per profile looked
    # in until the id's record (alerts first, then bulk); no locator read (every id
    # was found).
    assert await calls(redis, "evalsha") == 1
    assert await calls(redis, "hgetall") == 33 + 2 * 17
    assert await calls(redis, "get") == 0
    # A few (one id): a pipelined HGETALL per profile, no script.
    await redis.config_resetstat()
    one = await ledger.get("job-0", profiles=["alerts", "bulk"])
    assert one is not None and one["profile"] == "bulk"
    assert (await calls(redis, "evalsha"), await calls(redis, "hgetall")) == (0, 2)


async def test_an_id_in_two_profiles_is_found_in_the_first_given_that_holds_it(
    redis: Redis,
) -> None:
    ledger = Ledger(redis, retention=RETENTION, events_maxlen=1000)
    assert await ledger.enqueue([item("same", "alerts", "a"), item("other", "alerts")]) == [
        True,
        True,
    ]
    await redis.script_flush()  # a restarted Redis: NOSCRIPT, loaded again
    verdicts = await ledger.enqueue(
        [item("same", "bulk", "b"), item("same", "alerts"), item("new", "bulk")]
    )
    # "same" is new in bulk (ids are unique per profile), a repeat in alerts.
    assert verdicts == [True, False, True]
    assert await redis.xlen(keys.queue("alerts")) == 2
    assert await redis.xlen(keys.queue("bulk")) == 2
    first, new = await ledger.find(["same", "new"], profiles=["alerts", "bulk"])
    assert first is not None and (first["profile"], first["text"]) == ("alerts", "a")
    assert new is not None and new["profile"] == "bulk"
    again = await ledger.get("same", profiles=["bulk", "alerts"])
    assert again is not None and (again["profile"], again["text"]) == ("bulk", "b")
    assert await ledger.get("new", profiles=["alerts"]) is None


async def test_a_locator_an_older_version_wrote_is_read_for_ids_the_profiles_lack(
    redis: Redis,
) -> None:
    """After an upgrade, a record of a profile no longer configured is still found
    through its locator; an id with neither costs the probe and one GET."""
    ledger = Ledger(redis, retention=RETENTION, events_maxlen=1000)
    assert await ledger.enqueue([item("kept", "gone"), item("here", "alerts")]) == [True, True]
    await redis.set(keys.locator("kept"), "gone", ex=RETENTION)  # as the older version did
    await redis.set(keys.locator("here"), "alerts", ex=RETENTION)
    await redis.config_resetstat()
    kept, here, nowhere = await ledger.find(["kept", "here", "nowhere"], profiles=["alerts"])
    assert kept is not None and kept["profile"] == "gone"
    assert here is not None and here["profile"] == "alerts"
    assert nowhere is None
    # The probe (3 HGETALL), the locators of the two not found (2 GET), the one located.
    assert (await calls(redis, "hgetall"), await calls(redis, "get")) == (4, 2)


async def test_without_profiles_the_profiles_with_streams_are_looked_in(redis: Redis) -> None:
    """A tool that knows no configuration: the profiles are found by a SCAN, made again
    (at most once a second) when an id is not found, so a new profile's jobs are found."""
    ledger = Ledger(redis, retention=RETENTION, events_maxlen=1000)
    assert await ledger.enqueue([item("a1", "alerts"), item("b1", "bulk")]) == [True, True]
    await redis.hset(keys.record("acct:x", "zz"), "status", "queued")  # no stream: not one
    assert await ledger.stored_profiles() == ["alerts", "bulk"]
    a1, b1 = await ledger.find(["a1", "b1"])
    assert a1 is not None and b1 is not None and b1["profile"] == "bulk"
    assert await ledger.enqueue([item("c1", "late")]) == [True]
    await asyncio.sleep(1.1)
    late = await ledger.get("c1")
    assert late is not None and late["profile"] == "late"
    assert await ledger.get("zz") is None
