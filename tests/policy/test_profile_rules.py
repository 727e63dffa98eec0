"""Profile rules end to end: real Redis, the real daemon, a real HTTP provider."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from router import Client
from router.config import Settings, parse_settings
from router.policy.audience import add_opt_out, remove_opt_out
from router.policy.jobs import encode_job
from router.store import keys
from router.store.ledger import Ledger
from router.store.queue import list_dead_letters

from ..conftest import Provider, RunningDaemon, config_dict, wait_for

Start = Callable[[Settings], RunningDaemon]
A, B = "+14155552671", "+14082223333"


def rules_config(
    redis_url: str,
    provider: Provider,
    tmp_path: Path,
    *,
    campaign: dict[str, Any] | None = None,
    instance: str = "test",
    **profile: Any,
) -> Settings:
    data = config_dict(redis_url, provider.url, numbers=[A, B], window=64, **profile)
    data["router"].update(instance=instance, state_dir=str(tmp_path / "var"))
    spec = {"brand": "B", "status": "Confirmed", "brand_status": "Verified"}
    data["campaigns"] = {"c": {**spec, **(campaign or {})}}
    data["numbers"] = {
        A: {"campaign": "c"},
        B: {"campaign": "c"},
        "+447911123456": {"features": ["SmsSender", "InternationalSmsSender"]},
    }
    data["templates"] = {
        "otp": {
            "text": {
                "en": "Your code is {code}",
                "es": "Tu código es {code}",
                "pt": "Código {code}",
            },
            "default_lang": "en",
        }
    }
    return parse_settings(data, env={}, base_dir=tmp_path)


async def records(redis: Redis, ids: list[str]) -> list[dict[str, Any]]:
    # Jobs enqueued by a plain XADD have no locator: looked for in the test's profile.
    found = await Ledger(redis, retention=3600, events_maxlen=1000).find(ids, profiles=["alerts"])
    return [r or {} for r in found]


async def settled(redis: Redis, ids: list[str]) -> bool:
    final = {"sent", "rejected", "scheduled"}
    return all(r.get("status") in final for r in await records(redis, ids))


async def test_low_volume_stops_at_exactly_6000_across_two_numbers_and_two_instances(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path, run_daemon: Start
) -> None:
    one = rules_config(redis_url, provider, tmp_path, campaign={"tier": "LowVolume"}, instance="a")
    two = rules_config(redis_url, provider, tmp_path, campaign={"tier": "LowVolume"}, instance="b")
    ids = await Client.from_settings(redis, one).send_many(
        [{"to": f"+1212555{i:04d}", "text": f"m{i}"} for i in range(6050)]
    )
    run_daemon(one)
    run_daemon(two)
    await wait_for(lambda: settled(redis, ids), 120, "every job settled")
    found = await records(redis, ids)
    assert Counter(r["status"] for r in found) == {"sent": 6000, "rejected": 50}
    assert Counter(r["from"] for r in found if r["status"] == "sent") == {A: 3000, B: 3000}
    assert len(provider.requests) == 6000
    rejected = [r for r in found if r["status"] == "rejected"]
    assert {r["error_code"] for r in rejected} == {"daily_cap_reached"}
    assert "6000 a day" in rejected[0]["error"]
    # Both instances took part (each consumer holds acknowledged work in its history).
    assert await redis.hget(keys.stats("alerts"), "rejected_daily_cap_reached") == b"50"
    # Rejected by a rule: acknowledged, not dead-lettered, and an event with the code.
    assert await list_dead_letters(redis, "alerts") == []
    events = [
        f for _, f in await redis.xrange(keys.events("alerts")) if f.get(b"status") == b"rejected"
    ]
    assert len(events) == 50 and {f[b"error_code"] for f in events} == {b"daily_cap_reached"}


async def test_over_cap_defer_waits_for_the_next_utc_day(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path, run_daemon: Start
) -> None:
    settings = rules_config(
        redis_url,
        provider,
        tmp_path,
        campaign={"tier": "StandardVolume", "daily_cap": 3},
        over_cap="defer",
    )
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+12125550123", "text": f"m{i}"} for i in range(5)]
    )
    run_daemon(settings)
    await wait_for(lambda: settled(redis, ids), 30, "settled")
    found = await records(redis, ids)
    assert Counter(r["status"] for r in found) == {"sent": 3, "scheduled": 2}
    midnight = (time.time() // 86_400 + 1) * 86_400
    due = await redis.zrange(keys.schedule("alerts"), 0, -1, withscores=True)
    assert len(due) == 2 and all(score == midnight for _, score in due)
    deferred = next(r for r in found if r["status"] == "scheduled")
    assert deferred["error_code"] == "daily_cap_reached"
    assert "deferred to" in deferred["history"][-1]["note"]


async def test_a_campaign_not_confirmed_never_sends(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path, run_daemon: Start
) -> None:
    settings = rules_config(redis_url, provider, tmp_path, campaign={"status": "Pending"})
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+12125550123", "text": "hi"}, {"to": "+12125550124", "text": "hi", "from": A}]
    )
    run_daemon(settings)
    await wait_for(lambda: settled(redis, ids), 20, "settled")
    for record in await records(redis, ids):
        assert record["status"] == "rejected"
        assert record["error_code"] == "campaign_not_confirmed"
        assert "campaign 'c' is Pending" in record["error"]
    assert provider.requests == []


async def test_templates_render_in_the_job_language_with_fallback(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path, run_daemon: Start
) -> None:
    settings = rules_config(redis_url, provider, tmp_path, template="otp")
    to = "+12125550123"
    jobs = [
        {"id": "es", "to": to, "template": "otp", "vars": {"code": "111"}, "lang": "es"},
        {"id": "ptbr", "to": to, "template": "otp", "vars": {"code": "222"}, "lang": "pt-BR"},
        {"id": "de", "to": to, "template": "otp", "vars": {"code": "333"}, "lang": "de"},
        {"id": "meta", "to": to, "template": "otp", "meta": {"code": "444"}},
        {"id": "default", "to": to, "vars": {"code": "555"}},  # the profile's template
    ]
    ids = await Client.from_settings(redis, settings).send_many(jobs)
    # The doors refuse these (tests/policy/test_submit_checks.py); a plain XADD still reaches
    # the worker, which dead-letters them.
    for bad in (
        {"id": "missing", "to": to, "template": "otp", "vars": {"other": 1}},
        {"id": "unknown", "to": to, "template": "nope"},
    ):
        await redis.xadd(keys.queue("alerts"), {"job": encode_job(bad)})
        ids.append(str(bad["id"]))
    run_daemon(settings)
    await wait_for(lambda: settled(redis, ids), 20, "settled")
    found = {r["id"]: r for r in await records(redis, ids)}
    sent = {r["ref"]: r["text"] for r in provider.requests}
    assert sent == {
        "es": "Tu código es 111",
        "ptbr": "Código 222",
        "de": "Your code is 333",
        "meta": "Your code is 444",
        "default": "Your code is 555",
    }
    assert found["es"]["text"] == "Tu código es 111"  # the record holds what was sent
    assert found["missing"]["status"] == "rejected"
    assert "missing variable 'code'" in found["missing"]["error"]
    assert found["unknown"]["status"] == "rejected"
    reasons = [d.reason for d in await list_dead_letters(redis, "alerts")]
    assert "job.vars.code: missing variable 'code' (template 'otp')" in str(reasons)
    assert "job.template: unknown template 'nope'" in str(reasons)


async def test_smart_encoding_sends_gsm_look_alikes(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path, run_daemon: Start
) -> None:
    settings = rules_config(redis_url, provider, tmp_path, smart_encoding=True)
    ids = await Client.from_settings(redis, settings).send_many(
        [
            {
                "id": "quotes",
                "to": "+12125550123",
                "text": "It\u2019s \u201cdone\u201d \u2014 ok\u2026",
            },
            {"id": "emoji", "to": "+12125550123", "text": "It\u2019s done \U0001f389"},
        ]
    )
    run_daemon(settings)
    await wait_for(lambda: settled(redis, ids), 20, "settled")
    sent = {r["ref"]: r["text"] for r in provider.requests}
    assert sent == {"quotes": 'It\'s "done" - ok...', "emoji": "It\u2019s done \U0001f389"}
    found = {r["id"]: r for r in await records(redis, ids)}
    assert found["quotes"]["text"] == 'It\'s "done" - ok...'


async def test_opted_out_recipient_is_rejected_until_opted_in(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path, run_daemon: Start
) -> None:
    settings = rules_config(redis_url, provider, tmp_path, blocklist=["+1900"])
    client = Client.from_settings(redis, settings)
    to = "+12125550123"
    await add_opt_out(redis, "alerts", to)
    running = run_daemon(settings)
    first = await client.send_many(
        [
            {"id": "out", "to": to, "text": "hi"},
            {"id": "keyword-reply.x", "to": to, "text": "You are unsubscribed."},
            {"id": "premium", "to": "+19005550123", "text": "hi"},
        ]
    )
    await wait_for(lambda: settled(redis, first), 20, "settled")
    found = {r["id"]: r for r in await records(redis, first)}
    assert found["out"]["status"] == "rejected"
    assert found["out"]["error_code"] == "opted_out"
    assert found["keyword-reply.x"]["status"] == "sent"  # the STOP's own answer goes out
    assert found["premium"]["error_code"] == "blocked"
    await remove_opt_out(redis, "alerts", to)
    [again] = await client.send_many([{"id": "back", "to": to, "text": "welcome back"}])
    await wait_for(lambda: settled(redis, [again]), 20, "settled")
    assert (await records(redis, [again]))[0]["status"] == "sent"
    assert await running.stop() == 0


async def test_sticky_mappings_are_written_with_the_sending_record_and_kept(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path, run_daemon: Start
) -> None:
    settings = rules_config(redis_url, provider, tmp_path, sender="sticky", sticky_ttl=3600)
    client = Client.from_settings(redis, settings)
    recipients = [f"+1212555{i:04d}" for i in range(20)]
    running = run_daemon(settings)
    first = await client.send_many([{"to": to, "text": "one"} for to in recipients])
    await wait_for(lambda: settled(redis, first), 20, "first round")
    chosen = {r["to"]: r["from"] for r in await records(redis, first)}
    assert set(chosen.values()) == {A, B}
    for to in recipients:
        assert (await redis.get(keys.sticky("alerts", to))).decode() == chosen[to]
        assert 3500 < await redis.ttl(keys.sticky("alerts", to)) <= 3600
    assert await running.stop() == 0
    run_daemon(settings)  # a restart: the mappings hold
    again = await client.send_many([{"to": to, "text": "two"} for to in reversed(recipients)])
    await wait_for(lambda: settled(redis, again), 20, "second round")
    assert {r["to"]: r["from"] for r in await records(redis, again)} == chosen
