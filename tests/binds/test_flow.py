"""End to end in one process: real Redis, real HTTP provider, the real daemon."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack
from redis.asyncio import Redis

from router import Client
from router.config import Settings
from router.store import keys
from router.store.ledger import Ledger
from router.store.queue import WorkQueue, list_dead_letters, replay_dead_letters

from ..conftest import NUMBERS, Provider, RunningDaemon, wait_for

Start = Callable[[Settings], RunningDaemon]


async def statuses(redis: Redis, ids: list[str]) -> Counter[str]:
    ledger = Ledger(redis, retention=3600, events_maxlen=1000)
    return Counter(
        r["status"] if r else "missing" for r in await ledger.find(ids, profiles=("alerts", "bulk"))
    )


async def all_final(redis: Redis, ids: list[str], status: str = "sent") -> bool:
    return (await statuses(redis, ids))[status] == len(ids)


async def test_job_reaches_provider_and_is_recorded_sent(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    settings = make_settings()
    client = Client.from_settings(redis, settings)
    job_id = await client.send("+447911123456", "hello & = + world\nline 2 ✓", meta={"k": "v"})
    record = await Ledger(redis, retention=60, events_maxlen=10).get(job_id)
    assert record is not None and record["status"] == "queued"

    run_daemon(settings)
    await wait_for(lambda: all_final(redis, [job_id]), what="sent")
    assert len(provider.requests) == 1
    request = provider.requests[0]
    assert request["to"] == "+447911123456"
    assert request["text"] == "hello & = + world\nline 2 ✓"
    assert request["ref"] == job_id
    assert request["from"] in NUMBERS

    record = await Ledger(redis, retention=60, events_maxlen=10).get(job_id)
    assert record is not None
    assert record["provider_message_id"] == "p-1"
    assert record["from"] == request["from"]
    assert record["attempts"] == 1
    assert [h["status"] for h in record["history"]] == ["queued", "sending", "sent"]
    assert record["meta"] == {"k": "v"}

    events = await redis.xrange(keys.events("alerts"))
    seen = [(e[b"id"].decode(), e[b"status"].decode()) for _, e in events]
    assert seen == [(job_id, "queued"), (job_id, "sending"), (job_id, "sent")]
    assert events[-1][1][b"provider_message_id"] == b"p-1"
    assert all(json.loads(e[b"meta"]) == {"k": "v"} for _, e in events)
    # The delivery-report lookup is written with the final status, same retention.
    assert await redis.get(keys.provider_id("alerts", "p-1")) == job_id.encode()
    assert 0 < await redis.ttl(keys.provider_id("alerts", "p-1")) <= settings.queue.retention
    # Acknowledged work leaves the stream.
    assert await redis.xlen(keys.queue("alerts")) == 0


async def test_round_robin_uses_each_number_equally(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    settings = make_settings()
    client = Client.from_settings(redis, settings)
    ids = await client.send_many([{"to": "+447911123456", "text": f"m{i}"} for i in range(300)])
    run_daemon(settings)
    await wait_for(lambda: all_final(redis, ids), what="300 sent")
    assert Counter(r["from"] for r in provider.requests) == {n: 100 for n in NUMBERS}


async def test_explicit_sender_is_honoured(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    settings = make_settings()
    client = Client.from_settings(redis, settings)
    ids = await client.send_many(
        [{"to": "+447911123456", "text": "x", "from": NUMBERS[2]} for _ in range(5)]
    )
    run_daemon(settings)
    await wait_for(lambda: all_final(redis, ids))
    assert {r["from"] for r in provider.requests} == {NUMBERS[2]}


async def test_503_twice_then_200_is_sent_after_retries(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    provider.script = [503, 503, 200]
    settings = make_settings()
    job_id = await Client.from_settings(redis, settings).send("+447911123456", "retry me")
    run_daemon(settings)
    await wait_for(lambda: all_final(redis, [job_id]), what="sent after retries")
    assert [r["_status"] for r in provider.requests] == [503, 503, 200]
    record = await Ledger(redis, retention=60, events_maxlen=10).get(job_id)
    assert record is not None
    assert record["attempts"] == 3
    history = [h["status"] for h in record["history"]]
    assert history == ["queued", "sending", "queued", "sending", "queued", "sending", "sent"]
    assert "http 503" in record["history"][2]["note"]


async def test_400_fails_without_retry(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    provider.script = [400]
    settings = make_settings()
    job_id = await Client.from_settings(redis, settings).send("+447911123456", "bad")
    run_daemon(settings)
    await wait_for(lambda: all_final(redis, [job_id], "failed"), what="failed")
    await asyncio.sleep(0.3)
    assert len(provider.requests) == 1
    record = await Ledger(redis, retention=60, events_maxlen=10).get(job_id)
    assert record is not None
    assert record["error_code"] == "http_400"
    assert record["attempts"] == 1


async def test_retries_give_up_after_max_attempts(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    provider.script = [503] * 10
    settings = make_settings(queue={"max_attempts": 3})
    job_id = await Client.from_settings(redis, settings).send("+447911123456", "x")
    run_daemon(settings)
    await wait_for(lambda: all_final(redis, [job_id], "failed"), what="failed")
    assert len(provider.requests) == 3
    record = await Ledger(redis, retention=60, events_maxlen=10).get(job_id)
    assert record is not None and record["error_code"] == "http_503"


async def test_sync_mode_never_has_two_requests_in_flight(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    provider.latency = 0.01
    settings = make_settings(processing="sync")
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": "s"} for _ in range(40)]
    )
    run_daemon(settings)
    await wait_for(lambda: all_final(redis, ids))
    assert provider.peak == 1


async def test_async_mode_never_exceeds_window(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    provider.latency = 0.02
    settings = make_settings(window=5)
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": "a"} for _ in range(100)]
    )
    run_daemon(settings)
    await wait_for(lambda: all_final(redis, ids))
    assert provider.peak == 5


async def test_bad_jobs_are_dead_lettered_while_good_ones_flow(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    settings = make_settings()
    q = keys.queue("alerts")
    good = {"to": "+447911123456", "text": "good"}

    def pack(job: dict[str, Any]) -> bytes:
        return msgpack.packb(job)  # type: ignore[no-any-return]

    bad = {
        b"\xc1 not msgpack": "not msgpack",
        pack({"text": "no to"}): "job.to: required",
        pack({"to": "+1555", "text": "x"}): "job.to: '+1555' is not a valid E.164 number",
        pack({**good, "profile": "nope"}): "job.profile: unknown profile 'nope'",
        pack({**good, "from": "+447700900123"}): "job.from: +447700900123 is not a number of",
        pack({**good, "colour": "red"}): "job.colour: unknown field",
        pack({**good, "send_at": "tomorrow"}): "job.send_at: 'tomorrow' is not unix seconds",
    }
    for i in range(5):
        await redis.xadd(q, {"job": pack({**good, "id": f"good-{i}"})})
    for raw in bad:
        await redis.xadd(q, {"job": raw})
    await redis.xadd(q, {"other": b"no job field"})
    for i in range(5, 10):
        await redis.xadd(q, {"job": pack({**good, "id": f"good-{i}"})})

    run_daemon(settings)
    good_ids = [f"good-{i}" for i in range(10)]
    await wait_for(lambda: all_final(redis, good_ids), what="good jobs sent")
    await wait_for(lambda: redis.xlen(keys.dead_letters("alerts")), what="dead letters")
    await wait_for(lambda: _dlq_len_is(redis, len(bad) + 1), what="every bad job dead-lettered")
    reasons = [d.reason for d in await list_dead_letters(redis, "alerts")]
    for expected in [*bad.values(), "stream entry has no 'job' field"]:
        assert any(expected in reason for reason in reasons), (expected, reasons)
    assert len(provider.requests) == 10
    stats = await redis.hgetall(keys.stats("alerts"))
    assert int(stats[b"dead_lettered"]) == len(bad) + 1


async def _dlq_len_is(redis: Redis, n: int) -> bool:
    return int(await redis.xlen(keys.dead_letters("alerts"))) == n


async def test_job_naming_another_profile_is_forwarded(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    settings = make_settings()
    job = {"id": "fwd-1", "to": "+447911123456", "text": "to bulk", "profile": "bulk"}
    await redis.xadd(keys.queue("alerts"), {"job": msgpack.packb(job)})
    run_daemon(settings)
    await wait_for(lambda: all_final(redis, ["fwd-1"]))
    assert provider.requests[0]["from"] == "+447911123456"  # bulk's only number
    record = await Ledger(redis, retention=60, events_maxlen=10).get("fwd-1", profile="bulk")
    assert record is not None and record["profile"] == "bulk"


async def test_duplicate_id_creates_one_message(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    settings = make_settings()
    client = Client.from_settings(redis, settings)
    await client.send("+447911123456", "once", id="order-42")
    await client.send("+447911123456", "once", id="order-42")
    # A producer bypassing the client with a plain XADD of the same id:
    job = {"id": "order-42", "to": "+447911123456", "text": "once"}
    await redis.xadd(keys.queue("alerts"), {"job": msgpack.packb(job)})
    run_daemon(settings)
    await wait_for(lambda: all_final(redis, ["order-42"]))
    await wait_for(lambda: redis.hget(keys.stats("alerts"), "duplicates_dropped"))
    assert len(provider.requests) == 1


async def test_expired_job_is_not_sent(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    settings = make_settings()
    client = Client.from_settings(redis, settings)
    job_id = await client.send("+447911123456", "late", expires_at=time.time() - 1)
    live = await client.send("+447911123456", "fine", expires_at=time.time() + 60)
    run_daemon(settings)
    await wait_for(lambda: all_final(redis, [job_id], "expired"), what="expired")
    await wait_for(lambda: all_final(redis, [live]), what="live one sent")
    assert [r["text"] for r in provider.requests] == ["fine"]


async def test_scheduled_job_waits_for_send_at(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    settings = make_settings()
    send_at = time.time() + 1.5
    job_id = await Client.from_settings(redis, settings).send(
        "+447911123456", "later", send_at=send_at
    )
    run_daemon(settings)
    await wait_for(lambda: all_final(redis, [job_id], "scheduled"), what="scheduled")
    assert await redis.zcard(keys.schedule("alerts")) == 1
    assert provider.requests == []
    await wait_for(lambda: all_final(redis, [job_id]), what="sent at send_at")
    record = await Ledger(redis, retention=60, events_maxlen=10).get(job_id)
    assert record is not None
    sent_at = record["history"][-1]["at"]
    assert send_at <= sent_at < send_at + 2
    assert await redis.zcard(keys.schedule("alerts")) == 0


async def test_dead_consumer_work_is_finished_by_another_without_resending(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    settings = make_settings(queue={"claim_idle": 0.5})
    client = Client.from_settings(redis, settings)
    ids = await client.send_many([{"to": "+447911123456", "text": f"d{i}"} for i in range(20)])
    # Consumer "dead" takes all 20, records 8 of them as sent, then dies without acking.
    dead = WorkQueue(redis, "alerts", "dead")
    await dead.ensure_group()
    entries = await dead.read_new(20, 100)
    assert len(entries) == 20
    ledger = Ledger(redis, retention=60, events_maxlen=100)
    for entry, job_id in list(zip(entries, ids, strict=True))[:8]:
        await ledger.transition(job_id, entry.owner, "sending", profile="alerts")
        await ledger.transition(job_id, entry.owner, "sent", profile="alerts")

    run_daemon(settings)  # instance "test" claims the idle entries
    await wait_for(lambda: all_final(redis, ids), what="claimed work finished")
    sent_refs = provider.refs
    assert set(sent_refs) == set(ids[8:])
    assert max(sent_refs.values()) == 1
    pending = await redis.xpending(keys.queue("alerts"), keys.GROUP)
    await wait_for(lambda: _no_pending(redis), what="nothing pending")
    assert pending is not None


async def _no_pending(redis: Redis) -> bool:
    info = await redis.xpending(keys.queue("alerts"), keys.GROUP)
    return int(info["pending"]) == 0


async def test_entry_delivered_too_often_is_dead_lettered(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    settings = make_settings(queue={"claim_idle": 0.2, "max_deliveries": 2})
    job_id = await Client.from_settings(redis, settings).send("+447911123456", "poison")
    for name in ("a", "b"):  # two consumers took it and died
        q = WorkQueue(redis, "alerts", name)
        await q.ensure_group()
        if name == "a":
            assert await q.read_new(1, 100)
        else:
            await asyncio.sleep(0.3)
            assert await q.autoclaim(0.2, 10)
    await asyncio.sleep(0.3)
    run_daemon(settings)
    await wait_for(lambda: _dlq_len_is(redis, 1), what="dead letter")
    letters = await list_dead_letters(redis, "alerts")
    assert "delivered 3 times" in letters[0].reason
    assert provider.requests == []
    assert (await statuses(redis, [job_id]))["rejected"] == 1


async def test_replayed_dead_letter_is_processed_again(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    settings = make_settings(queue={"claim_idle": 0.2, "max_deliveries": 1})
    job_id = await Client.from_settings(redis, settings).send("+447911123456", "again")
    q = WorkQueue(redis, "alerts", "a")
    await q.ensure_group()
    assert await q.read_new(1, 100)
    await asyncio.sleep(0.3)
    running = run_daemon(settings)
    await wait_for(lambda: _dlq_len_is(redis, 1), what="dead letter")
    letters = await list_dead_letters(redis, "alerts")
    assert await replay_dead_letters(redis, "alerts", [letters[0].entry_id]) == 1
    await wait_for(lambda: all_final(redis, [job_id]), what="replayed job sent")
    assert provider.refs == {job_id: 1}
    await running.stop()


async def test_graceful_stop_leaves_unfinished_work_pending(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    provider.latency = 0.05
    settings = make_settings(window=4, queue={"batch": 20})
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": f"g{i}"} for i in range(200)]
    )
    running = run_daemon(settings)
    await wait_for(lambda: len(provider.requests) >= 20)
    assert await running.stop() == 0
    counts = await statuses(redis, ids)
    # What was read (the window and two batches ahead) finished within the grace
    # period; the rest was never read and waits, `queued`.
    assert counts["sending"] == 0
    assert 0 < counts["sent"] < 200 and counts["queued"] > 0
    run_daemon(make_settings(window=32))
    await wait_for(lambda: all_final(redis, ids), what="rest sent after restart")
    assert max(provider.refs.values()) == 1
