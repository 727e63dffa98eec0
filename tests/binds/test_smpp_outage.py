"""An SMSC outage holds messages, it does not fail them.

Real daemon, real Redis, our SMSC simulator started only after an outage
longer than max_attempts x response_timeout: every message must still end
delivered (none failed), a message whose validity ends during the outage ends
expired, and health shows the backlog meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from redis.asyncio import Redis

from router import Client
from router.config import Settings
from router.daemon.daemon import health_key
from sims.smscsim import SimConfig, SmscSimulator

from ..conftest import free_port, wait_for
from .test_smpp_flow import Start, all_in, smpp_settings, statuses

# Seconds: before the fix, 201 messages through a window of 100 used up all 3 attempts
# (1 s each waiting for a bind) in about 9 s and ended failed.
OUTAGE = 12.0


def outage_settings(redis_url: str, tmp: Path, port: int) -> Settings:
    settings = smpp_settings(redis_url, tmp, port, window=100, smpp={"response_timeout": 1})
    queue = settings.queue.model_copy(update={"max_attempts": 3})
    return settings.model_copy(update={"queue": queue})


async def test_messages_wait_for_the_smsc_and_go_when_it_returns(
    redis: Redis, redis_url: str, tmp_path: Path, run_daemon: Start
) -> None:
    port = free_port()  # nothing listens here until the SMSC "returns"
    settings = outage_settings(redis_url, tmp_path, port)
    client = Client.from_settings(redis, settings)
    ids = await client.send_many(
        [
            {"to": "+447911123456", "text": "long " * 40 if i % 10 == 0 else f"m{i}"}
            for i in range(200)
        ]
    )
    expiring = await client.send("+447911123456", "too late", expires_at=time.time() + 2)
    running = run_daemon(settings)

    async def backlog_shown() -> bool:
        raw = await redis.get(health_key("test"))
        if raw is None:
            return False
        counts = json.loads(raw)["backlog"]["sms"]
        return int(counts["stream"]) + int(counts["scheduled"]) == 201

    await wait_for(backlog_shown, 20, "backlog in health")
    await asyncio.sleep(OUTAGE)
    found = await statuses(redis, [*ids, expiring])
    assert found["failed"] == 0 and found["sent"] == 0, found
    assert running.daemon.workers[0].binds[0].ready is False

    sim = SmscSimulator(SimConfig(seed=3, receipt_delay=0.01))
    await sim.start(port=port)
    try:
        await wait_for(lambda: all_in(redis, ids, {"delivered"}), 60, "delivered after the outage")
        await wait_for(lambda: all_in(redis, [expiring], {"expired"}), 20, "expired")
        found = await statuses(redis, ids)
        assert found["delivered"] == 200, found
        assert sim.stats()["segments"] >= 180 + 20 * 2
    finally:
        await sim.close()
