"""An account's rate and daily quota in Redis (router/store/limits.py), shared by
every instance: two `AccountLimits` on one Redis stand for two router instances."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from router.config import Account
from router.policy.accounts import Caller
from router.store import scripts
from router.store.limits import AccountLimits, Limited, quota_key, rate_key, used_today


def _caller(name: str = "acme", **limits: object) -> Caller:
    return Caller(name, Account.model_validate(limits))


async def test_no_limits_take_everything_and_touch_nothing(redis: Redis) -> None:
    limits = AccountLimits(redis)
    for _ in range(50):
        assert await limits.take(_caller(), 100) is None
    assert await redis.keys("*") == []


async def test_quota_stops_at_exactly_its_number_under_concurrent_takes(redis: Redis) -> None:
    caller = _caller(daily_quota=100)
    one, two = AccountLimits(redis), AccountLimits(redis)
    gate = asyncio.Semaphore(8)  # the test client's connection pool is small

    async def take(i: int) -> Limited | None:
        async with gate:
            return await (one if i % 2 else two).take(caller, 1 + i % 3)

    results = await asyncio.gather(*(take(i) for i in range(120)))
    counted = sum(1 + i % 3 for i, r in enumerate(results) if r is None)
    refused = [r for r in results if r is not None]
    assert await used_today(redis, "acme") == counted
    # Takes of 1 keep coming until the last one fills it: exactly 100, never more.
    assert counted == 100
    assert refused and {r.code for r in refused} == {"quota"}
    assert "daily quota of 100" in refused[0].reason
    # Until the next UTC midnight.
    assert 0 < refused[0].retry_after <= 86_400
    assert 0 < await redis.ttl(quota_key("acme")) <= 2 * 86_400


async def test_a_refused_take_counts_nothing(redis: Redis) -> None:
    caller = _caller(daily_quota=10)
    limits = AccountLimits(redis)
    assert await limits.take(caller, 8) is None
    refused = await limits.take(caller, 3)
    assert isinstance(refused, Limited) and refused.code == "quota"
    assert await limits.take(caller, 2) is None  # the 3 were not counted
    assert await limits.take(caller, 1) is not None


async def test_accounts_have_their_own_limits_in_their_own_slot(redis: Redis) -> None:
    limits = AccountLimits(redis)
    assert await limits.take(_caller("a", daily_quota=1)) is None
    assert await limits.take(_caller("b", daily_quota=1)) is None
    assert await limits.take(_caller("a", daily_quota=1)) is not None
    assert rate_key("a").startswith("sms:{acct:a}:")
    assert quota_key("a").startswith("sms:{acct:a}:")


async def _hammer(limits: AccountLimits, caller: Caller, until: float, log: list[float]) -> None:
    while (now := time.monotonic()) < until:
        if await limits.take(caller) is None:
            log.append(now)
        else:
            await asyncio.sleep(0.002)


async def test_two_instances_share_one_rate(redis: Redis) -> None:
    tps = 200
    caller = _caller(tps=tps)
    start = time.monotonic()
    log: list[float] = []
    await asyncio.gather(
        _hammer(AccountLimits(redis), caller, start + 3.5, log),
        _hammer(AccountLimits(redis), caller, start + 3.5, log),
    )
    # The rate, across both instances: 3 seconds at 200/s, within 10 %...
    steady = sum(1 for t in log if start + 0.5 <= t < start + 3.5)
    assert 3 * tps * 0.9 <= steady <= 3 * tps * 1.1, steady
    # ...and in all, 3.5 seconds' worth and the full bucket's one second at the start.
    assert 4.5 * tps * 0.9 <= len(log) <= 4.5 * tps * 1.1, len(log)


async def test_throttled_says_when_to_come_back(redis: Redis) -> None:
    caller = _caller(tps=10)
    limits = AccountLimits(redis)
    assert await limits.take(caller, 10) is None  # the burst: one second's worth
    refused = await limits.take(caller, 5)
    assert isinstance(refused, Limited) and refused.code == "throttled"
    assert "rate of 10 messages/s" in refused.reason
    assert 0.4 <= refused.retry_after <= 0.51  # 5 messages at 10/s
    await asyncio.sleep(refused.retry_after)
    assert await limits.take(caller, 5) is None
    assert 0 < await redis.pttl(rate_key("acme")) <= 2000


async def test_a_batch_larger_than_the_burst_passes_once_then_waits(redis: Redis) -> None:
    caller = _caller(tps=10)
    limits = AccountLimits(redis)
    assert await limits.take(caller, 30) is None  # 3 seconds' worth, the bucket was full
    refused = await limits.take(caller, 1)
    # Its debt: 3 s, less the 1 s burst, plus the one message (0.1 s).
    assert refused is not None and 2.0 <= refused.retry_after <= 2.11


async def test_a_slow_rate_admits_one_at_a_time(redis: Redis) -> None:
    caller = _caller(tps=0.5)
    limits = AccountLimits(redis)
    assert await limits.take(caller) is None
    refused = await limits.take(caller)
    assert refused is not None and 1.9 <= refused.retry_after <= 2.01


async def test_quota_is_checked_before_the_rate(redis: Redis) -> None:
    caller = _caller(tps=1, daily_quota=1)
    limits = AccountLimits(redis)
    assert await limits.take(caller) is None
    refused = await limits.take(caller)
    assert refused is not None and refused.code == "quota"


async def test_a_take_given_back_is_not_charged(redis: Redis) -> None:
    """A door whose enqueue failed after the take gives it back: the quota and the
    rate are as if it had not been taken (the bucket's TTL kept)."""
    caller = _caller(daily_quota=10, tps=5)
    limits = AccountLimits(redis)
    assert await limits.take(caller, 4) is None
    full = int(await redis.get(rate_key("acme")) or 0)
    await limits.give_back(caller, 3)
    assert await used_today(redis, "acme") == 1
    assert int(await redis.get(rate_key("acme")) or 0) == full - 3 * 200_000
    assert await redis.pttl(rate_key("acme")) > 0
    await limits.give_back(caller, 5)  # never below nothing
    assert await used_today(redis, "acme") == 0
    assert await limits.take(caller, 5) is None  # the rate's burst is there again


async def _redis_day(redis: Redis) -> tuple[str, int]:
    """Today on Redis' clock, and the seconds left in it."""
    seconds, _micro = await redis.time()
    return time.strftime("%Y-%m-%d", time.gmtime(seconds)), 86_400 - seconds % 86_400


async def test_instances_with_different_clocks_count_one_day(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The day is Redis' (TIME in the script), not each instance's: two instances whose
    clocks are 13 hours ahead and behind (one says tomorrow, the other yesterday)
    count into the same day, and the take that counts drops an older day's field."""
    caller = _caller(daily_quota=4)
    one, two = AccountLimits(redis), AccountLimits(redis)
    await redis.hset(quota_key("acme"), "2000-01-01", 99)  # left from an old day
    real = time.time
    for limits, skew in ((one, 13 * 3600), (two, -13 * 3600), (one, 0), (two, 13 * 3600)):
        monkeypatch.setattr(time, "time", lambda skew=skew: real() + skew)
        assert await limits.take(caller) is None
    refused = await two.take(caller)
    await one.give_back(caller)  # to the day it was taken from, whatever the clock
    monkeypatch.setattr(time, "time", real)
    today, left = await _redis_day(redis)
    assert await redis.hgetall(quota_key("acme")) == {today.encode(): b"3"}
    # Refused until Redis' midnight, not the instance's (13 hours off either way).
    assert refused is not None and refused.code == "quota"
    assert abs(refused.retry_after - left) <= 2


@pytest.mark.parametrize(
    "at",
    [0, 86_399, 86_400, 951_782_400, 951_868_799, 4_107_542_400, 1_709_164_800,
     1_735_689_599, 1_798_761_600 + 12_345, 253_402_300_799],
)  # fmt: skip
async def test_the_scripts_day_is_the_calendars(redis: Redis, at: int) -> None:
    """limit_day.lua's utc_day against Python's calendar: 1970, leap days of 2000 and
    2024, 2100 (no leap day), year ends, 9999."""
    day = await redis.eval(scripts.source("limit_day") + "return utc_day(tonumber(ARGV[1]))", 0, at)
    assert day.decode() == time.strftime("%Y-%m-%d", time.gmtime(at))
