"""Throttling that recovers: the session paces itself to what the SMSC accepts.

Real daemon, real Redis, our SMSC simulator over real sockets. The outcomes
checked (every message delivered, no attempt used up, the window still in use
after throttling began) do not depend on how fast the machine is; only the
timeouts do, and they are generous.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from binds.smpp import SmppBind
from router import Client
from router.config import Settings
from router.store.ledger import Ledger
from sims.smscsim import SmscSimulator

from ..conftest import wait_for
from .test_smpp_flow import FINAL, Start, all_in, smpp_settings, statuses

LONG = "three parts " * 30  # 360 GSM characters: 3 segments
SLOW_OK = {"response_timeout": 10}  # a slow machine must not cause resends (segments are counted)


@pytest.fixture
def smsc_seed() -> int:
    """This module runs the simulator with seed 7 (its own throttling pattern)."""
    return 7


def with_attempts(settings: Settings, max_attempts: int) -> Settings:
    queue = settings.queue.model_copy(update={"max_attempts": max_attempts})
    return settings.model_copy(update={"queue": queue})


async def test_queue_full_smsc_gets_every_part_of_every_message(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    # An SMSC whose queue takes 20 submits/s and answers ESME_RMSGQFUL beyond. Before:
    # tps = 0 sent unpaced, every refusal used one of max_attempts (3 here) and a
    # refused later part got 3 quick retries, so messages ended failed or partial.
    smsc.config.max_rate = 20
    settings = with_attempts(smpp_settings(redis_url, tmp_path, smsc.port, smpp=SLOW_OK), 3)  # type: ignore[attr-defined]
    jobs = [
        {"to": "+447911123456", "text": LONG if i % 5 == 0 else f"short {i}"} for i in range(200)
    ]
    ids = await Client.from_settings(redis, settings).send_many(jobs)
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, ids, FINAL), 180, "final statuses")
    found = await statuses(redis, ids)
    assert found["delivered"] == 200, found
    assert smsc.stats()["queue_full"] > 0  # the SMSC did refuse: the test tested something
    assert smsc.stats()["segments"] == 160 + 40 * 3  # every part once, no partial message
    records = await Ledger(redis, retention=60, events_maxlen=10).find(ids)
    # Held in the session, never handed back: no record shows a retry.
    assert not [
        r["id"] for r in records if r and any(h["status"] == "queued" for h in r["history"][1:])
    ]


async def test_random_throttling_keeps_the_window_and_a_useful_rate(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    # 30 % of submits answered ESME_RTHROTTLED whatever the rate. Before, the window
    # halved on every throttle and needed 50 OKs in a row to grow by one: it sat at 1.
    smsc.config.throttle_ratio = 0.3
    smsc.config.response_delay = 0.05  # so that the window matters
    settings = with_attempts(smpp_settings(redis_url, tmp_path, smsc.port, smpp=SLOW_OK), 2)  # type: ignore[attr-defined]
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": f"m{i}"} for i in range(600)]
    )
    running = run_daemon(settings)
    await wait_for(lambda: smsc.stats()["throttled"] >= 30, 60, "throttling under way")
    smsc.reset()  # from here on, max_outstanding is what the session does while throttled
    bind = running.daemon.workers[0].binds[0]
    assert isinstance(bind, SmppBind)
    rates: list[float] = []

    async def sample() -> None:
        while True:
            rates.append(bind.rate)
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        await wait_for(lambda: all_in(redis, ids, FINAL), 120, "final statuses")
    finally:
        sampler.cancel()
    found = await statuses(redis, ids)
    assert found["delivered"] == 600, found
    assert smsc.stats()["throttled"] > 0
    # The window is still used in full while throttled (it collapsed to 1 before) ...
    assert smsc.stats()["max_outstanding"] >= 5, smsc.stats()
    # ... and the rate never fell to the floor (1/s): 0 is unlimited. The first decrease
    # lands near 0.7 x the accepted rate (about 100/s here), then is undone.
    limited = [r for r in rates if r > 0]
    assert not limited or min(limited) > 3, sorted(limited)[:5]
