"""Poison and oversized jobs against a real daemon, Redis and HTTP provider.

Each of these once stalled a worker: redelivered forever, never dead-lettered, or
encoded a huge text on the event loop. Now each ends in the dead-letter stream at
its first delivery with a reason naming the field (or what failed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis

from binds.http import HttpSender
from router.config import ConfigError, Settings, parse_settings
from router.policy.checks import text_problem
from router.store import keys
from router.store.ledger import Ledger
from router.store.queue import list_dead_letters

from ..conftest import Provider, RunningDaemon, wait_for

Start = Callable[[Settings], RunningDaemon]
GOOD = {"to": "+447911123456", "text": "good"}


def nested(depth: int) -> dict[str, Any]:
    node: Any = 1
    for _ in range(depth):
        node = {"a": node}
    return node  # type: ignore[no-any-return]


async def dead_letter_reasons(redis: Redis, profile: str = "alerts") -> dict[str, str]:
    """Job id (or entry id when the job has none) -> reason."""
    out = {}
    for letter in await list_dead_letters(redis, profile, 1000):
        raw = letter.fields.get("job")
        try:
            job_id = str(msgpack.unpackb(raw)["id"]) if raw else letter.entry_id
        except Exception:
            job_id = letter.entry_id
        out[job_id] = letter.reason
    return out


async def status_of(redis: Redis, job_id: str) -> str | None:
    ledger = Ledger(redis, retention=60, events_maxlen=10)
    record = await ledger.get(job_id, profiles=("alerts", "bulk"))
    return None if record is None else str(record["status"])


async def test_poison_jobs_are_dead_lettered_at_once_with_the_field_named(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    # claim_idle is long: a job left pending would show up as "never dead-lettered",
    # not be rescued by max_deliveries within the test.
    settings = make_settings(queue={"claim_idle": 600})
    poison: dict[str, tuple[dict[str, Any], str]] = {
        # RecursionError while recording; redelivered forever (even past max_deliveries,
        # whose dead-lettering recorded the same meta and failed the same way).
        "deep-meta": ({"meta": nested(1000)}, "job.meta: nested deeper than 8 levels"),
        "big-meta": ({"meta": {"k": "x" * 9000}}, "job.meta: larger than 8192 bytes encoded"),
        "far-send": ({"send_at": 1e17}, "job.send_at: out of range"),
        "huge-send": ({"send_at": 2**63}, "job.send_at: out of range"),
        "max-expiry": ({"expires_at": 1.7e308}, "job.expires_at: out of range"),
        "iso-far": ({"send_at": "9999-12-31T23:59:59-05:00"}, "job.send_at: out of range"),
        "plus-plus": ({"to": "++447911123456"}, "job.to: '++447911123456' is not a valid"),
        "long-text": ({"text": "a" * 39_100}, "job.text: 256 segments, more than max_segments"),
        "longer-text": ({"text": "a" * 60_000}, "job.text: 60000 characters, more than"),
    }
    q = keys.queue("alerts")
    for i in range(3):
        await redis.xadd(q, {"job": msgpack.packb({**GOOD, "id": f"good-{i}"})})
    for job_id, (fields, _reason) in poison.items():
        await redis.xadd(q, {"job": msgpack.packb({**GOOD, **fields, "id": job_id})})
    for i in range(3, 6):
        await redis.xadd(q, {"job": msgpack.packb({**GOOD, "id": f"good-{i}"})})

    run_daemon(settings)

    async def all_dead() -> bool:
        return len(await dead_letter_reasons(redis)) == len(poison)

    await wait_for(all_dead, what="every poison job dead-lettered")
    reasons = await dead_letter_reasons(redis)
    for job_id, (_fields, expected) in poison.items():
        assert expected in reasons[job_id], (job_id, reasons[job_id])
    good = [f"good-{i}" for i in range(6)]

    async def good_sent() -> bool:
        return all([await status_of(redis, i) == "sent" for i in good])

    await wait_for(good_sent, what="good jobs sent")
    assert sorted(r["ref"] for r in provider.requests) == good
    # Texts over the limit are refused up front: recorded `rejected`, never sent.
    assert await status_of(redis, "long-text") == "rejected"
    info = await redis.xpending(q, keys.GROUP)
    assert int(info["pending"]) == 0


async def test_a_job_that_fails_unexpectedly_is_dead_lettered_naming_the_error(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    # Anything but a Redis error used to leave the entry pending, to fail again on
    # every redelivery. A bind that is closed under the worker raises BindError.
    settings = make_settings(queue={"claim_idle": 600})
    running = run_daemon(settings)
    await wait_for(lambda: running.daemon.workers, what="workers started")
    worker = next(w for w in running.daemon.workers if w.name == "alerts")
    bind = worker.binds[0]
    assert isinstance(bind, HttpSender)
    await bind.close()
    await redis.xadd(keys.queue("alerts"), {"job": msgpack.packb({**GOOD, "id": "boom"})})

    async def dead() -> bool:
        return "boom" in await dead_letter_reasons(redis)

    await wait_for(dead, what="dead letter")
    reason = (await dead_letter_reasons(redis))["boom"]
    assert reason == "failed while handling the job: BindError"
    assert await status_of(redis, "boom") == "rejected"
    assert provider.requests == []


def profile_settings(**profile: Any) -> Settings:
    base: dict[str, Any] = {"numbers": ["+16501112345"], **profile}
    if base["protocol"] == "smpp":
        base["smpp"] = {"host": "127.0.0.1", "system_id": "x", "password": "pw", **base["smpp"]}
    else:
        base["http"] = {"url": "http://127.0.0.1:9/send"}
    return parse_settings({"router": {"redis": "redis://127.0.0.1:1"}, "profiles": {"p": base}})


A307 = "a" * 307


@pytest.mark.parametrize(
    ("profile", "text", "problem"),
    [
        ({"protocol": "http", "max_segments": 1}, "a" * 160, None),
        ({"protocol": "http", "max_segments": 1}, "a" * 161, "161 characters, more than"),
        ({"protocol": "http", "max_segments": 2}, "a" * 306, None),
        ({"protocol": "http", "max_segments": 2}, "a" * 307, "3 segments, more than"),
        ({"protocol": "http", "max_segments": 2}, "я" * 134, None),  # UCS2: 67 per part
        ({"protocol": "http", "max_segments": 2}, "я" * 135, "3 segments"),
        ({"protocol": "http", "max_segments": 2}, "€" * 153, "3 segments"),  # escapes: 2
        # The SMPP profile's alphabet decides: 100 letters are 1 GSM part, 2 in UCS2.
        ({"protocol": "smpp", "smpp": {}, "max_segments": 1}, "a" * 100, None),
        ({"protocol": "smpp", "smpp": {"encoding": "ucs2"}, "max_segments": 1}, "a" * 100, "2 "),
        # message_payload is one PDU, but counted in the parts the SMSC will bill.
        ({"protocol": "smpp", "smpp": {"long_messages": "payload"}, "max_segments": 2}, A307, "3 "),
        ({"protocol": "smpp", "smpp": {"encoding": "latin1"}}, "я", "cannot be sent in the latin1"),
    ],
)
def test_text_limit_follows_the_profile(
    profile: dict[str, Any], text: str, problem: str | None
) -> None:
    found = text_problem(text, profile_settings(**profile).profiles["p"])
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith("job.text: ") and problem in found


def test_a_huge_text_is_refused_without_being_counted() -> None:
    # 1 MB took 5.8 s to encode on the event loop; the length bound answers at once.
    profile = profile_settings(protocol="http").profiles["p"]
    started = time.perf_counter()
    problem = text_problem("€" * 1_000_000, profile)
    assert time.perf_counter() - started < 0.05
    assert problem == (
        "job.text: 1000000 characters, more than max_segments = 255 can carry (at most 40800)"
    )


def test_max_segments_is_validated() -> None:
    for bad in (0, 256):
        with pytest.raises(ConfigError, match=r"profiles\.p\.max_segments: must be between 1"):
            profile_settings(protocol="http", max_segments=bad)


async def test_an_origin_that_is_not_utf8_does_not_stop_the_daemon(
    redis: Redis, provider: Provider, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    # Reading the entry's owner raised UnicodeDecodeError in the reader: the daemon exited.
    settings = make_settings(queue={"claim_idle": 600})
    job = msgpack.packb({**GOOD, "id": "odd-origin"})
    await redis.xadd(keys.queue("alerts"), {"job": job, "origin": b"\xff\xfe"})
    await redis.xadd(keys.queue("alerts"), {"job": msgpack.packb({**GOOD, "id": "after"})})
    running = run_daemon(settings)

    async def both_sent() -> bool:
        return [await status_of(redis, i) for i in ("odd-origin", "after")] == ["sent", "sent"]

    await wait_for(both_sent, what="both jobs sent")
    assert not running.task.done()
