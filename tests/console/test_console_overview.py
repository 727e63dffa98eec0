"""The overview's figures, read from a real Redis holding what the daemon and the
doors write: an instance's health record, work waiting on a profile's stream, a dead
letter, events of the last seconds, a campaign's count today, spend today. Values
from Redis are escaped in the page."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from router.store import instances, keys
from router.summary import today

from ..conftest import Provider, wait_for
from .site import READER, console_config, get, sign_in


@pytest.fixture
def data(redis_url: str, provider: Provider, tmp_path: Path) -> dict[str, Any]:
    found = console_config(redis_url, provider.url, tmp_path)
    found["campaigns"]["test"]["daily_cap"] = 200
    return found


def _row(page: str, attribute: str, name: str) -> str:
    found = re.search(rf'<tr {attribute}="{re.escape(name)}"[^>]*>(.*?)</tr>', page, re.S)
    assert found is not None, f"no row {attribute}={name}"
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", found.group(1))).strip()


async def test_the_overview_shows_what_redis_holds(
    http: aiohttp.ClientSession, redis: Redis
) -> None:
    now = time.time()
    record = {
        "instance": "edge-1",
        "host": "box",
        "pid": 4242,
        "started_at": now - 3700,
        "at": now,
        "profiles": {"alerts": {"in_flight": 3, "capacity": 8, "ready": True}},
        "binds": {
            "smsc-a#1": {"state": "bound", "error": None, "ready": True},
            # What a record says of a bind beyond its state, once the daemon writes it.
            "smsc-b#1": {
                "state": "bound",
                "error": None,
                "ready": True,
                "window": 10,
                "in_flight": 4,
                "rate": 52.345,
                "throttles": 7,
            },
            "smsc-a#2": {"state": "unbound", "error": "connection refused", "ready": False},
            "<img src=x onerror=alert(1)>": {"state": "bound", "error": None, "ready": True},
        },
        "connectors": {"smsc-a": {"state": "up"}, "backup": {"state": "open"}},
    }
    await instances.publish(redis, "edge-1", record, 15)
    # Three jobs waiting on alerts' stream, the first 90 s old; one dead letter on bulk.
    await redis.xadd(keys.queue("alerts"), {"job": b"x"}, id=f"{int((now - 90) * 1000)}-0")
    for _ in range(2):
        await redis.xadd(keys.queue("alerts"), {"job": b"x"})
    await redis.xadd(keys.dead_letters("bulk"), {"reason": "bad"})
    # Events of the last seconds: 20 delivered and 10 failed over both profiles, and
    # one old event outside the window.
    await redis.xadd(keys.events("alerts"), {"status": "sent"}, id=f"{int((now - 60) * 1000)}-0")
    for i in range(30):
        profile = "alerts" if i % 2 else "bulk"
        status = "delivered" if i < 20 else "failed"
        await redis.xadd(keys.events(profile), {"id": f"j{i}", "status": status})
    await redis.hset(keys.campaign_counts(today()), "test", 50)
    await redis.hset(keys.spend("alerts", keys.utc_day()), "total", 1_250_000)

    session = await sign_in(http, READER)
    status, page = await get(http, session, "/console/overview/live")
    assert status == 200
    assert "<html" not in page  # the fragment alone
    assert "edge-1" in page and "pid 4242" in page and "up 1 h 1 min" in page
    assert _row(page, "data-bind", "smsc-a#1") == "smsc-a#1 bound - - -"
    assert _row(page, "data-bind", "smsc-b#1") == "smsc-b#1 bound 4 / 10 52.3/s 7"
    assert _row(page, "data-bind", "smsc-a#2") == "smsc-a#2 unbound - - - connection refused"
    assert _row(page, "data-connector", "backup") == "backup open"
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img src=x" not in page
    assert _row(page, "data-profile", "alerts") == "alerts 3 0 1 min 30 s 0 0 1.2500"
    assert _row(page, "data-profile", "bulk") == "bulk 0 0 - 0 1 0.0000"
    assert _row(page, "data-status", "delivered") == "delivered 2.0"  # 20 in 10 s
    assert _row(page, "data-status", "failed") == "failed 1.0"
    assert 'data-status="sent"' not in page
    assert _row(page, "data-campaign", "test").startswith("test Confirmed StandardVolume 50 / 200")
    assert 'value="0.25"' in page
    assert re.search(r"<dt>role</dt><dd>master</dd>", page)
    # The page holds the same, and polls for the fragment every 2 s.
    _, page = await get(http, session, "/console")
    assert 'hx-get="/console/overview/live" hx-trigger="every 2s"' in page
    assert "edge-1" in page and 'data-profile="alerts"' in page


async def test_no_instance_running_is_said(http: aiohttp.ClientSession) -> None:
    _, page = await get(http, await sign_in(http, READER), "/console/overview/live")
    assert "No router instance is running" in page
    assert "No events in the last 10 s." in page


async def test_a_running_daemon_reports_each_binds_rate(
    redis: Redis,
    make_settings: Any,
    provider: Any,
    run_daemon: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The health record's bind rate: messages handed to the bind per second between
    two records (what the overview's Binds table shows)."""
    import router.daemon.daemon as daemon_module
    from router import Client

    monkeypatch.setattr(daemon_module, "HEALTH_EVERY", 0.5)
    settings = make_settings()
    run_daemon(settings)
    provider.latency = 0.01
    client = Client.from_settings(redis, settings)
    await client.send_many([{"to": "+447911123456", "text": f"m{i}"} for i in range(400)])

    async def rated() -> bool:
        raw = await redis.get(keys.health("test"))
        binds = json.loads(raw)["binds"] if raw else {}
        return any(b.get("rate", 0) > 0 for b in binds.values())

    await wait_for(rated, 20, "a bind with a rate")


async def test_a_busy_streams_rate_is_its_newest_events_over_their_span(
    http: aiohttp.ClientSession, redis: Redis
) -> None:
    """More events in the window than the sample reads: the newest `RATE_SAMPLE` over
    the time they span (here 1,000 events in the last 2 s: ~500 a second)."""
    from router.console.overview import RATE_SAMPLE

    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(1000):
            at = int((now - 2 + i * 0.002) * 1000)
            pipe.xadd(keys.events("alerts"), {"status": "sent"}, id=f"{at}-{i}")
        await pipe.execute()
    _, page = await get(http, await sign_in(http, READER), "/console/overview/live")
    rate = float(_row(page, "data-status", "sent").split()[1])
    expected = RATE_SAMPLE / (RATE_SAMPLE * 0.002)  # 500 a second, read over its span
    assert expected * 0.7 < rate < expected * 1.1, rate
