"""GET /metrics: a real daemon, a real HTTP provider, a real scrape, parsed by
prometheus_client's own parser."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from router.api.app import build_app
from router.api.common import ApiContext
from router.api.metrics import METRICS_KEY
from router.client import Client
from router.config import Settings, parse_settings
from router.metrics import Latency, Metrics
from router.store import keys
from router.store.ledger import Ledger

from ..conftest import Provider, RunningDaemon, config_dict, free_port, wait_for

DASHBOARD = Path(__file__).parents[2] / "config" / "grafana-dashboard.json"
STUCK = "+447911123457"  # the SMPP profile's sender number
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample as (name, labels) -> value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def metrics_settings(redis_url: str, provider: Provider, tmp_path: Path, **api: Any) -> Settings:
    """alerts and bulk over HTTP, `stuck` over SMPP to a port nobody listens on (its
    session never binds, so its work stays on the stream), and a capped campaign."""
    data = config_dict(redis_url, provider.url)
    data["router"]["state_dir"] = str(tmp_path / "var")
    data["campaigns"]["test"]["daily_cap"] = 1000
    data["numbers"][STUCK] = {"features": ["SmsSender", "InternationalSmsSender"]}
    data["profiles"]["stuck"] = {
        "protocol": "smpp",
        "numbers": [STUCK],
        "smpp": {
            "host": "127.0.0.1",
            "port": free_port(),
            "system_id": "nobody",
            "password": "secret",
            "connect_timeout": 0.5,
        },
    }
    data["api"] = {"listen": "127.0.0.1:0", **api}
    return parse_settings(data, env={}, base_dir=tmp_path)


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        return parse(await response.text())


async def test_a_scrape_shows_sends_queues_binds_and_caps(
    redis: Redis,
    redis_url: str,
    provider: Provider,
    tmp_path: Path,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    settings = metrics_settings(redis_url, provider, tmp_path)
    client = Client.from_settings(redis, settings)
    await client.send_many(
        [{"to": "+447700900123", "text": f"s{i}", "profile": "stuck"} for i in range(3)]
    )
    running = run_daemon(settings)
    await wait_for(lambda: running.daemon.api is not None and running.daemon.api.port, 10)
    assert running.daemon.api is not None
    url = f"http://127.0.0.1:{running.daemon.api.port}/metrics"
    samples: Samples = {}

    async def sent(http: aiohttp.ClientSession, profile: str, count: int) -> None:
        async def done() -> bool:
            nonlocal samples
            samples = await scrape(http, url)
            found = value(samples, "sms_router_messages_total", profile=profile, status="sent")
            # Redis is read first, the counters after: one scrape may see the last batch
            # counted while its entries are still on the stream.
            depth = value(samples, "sms_router_queue_depth", profile=profile)
            return found == count and depth == 0

        await wait_for(done, 30, f"{count} sent by {profile} in the metrics")

    async with aiohttp.ClientSession() as http:
        await client.send_many(
            [{"to": "+447700900200", "text": f"b{i}", "profile": "bulk"} for i in range(5)]
        )
        await sent(http, "bulk", 5)
        # The next request is throttled (429), the one after refused for now (503): both
        # messages are retried and sent.
        provider.script = [429, 503]
        await client.send_many([{"to": f"+1212555{i:04d}", "text": f"a{i}"} for i in range(20)])
        await sent(http, "alerts", 20)

    # Counted by this instance, from the pipeline's batches.
    assert value(samples, "sms_router_messages_total", profile="alerts", status="failed") is None
    assert value(samples, "sms_router_submit_latency_seconds_count", profile="alerts") == 22
    assert value(samples, "sms_router_submit_latency_seconds_count", profile="bulk") == 5
    inf = value(samples, "sms_router_submit_latency_seconds_bucket", profile="alerts", le="+Inf")
    assert inf == 22
    assert value(samples, "sms_router_retries_total", profile="alerts", code="http_429") == 1
    assert value(samples, "sms_router_retries_total", profile="alerts", code="http_503") == 1
    throttles = "sms_router_throttles_total"
    assert value(samples, throttles, profile="alerts", bind="alerts/http") == 1
    # Read from Redis at scrape time: what waits on each stream, and for how long.
    assert value(samples, "sms_router_redis_up") == 1
    assert value(samples, "sms_router_queue_depth", profile="stuck") == 3
    assert value(samples, "sms_router_queue_depth", profile="alerts") == 0
    assert value(samples, "sms_router_queue_pending", profile="stuck") == 0
    age = value(samples, "sms_router_queue_oldest_age_seconds", profile="stuck")
    assert age is not None and 0 < age < 120
    assert value(samples, "sms_router_queue_oldest_age_seconds", profile="alerts") == 0
    assert value(samples, "sms_router_dead_letters", profile="alerts") == 0
    assert value(samples, "sms_router_callbacks_pending") == 0
    # Binds: the HTTP senders are ready, the SMPP session never binds.
    assert value(samples, "sms_router_binds_ready", profile="alerts") == 1
    assert value(samples, "sms_router_binds_ready", profile="stuck") == 0
    assert value(samples, "sms_router_binds", profile="stuck", state="bound") == 0
    stuck = sum(
        value(samples, "sms_router_binds", profile="stuck", state=s) or 0
        for s in ("disconnected", "connecting", "binding")
    )
    assert stuck == 1
    assert value(samples, "sms_router_window_size", profile="alerts", bind="alerts/http") == 8
    assert value(samples, "sms_router_window_in_use", profile="alerts", bind="alerts/http") == 0
    # The US destinations count against the capped campaign, the UK ones do not (each
    # pick of a sender counts: the two retried messages were counted twice).
    day = time.strftime("%Y%m%d", time.gmtime())
    counted = int(await redis.hget(keys.campaign_counts(day), "test") or 0)
    assert counted == 22
    assert value(samples, "sms_router_campaign_daily_used", campaign="test") == counted
    assert value(samples, "sms_router_campaign_daily_cap", campaign="test") == 1000
    assert value(samples, "sms_router_info", instance="test") == 1
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)


async def test_rejections_are_counted_by_code(
    redis: Redis,
    redis_url: str,
    provider: Provider,
    tmp_path: Path,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    settings = metrics_settings(redis_url, provider, tmp_path)
    await redis.sadd(keys.opt_outs("alerts"), "+12125550100")
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+12125550100", "text": "hi"}, {"to": "+12125550101", "text": "hi"}]
    )
    running = run_daemon(settings)
    await wait_for(lambda: running.daemon.api is not None and running.daemon.api.port, 10)
    assert running.daemon.api is not None
    url = f"http://127.0.0.1:{running.daemon.api.port}/metrics"
    async with aiohttp.ClientSession() as http:
        samples: Samples = {}

        async def rejected() -> bool:
            nonlocal samples
            samples = await scrape(http, url)
            counted = "sms_router_messages_total"
            return (
                value(samples, counted, profile="alerts", status="rejected") == 1
                and value(samples, counted, profile="alerts", status="sent") == 1
            )

        await wait_for(rejected, 20, "the rejection and the send in the metrics")
    record = await Ledger(redis, retention=60, events_maxlen=10).get(ids[0])
    assert record is not None and record["error_code"] == "opted_out"
    rejections = "sms_router_rule_rejections_total"
    assert value(samples, rejections, profile="alerts", code="opted_out") == 1


@pytest.fixture
async def bare_app(redis: Redis, redis_url: str, provider: Provider, tmp_path: Path) -> Any:
    """The API app alone, with /metrics behind a `read` key, served on a free port."""
    keys_ = {"reader": {"token": "r" * 32, "scopes": ["read"]}}
    settings = metrics_settings(redis_url, provider, tmp_path, metrics_auth=True, keys=keys_)
    metrics = Metrics("bare", settings)
    metrics.redis = redis
    context = ApiContext(
        settings=settings,
        redis=redis,
        ledger=Ledger(redis, retention=60, events_maxlen=100),
        client=Client.from_settings(redis, settings),
        extras={METRICS_KEY: metrics},
    )
    runner = web.AppRunner(build_app(context))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
        yield http
    await runner.cleanup()


async def test_metrics_auth_asks_for_a_read_key(bare_app: aiohttp.ClientSession) -> None:
    async with bare_app.get("/metrics") as response:
        assert response.status == 401
    headers = {"Authorization": "Bearer " + "r" * 32}
    async with bare_app.get("/metrics", headers=headers) as response:
        assert response.status == 200
        samples = parse(await response.text())
    assert value(samples, "sms_router_queue_depth", profile="alerts") == 0
    assert value(samples, "sms_router_info", instance="bare") == 1


async def test_without_redis_the_scrape_still_answers(
    redis_url: str, provider: Provider, tmp_path: Path
) -> None:
    settings = metrics_settings(redis_url, provider, tmp_path)
    metrics = Metrics("alone", settings)
    nobody = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    metrics.redis = nobody
    try:
        assert await metrics.refresh(timeout=2) is False
    finally:
        await nobody.aclose()
    body, _ = metrics.render()
    samples = parse(body.decode())
    assert value(samples, "sms_router_redis_up") == 0
    assert value(samples, "sms_router_queue_depth", profile="alerts") is None


def test_latency_buckets_are_cumulative_and_inclusive() -> None:
    latency = Latency((0.01, 0.1, 1.0))
    for seconds in (0.005, 0.01, 0.05, 0.5, 5.0):
        latency.observe(seconds)
    assert latency.buckets() == [("0.01", 2), ("0.1", 3), ("1.0", 4), ("+Inf", 5)]
    assert latency.count == 5 and latency.sum == pytest.approx(5.565)


async def test_the_dashboard_uses_only_metrics_the_router_exports(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path
) -> None:
    settings = metrics_settings(redis_url, provider, tmp_path)
    metrics = Metrics("dash", settings)
    metrics.redis = redis
    assert await metrics.refresh()
    body, _ = metrics.render()
    exported: set[str] = set()
    for family in text_string_to_metric_families(body.decode()):
        exported.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        exported.update(family.name + s for s in suffixes.get(family.type, []))
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = {name for expr in exprs for name in re.findall(r"sms_router_\w+", expr)}
    assert used and used <= exported, used - exported
    # Every panel reads the Prometheus data source the dashboard asks for on import.
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {"${datasource}"}
