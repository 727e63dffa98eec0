"""`replicas_ack` on Redis Cluster, and a cluster fail-over while the daemon sends.

Real servers only: three ``redis-server --cluster-enabled yes`` masters, each with a
replica (tests/cluster.py), on loopback. A replica frozen with SIGSTOP shows that a
step waits for it: each WAIT goes to the master that ran the step, on the same
connection (a WAIT reaching another node would answer at once). The fail-over test
kills one profile's master with SIGKILL while a daemon sends through our SMSC
simulator; the cluster promotes its replica and the daemon must finish every job.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from router import Client
from router.config import parse_settings
from router.store import keys
from router.store.connections import open_redis
from router.store.ledger import Ledger
from router.store.replicas import SHORT_FIELD
from sims.smscsim import SmscSimulator

from ..cluster import RedisClusterSet, cluster_running, cluster_unsupported
from ..conftest import RunningDaemon, config_dict, wait_for
from .test_cluster import PROFILES, WINDOW, cluster_settings, counts
from .test_sentinel import record_and_finish

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(cluster_unsupported() is not None, reason=str(cluster_unsupported())),
]

JOB = (b"\x81\xa2to\xad+447911123456", {"to": "+447911123456"})  # an encoded job, its fields


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterSet]:
    with cluster_running(tmp_path / "cluster", replicas=1) as nodes:
        yield nodes


@pytest.fixture
async def client(cluster: RedisClusterSet) -> AsyncIterator[Redis]:
    """The router's client of the cluster (a RouterCluster typed `Redis`)."""
    settings = parse_settings(config_dict(cluster.url, "http://127.0.0.1:1/send"), env={})
    async with open_redis(settings) as redis:
        yield redis


class Replica:
    """A plain client of the replica serving `profile`'s keys, reading them (READONLY),
    and its process, to freeze (SIGSTOP) or kill."""

    def __init__(self, cluster: RedisClusterSet, profile: str) -> None:
        port = cluster.replica_ports_of(keys.queue(profile))[0]
        self.node = cluster.nodes[cluster.ports.index(port)]
        self.redis = Redis(port=port)

    async def status(self, profile: str, job: str) -> bytes | None:
        await self.redis.execute_command("READONLY")  # else a replica answers MOVED
        value: bytes | None = await self.redis.hget(keys.record(profile, job), "status")
        return value

    def freeze(self) -> None:
        assert self.node.proc is not None
        self.node.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.node.proc is not None
        self.node.proc.send_signal(signal.SIGCONT)


async def waits_for_thaw(replica: Replica, step: Any) -> Any:
    """Run `step` with `replica` frozen: it must still be waiting 0.3 s later (its WAIT
    is on the replica's master); then thaw the replica and return the step's result.
    (Frozen for less than the 1 s node time-out: no fail-over starts.)"""
    replica.freeze()
    try:
        task = asyncio.ensure_future(step)
        await asyncio.sleep(0.3)
        assert not task.done(), "the step returned while the replica could not have it"
    finally:
        replica.thaw()
    return await task


async def test_replicas_ack_waits_for_the_replica_of_the_steps_master(
    cluster: RedisClusterSet, client: Redis
) -> None:
    assert cluster.index_of(keys.queue("alerts")) != cluster.index_of(keys.queue("promo"))
    alerts, promo = Replica(cluster, "alerts"), Replica(cluster, "promo")
    try:
        ledger = Ledger(
            client, retention=60, events_maxlen=1000, replicas_ack=1, replicas_ack_timeout_ms=2000
        )
        # The outcome step returns once the replica holds the record: no polling.
        await waits_for_thaw(alerts, record_and_finish(client, ledger, "a1"))
        assert await alerts.status("alerts", "a1") == b"sent"
        # A master that lost its script cache: loaded, the step and its WAIT run again.
        await client.script_flush()
        await waits_for_thaw(alerts, record_and_finish(client, ledger, "a2"))
        assert await alerts.status("alerts", "a2") == b"sent"
        # Enqueueing two profiles (two masters): one WAIT on each profile's master.
        # Only promo's replica is frozen, so a single WAIT elsewhere would not hold on.
        enqueue = ledger.enqueue([("q1", "alerts", *JOB), ("q2", "promo", *JOB)])
        assert await waits_for_thaw(promo, enqueue) == [True, True]
        assert await alerts.status("alerts", "q1") == b"queued"
        assert await promo.status("promo", "q2") == b"queued"
        assert await client.hget(keys.stats("alerts"), SHORT_FIELD) is None
        assert await client.hget(keys.stats("promo"), SHORT_FIELD) is None

        # alerts' replica gone: its steps wait out the time-out and are counted short;
        # promo's are not.
        alerts.node.kill()
        short = Ledger(
            client, retention=60, events_maxlen=1000, replicas_ack=1, replicas_ack_timeout_ms=200
        )
        began = time.monotonic()
        await record_and_finish(client, short, "b1")
        assert time.monotonic() - began >= 0.2  # it did wait for the missing replica
        assert await client.hget(keys.record("alerts", "b1"), "status") == b"sent"
        assert await client.hget(keys.stats("alerts"), SHORT_FIELD) == b"1"
        assert await short.enqueue([("q3", "alerts", *JOB), ("q4", "promo", *JOB)]) == [True] * 2
        assert await client.hget(keys.stats("alerts"), SHORT_FIELD) == b"2"
        assert await client.hget(keys.stats("promo"), SHORT_FIELD) is None
        assert await promo.status("promo", "q4") == b"queued"
    finally:
        for replica in (alerts, promo):
            await replica.redis.aclose()


# -- fail-over -------------------------------------------------------------------------


async def test_daemon_survives_a_cluster_failover(
    cluster: RedisClusterSet,
    smsc: SmscSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = 3000
    port: int = smsc.port  # type: ignore[attr-defined]
    settings = cluster_settings(cluster.url, port, "one", tmp_path, replicas_ack=1)
    victim_profile = PROFILES[1]
    assert cluster.index_of(keys.queue(PROFILES[0])) != cluster.index_of(keys.queue(PROFILES[1]))
    async with open_redis(settings) as redis:
        ids = await Client.from_settings(redis, settings).send_many(
            [
                {"to": "+447911123456", "text": f"f{i}", "profile": PROFILES[i % 2]}
                for i in range(jobs)
            ]
        )
        ledger = Ledger(redis, retention=3600, events_maxlen=1_000_000)
        running = RunningDaemon(settings)
        try:
            await wait_for(lambda: smsc.stats()["segments"] >= jobs // 3, 60, "a third sent")
            victim = cluster.index_of(keys.queue(victim_profile))
            sent_at_kill = smsc.stats()["segments"]
            killed_at = time.monotonic()
            cluster.kill(victim)
            await asyncio.to_thread(cluster.wait_ok, 30)  # its replica took over
            cluster_ok = time.monotonic() - killed_at
            # The old master comes back as a replica of the new one (its nodes.conf
            # says it was replaced), so WAIT 1 is answered again.
            cluster.start(victim)

            async def all_final() -> bool:
                try:
                    return (await counts(ledger, ids))["delivered"] == jobs
                except (RedisError, OSError):
                    return False  # the test's own client meets the fail-over too

            try:
                await wait_for(all_final, 45, "every job delivered after the fail-over")
            except AssertionError:
                raise AssertionError(f"not all delivered: {await counts(ledger, ids)}") from None
            all_final_after = time.monotonic() - killed_at
        finally:
            code = await running.stop()
        assert code == 0
        found = await counts(ledger, ids)
        counted = int(await redis.hget(keys.stats(victim_profile), "possible_duplicates") or 0)
        short = sum([int(await redis.hget(keys.stats(p), SHORT_FIELD) or 0) for p in PROFILES])
    lost = jobs - found["delivered"]
    duplicates = smsc.stats()["segments"] - jobs
    outage = running.daemon.outages
    with capsys.disabled():
        print(
            f"\ncluster fail-over figures: jobs={jobs} sent_at_kill={sent_at_kill} "
            f"cluster_ok_after_kill_s={cluster_ok:.1f} outage_s={outage.last_seconds} "
            f"all_final_after_kill_s={all_final_after:.1f} lost={lost} "
            f"duplicates={duplicates} possible_duplicates={counted} replica_ack_short={short}"
        )
    assert lost == 0, found
    assert 0 <= duplicates <= WINDOW and duplicates <= counted, (duplicates, counted)
    assert outage.count >= 1
