"""Number health (issue 19): with ``skip_unhealthy`` the sender pick passes over a number
whose delivery ratio is below ``health_threshold`` (from ``health_min_sample`` reports
on), and uses it anyway when no healthy number may send. Against a real Redis; the last
test end to end, through the daemon, an SMSC simulator's delivery reports and
`sms-router numbers`."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from router import Client
from router.config import Settings, parse_settings
from router.metrics import Metrics
from router.policy.rules import Refusal, SenderRules
from router.policy.senders import SenderPool, Want
from router.store import keys
from router.store.health import number_health_key
from router.store.ledger import Ledger
from router.store.outages import RedisOutages
from sims.smscsim import SimConfig, SmscSimulator

from ..binds.test_smpp_flow import Start, all_in, smpp_config
from ..conftest import wait_for
from ..daemon.test_process import cli, write_config

A, B, C = "+14155552671", "+14082223333", "+12125550100"
INTL = ["SmsSender", "InternationalSmsSender"]


def settings_for(numbers: list[str], **profile: Any) -> Settings:
    return parse_settings(
        {
            "router": {"redis": "redis://127.0.0.1:1"},
            "campaigns": {"c": {"brand": "B", "status": "Confirmed", "tier": "StandardVolume"}},
            "numbers": {n: {"campaign": "c", "features": INTL} for n in numbers},
            "profiles": {
                "p": {
                    "protocol": "http",
                    "numbers": numbers,
                    "http": {"url": "http://127.0.0.1:9/send"},
                    **profile,
                }
            },
        },
        env={},
    )


def pool(redis: Redis, settings: Settings) -> SenderPool:
    profile = settings.profiles["p"]
    return SenderPool(redis, "p", profile, SenderRules("p", profile.numbers, settings))


async def choose(senders: SenderPool, wants: list[Want]) -> list[str | Refusal]:
    async with senders._redis.pipeline(transaction=False) as pipe:
        count = senders.commands(pipe, wants)
        replies = await pipe.execute()
    picks, _remember = await senders.pick(wants, replies[:count])
    return picks


async def reported(redis: Redis, number: str, delivered: int, undelivered: int) -> None:
    """Reports of `number` counted in the current minute, as receipts count them."""
    key = number_health_key("p", 60, int(time.time() // 60))
    await redis.hset(key, mapping={f"{number}:d": delivered, f"{number}:u": undelivered})


async def test_a_number_below_the_threshold_is_skipped(redis: Redis) -> None:
    await reported(redis, A, 4, 16)  # 20 % delivered, 20 reports: unhealthy
    await reported(redis, B, 9, 11)  # 45 %: unhealthy
    await reported(redis, C, 2, 17)  # 10 %, but 19 reports: not judged yet
    settings = settings_for([A, B, C], skip_unhealthy=True, health_threshold=0.5)
    picks = await choose(pool(redis, settings), [Want(f"+1212555{i:04d}") for i in range(30)])
    assert Counter(picks) == {C: 30}


async def test_the_healthy_numbers_share_the_traffic_evenly(redis: Redis) -> None:
    await reported(redis, B, 0, 50)
    senders = pool(redis, settings_for([A, B, C], skip_unhealthy=True))
    picks: list[str | Refusal] = []
    for batch in range(3):
        picks += await choose(senders, [Want(f"+1212555{batch}{i:03d}") for i in range(100)])
    assert Counter(picks) == {A: 150, C: 150}


async def test_without_skip_unhealthy_every_number_sends(redis: Redis) -> None:
    await reported(redis, A, 0, 50)
    picks = await choose(
        pool(redis, settings_for([A, B])), [Want(f"+1212555{i:04d}") for i in range(10)]
    )
    assert Counter(picks) == {A: 5, B: 5}


async def test_when_every_number_is_unhealthy_they_send_all_the_same(redis: Redis) -> None:
    """Passing over every number would stop the profile, perhaps for a carrier's fault."""
    for number in (A, B):
        await reported(redis, number, 1, 49)
    picks = await choose(
        pool(redis, settings_for([A, B], skip_unhealthy=True)),
        [Want(f"+1212555{i:04d}") for i in range(10)],
    )
    assert Counter(picks) == {A: 5, B: 5}


async def test_an_explicit_from_and_a_sticky_recipient(redis: Redis) -> None:
    await reported(redis, A, 0, 50)
    senders = pool(redis, settings_for([A, B], skip_unhealthy=True, sender="sticky"))
    # An explicit `from` is the caller's choice: never passed over.
    assert await choose(senders, [Want("+12125550001", sender=A)]) == [A]
    # A recipient stuck to an unhealthy number gets a healthy one (and keeps it).
    await redis.set(keys.sticky("p", "+12125550002"), A)
    assert await choose(senders, [Want("+12125550002")]) == [B]


async def test_the_ratios_are_read_every_few_seconds_not_per_batch(redis: Redis) -> None:
    senders = pool(redis, settings_for([A, B], skip_unhealthy=True))
    assert senders.health is not None
    senders.health.every = 3600.0
    wants = [Want(f"+1212555{i:04d}") for i in range(10)]
    assert Counter(await choose(senders, wants)) == {A: 5, B: 5}  # read: nothing yet
    await reported(redis, A, 0, 50)
    async with redis.pipeline(transaction=False) as pipe:
        assert senders.commands(pipe, wants) == 1  # the rotation counter only (unsent)
    assert Counter(await choose(senders, wants)) == {A: 5, B: 5}  # not read again yet
    senders.health.every = 0.0
    senders.health._next = 0.0
    assert Counter(await choose(senders, wants)) == {B: 10}


async def test_a_number_whose_reports_turn_undelivered_is_skipped_end_to_end(
    redis: Redis, redis_url: str, tmp_path: Path, run_daemon: Start
) -> None:
    """Reports from the SMSC simulator count per number; `sms-router numbers` shows the
    ratios; with skip_unhealthy the bad number stops sending within a refresh."""
    sim = SmscSimulator(SimConfig(seed=3, receipt_delay=0.01, delivered_ratio=0.0))
    port = await sim.start()
    try:
        data = smpp_config(
            redis_url, tmp_path, port, skip_unhealthy=True, health_min_sample=10, window=4
        )
        bad, good = data["profiles"]["sms"]["numbers"][:2]
        settings = parse_settings(data, env={})
        client = Client.from_settings(redis, settings)
        run_daemon(settings)
        # `bad` sends while the carrier fails every message, `good` once it delivers.
        to = [f"+4479111{i:05d}" for i in range(30)]
        first = await client.send_many([{"to": t, "text": "x", "from": bad} for t in to])
        await wait_for(lambda: all_in(redis, first, {"undelivered"}), 30, "undelivered")
        sim.config.delivered_ratio = 1.0
        second = await client.send_many([{"to": t, "text": "y", "from": good} for t in to])
        await wait_for(lambda: all_in(redis, second, {"delivered"}), 30, "delivered")
        await asyncio.sleep(5.5)  # a refresh of the ratios
        third = await client.send_many([{"to": t, "text": "z"} for t in to * 2])
        await wait_for(lambda: all_in(redis, third, {"delivered"}), 30, "third delivered")
        records = await Ledger(redis, retention=60, events_maxlen=10).find(third)
        used = Counter(r["from"] for r in records if r)
        assert bad not in used and sum(used.values()) == 60, used

        config = str(write_config(tmp_path / "router.toml", data))
        code, out, err = await cli("numbers", "-c", config, "--profile", "sms", "--json")
        assert code == 0, err
        rows = {r["number"]: r for r in map(json.loads, out.strip().splitlines())}
        assert rows[bad]["skipped"] is True and rows[bad]["delivery_ratio"] == 0.0
        assert rows[bad]["reports"] >= 10
        assert rows[good]["skipped"] is False and rows[good]["delivery_ratio"] == 1.0
        code, out, err = await cli("numbers", "-c", config, "--profile", "sms", columns=250)
        assert code == 0, err
        line = next(x.strip() for x in out.splitlines() if x.strip().startswith(bad))
        assert "0.0% of" in line and "(skipped)" in line
        assert "delivered (1h)" in out
    finally:
        await sim.close()


async def test_metrics_show_each_numbers_delivery_ratio(redis: Redis) -> None:
    await reported(redis, A, 3, 1)
    metrics = Metrics("test", settings_for([A, B]))
    metrics.watch([], RedisOutages(), redis)
    assert await metrics.refresh()
    text = metrics.render()[0].decode()
    assert f'sms_router_number_delivery_ratio{{number="{A}",profile="p"}} 0.75' in text
    assert f'sms_router_number_delivery_reports{{number="{A}",profile="p"}} 4.0' in text
    assert f'sms_router_number_delivery_reports{{number="{B}",profile="p"}} 0.0' in text
    assert f'number_delivery_ratio{{number="{B}"' not in text  # no reports: no ratio
    await reported(redis, A, 3, 3)  # the current bucket is read again at each scrape
    assert await metrics.refresh()
    assert 'number="+14155552671",profile="p"} 0.5' in metrics.render()[0].decode()
