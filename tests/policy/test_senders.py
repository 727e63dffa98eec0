"""Sender strategies and daily caps against a real Redis (router/policy/senders.py)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from redis.asyncio import Redis

from router.config import Settings, parse_settings
from router.policy.rules import Refusal, SenderRules
from router.policy.senders import SenderPool, Want, _today
from router.store import keys

A, B, C = "+14155552671", "+14082223333", "+12125550100"
UK = "+447911123456"
INTL = ["SmsSender", "InternationalSmsSender"]


def settings_for(
    numbers: list[str], *, sender: str = "round_robin", campaign: dict[str, Any] | None = None
) -> Settings:
    table = {
        n: {"campaign": "c", "features": INTL} if n.startswith("+1") else {"features": INTL}
        for n in numbers
    }
    spec = {"brand": "B", "status": "Confirmed", "tier": "StandardVolume", **(campaign or {})}
    return parse_settings(
        {
            "router": {"redis": "redis://127.0.0.1:1"},
            "campaigns": {"c": spec},
            "numbers": table,
            "profiles": {
                "p": {
                    "protocol": "http",
                    "numbers": numbers,
                    "sender": sender,
                    "http": {"url": "http://127.0.0.1:9/send"},
                }
            },
        },
        env={},
    )


def pool(redis: Redis, settings: Settings) -> SenderPool:
    profile = settings.profiles["p"]
    return SenderPool(redis, "p", profile, SenderRules("p", profile.numbers, settings))


async def choose(senders: SenderPool, wants: list[Want]) -> list[str | Refusal]:
    """One batch's picks; the new sticky mappings written as the pipeline's sending.lua
    writes them (SET with the TTL), so the next batch sees them."""
    async with senders._redis.pipeline(transaction=False) as pipe:
        senders.commands(pipe, wants)
        replies = await pipe.execute()
    picks, remember = await senders.pick(wants, replies)
    async with senders._redis.pipeline(transaction=False) as pipe:
        for i in remember:
            pipe.set(keys.sticky("p", wants[i].to), str(picks[i]), ex=senders.sticky_ttl)
        await pipe.execute()
    return picks


async def test_round_robin_300_over_3_is_100_each_across_two_instances(redis: Redis) -> None:
    settings = settings_for([A, B, C])
    first, second = pool(redis, settings), pool(redis, settings)
    picks: list[str | Refusal] = []
    for i in range(6):
        batch = [Want(f"+1212555{i:02d}{j:02d}") for j in range(50)]
        picks += await choose(first if i % 2 else second, batch)
    assert Counter(picks) == {A: 100, B: 100, C: 100}


async def test_round_robin_skips_numbers_that_cannot_send_this_message(redis: Redis) -> None:
    settings = settings_for([A, B, UK])  # to the UK only the US numbers with Intl... all can
    senders = pool(redis, settings)
    picks = await choose(senders, [Want("+12125550123", use_case=None) for _ in range(30)])
    assert Counter(picks) == {A: 10, B: 10, UK: 10}
    # A use case the campaign does not list: the US numbers may not, the UK one may.
    limited = settings_for([A, B, UK], campaign={"use_cases": ["2FA"]})
    picks = await choose(pool(redis, limited), [Want("+12125550123", "MARKETING")] * 20)
    assert Counter(picks) == {UK: 20}


async def test_explicit_from_wins_when_allowed_and_is_refused_otherwise(redis: Redis) -> None:
    settings = settings_for([A, B], campaign={"use_cases": ["2FA"]})
    senders = pool(redis, settings)
    picks = await choose(
        senders, [Want("+12125550123", sender=B), Want("+12125550123", "X", sender=B)]
    )
    assert picks[0] == B
    assert isinstance(picks[1], Refusal) and picks[1].code == "use_case_not_allowed"


async def test_sticky_keeps_a_recipient_on_its_number_across_instances_and_restarts(
    redis: Redis,
) -> None:
    settings = settings_for([A, B, C], sender="sticky")
    recipients = [f"+1212555{i:04d}" for i in range(30)]
    first = await choose(pool(redis, settings), [Want(r) for r in recipients])
    assert Counter(first) == {A: 10, B: 10, C: 10}  # new recipients spread round robin
    for _ in range(3):  # another instance, then "after a restart": new objects each time
        again = await choose(pool(redis, settings), [Want(r) for r in reversed(recipients)])
        assert again == list(reversed(first))
    ttl = await redis.ttl(keys.sticky("p", recipients[0]))
    assert 364 * 86_400 < ttl <= 365 * 86_400


async def test_sticky_mapping_dropped_when_the_number_leaves_the_pool(redis: Redis) -> None:
    recipient = "+12125550123"
    await redis.set(keys.sticky("p", recipient), "+16509999999")  # not in the pool (any more)
    senders = pool(redis, settings_for([A, B], sender="sticky"))
    [picked] = await choose(senders, [Want(recipient)])
    assert picked in (A, B)
    assert (await redis.get(keys.sticky("p", recipient))).decode() == picked
    assert await choose(senders, [Want(recipient)] * 5) == [picked] * 5


async def test_geomatch_prefers_area_code_then_country(redis: Redis) -> None:
    settings = settings_for([UK, A, C], sender="geomatch")
    senders = pool(redis, settings)
    picks = await choose(
        senders,
        [Want("+14155550999"), Want("+12125550999"), Want("+447700900123")] * 5,
    )
    assert picks[0::3] == [A] * 5  # 415 -> the 415 number
    assert picks[1::3] == [C] * 5  # 212 -> the 212 number
    assert picks[2::3] == [UK] * 5  # the UK -> the UK number
    # 312: no number of that area code; the US ones share the work.
    chicago = await choose(senders, [Want(f"+1312555{i:04d}") for i in range(10)])
    assert Counter(chicago) == {A: 5, C: 5}


async def test_sticky_geomatch_first_pick_is_geographic_then_kept(redis: Redis) -> None:
    settings = settings_for([UK, A, C], sender="sticky+geomatch")
    assert await choose(pool(redis, settings), [Want("+12125550999")]) == [C]
    # The mapping wins over geography later (here: the same), across a new instance.
    assert await choose(pool(redis, settings), [Want("+12125550999")] * 3) == [C] * 3


async def test_low_volume_cap_is_exact_across_numbers_and_concurrent_instances(
    redis: Redis,
) -> None:
    settings = settings_for([A, B], campaign={"tier": "LowVolume"})
    instances = [pool(redis, settings), pool(redis, settings)]

    async def run(senders: SenderPool) -> list[str | Refusal]:
        picks: list[str | Refusal] = []
        for _ in range(31):
            picks += await choose(senders, [Want(f"+1212555{j:04d}") for j in range(100)])
        return picks

    results = await asyncio.gather(*(run(s) for s in instances))
    picks = [p for r in results for p in r]
    sent = [p for p in picks if isinstance(p, str)]
    refused = [p for p in picks if isinstance(p, Refusal)]
    assert len(sent) == 6000 and Counter(sent) == {A: 3000, B: 3000}
    assert len(refused) == 200 and {r.code for r in refused} == {"daily_cap_reached"}
    assert "campaign c (6000 a day)" in refused[0].reason
    assert await redis.hget(keys.campaign_counts(_today()), "c") == b"6000"
    assert 86_400 < await redis.ttl(keys.campaign_counts(_today())) <= 2 * 86_400
    # Not counted: a message abroad from the same numbers still goes.
    abroad = await choose(instances[0], [Want("+447700900123")])
    assert abroad[0] in (A, B)


async def test_a_full_campaign_falls_over_to_a_number_without_a_cap(redis: Redis) -> None:
    settings = parse_settings(
        {
            "router": {"redis": "redis://127.0.0.1:1"},
            "campaigns": {
                "small": {
                    "brand": "B",
                    "status": "Confirmed",
                    "daily_cap": 3,
                    "tier": "StandardVolume",
                },
                "free": {"brand": "B", "status": "Confirmed", "tier": "StandardVolume"},
            },
            "numbers": {A: {"campaign": "small"}, B: {"campaign": "free"}},
            "profiles": {
                "p": {
                    "protocol": "http",
                    "numbers": [A, B],
                    "http": {"url": "http://127.0.0.1:9/send"},
                }
            },
        },
        env={},
    )
    picks = await choose(pool(redis, settings), [Want("+12125550123")] * 12)
    assert Counter(picks) == {A: 3, B: 9}


async def test_a_new_recipient_twice_in_one_batch_gets_one_number(redis: Redis) -> None:
    senders = pool(redis, settings_for([A, B, C], sender="sticky"))
    picks = await choose(senders, [Want("+12125550123"), Want("+12125550999")] * 3)
    assert len(set(picks[0::2])) == 1 and len(set(picks[1::2])) == 1
    assert picks[0] != picks[1]  # two recipients, two rotation positions
    mapped = await redis.get(keys.sticky("p", "+12125550123"))
    assert mapped is not None and mapped.decode() == picks[0]
