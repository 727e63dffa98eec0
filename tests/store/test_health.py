"""Delivery outcome windows (router/store/health.py): what a final report counts, where,
and what a window adds up, against a real Redis.

The window tests write buckets at chosen times (`now` is passed in), so they need no
clock: a bucket that slid out of the window, one read once and kept, the current one
read again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from router import Client
from router.config import parse_settings
from router.engine.pipeline import landed
from router.engine.receipts import Reports
from router.store import keys
from router.store.connections import open_redis
from router.store.health import (
    FINE_UP_TO,
    MAX_WINDOW,
    NumberHealth,
    Outcome,
    OutcomeCounter,
    QualityBoard,
    number_health_key,
    quality_key,
)
from router.store.ledger import Finished, Ledger, Sending

from ..cluster import cluster_running, cluster_unsupported
from ..conftest import config_dict

NOW = 1_700_000_000.0  # a fixed moment: bucket numbers below are worked out from it
MINUTE = int(NOW // 60)
HOUR = int(NOW // 3600)
UK, US = "+447911123456", "+12025550123"


async def fields(redis: Redis, key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await redis.hgetall(key)).items()}


async def count(redis: Redis, outcomes: list[Outcome], now: float = NOW) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        OutcomeCounter.commands(pipe, "sms", outcomes, now)
        await pipe.execute()


async def test_a_final_outcome_counts_per_connector_and_country_and_per_number(
    redis: Redis,
) -> None:
    await count(
        redis,
        [
            Outcome("delivered", UK, "+16501112345", "a"),
            Outcome("delivered", UK, "+16501112345", "a"),
            Outcome("undelivered", UK, "+16501112345", "a"),
            Outcome("failed", US, "ACME", "b"),
            Outcome("sent", UK, "+16501112345", "a"),  # not final: not counted
            Outcome("delivered", UK, "+16501112345", ""),  # no connector: the number only
        ],
    )
    for size, bucket in ((60, MINUTE), (3600, HOUR)):
        assert await fields(redis, quality_key("a", size, bucket)) == {"44:d": 2, "44:u": 1}
        assert await fields(redis, quality_key("b", size, bucket)) == {"US:u": 1}
        assert await fields(redis, number_health_key("sms", size, bucket)) == {
            "+16501112345:d": 3,
            "+16501112345:u": 1,
            "ACME:u": 1,
        }
    # Each bucket lives as long as the longest window read from its size, and a bit.
    assert FINE_UP_TO < await redis.ttl(quality_key("a", 60, MINUTE)) <= FINE_UP_TO + 120
    assert MAX_WINDOW < await redis.ttl(number_health_key("sms", 3600, HOUR)) <= MAX_WINDOW + 7200
    # The number-health buckets share the profile's slot (Redis Cluster).
    assert number_health_key("sms", 60, MINUTE).startswith("sms:{sms}:")


async def test_nothing_to_count_sends_nothing(redis: Redis) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        assert OutcomeCounter.commands(pipe, "sms", [Outcome("sent", UK, "", "a")], NOW) == 0
    await OutcomeCounter(redis).count("sms", [])
    assert await redis.dbsize() == 0


async def test_a_window_adds_up_its_buckets_and_no_older_one(redis: Redis) -> None:
    health = NumberHealth("sms", 600)  # ten minutes: minute buckets
    key = number_health_key
    await redis.hset(key("sms", 60, MINUTE), mapping={"+1:d": 5, "+1:u": 1})  # now
    await redis.hset(key("sms", 60, MINUTE - 10), mapping={"+1:d": 2})  # 10 min ago: in
    await redis.hset(key("sms", 60, MINUTE - 12), mapping={"+1:d": 100, "+2:u": 7})  # out
    await health.refresh(redis, now=NOW)
    assert health.sample("+1") == (7, 8)
    assert health.sample("+2") == (0, 0)
    assert health.unhealthy(0.5, 1) == frozenset()
    assert health.unhealthy(0.9, 1) == {"+1"}  # 7 of 8 is below 0.9...
    assert health.unhealthy(0.9, 9) == frozenset()  # ...but 8 reports are not enough


async def test_closed_buckets_are_read_once_and_the_current_one_every_time(
    redis: Redis,
) -> None:
    health = NumberHealth("sms", 600)
    now_key = number_health_key("sms", 60, MINUTE)
    old_key = number_health_key("sms", 60, MINUTE - 2)
    await redis.hset(now_key, "+1:d", 1)
    await redis.hset(old_key, "+1:u", 3)
    await health.refresh(redis, now=NOW)
    assert health.sample("+1") == (1, 4)
    # A closed bucket is kept from the first read: changing it in Redis changes nothing.
    await redis.delete(old_key)
    await redis.hincrby(now_key, "+1:d", 2)
    await health.refresh(redis, now=NOW + 1)
    assert health.sample("+1") == (3, 6)
    # Ten minutes on, the old bucket slides out (and the current one is closed).
    await health.refresh(redis, now=NOW + 9 * 60)
    assert health.sample("+1") == (3, 3)
    await health.refresh(redis, now=NOW + 12 * 60)
    assert health.sample("+1") == (0, 0)


async def test_a_long_window_reads_hour_buckets(redis: Redis) -> None:
    health = NumberHealth("sms", 24 * 3600)
    await redis.hset(number_health_key("sms", 3600, HOUR - 20), "+1:d", 4)
    await redis.hset(number_health_key("sms", 60, MINUTE), "+1:d", 1000)  # minute: not read
    await redis.hset(number_health_key("sms", 3600, HOUR - 30), "+1:d", 1000)  # too old
    await health.refresh(redis, now=NOW)
    assert health.sample("+1") == (4, 4)


async def test_the_number_reads_ride_on_a_round_trip_only_when_due(redis: Redis) -> None:
    health = NumberHealth("sms", 600, every=60)
    assert health.due()
    async with redis.pipeline(transaction=False) as pipe:
        assert health.commands(pipe, now=NOW) == 11  # the current minute and ten before
        replies = await pipe.execute()
    health.take(replies)
    assert not health.due()
    health.take([])  # replies of no plan: ignored, the totals stay
    assert health.samples == {}


async def test_the_quality_board_reads_what_routing_asks_for(redis: Redis) -> None:
    board = QualityBoard(redis, every=0.05)
    assert board.sample("a", 600, "44") == (0, 0)  # unknown yet: asked for from now on
    await count(
        redis,
        [Outcome("delivered", UK, "", "a")] * 3 + [Outcome("undelivered", UK, "", "a")],
        now=time.time(),
    )
    stopping = asyncio.Event()
    running = asyncio.create_task(board.run(stopping))
    try:
        for _ in range(100):
            if board.sample("a", 600, "44") != (0, 0):
                break
            await asyncio.sleep(0.02)
        assert board.sample("a", 600, "44") == (3, 4)
        assert board.sample("a", 600, "US") == (0, 0)
        seen = board.generation
        await asyncio.sleep(0.2)
        assert board.generation > seen  # refreshed again, every `every` seconds
    finally:
        stopping.set()
        await asyncio.wait_for(running, 5)


def _sending(job: str, owner: str) -> Sending:
    return Sending(job, owner, "", "+16501112345", UK, "", "", "", "", 0)


def _sent(job: str, entry: str, step: int, pmid: str) -> Finished:
    return Finished(job, entry, step + 1, "sent", "", "", UK, "+16501112345", "", 1, "", "",
                    "", [pmid], [pmid, pmid], "carrier-a", 0.0)  # fmt: skip


async def test_a_report_that_makes_its_message_final_is_counted(redis: Redis) -> None:
    """Through the ledger: report.lua hands back the record's to, from and connector."""
    ledger = Ledger(redis, retention=3600, events_maxlen=1000)
    reports = Reports(redis, ledger, "sms", id_format="as-is")
    ids = await Client(redis, default_profile="sms").send_many(
        [{"to": UK, "text": f"m{i}"} for i in range(3)]
    )
    for i, job in enumerate(ids):
        owner = (await redis.hget(keys.record("sms", job), "owner") or b"").decode()
        [step] = await ledger.sending("sms", [_sending(job, owner)])
        await ledger.finish("sms", keys.queue("sms"), [_sent(job, owner, step.step, f"p{i}")])
    await reports.apply(["p0"], "delivered", "DELIVRD", "000")
    await reports.apply(["p1"], "undelivered", "UNDELIV", "001")
    await reports.apply(["p1"], "undelivered", "UNDELIV", "001")  # again: final already
    await reports.apply(["nobody"], "delivered", "DELIVRD", "000")  # kept early
    board = QualityBoard(redis)
    board.want("carrier-a", 600)
    await board.refresh()
    assert board.sample("carrier-a", 600, "44") == (1, 2)
    health = NumberHealth("sms", 600)
    await health.refresh(redis)
    assert health.samples == {"+16501112345": (1, 2)}


async def test_a_report_applied_early_by_finish_is_counted_too(redis: Redis) -> None:
    """A report that comes before its message is recorded sent is applied by finish.lua:
    `finish` says which items it made final, and the pipeline counts those."""
    ledger = Ledger(redis, retention=3600, events_maxlen=1000)
    reports = Reports(redis, ledger, "sms", id_format="as-is")
    ids = await Client(redis, default_profile="sms").send_many(
        [{"to": UK, "text": f"m{i}"} for i in range(2)]
    )
    await reports.apply(["e0"], "undelivered", "UNDELIV", "001")  # kept early
    items = []
    for i, job in enumerate(ids):
        owner = (await redis.hget(keys.record("sms", job), "owner") or b"").decode()
        [step] = await ledger.sending("sms", [_sending(job, owner)])
        items.append(_sent(job, owner, step.step, f"e{i}"))
    finals = await ledger.finish("sms", keys.queue("sms"), items)
    assert finals == ["undelivered", ""]
    await reports.count(landed(items, finals))
    board = QualityBoard(redis)
    board.want("carrier-a", 600)
    await board.refresh()
    assert board.sample("carrier-a", 600, "44") == (0, 1)


@pytest.mark.cluster
@pytest.mark.skipif(cluster_unsupported() is not None, reason=str(cluster_unsupported()))
async def test_counting_and_reading_on_a_redis_cluster(tmp_path: Path) -> None:
    """The buckets of several connectors and profiles live on several masters: each is
    written and read by single-key commands, pipelined across the nodes."""
    with cluster_running(tmp_path / "cluster") as nodes:
        settings = parse_settings(config_dict(nodes.url, "http://127.0.0.1:9/send"), env={})
        async with open_redis(settings) as redis:
            spread = {nodes.index_of(quality_key(c, 60, MINUTE)) for c in "abcdef"}
            assert len(spread) > 1  # the test means something: several masters
            counter = OutcomeCounter(redis)
            for profile in ("otp", "promo"):
                await counter.count(
                    profile,
                    [Outcome("delivered", UK, "+1", c) for c in "abcdef"]
                    + [Outcome("undelivered", US, "+2", "a")],
                )
            board = QualityBoard(redis)
            for connector in "abcdef":
                board.want(connector, 600)
            await board.refresh()
            assert [board.sample(c, 600, "44") for c in "abcdef"] == [(2, 2)] * 6
            assert board.sample("a", 600, "US") == (0, 2)
            health = NumberHealth("promo", 600)
            await health.refresh(redis)
            assert health.samples == {"+1": (6, 6), "+2": (0, 1)}
