"""Redis Cluster: the ``redis+cluster://`` URL and what the router's client does there.

Real servers only: three cluster masters (tests/cluster.py), each a redis-server on a
free loopback port, reached through `open_redis` as the daemon does. Shows what
redis-py's cluster client does with what the router uses (scripts and NOSCRIPT,
pipelines and transactions, blocking stream reads, SCAN) and that a master's death
is an outage by router/store/outages.py's rules, over once the master is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    ClusterCrossSlotError,
    ClusterDownError,
    CrossSlotTransactionError,
    MaxConnectionsError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
)

from router.config import ConfigError, Settings, parse_settings
from router.store import roundtrip
from router.store.connections import ClusterUnreachable, RedisUnavailable, RouterCluster, open_redis
from router.store.outages import REDIS_DOWN, REDIS_ERRORS, RedisOutages
from router.store.redis_url import ClusterUrl, parse_cluster_url

from ..cluster import RedisClusterSet, cluster_running, cluster_unsupported
from ..conftest import config_dict

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(cluster_unsupported() is not None, reason=str(cluster_unsupported())),
]

# Two hash tags of different slots (and, in a 3-master cluster, of different masters).
P, Q = "{alerts}", "{bulk}"

COPY = """
local value = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[2], value)
return value
"""
TOUCH_OTHER = "return redis.call('GET', ARGV[1])"


def settings_for(url: str, **router: Any) -> Settings:
    data = config_dict(url, "http://127.0.0.1:1/send")
    data["router"].update(router)
    return parse_settings(data, env={})


def problems(url: str, **router: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings_for(url, **router)
    return caught.value.problems


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterSet]:
    with cluster_running(tmp_path_factory.mktemp("cluster") / "nodes") as nodes:
        yield nodes


@pytest.fixture
async def client(cluster: RedisClusterSet) -> AsyncIterator[Redis]:
    """The router's client of the cluster, on empty masters; emptied again afterwards."""
    async with open_redis(settings_for(cluster.url)) as redis:
        await redis.flushall()  # to every master
        try:
            yield redis
        finally:
            # A test that restarted a master leaves pooled connections to its old
            # process: the first call on one fails (no retries inside the client, as in
            # the router), the next reconnects.
            await retry_until_up(redis.flushall)


async def retry_until_up(call: Any, within: float = 20) -> tuple[Any, list[BaseException]]:
    """Call until it works, as a router loop does; the result and what it waited out
    (anything not an outage by router/store/outages.py's rules is raised at once)."""
    waited: list[BaseException] = []
    deadline = time.monotonic() + within
    while True:
        try:
            return await call(), waited
        except REDIS_DOWN as exc:
            waited.append(exc)
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


# -- configuration ---------------------------------------------------------------------


def test_cluster_url_is_parsed() -> None:
    url = "redis+cluster://10.0.0.1:7000,node-b:7001,[::1]:7002"
    assert parse_cluster_url(url) == ClusterUrl(
        (("10.0.0.1", 7000), ("node-b", 7001), ("::1", 7002))
    )
    assert parse_cluster_url("redis+cluster://h:7000/0") == ClusterUrl((("h", 7000),))
    assert settings_for(url).router.redis == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://", "cluster node address '' must be host:port"),
        ("redis+cluster://h", "cluster node address 'h' must be host:port"),
        ("redis+cluster://h:0", "must be host:port"),
        ("redis+cluster://h:70000", "must be host:port"),
        ("redis+cluster://h:1,", "cluster node address '' must be host:port"),
        ("redis+cluster://h:1/3", "has only database 0"),
        ("redis+cluster://h:1/x/y", "has only database 0"),
        ("redis+cluster://h:1?read_from_replicas=1", "takes no query"),
        ("cluster://h:1", "redis+cluster://"),
    ],
)
def test_bad_cluster_url_is_named(url: str, says: str) -> None:
    found = problems(url)
    assert any(p.startswith("router.redis: ") and says in p for p in found), found


def test_password_in_a_cluster_url_is_refused_unshown() -> None:
    found = problems("redis+cluster://:hunter2secret@h:7000,h:7001")
    assert any("router.redis_password" in p for p in found), found
    assert not any("hunter2secret" in p for p in found), found


def test_replicas_ack_is_accepted_with_a_cluster() -> None:
    # Each WAIT goes to the master that ran its step (tests/store/test_cluster_failover.py).
    settings = settings_for("redis+cluster://h:7000", replicas_ack=1, replicas_ack_timeout_ms=250)
    assert (settings.router.replicas_ack, settings.router.replicas_ack_timeout_ms) == (1, 250)


async def test_unreachable_seeds_name_the_url_without_secrets() -> None:
    url = "redis+cluster://127.0.0.1:1,127.0.0.1:2"
    data = config_dict(url, "http://127.0.0.1:1/send")
    data["router"].update(redis_password="env:PW", redis_connect_timeout=0.5)
    settings = parse_settings(data, env={"PW": "pw-not-shown"})
    with pytest.raises(RedisUnavailable) as caught:
        async with open_redis(settings):
            pass
    assert url in str(caught.value) and "cannot be connected" in str(caught.value)
    assert "pw-not-shown" not in str(caught.value)


# -- the client ------------------------------------------------------------------------


async def test_client_reaches_every_master(cluster: RedisClusterSet, client: Redis) -> None:
    assert isinstance(client, RedisCluster)
    assert await client.ping()
    # Keys until every master holds one; SCAN goes to every master.
    names = [f"t:{i}" for i in range(30)]
    for name in names:
        await client.set(name, "1")
    assert {cluster.port_of(n) for n in names} == set(cluster.ports)
    found = {key.decode() async for key in client.scan_iter(match="t:*", count=100)}
    assert found == set(names)


async def test_script_of_one_slot_runs_and_survives_script_flush(client: Redis) -> None:
    copy = client.register_script(COPY)
    await client.set(f"{P}a", "v1")
    assert await copy(keys=[f"{P}a", f"{P}b"]) == b"v1"
    assert await client.script_flush()  # on every master
    assert not any(await client.script_exists(copy.sha))
    # The Script object meets NOSCRIPT, loads the script on every master, runs again.
    await client.set(f"{P}a", "v2")
    assert await copy(keys=[f"{P}a", f"{P}b"]) == b"v2"
    assert await client.get(f"{P}b") == b"v2"


@pytest.mark.parametrize("transaction", [False, True])
async def test_redis_py_blocks_evalsha_on_a_cluster_pipeline(
    client: Redis, transaction: bool
) -> None:
    """The redis-py defect `roundtrip.execute` works around (8.1 and older): ``evalsha``
    is blocked on a cluster pipeline, so ``script(..., client=pipe)`` raises. It needs
    the defect, so it is skipped where the installed redis-py has fixed it; the router's
    own pipelines are tested below whatever the version."""
    copy = client.register_script(COPY)
    await client.set(f"{P}a", "v1")
    async with client.pipeline(transaction=transaction) as pipe:
        try:
            await copy(keys=[f"{P}a", f"{P}b"], client=pipe)
        except RedisClusterException as blocked:
            assert "evalsha is blocked" in str(blocked)
        else:
            pytest.skip(f"redis-py {sync_redis.__version__} runs evalsha on a cluster pipeline")


@pytest.mark.parametrize("transaction", [False, True])
async def test_raw_evalsha_in_a_cluster_pipeline_needs_the_script_loaded(
    client: Redis, transaction: bool
) -> None:
    """A raw EVALSHA in a cluster pipeline is sent as it is: unlike a single server's
    pipeline, nothing loads the script first, so after SCRIPT FLUSH (or on a master that
    never ran it) the reply is NOSCRIPT; once loaded on every master, it runs."""
    copy = client.register_script(COPY)
    await client.set(f"{P}a", "v1")
    await client.script_flush()
    async with client.pipeline(transaction=transaction) as pipe:
        pipe.execute_command("EVALSHA", copy.sha, 2, f"{P}a", f"{P}b")
        pipe.set(f"{P}c", "1")
        flushed = await pipe.execute(raise_on_error=False)
    assert isinstance(flushed[0], NoScriptError) and flushed[1] is True, flushed
    await client.script_load(COPY)  # to every master: now the pipeline's EVALSHA runs
    async with client.pipeline(transaction=transaction) as pipe:
        pipe.execute_command("EVALSHA", copy.sha, 2, f"{P}a", f"{P}b")
        pipe.eval(COPY, 2, f"{P}a", f"{P}d")  # EVAL is not blocked
        assert await pipe.execute() == [b"v1", b"v1"]


async def test_redis_py_typed_reply_fails_in_a_cluster_multi(client: Redis) -> None:
    """The other defect (redis-py 8.1 and older): in a cluster MULTI a typed method's
    reply fails (``smembers``: "<lambda>() got an unexpected keyword argument 'keys'",
    which stopped the daemon). Skipped where the installed redis-py has fixed it."""
    await client.sadd(f"{P}set", "a")
    async with client.pipeline(transaction=True) as pipe:
        pipe.smembers(f"{P}set")
        try:
            replies = await pipe.execute()
        except TypeError as failed:
            assert "keys" in str(failed)
        else:
            assert replies == [{b"a"}]
            fixed = sync_redis.__version__
            pytest.skip(f"redis-py {fixed} parses typed replies in a cluster MULTI")


@pytest.mark.parametrize("transaction", [False, True])
async def test_router_pipelines_run_scripts_and_typed_replies_on_a_cluster(
    client: Redis, transaction: bool
) -> None:
    """Interop regression (the two redis-py defects above, whichever version is
    installed): the router's `roundtrip.execute` sends plain commands, loads scripts a
    master lacks and runs again only the commands that found none."""
    await client.sadd(f"{P}set", "a")
    copy = client.register_script(COPY)
    await client.set(f"{P}a", "v1")
    await client.script_flush()  # every master forgets: the first EVALSHA finds none
    replies = await roundtrip.execute(
        client,
        [
            ("INCR", f"{P}n"),
            roundtrip.evalsha(copy, [f"{P}a", f"{P}b"], []),
            ("SMEMBERS", f"{P}set"),
        ],
        [copy],
        transaction=transaction,
    )
    assert replies[0] == 1 and replies[1] == b"v1" and set(replies[2]) == {b"a"}
    assert await client.get(f"{P}n") == b"1"  # the INCR ran once, not again
    assert await client.get(f"{P}b") == b"v1"


async def test_script_reaching_a_key_of_another_slot(
    cluster: RedisClusterSet, client: Redis
) -> None:
    touch = client.register_script(TOUCH_OTHER)
    home = cluster.index_of(f"{P}x")
    tags = [f"{{t{i}}}" for i in range(100)]
    elsewhere = next(t for t in tags if cluster.index_of(t) != home)
    alongside = next(t for t in tags if cluster.index_of(t) == home)
    # An undeclared key of another master: the server refuses it.
    with pytest.raises(ResponseError, match="non local key"):
        await touch(keys=[f"{P}x"], args=[f"{elsewhere}y"])
    # Redis 7.0 lets one of another slot of the same master through: a script's keys
    # must share the hash tag by design, not because a test cluster caught it.
    assert await touch(keys=[f"{P}x"], args=[f"{alongside}y"]) is None


async def test_keys_of_two_slots_in_one_script_are_refused(
    cluster: RedisClusterSet, client: Redis
) -> None:
    copy = client.register_script(COPY)
    await client.script_load(COPY)
    # redis-py refuses before sending (its own check, not the server's CROSSSLOT)...
    with pytest.raises(RedisClusterException, match="same key slot"):
        await copy(keys=[f"{P}a", f"{Q}b"])
    # ...and a node sent the call anyway answers CROSSSLOT, a ResponseError.
    cluster_client = client
    assert isinstance(cluster_client, RedisCluster)
    node = cluster_client.get_node_from_key(f"{P}a")
    # (redis-py strips the error code: the class says CROSSSLOT, the text does not.)
    with pytest.raises(ClusterCrossSlotError, match="don't hash to the same slot"):
        await cluster_client.execute_command(
            "EVALSHA", copy.sha, 2, f"{P}a", f"{Q}b", target_nodes=node
        )
    assert issubclass(ClusterCrossSlotError, ResponseError)


async def test_pipelines(client: Redis) -> None:
    # Without a transaction: keys of several slots and masters, one round trip per master.
    async with client.pipeline(transaction=False) as pipe:
        for tag in (P, Q, "{x}", "{y}"):
            pipe.set(f"{tag}k", tag)
        pipe.get(f"{Q}k")
        assert await pipe.execute() == [True, True, True, True, Q.encode()]
    # A transaction on one slot: MULTI/EXEC on that slot's master.
    async with client.pipeline(transaction=True) as pipe:
        pipe.incr(f"{P}n")
        pipe.incr(f"{P}n")
        pipe.hset(f"{P}h", "f", "v")
        assert await pipe.execute() == [1, 2, 1]
    # A transaction on two slots is refused before anything is sent.
    async with client.pipeline(transaction=True) as pipe:
        pipe.incr(f"{P}n")
        pipe.incr(f"{Q}n")
        with pytest.raises(CrossSlotTransactionError):
            await pipe.execute()
    assert await client.get(f"{P}n") == b"2" and await client.get(f"{Q}n") is None


async def test_stream_group_and_blocking_read(client: Redis) -> None:
    stream = f"{P}queue"
    await client.xgroup_create(stream, "workers", id="0", mkstream=True)
    assert await client.xreadgroup("workers", "c1", {stream: ">"}, count=10, block=50) == []

    async def add_later() -> bytes:
        await asyncio.sleep(0.2)
        return await client.xadd(stream, {"job": "1"})  # type: ignore[no-any-return]

    adding = asyncio.create_task(add_later())
    # The read blocks on the stream's master until the entry comes (other commands go
    # on meanwhile on other connections: the XADD above).
    reply = await client.xreadgroup("workers", "c1", {stream: ">"}, count=10, block=5000)
    entry_id = await adding
    assert reply == [[stream.encode(), [(entry_id, {b"job": b"1"})]]]
    assert await client.xack(stream, "workers", entry_id) == 1


async def test_callers_wait_for_a_connection(cluster: RedisClusterSet, client: Redis) -> None:
    """More blocking reads at once than a node has connections: redis-py's own client
    refuses the extra ones (MaxConnectionsError, which would read as an outage); the
    router's waits its turn, as the single-server pool does."""
    stream = f"{P}wait"
    await client.xgroup_create(stream, "g", id="0", mkstream=True)
    seeds = [ClusterNode("127.0.0.1", port) for port in cluster.ports]

    async def reads(redis: RedisCluster) -> list[Any]:
        calls = (redis.xreadgroup("g", f"c{i}", {stream: ">"}, block=100) for i in range(6))
        return await asyncio.gather(*calls, return_exceptions=True)

    plain = RedisCluster(startup_nodes=seeds, max_connections=2)
    waiting = RouterCluster(startup_nodes=seeds, max_connections=2, in_flight=2)
    try:
        assert any(isinstance(r, MaxConnectionsError) for r in await reads(plain))
        assert await reads(waiting) == [[]] * 6
    finally:
        await plain.aclose()
        await waiting.aclose()


async def test_killed_master_is_an_outage_until_it_is_back(
    cluster: RedisClusterSet, client: Redis
) -> None:
    await client.set(f"{P}k", "before")
    victim = cluster.index_of(f"{P}k")
    survivor_key = next(
        f"{{s{i}}}k" for i in range(100) if cluster.index_of(f"{{s{i}}}k") != victim
    )
    await client.set(survivor_key, "kept")
    outages = RedisOutages(client)
    cluster.kill(victim)
    try:
        # Its slots: the connection fails (a ConnectionError, an outage)...
        with pytest.raises(REDIS_DOWN) as on_victim:
            await client.get(f"{P}k")
        assert outages.down("reading", on_victim.value)
        assert outages._dropping is not None
        await outages._dropping  # idle connections of every node dropped, no error
        # ...and once the others mark it failed (node time-out), every slot answers
        # CLUSTERDOWN (ClusterDownError, an outage too) until it is back. (Each such
        # answer makes redis-py reload the slot map, which may ask the dead master for
        # COMMAND: a ConnectionError now and then for keys of live masters too.)
        seen: list[BaseException] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                await client.get(survivor_key)
            except REDIS_DOWN as exc:
                seen.append(exc)
                if isinstance(exc, ClusterDownError):
                    break
            await asyncio.sleep(0.1)
        assert seen and isinstance(seen[-1], ClusterDownError), seen
    finally:
        cluster.start(victim)
    await asyncio.to_thread(cluster.wait_ok)
    value, waited = await retry_until_up(lambda: client.get(survivor_key))
    assert value == b"kept"
    outages.up()
    assert outages.count == 1 and outages.down_since is None
    assert all(isinstance(e, REDIS_ERRORS) for e in [on_victim.value, *seen, *waited])
    # No append-only file: the killed master's data is gone, but it serves its slots.
    assert await client.get(f"{P}k") is None
    await client.set(f"{P}k", "after")
    assert await client.get(f"{P}k") == b"after"


async def test_unusable_slot_map_is_a_connection_error(tmp_path: Path) -> None:
    """One master alone, only half the slots assigned: no usable slot map is
    ClusterUnreachable, a ConnectionError (an outage), not a RedisClusterException."""
    lone = RedisClusterSet(tmp_path / "lone", masters=1)
    try:
        node = lone.nodes[0]
        node.start()
        with sync_redis.Redis(port=node.port) as plain:
            plain.execute_command("CLUSTER", "ADDSLOTS", *range(0, 8192))
        with pytest.raises(RedisUnavailable, match="All slots are not covered"):
            async with open_redis(settings_for(lone.url)):
                pass
        assert issubclass(ClusterUnreachable, REDIS_DOWN)
    finally:
        lone.stop()
