"""Connectors and routes, end to end (issue 19): the real daemon, a real Redis and two
of our SMSC simulators as two carriers; every count is taken at the simulators."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from router import Client
from router.config import parse_settings
from router.store.ledger import Ledger
from router.summary import config_lines
from sims.smscsim import SimConfig, SmscSimulator

from ..binds import test_smpp_flow
from ..binds.test_smpp_flow import Inbox, Start, all_in, smpp_config
from ..conftest import wait_for

inbox = test_smpp_flow.inbox  # the callback_url fixture, shared
READER = "r" * 32  # an [api.keys] token with the read scope


@pytest.fixture
async def carriers() -> AsyncIterator[dict[str, SmscSimulator]]:
    """Two SMSC simulators, `a` and `b`, each with its own port."""
    sims: dict[str, SmscSimulator] = {}
    for name, seed in (("a", 1), ("b", 2)):
        sim = SmscSimulator(SimConfig(seed=seed, receipt_delay=0.01))
        sim.port = await sim.start()  # type: ignore[attr-defined]
        sims[name] = sim
    yield sims
    for sim in sims.values():
        await sim.close()


def routed_config(
    redis_url: str,
    tmp: Path,
    carriers: dict[str, SmscSimulator],
    routes: list[dict[str, Any]],
    **connector: Any,
) -> dict[str, Any]:
    """Profile `sms` without a protocol of its own, connectors `a` and `b` (one per
    simulator), and `routes`."""
    data = smpp_config(redis_url, tmp, carriers["a"].port)  # type: ignore[attr-defined]
    own = data["profiles"]["sms"]
    smpp = own.pop("smpp")
    for key in ("protocol", "window"):
        own.pop(key)
    data["connectors"] = {
        name: {
            "protocol": "smpp",
            "window": 10,
            "failover_after": 0.5,
            "smpp": {**smpp, "port": sim.port},  # type: ignore[attr-defined]
            **connector,
        }
        for name, sim in carriers.items()
    }
    data["routes"] = routes
    return data


def submitted(sim: SmscSimulator) -> Counter[str]:
    """Submits the simulator took, per destination."""
    return Counter(s["destination"] for s in sim.submits)


def recipients(count: int, prefix: str = "+4479111") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(count)]


async def test_failover_sends_over_the_first_healthy_connector_and_back(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    carriers: dict[str, SmscSimulator],
    run_daemon: Start,
) -> None:
    data = routed_config(redis_url, tmp_path, carriers, [{"to": ["+44"], "connectors": ["a", "b"]}])
    settings = parse_settings(data, env={})
    client = Client.from_settings(redis, settings)
    run_daemon(settings)
    first = await client.send_many([{"to": t, "text": "one"} for t in recipients(50)])
    await wait_for(lambda: all_in(redis, first, {"delivered"}), 30, "first delivered")
    assert len(carriers["a"].submits) == 50 and not carriers["b"].submits
    await carriers["a"].close()
    second = await client.send_many([{"to": t, "text": "two"} for t in recipients(50, "+4479222")])
    await wait_for(lambda: all_in(redis, second, {"delivered"}), 30, "second delivered")
    assert len(carriers["b"].submits) == 50
    records = await Ledger(redis, retention=60, events_maxlen=10).find(second)
    assert {r["connector"] for r in records if r} == {"b"}
    assert {r["attempts"] for r in records if r} == {1}  # moving used no attempt


async def test_weighted_splits_in_proportion(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    carriers: dict[str, SmscSimulator],
    run_daemon: Start,
) -> None:
    route = {"connectors": ["a", "b"], "strategy": "weighted", "weights": [80, 20]}
    settings = parse_settings(routed_config(redis_url, tmp_path, carriers, [route]), env={})
    client = Client.from_settings(redis, settings)
    ids = await client.send_many([{"to": t, "text": "w"} for t in recipients(1000)])
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, ids, {"delivered"}), 60, "delivered")
    a, b = len(carriers["a"].submits), len(carriers["b"].submits)
    assert a + b == 1000
    assert abs(a - 800) <= 30 and abs(b - 200) <= 30


async def test_least_cost_takes_the_cheaper_connector_per_prefix(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    carriers: dict[str, SmscSimulator],
    run_daemon: Start,
) -> None:
    data = routed_config(
        redis_url,
        tmp_path,
        carriers,
        [{"connectors": ["a", "b"], "strategy": "least_cost"}],
    )
    data["connectors"]["a"]["prices"] = {"+44": 0.04, "+447911": 0.02, "default": 0.05}
    data["connectors"]["b"]["prices"] = {"+44": 0.03, "default": 0.05}
    settings = parse_settings(data, env={})
    client = Client.from_settings(redis, settings)
    cheap_on_a = recipients(20, "+4479111")
    cheap_on_b = recipients(20, "+4479222")
    ids = await client.send_many([{"to": t, "text": "c"} for t in cheap_on_a + cheap_on_b])
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, ids, {"delivered"}), 30, "delivered")
    assert set(submitted(carriers["a"])) == {t[1:] for t in cheap_on_a}
    assert set(submitted(carriers["b"])) == {t[1:] for t in cheap_on_b}


async def test_a_message_no_route_matches_is_rejected_no_route(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    carriers: dict[str, SmscSimulator],
    run_daemon: Start,
) -> None:
    data = routed_config(redis_url, tmp_path, carriers, [{"to": ["+33"], "connectors": ["a"]}])
    settings = parse_settings(data, env={})
    client = Client.from_settings(redis, settings)
    ids = await client.send_many([{"to": "+447911123456", "text": "nowhere"}])
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, ids, {"rejected"}), 20, "rejected")
    [record] = await Ledger(redis, retention=60, events_maxlen=10).find(ids)
    assert record is not None and record["error_code"] == "no_route"
    assert not carriers["a"].submits and not carriers["b"].submits


async def test_two_profiles_share_a_connector_and_each_gets_its_reports(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    carriers: dict[str, SmscSimulator],
    run_daemon: Start,
) -> None:
    data = routed_config(redis_url, tmp_path, carriers, [{"connectors": ["a"]}])
    other = dict(data["profiles"]["sms"], numbers=["+447700900123"])
    other.pop("global")
    data["profiles"]["other"] = other
    data["numbers"]["+447700900123"] = {"features": ["SmsSender", "InternationalSmsSender"]}
    settings = parse_settings(data, env={})
    client = Client.from_settings(redis, settings)
    mine = await client.send_many([{"to": t, "text": "s"} for t in recipients(30)])
    theirs = await client.send_many(
        [{"to": t, "text": "o", "profile": "other"} for t in recipients(30, "+4479333")]
    )
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, mine + theirs, {"delivered"}), 30, "delivered")
    assert len(carriers["a"].submits) == 60
    await asyncio.sleep(0.2)
    early = [await redis.hlen(f"sms:{{{p}}}:early") for p in ("sms", "other")]
    assert early == [0, 0]


async def test_spend_is_recorded_and_the_daily_limit_refuses_past_it(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    carriers: dict[str, SmscSimulator],
    run_daemon: Start,
) -> None:
    data = routed_config(redis_url, tmp_path, carriers, [{"connectors": ["a"]}])
    data["connectors"]["a"]["prices"] = {"+44": 0.05}
    data["profiles"]["sms"]["daily_spend_limit"] = 0.2
    data["api"] = {"listen": "127.0.0.1:0", "keys": {"r": {"token": READER, "scopes": ["read"]}}}
    settings = parse_settings(data, env={})
    client = Client.from_settings(redis, settings)
    ids = await client.send_many([{"to": t, "text": "paid"} for t in recipients(10)])
    running = run_daemon(settings)
    await wait_for(lambda: all_in(redis, ids, {"delivered", "rejected"}), 30, "settled")
    records = await Ledger(redis, retention=60, events_maxlen=10).find(ids)
    statuses = Counter(r["status"] for r in records if r)
    assert statuses == {"delivered": 4, "rejected": 6}  # 4 x 0.05 = the limit
    refused = [r for r in records if r and r["status"] == "rejected"]
    assert {r["error_code"] for r in refused} == {"spend_limit_reached"}
    assert "daily_spend_limit = 0.2" in refused[0]["error"]
    assert {r["price"] for r in records if r and r["status"] == "delivered"} == {"0.05"}
    day = (await redis.keys("sms:{sms}:spend:*"))[0]
    spend = {k.decode(): int(v) for k, v in (await redis.hgetall(day)).items()}
    assert spend == {"total": 200_000, "a": 200_000}  # millionths: exact
    assert len(carriers["a"].submits) == 4
    assert running.daemon.api is not None
    url = f"http://127.0.0.1:{running.daemon.api.port}/v1/profiles/sms"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": f"Bearer {READER}"}) as answer,
    ):
        shown = await answer.json()
    assert shown["spend_today"] == {"total": 0.2, "a": 0.2}
    assert shown["daily_spend_limit"] == 0.2 and shown["protocol"] is None
    assert [c["name"] for c in shown["connectors"]] == ["a"]
    assert shown["connectors"][0]["state"] == "up"


async def test_inbound_on_a_shared_connector_reaches_the_owner_of_the_number(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    carriers: dict[str, SmscSimulator],
    run_daemon: Start,
    inbox: Inbox,
) -> None:
    data = routed_config(redis_url, tmp_path, carriers, [{"connectors": ["a"]}], direction="both")
    mine = data["profiles"]["sms"]
    mine.update(direction="both", callback_url=f"{inbox.url}?p=sms")
    other = dict(mine, numbers=["+447700900123"], callback_url=f"{inbox.url}?p=other")
    other.pop("global")
    data["profiles"]["other"] = other
    data["numbers"]["+447700900123"] = {"features": ["SmsSender", "InternationalSmsSender"]}
    settings = parse_settings(data, env={})
    run_daemon(settings)
    sim = carriers["a"]
    await wait_for(lambda: sim.stats()["sessions"] >= 1, 20, "bound")
    await sim.inject("+447911000001", "447700900123", "for other")
    await sim.inject("+447911000002", mine["numbers"][0].lstrip("+"), "for sms")
    await wait_for(lambda: len(inbox.messages) == 2, 20, "two inbound posts")
    by_text = {m["text"]: m for m in inbox.messages}
    assert by_text["for other"]["profile"] == "other"
    assert by_text["for sms"]["profile"] == "sms"


def test_check_config_lists_connectors_routes_and_the_profile_rules(
    redis_url: str, tmp_path: Path
) -> None:
    sims = {"a": 2775, "b": 2776}
    data = routed_config(
        redis_url,
        tmp_path,
        {name: _Port(port) for name, port in sims.items()},  # type: ignore[misc]
        [
            {"to": ["+44"], "connectors": ["a", "b"], "strategy": "least_cost"},
            {"connectors": ["a", "b"], "strategy": "weighted", "weights": [3, 1]},
        ],
    )
    data["connectors"]["a"]["prices"] = {"+44": 0.04, "default": 0.05}
    data["connectors"]["c"] = dict(data["connectors"]["b"])
    data["profiles"]["sms"].update(skip_unhealthy=True, daily_spend_limit=25.5)
    lines = config_lines(parse_settings(data, env={}))
    assert "sms: routed outbound numbers=3" in lines[0]
    assert "skip_unhealthy (below 50% over 3600 s, from 20 reports)" in lines[1]
    assert "daily_spend_limit=25.5" in lines[1]
    assert any(
        line.startswith("connector a: smpp async window=10") and "prices for 2 prefixes" in line
        for line in lines
    )
    assert "routes[0]: to=+44 -> least_cost a,b" in lines
    assert "routes[1]: (matches every message) -> weighted a,b weights=3,1" in lines
    assert "connectors no route uses: c" in lines


class _Port:
    """Stands in for a simulator where only its port is read (no connection made)."""

    def __init__(self, port: int) -> None:
        self.port = port
