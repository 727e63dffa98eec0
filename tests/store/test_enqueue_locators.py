"""`Ledger.enqueue` on a single server writes every job's locator in one script call
(locate.lua): each job id -> the first profile that used it, expiring with the
records; a repeated id keeps its first profile. Real Redis, a script cache flushed
between calls (the call loads its scripts again and stores nothing twice)."""

from __future__ import annotations

from redis.asyncio import Redis

from router.policy.jobs import encode_job
from router.store import keys
from router.store.ledger import Ledger

RETENTION = 3600


def item(job_id: str, profile: str) -> tuple[str, str, bytes, dict[str, str]]:
    wire = {"id": job_id, "to": "+447911100001", "text": "hello"}
    return job_id, profile, encode_job(wire), {"profile": profile, "to": wire["to"]}


async def test_locators_of_a_batch_name_each_jobs_profile_and_expire(redis: Redis) -> None:
    ledger = Ledger(redis, retention=RETENTION, events_maxlen=1000)
    batch = [item(f"job-{n}", "alerts" if n % 3 else "bulk") for n in range(50)]
    assert await ledger.enqueue(batch) == [True] * 50
    for job_id, profile, _job, _fields in batch:
        assert await redis.get(keys.locator(job_id)) == profile.encode()
        assert 0 < await redis.ttl(keys.locator(job_id)) <= RETENTION
    assert await redis.xlen(keys.queue("alerts")) == 33
    assert await redis.xlen(keys.queue("bulk")) == 17


async def test_a_repeated_id_keeps_its_first_profile_after_the_scripts_are_flushed(
    redis: Redis,
) -> None:
    ledger = Ledger(redis, retention=RETENTION, events_maxlen=1000)
    assert await ledger.enqueue([item("same", "alerts"), item("other", "alerts")]) == [True, True]
    await redis.script_flush()  # a restarted Redis: NOSCRIPT, loaded again
    verdicts = await ledger.enqueue(
        [item("same", "bulk"), item("same", "alerts"), item("new", "bulk")]
    )
    # "same" is new in bulk (ids are unique per profile), a repeat in alerts.
    assert verdicts == [True, False, True]
    assert await redis.get(keys.locator("same")) == b"alerts"
    assert await redis.get(keys.locator("new")) == b"bulk"
    assert await redis.xlen(keys.queue("alerts")) == 2
    assert await redis.xlen(keys.queue("bulk")) == 2
