"""Redis Sentinel: the ``redis+sentinel://`` URL, `replicas_ack`, and a fail-over.

Real servers only: a master, a replica and three sentinels (tests/sentinels.py),
each a redis-server process on a free loopback port. The fail-over test kills the
master with SIGKILL while the daemon sends; the sentinels promote the replica; the
daemon must carry on on the new master and finish every job.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from router import Client
from router.config import ConfigError, Settings, parse_settings
from router.store import keys
from router.store.connections import open_redis
from router.store.ledger import Finished, Ledger
from router.store.redis_url import SentinelUrl, parse_sentinel_url
from router.store.replicas import SHORT_FIELD

from ..binds.test_flow import statuses
from ..conftest import Provider, RedisServer, config_dict, free_port, wait_for
from ..sentinels import SentinelSet


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    topology = SentinelSet(tmp_path / "sentinel-set")
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


def problems(data: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, env=env or {})
    return caught.value.problems


def router_config(**router: Any) -> dict[str, Any]:
    data = config_dict("embedded", "http://127.0.0.1:1/send")
    data["router"].update(router)
    return data


# -- configuration ---------------------------------------------------------------------


def test_sentinel_url_is_parsed() -> None:
    url = "redis+sentinel://10.0.0.1:26379,sentinel-b:26380,[::1]:26381/mymaster/3"
    assert parse_sentinel_url(url) == SentinelUrl(
        (("10.0.0.1", 26379), ("sentinel-b", 26380), ("::1", 26381)), "mymaster", 3
    )
    assert parse_sentinel_url("redis+sentinel://h:1/svc").db == 0
    settings = parse_settings(
        router_config(redis=url, replicas_ack=1, replicas_ack_timeout_ms=250), env={}
    )  # fmt: skip
    assert settings.router.redis == url
    assert (settings.router.replicas_ack, settings.router.replicas_ack_timeout_ms) == (1, 250)
    defaults = parse_settings(router_config(), env={}).router
    assert (defaults.replicas_ack, defaults.replicas_ack_timeout_ms) == (0, 100)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h:26379", "must name the service"),
        ("redis+sentinel://h:26379/", "must name the service"),
        ("redis+sentinel://h/mymaster", "sentinel address 'h' must be host:port"),
        ("redis+sentinel://h:0/mymaster", "must be host:port"),
        ("redis+sentinel://h:1,/mymaster", "sentinel address '' must be host:port"),
        ("redis+sentinel://h:1/mymaster/x", "must end with /<service> or /<service>/<db"),
        ("redis+sentinel://h:1/a/0/b", "must end with /<service>"),
        ("redis+sentinel://h:1/mymaster?password=x", "takes no query"),
        ("sentinel://h:1/mymaster", "redis+sentinel:// URL"),
    ],
)
def test_bad_sentinel_url_is_named(url: str, says: str) -> None:
    found = problems(router_config(redis=url))
    assert any(p.startswith("router.redis: ") and says in p for p in found), found


def test_password_stays_out_of_the_url_and_of_problems() -> None:
    found = problems(router_config(redis="redis+sentinel://:hunter2secret@h:1/mymaster"))
    assert any("router.redis_password" in p for p in found), found
    assert not any("hunter2secret" in p for p in found), found
    settings = parse_settings(
        router_config(redis_password="env:REDIS_PW"), env={"REDIS_PW": "s3cret-pw"}
    )
    assert settings.router.redis_password is not None
    assert settings.router.redis_password.get_secret_value() == "s3cret-pw"
    assert "s3cret-pw" not in repr(settings.router)
    assert problems(router_config(redis_password="env:NOT_SET")) == [
        "router.redis_password: environment variable NOT_SET is not set"
    ]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("replicas_ack", -1),
        ("replicas_ack", 101),
        ("replicas_ack", "one"),
        ("replicas_ack_timeout_ms", 0),
        ("replicas_ack_timeout_ms", 60_001),
    ],
)
def test_replicas_ack_out_of_range_is_named(key: str, value: Any) -> None:
    found = problems(router_config(redis="redis://127.0.0.1:1/0", **{key: value}))
    assert len(found) == 1 and found[0].startswith(f"router.{key}: "), found


def test_replicas_ack_needs_a_server_with_replicas() -> None:
    found = problems(router_config(replicas_ack=1))
    assert found == [
        "router.replicas_ack: the embedded Redis has no replicas (every step would wait out "
        "replicas_ack_timeout_ms); set 0, or point redis at a server with replicas"
    ]


async def test_unreachable_sentinels_name_the_url_without_secrets(tmp_path: Path) -> None:
    url = f"redis+sentinel://127.0.0.1:{free_port()}/mymaster/0"
    data = router_config(redis=url, redis_password="env:PW", redis_connect_timeout=0.5)
    settings = parse_settings(data, env={"PW": "pw-not-shown"})
    with pytest.raises(RuntimeError) as caught:
        async with open_redis(settings):
            pass
    assert url in str(caught.value) and "No master found" in str(caught.value)
    assert "pw-not-shown" not in str(caught.value)


# -- replicas_ack ----------------------------------------------------------------------


def finished(job: str, entry: str) -> Finished:
    """One `finish` item: job `job` sent, its work entry `entry` acknowledged."""
    return Finished(job, entry, 2, "sent", "", "", "+447911123456", "+16501112345", "", 1,
                    "", "", "", [f"p-{job}"], [], "", 0.0)  # fmt: skip


async def record_and_finish(redis: Redis, ledger: Ledger, job: str) -> dict[str, int]:
    stream = keys.queue("alerts")
    if not await redis.exists(stream):
        await redis.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
    entry = await redis.xadd(stream, {"j": job})
    return await ledger.finish("alerts", stream, [finished(job, entry.decode())])


async def test_replicas_ack_waits_for_the_replica_and_counts_a_short_ack(
    sentinel_set: SentinelSet, tmp_path: Path
) -> None:
    master = Redis(port=sentinel_set.master.port)
    replica = Redis(port=sentinel_set.replicas[0].port)
    lone = RedisServer(tmp_path / "lone", free_port())  # a master without replicas
    lone.start()
    alone = Redis(port=lone.port)
    try:
        ledger = Ledger(
            master, retention=60, events_maxlen=1000, replicas_ack=1, replicas_ack_timeout_ms=2000
        )
        await record_and_finish(master, ledger, "a1")
        # WAIT returned: the replica holds the record already, no polling needed.
        assert await replica.hget(keys.record("alerts", "a1"), "status") == b"sent"
        assert await master.hget(keys.stats("alerts"), SHORT_FIELD) is None
        # A new master after a fail-over knows no scripts: loaded, and the step runs.
        await master.script_flush()
        await record_and_finish(master, ledger, "a2")
        assert await replica.hget(keys.record("alerts", "a2"), "status") == b"sent"
        # Enqueueing waits too: once "queued" is answered, the replica has the job.
        job = (b"\x81\xa2to\xad+447911123456", {"to": "+447911123456"})
        assert await ledger.enqueue([("q1", "alerts", *job)]) == [True]
        assert await replica.hget(keys.record("alerts", "q1"), "status") == b"queued"
        assert not await replica.exists(keys.locator("q1"))  # no locator any more

        short = Ledger(
            alone, retention=60, events_maxlen=1000, replicas_ack=1, replicas_ack_timeout_ms=50
        )
        began = time.monotonic()
        await record_and_finish(alone, short, "b1")
        assert time.monotonic() - began >= 0.05  # it did wait for the missing replica
        assert await alone.hget(keys.record("alerts", "b1"), "status") == b"sent"
        assert await alone.hget(keys.stats("alerts"), SHORT_FIELD) == b"1"
        assert await short.enqueue([("q2", "alerts", *job), ("q3", "bulk", *job)]) == [True, True]
        assert await alone.hget(keys.stats("alerts"), SHORT_FIELD) == b"2"
        assert await alone.hget(keys.stats("bulk"), SHORT_FIELD) == b"1"
        # replicas_ack = 0: no WAIT, nothing counted.
        plain = Ledger(alone, retention=60, events_maxlen=1000)
        await record_and_finish(alone, plain, "b2")
        assert await alone.hget(keys.stats("alerts"), SHORT_FIELD) == b"2"
    finally:
        for client in (master, replica, alone):
            await client.aclose()
        lone.stop()


async def test_client_from_settings_answers_queued_once_the_replica_holds_the_job(
    sentinel_set: SentinelSet,
) -> None:
    """`Client.from_settings` (the API's, the CLI's) takes `replicas_ack`: with the
    replica frozen, an enqueue waits; once it runs again, the answer comes and the
    replica has the job."""
    data = router_config(redis=sentinel_set.url, replicas_ack=1, replicas_ack_timeout_ms=10_000)
    settings = parse_settings(data, env={})
    master = Redis(port=sentinel_set.master.port)
    replica = Redis(port=sentinel_set.replicas[0].port)
    frozen = sentinel_set.replicas[0].proc
    assert frozen is not None
    try:
        client = Client.from_settings(master, settings)
        frozen.send_signal(signal.SIGSTOP)
        try:
            sending = asyncio.create_task(client.send("+447911123456", "hi", id="w1"))
            await asyncio.sleep(0.3)
            assert not sending.done()  # waiting for the replica
        finally:
            frozen.send_signal(signal.SIGCONT)
        assert await asyncio.wait_for(sending, 10) == "w1"
        assert await replica.hget(keys.record("alerts", "w1"), "status") == b"queued"
    finally:
        for client_ in (master, replica):
            await client_.aclose()


# -- fail-over -------------------------------------------------------------------------


async def test_daemon_survives_a_sentinel_failover(
    sentinel_set: SentinelSet,
    provider: Provider,
    run_daemon: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs, window = 3000, 16
    data = config_dict(sentinel_set.url, provider.url, window=window)
    data["router"].update(state_dir=str(tmp_path / "var"), replicas_ack=1)
    settings: Settings = parse_settings(data, env={}, base_dir=tmp_path)
    provider.latency = 0.002
    async with open_redis(settings) as redis:
        ids = await Client.from_settings(redis, settings).send_many(
            [{"to": "+447911123456", "text": f"f{i}"} for i in range(jobs)]
        )
        assert await redis.wait(1, 5000) == 1  # the queued jobs are on the replica too
        running = run_daemon(settings)
        await wait_for(lambda: len(provider.requests) >= jobs // 3, 60, "a third sent")
        old = sentinel_set.master_port()
        sent_at_kill = len(provider.requests)
        killed_at = time.monotonic()
        node = sentinel_set.kill_master()
        switch = await sentinel_set.wait_failover(old)
        sentinel_set.rejoin(node)  # a replica again, so WAIT 1 is answered again

        async def all_sent() -> bool:
            try:
                return (await statuses(redis, ids)).get("sent") == jobs
            except (RedisError, OSError):
                return False  # the test's own client meets the switch too

        await wait_for(all_sent, 60, "every job sent after the fail-over")
        recovered = time.monotonic() - killed_at
        assert await running.stop() == 0
        counted = int(await redis.hget(keys.stats("alerts"), "possible_duplicates") or 0)
        short = int(await redis.hget(keys.stats("alerts"), SHORT_FIELD) or 0)
    refs = provider.refs
    lost = len(set(ids) - set(refs))
    twice = sum(n - 1 for n in refs.values() if n > 1)
    outage = running.daemon.outages
    out = capsys.readouterr().out
    with capsys.disabled():
        print(
            f"fail-over figures: jobs={jobs} sent_at_kill={sent_at_kill} "
            f"sentinel_switch_s={switch:.1f} outage_s={outage.last_seconds} "
            f"all_sent_after_kill_s={recovered:.1f} lost={lost} duplicates={twice} "
            f"possible_duplicates={counted} replica_ack_short={short}"
        )
    assert lost == 0
    assert twice <= window and twice <= counted, (twice, counted)
    assert outage.count >= 1
    assert "Traceback" not in out
    # The switch is one outage for all loops (a straggler may open a short second one).
    assert 1 <= out.count("redis unreachable") <= 3, out.count("redis unreachable")
