"""The adaptive rate controller against scripted peers, in real time (short intervals)."""

from __future__ import annotations

import asyncio
import random

from binds.flow import AdaptiveRate


async def _drive(rate: AdaptiveRate, seconds: float, refuse: float, rng: random.Random) -> int:
    """Send as fast as the controller lets us for `seconds`; a share `refuse` of the
    answers, drawn at random whatever the rate, are throttles. Returns accepted count."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    taken = 0
    while loop.time() < end:
        await rate.acquire()
        if rng.random() < refuse:
            rate.throttled()
        else:
            rate.accepted()
            taken += 1
        await asyncio.sleep(0)
    return taken


async def test_a_rate_driven_to_the_floor_recovers_under_random_throttling() -> None:
    """A burst of refusals (a queue-full spell, an outage) drives the rate to the floor;
    then the peer refuses 30 % at random whatever the rate. Regression: the controller
    took each noisy interval at the floor (one or two answers) as a reason to stay
    there, and a session stayed at ~1 message/s for good."""
    rng = random.Random(7)
    rate = AdaptiveRate(0, floor=5, interval=0.1)
    await _drive(rate, 0.5, 0.0, rng)  # unlimited, all accepted
    await _drive(rate, 1.5, 1.0, rng)  # every answer a throttle: down to the floor
    assert rate.limited and rate.rate <= 10
    await _drive(rate, 6.0, 0.3, rng)
    assert rate.rate == 0 or rate.rate >= 100, f"stuck at {rate.rate:.1f}/s"


async def test_a_peer_that_throttles_above_its_capacity_is_followed() -> None:
    """A peer taking 200/s and refusing what comes faster: the rate settles near it."""
    rng = random.Random(3)
    rate = AdaptiveRate(0, floor=5, interval=0.1)
    loop = asyncio.get_running_loop()
    window: list[float] = []
    end = loop.time() + 5.0
    while loop.time() < end:
        await rate.acquire()
        now = loop.time()
        window = [t for t in window if now - t < 0.1]
        if len(window) >= 20:  # 20 per 0.1 s = 200/s
            rate.throttled()
        else:
            window.append(now)
            rate.accepted()
        await asyncio.sleep(0)
    del rng
    assert rate.limited and 100 <= rate.rate <= 300, rate.rate
