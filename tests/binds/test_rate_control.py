"""The adaptive rate controller against scripted peers, in real time (short intervals)."""

from __future__ import annotations

import asyncio
import random

import pytest

from binds.flow import AdaptiveRate, QueueProbe


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


async def test_rate_changes_are_reported_both_ways_once_per_change() -> None:
    """Slow-downs and speed-ups both reach `on_change` (where the SMPP session logs them),
    once per change of the rate, not once per answer."""
    changes: list[tuple[float, float]] = []
    rate = AdaptiveRate(0, floor=5, interval=0.1, on_change=lambda a, b: changes.append((a, b)))
    loop = asyncio.get_running_loop()
    answers = 0
    window: list[float] = []
    end = loop.time() + 1.5
    while loop.time() < end:  # a peer taking 200/s, refusing beyond
        await rate.acquire()
        answers += 1
        now = loop.time()
        window = [t for t in window if now - t < 0.1]
        if len(window) >= 20:
            rate.throttled()
        else:
            window.append(now)
            rate.accepted()
        await asyncio.sleep(0)
    assert any(0 < after < before or (before == 0 and after > 0) for before, after in changes)
    slowed = len(changes)
    end = loop.time() + 4.0
    while loop.time() < end and rate.limited:  # then it takes everything
        await rate.acquire()
        answers += 1
        rate.accepted()
        await asyncio.sleep(0)
    assert not rate.limited, rate.rate  # back to unlimited ...
    assert changes[-1][1] == 0.0 and len(changes) > slowed  # ... and that was reported
    assert all(before != after for before, after in changes)
    assert len(changes) < 60 < answers  # at most one per interval (0.1 s), not per answer


async def test_a_measured_cap_holds_and_is_not_taken_for_random_throttling() -> None:
    rate = AdaptiveRate(0, floor=1, interval=0.1)
    now = asyncio.get_running_loop().time()
    rate.cap(50, now)
    assert rate.rate == 50 and rate.caps == 1
    rate.cap(80, now)  # not a slow-down: nothing to do
    assert rate.rate == 50 and rate.caps == 1
    rng = random.Random(1)
    await _drive(rate, 0.5, 0.0, rng)  # the peer now takes everything: the rate grows
    assert rate.rate == 0 or rate.rate > 50


def test_the_queue_probe_tells_a_queue_that_drains_slowly_from_a_congested_one() -> None:
    """A queue that fills again as soon as probing ends (little accepted between) drains
    at a rate: the probe hands that rate to the rate controller. A queue that took many
    windows before filling was congested: no rate to slow down to."""
    window = 10

    def start_probing(probe: QueueProbe, now: float) -> float:
        for _ in range(QueueProbe.TRIGGER - 1):
            assert probe.full(now, window) == 0.0
        took = probe.full(now, window)
        assert probe.limit == 1
        return took

    def probe_until_the_window(probe: QueueProbe) -> int:
        taken = 0
        while probe.limit:
            taken += probe.limit
            probe.accepted(probe.limit, window)
        return taken

    probe = QueueProbe()
    assert start_probing(probe, 0.0) == 0.0  # the first run: nothing to compare with
    taken = probe_until_the_window(probe)
    probe.accepted(5, window)  # then the queue fills again at once
    assert start_probing(probe, 2.0) == pytest.approx((taken + 5) / 2.0)
    probe_until_the_window(probe)
    for _ in range(QueueProbe.QUICK * window):  # a long spell of room, one answer at a time
        probe.accepted(1, window)
    assert not probe.watching  # nothing more to count until the next queue-full answer
    assert start_probing(probe, 9.0) == 0.0
    assert probe.probes == 3
