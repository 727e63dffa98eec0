"""Redis goes away and comes back: the daemon (a real process) keeps running.

A redis-server of the test's own (append-only file, fsync every second) is killed
with SIGKILL while the daemon sends, and restarted on the same port and directory
after 3 s and then after 30 s. Every job must end `sent`, none lost, resends
counted, the outages visible in health and logged once each.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from binds.smpp.pdu import ESME_ROK, ESME_RX_T_APPN, ShortMessage
from router import Client
from router.config import ConfigError, parse_settings
from router.daemon.daemon import health_key
from router.daemon.lease import lease_key
from router.daemon.runtime import deliver_handler
from router.engine.inbound import CallbackPoster, Inbound
from router.engine.receipts import Reports
from router.store import keys
from router.store.ledger import Ledger
from router.store.outages import SETTLE, RedisOutages

from ..binds.test_flow import statuses
from ..conftest import Provider, RedisServer, config_dict, free_port, serve_app, wait_for
from ..daemon.test_process import start_daemon, write_config


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path / "redis", free_port(), appendonly=True)
    server.start()
    yield server
    server.stop()


@dataclass
class StatusInbox:
    """The application behind status_callback_url: records (id, status) pairs."""

    url: str = ""
    seen: list[tuple[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append((str(body.get("id")), str(body.get("status"))))
        return web.Response(status=204)


@pytest.fixture
async def status_inbox() -> AsyncIterator[StatusInbox]:
    inbox = StatusInbox()
    app = web.Application()
    app.router.add_post("/status", inbox.handle)
    runner, base = await serve_app(app)
    inbox.url = f"{base}/status"
    try:
        yield inbox
    finally:
        await runner.cleanup()


async def quietly(redis: Redis, work: Any) -> Any:
    """A read by the test itself; None while Redis is still loading or away."""
    try:
        return await work(redis)
    except (RedisError, OSError):
        return None


async def test_daemon_survives_redis_kill_for_3_s_and_30_s(
    own_redis: RedisServer, provider: Provider, status_inbox: StatusInbox, tmp_path: Path
) -> None:
    jobs = 3000
    data = config_dict(own_redis.url, provider.url, window=8)
    data["router"]["state_dir"] = str(tmp_path / "var")
    data["profiles"]["alerts"]["status_callback_url"] = status_inbox.url
    config = write_config(tmp_path / "router.toml", data)
    settings = parse_settings(data, env={}, base_dir=tmp_path)
    redis = Redis.from_url(own_redis.url)
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": f"o{i}"} for i in range(jobs)]
    )
    await asyncio.sleep(1.5)  # the append-only file has the jobs (fsync every second)
    provider.latency = 0.01
    log = tmp_path / "daemon.log"
    proc = await start_daemon(config, log)
    try:
        for outage, sent_before in ((3, jobs // 6), (30, jobs // 2)):
            await wait_for(
                lambda n=sent_before: len(provider.requests) >= n,  # type: ignore[misc]
                120,
                f"{sent_before} sent before the outage",
            )
            own_redis.kill()
            await asyncio.sleep(outage)
            assert proc.returncode is None, log.read_text()[-3000:]
            own_redis.start()
            assert len(provider.requests) < jobs, "sending ended before the outage"

        async def done() -> bool:
            counts = await quietly(redis, lambda r: statuses(r, ids))
            return bool(counts) and counts["sent"] == jobs

        await wait_for(done, 180, "every job sent after the outages")

        async def outages_in_health() -> bool:
            raw = await quietly(redis, lambda r: r.get(health_key("test")))
            return bool(raw) and int(json.loads(raw)["redis_outages"]) >= 2

        await wait_for(outages_in_health, 30, "health counts both outages")
        await wait_for(
            lambda: {i for i, s in status_inbox.seen if s == "sent"} >= set(ids),
            120,
            "a `sent` status callback for every job",
        )
        assert proc.returncode is None, log.read_text()[-3000:]
        # The lease lapsed during the 30 s outage and was taken again.
        holder = json.loads(await redis.get(lease_key("test")) or "{}")
        assert holder.get("pid") == proc.pid
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    text = log.read_text()
    assert code == 0, text[-3000:]
    refs = provider.refs
    assert set(refs) == set(ids), "lost jobs"
    twice = sum(n - 1 for n in refs.values() if n > 1)
    counted = int(await redis.hget(keys.stats("alerts"), "possible_duplicates") or 0)
    print(f"outage figures: jobs={jobs} provider_duplicates={twice} possible_duplicates={counted}")
    assert twice <= counted, (twice, counted)
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    started = [x for x in lines if x["event"].startswith("redis unreachable")]
    ended = [x for x in lines if x["event"].startswith("redis answers again")]
    # Once per outage (a straggling call may open a short extra one), never once per retry.
    assert 2 <= len(started) <= 4, started
    assert len(ended) == len(started)
    assert not [x for x in lines if "exception" in x], "a traceback was logged"
    await redis.aclose()


async def test_deliver_sm_during_an_outage_is_refused_for_resend_and_logged_once(
    own_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    redis = Redis.from_url(own_redis.url, socket_connect_timeout=2)
    ledger = Ledger(redis, retention=60, events_maxlen=1000)
    reports = Reports(redis, ledger, "alerts", id_format="as-is")
    inbound = Inbound(redis, "alerts", forward=True, reassembly_timeout=5)
    outages = RedisOutages()
    on_deliver = deliver_handler(reports, inbound, outages)
    receipt = ShortMessage(
        esm_class=0x04,
        short_message=b"id:a1 sub:001 dlvrd:001 submit date:2311231010 "
        b"done date:2311231011 stat:DELIVRD err:000",
    )
    message = ShortMessage(source="447911123456", source_ton=1, short_message=b"hi")
    own_redis.kill()
    for _ in range(5):
        assert await on_deliver("alerts/smpp0", receipt) == ESME_RX_T_APPN
        assert await on_deliver("alerts/smpp0", message) == ESME_RX_T_APPN
    assert outages.count == 1 and outages.down_since is not None
    own_redis.start()

    async def stored() -> bool:
        try:
            return await on_deliver("alerts/smpp0", message) == ESME_ROK
        except (RedisError, OSError):
            return False

    await wait_for(stored, 30, "inbound message stored once Redis is back")
    assert await redis.xlen(keys.inbound("alerts")) == 1
    out = capsys.readouterr().out
    assert out.count("redis unreachable") == 1, out
    assert "Traceback" not in out
    await redis.aclose()


def test_socket_timeout_must_outlast_a_blocking_read(redis_url: str) -> None:
    data = config_dict(redis_url, "http://127.0.0.1:1/send")
    data["queue"]["block_ms"] = 30_000
    data["router"]["redis_socket_timeout"] = 20
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, env={})
    assert any(
        p.startswith("router.redis_socket_timeout: must be more") for p in caught.value.problems
    )
    data["router"].update(redis_socket_timeout=0, redis_connect_timeout=-1)
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, env={})
    assert {p.split(":")[0] for p in caught.value.problems} >= {
        "router.redis_socket_timeout",
        "router.redis_connect_timeout",
    }
    data["router"].update(redis_socket_timeout=40, redis_connect_timeout=5)
    assert parse_settings(data, env={}).router.redis_socket_timeout == 40


async def test_inbound_callback_poster_waits_out_an_outage(
    own_redis: RedisServer, status_inbox: StatusInbox
) -> None:
    """The inbound poster keeps running through a kill -9 of Redis and posts what
    arrives after it (the status inbox stands in for the profile's callback_url)."""
    redis = Redis.from_url(own_redis.url, socket_connect_timeout=2)
    inbound = Inbound(redis, "alerts", forward=True, reassembly_timeout=5)
    outages = RedisOutages(redis)
    poster = CallbackPoster(
        redis, "alerts", status_inbox.url, consumer="t", inbound=inbound, outages=outages
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(poster.run(stopping))
    message = ShortMessage(source="447911123456", source_ton=1, short_message=b"hi")
    assert await inbound.handle(message) == ESME_ROK
    await wait_for(lambda: poster.posted == 1, 20, "first message posted")
    own_redis.kill()
    await asyncio.sleep(3)
    assert not task.done() and outages.count == 1
    own_redis.start()

    async def stored() -> bool:
        try:
            return await inbound.handle(message) == ESME_ROK
        except (RedisError, OSError):
            return False

    await wait_for(stored, 30, "second message stored once Redis is back")
    await wait_for(lambda: poster.posted == 2, 30, "second message posted")
    # The outage ends with the loop's next Redis call after the post (its ack): one
    # outage in all, over once that call is done.
    await wait_for(lambda: outages.down_since is None, 10, "the outage noted as over")
    assert outages.count == 1
    stopping.set()
    await asyncio.wait_for(task, 10)
    await redis.aclose()


async def test_sigterm_during_an_outage_ends_after_the_grace(
    own_redis: RedisServer, provider: Provider, tmp_path: Path
) -> None:
    """Outcomes waiting for Redis when SIGTERM comes get the grace, then are given up
    (left pending): the daemon exits instead of waiting for Redis for ever."""
    data = config_dict(own_redis.url, provider.url, window=8)
    data["router"]["state_dir"] = str(tmp_path / "var")
    data["router"]["shutdown_grace"] = 2
    config = write_config(tmp_path / "router.toml", data)
    settings = parse_settings(data, env={}, base_dir=tmp_path)
    redis = Redis.from_url(own_redis.url)
    await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": f"t{i}"} for i in range(2000)]
    )
    await redis.aclose()
    provider.latency = 0.02
    proc = await start_daemon(config, tmp_path / "daemon.log")
    try:
        await wait_for(lambda: len(provider.requests) >= 100, 60, "sending")
        own_redis.kill()
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
        own_redis.start()
    assert code == 0, (tmp_path / "daemon.log").read_text()[-3000:]


async def test_an_outage_that_flaps_is_logged_once(capsys: pytest.CaptureFixture[str]) -> None:
    """On a Redis Cluster with one master down, calls on the other masters succeed
    between the failing ones: still one outage, one warning, one end line."""
    outages = RedisOutages()
    error = RedisConnectionError("Connection refused")
    for _ in range(5):
        outages.down("recording outcomes", error)
        outages.up()
        assert outages.down_since is None  # the health record says it answers
    assert outages.count == 1
    await asyncio.sleep(SETTLE + 0.3)
    out = capsys.readouterr().out
    assert out.count("redis unreachable") == 1 and out.count("redis answers again") == 1, out
    assert outages.down("reading", error)  # after it settled: a new outage
    assert outages.count == 2
