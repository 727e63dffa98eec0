"""The ``quality`` strategy (issue 19): a route's connectors ranked per destination
country by their delivery ratio over the route's window, route order below the minimum
sample, probes so every connector earns one. Unit tests over a board whose ratios the
test sets; then end to end: the real daemon, a real Redis and two SMSC simulators, one
of which turns 50 % undelivered and loses the traffic."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from redis.asyncio import Redis

from router import Client
from router.config import parse_settings
from router.engine.connectors import ConnectorRuntime
from router.engine.routing import PROBE_EVERY, Routing
from router.policy.routes import Matched, RouteTable
from router.store.health import QualityBoard
from router.store.ledger import Ledger
from sims.smscsim import SmscSimulator

from ..binds.test_smpp_flow import Start, all_in
from ..conftest import wait_for
from .test_routes import carriers, recipients, routed_config  # noqa: F401 - the fixture

UK, US = "+447911123456", "+12025550123"


class Board(QualityBoard):
    """A board whose samples the test sets: (connector, country) -> (delivered, reports)."""

    def __init__(self) -> None:
        super().__init__(None)  # type: ignore[arg-type] # never reads Redis
        self.set: dict[tuple[str, str], tuple[int, int]] = {}
        self.asked: set[tuple[str, float]] = set()

    def sample(self, connector: str, window: float, country: str) -> tuple[int, int]:
        self.asked.add((connector, window))
        return self.set.get((connector, country), (0, 0))


def routing(
    tmp_path: Path, connectors: list[str], board: QualityBoard | None, **route: Any
) -> tuple[Routing, Matched]:
    sims = {name: SimpleNamespace(port=1) for name in connectors}
    spec = {"connectors": connectors, "strategy": "quality", "quality_min_sample": 20, **route}
    data = routed_config("redis://127.0.0.1:1", tmp_path, sims, [spec])  # type: ignore[arg-type]
    settings = parse_settings(data, env={})
    runtimes = {n: ConnectorRuntime(n, c, []) for n, c in settings.connectors.items()}
    found = Routing("sms", RouteTable(settings), runtimes, quality=board)
    matched = found.match(UK, "+16501112345", None)
    assert matched is not None
    return found, matched


def picks(found: Routing, route: Matched, to: str, count: int) -> Counter[str]:
    return Counter(found.pick(route, to, ()).name for _ in range(count))


def test_the_best_ratio_for_the_country_takes_the_traffic(tmp_path: Path) -> None:
    board = Board()
    found, route = routing(tmp_path, ["a", "b", "c"], board, quality_window=600)
    board.set = {("a", "44"): (50, 100), ("b", "44"): (95, 100), ("c", "44"): (80, 100)}
    board.set |= {("a", "US"): (99, 100), ("b", "US"): (90, 100), ("c", "US"): (4, 20)}
    board.generation += 1
    assert [c.name for c in found.order(route, UK)] == ["b", "c", "a"]
    assert picks(found, route, UK, 100) == {"b": 100}
    assert picks(found, route, US, 100) == {"a": 100}  # per country
    assert board.asked == {("a", 600), ("b", 600), ("c", 600)}  # the route's window
    # An unhealthy connector is passed over: the next best gets it.
    found.connectors["b"].down = True
    assert picks(found, route, UK, 10) == {"c": 10}
    # Moving on after a route-level refusal: the best not tried yet.
    found.connectors["b"].down = False
    assert found.next(route, UK, ("b",)) is found.connectors["c"]


def test_below_the_minimum_sample_a_connector_keeps_its_place_and_is_probed(
    tmp_path: Path,
) -> None:
    board = Board()
    found, route = routing(tmp_path, ["a", "b", "c"], board)
    # a: 19 reports, not judged (keeps first place); b worse than c: they swap places.
    board.set = {("a", "44"): (0, 19), ("b", "44"): (60, 100), ("c", "44"): (90, 100)}
    board.generation += 1
    assert [c.name for c in found.order(route, UK)] == ["a", "c", "b"]
    assert picks(found, route, UK, 100) == {"a": 100}  # a is first: it earns its sample
    board.set[("a", "44")] = (18, 20)  # 90 %, like c: ties keep route order
    board.set[("b", "44")] = (10, 19)  # b below the sample now: probed
    board.generation += 1
    assert [c.name for c in found.order(route, UK)] == ["a", "b", "c"]
    chosen = picks(found, route, UK, 20 * PROBE_EVERY)
    assert chosen == {"a": 19 * 20, "b": 20}


def test_probes_take_turns_and_nothing_is_probed_when_all_are_judged(tmp_path: Path) -> None:
    board = Board()
    found, route = routing(tmp_path, ["a", "b", "c"], board)
    assert picks(found, route, UK, 10 * PROBE_EVERY) == {
        "a": 10 * (PROBE_EVERY - 1),
        "b": 5,
        "c": 5,
    }
    board.set = {(n, "44"): (20, 20) for n in "abc"}
    board.generation += 1
    assert picks(found, route, UK, 10 * PROBE_EVERY) == {"a": 10 * PROBE_EVERY}


def test_without_a_board_the_route_order_stands(tmp_path: Path) -> None:
    found, route = routing(tmp_path, ["a", "b"], None)
    assert picks(found, route, UK, 100) == {"a": 100}


def test_the_ranking_is_kept_until_the_next_read(tmp_path: Path) -> None:
    board = Board()
    found, route = routing(tmp_path, ["a", "b"], board)
    assert picks(found, route, UK, 3) == {"a": 3}
    board.set = {("a", "44"): (10, 100), ("b", "44"): (90, 100)}
    assert picks(found, route, UK, 3) == {"a": 3}  # ranked before these ratios: kept
    board.generation += 1
    assert picks(found, route, UK, 3) == {"b": 3}


async def test_a_connector_whose_reports_turn_undelivered_loses_the_traffic(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    carriers: dict[str, SmscSimulator],  # noqa: F811 - the fixture
    run_daemon: Start,
) -> None:
    """a is first in the route and delivers like b; then half of a's receipts say
    undelivered: within a refresh of the ratios (and well within the window), new
    traffic goes to b."""
    route = {
        "to": ["+44"],
        "connectors": ["a", "b"],
        "strategy": "quality",
        "quality_window": 120,
        "quality_min_sample": 20,
    }
    settings = parse_settings(routed_config(redis_url, tmp_path, carriers, [route]), env={})
    client = Client.from_settings(redis, settings)
    run_daemon(settings)

    async def send(count: int, prefix: str) -> list[str]:
        ids = await client.send_many([{"to": t, "text": "q"} for t in recipients(count, prefix)])
        await wait_for(lambda: all_in(redis, ids, {"delivered", "undelivered"}), 60, prefix)
        return ids

    # Both deliver: a (first) carries the traffic, b one message in PROBE_EVERY.
    await send(PROBE_EVERY * 25, "+4479111")
    a, b = len(carriers["a"].submits), len(carriers["b"].submits)
    assert a + b == PROBE_EVERY * 25 and 20 <= b <= 30, (a, b)
    carriers["a"].config.delivered_ratio = 0.5
    await send(200, "+4479222")
    await asyncio.sleep(6)  # the next read of the ratios (every 5 s)
    for sim in carriers.values():
        sim.submits.clear()
    moved = await send(200, "+4479333")
    assert len(carriers["b"].submits) == 200 and not carriers["a"].submits
    records = await Ledger(redis, retention=60, events_maxlen=10).find(moved)
    assert {r["connector"] for r in records if r} == {"b"}
