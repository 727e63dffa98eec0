"""The router on a real 3-master Redis Cluster, with two instances sharing the work.

Every process is real: three ``redis-server --cluster-enabled yes`` masters on
loopback (tests/cluster.py), our SMSC simulator answering submits and sending a
delivery receipt for each, and two daemons (instances ``one`` and ``two``) serving
the same two profiles, whose keys live on different masters. Every multi-key step is
a script or MULTI of one profile's slot: a key of another slot would be refused here.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from router import Client
from router.config import Settings, parse_settings
from router.store import keys
from router.store.connections import open_redis
from router.store.ledger import Ledger
from sims.smscsim import SmscSimulator

from ..cluster import RedisClusterSet, cluster_running, cluster_unsupported
from ..conftest import NUMBERS, RunningDaemon, number_tables, wait_for

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(cluster_unsupported() is not None, reason=str(cluster_unsupported())),
]

PROFILES = ("otp", "promo")  # slots 3408 and 9726: on different masters
WINDOW = 50
READER = "r" * 32
PERSON = "+447911123456"
QUITTER = "+447911000001"  # texts STOP (not PERSON: the messages to PERSON would stop)
# The order a message's statuses may be recorded in (`sending` again after a retry).
ORDER = {"queued": 0, "sending": 1, "sent": 2, "delivered": 3}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterSet]:
    with cluster_running(tmp_path / "cluster") as nodes:
        yield nodes


def cluster_settings(url: str, port: int, instance: str, tmp: Path, **router: Any) -> Settings:
    """Two SMPP profiles (`PROFILES`, window `WINDOW`) on the simulator at `port`."""
    profiles: dict[str, Any] = {}
    for i, name in enumerate(PROFILES):
        profiles[name] = {
            "global": i == 0,
            "protocol": "smpp",
            "window": WINDOW,
            "direction": "both",
            "callback_url": "http://127.0.0.1:1/inbound",  # nobody: posts are retried
            "numbers": [NUMBERS[i]],
            "smpp": {
                "host": "127.0.0.1",
                "port": port,
                "system_id": "smppclient1",
                "password": "password",
                "response_timeout": 2,
                "reconnect_max": 0.5,
            },
        }
    data = {
        "router": {
            "redis": url,
            "instance": instance,
            "shutdown_grace": 5,
            "state_dir": str(tmp / instance),
            **router,
        },
        "queue": {"batch": 200, "schedule_poll": 0.05, "block_ms": 100, "claim_idle": 5},
        **number_tables(NUMBERS[:2]),
        "profiles": profiles,
    }
    return parse_settings(data, env={})


async def counts(ledger: Ledger, ids: list[str]) -> Counter[str]:
    found: Counter[str] = Counter()
    for start in range(0, len(ids), 2000):
        chunk = ids[start : start + 2000]
        records = await ledger.find(chunk, profiles=PROFILES)
        found.update(r["status"] if r else "missing" for r in records)
    return found


async def in_lifecycle_order(redis: Redis, profile: str) -> tuple[int, list[str]]:
    """Reads the profile's event stream: how many events, and the jobs whose events
    went backwards (a status recorded before one it follows)."""
    last: dict[str, int] = {}
    wrong: list[str] = []
    seen = 0
    start = "-"
    while True:
        rows: Any = await redis.xrange(keys.events(profile), start, "+", count=5000)
        for event_id, fields in rows:
            start = "(" + event_id.decode()
            if fields.get(b"type") == b"inbound":
                continue
            seen += 1
            job, status = fields[b"id"].decode(), fields[b"status"].decode()
            rank = ORDER[status]
            if rank < last.get(job, -1) and not (status == "sending" and last[job] == 1):
                wrong.append(job)
            last[job] = max(rank, last.get(job, -1))
        if len(rows) < 5000:
            return seen, wrong


async def views_over_the_profiles(base: str) -> None:
    """The API's views that merge the profiles' keys, on the cluster: a record by id
    (its locator), two pages of the SMS log, one message's events over the websocket,
    the metrics."""
    headers = {"Authorization": f"Bearer {READER}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{base}/v1/messages/c-1") as response:
            record = await response.json()
            assert response.status == 200 and (record["profile"], record["status"]) == (
                "promo",
                "delivered",
            )
        pages: list[list[str]] = []
        cursor = ""
        for _ in range(2):
            async with http.get(f"{base}/v1/messages?limit=50{cursor}") as response:
                page = await response.json()
                assert response.status == 200, page
            pages.append([m["id"] for m in page["messages"]])
            cursor = f"&cursor={page['next_cursor']}"
        assert len(pages[0]) == len(pages[1]) == 50 and not set(pages[0]) & set(pages[1])
        assert {m.split("-")[0] for m in pages[0] + pages[1]} <= {"c", "keyword"}
        ws = await http.ws_connect(f"{base}/v1/events")
        await ws.send_json({"from": "0", "ids": ["c-2", "c-3"]})
        assert (await ws.receive_json(timeout=10))["type"] == "subscribed"
        seen: list[tuple[str, str]] = []
        while len(seen) < 8:
            event = await ws.receive_json(timeout=30)
            if event["type"] == "status":
                seen.append((event["id"], event["status"]))
        await ws.close()
        for job in ("c-2", "c-3"):
            lifecycle = [status for i, status in seen if i == job]
            assert lifecycle == ["queued", "sending", "sent", "delivered"], seen
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
            assert response.status == 200 and 'profile="promo"' in text


async def test_two_instances_on_a_cluster_send_every_message_once(
    cluster: RedisClusterSet, smsc: SmscSimulator, tmp_path: Path
) -> None:
    n = int(os.environ.get("CLUSTER_TEST_N", "20000"))
    port: int = smsc.port  # type: ignore[attr-defined]
    settings = [cluster_settings(cluster.url, port, name, tmp_path) for name in ("one", "two")]
    api = settings[0].api.model_validate(
        {"listen": "127.0.0.1:0", "keys": {"reader": {"token": READER, "scopes": ["read"]}}}
    )
    settings[0] = settings[0].model_copy(update={"api": api})
    # The two profiles' slots are served by different masters: a script touching both
    # would fail on either.
    assert cluster.index_of(keys.queue("otp")) != cluster.index_of(keys.queue("promo"))
    async with open_redis(settings[0]) as redis:
        client = Client.from_settings(redis, settings[0])
        ids: list[str] = []
        for start in range(0, n, 2000):
            ids += await client.send_many(
                [
                    {"to": PERSON, "text": f"m{i}", "profile": PROFILES[i % 2], "id": f"c-{i}"}
                    for i in range(start, start + 2000)
                ]
            )
        daemons = [RunningDaemon(s) for s in settings]
        ledger = Ledger(redis, retention=3600, events_maxlen=1_000_000)
        began = time.monotonic()
        try:
            # An inbound STOP on the cluster: stored, opt-out applied, reply enqueued, in
            # one MULTI of the profile's slot.
            await wait_for(lambda: smsc.stats()["sessions"] >= 4, 20, "both instances bound")
            await smsc.inject(QUITTER, NUMBERS[1], "STOP")

            async def all_delivered() -> bool:
                return (await counts(ledger, ids))["delivered"] == n

            try:
                await wait_for(all_delivered, 300, "every message delivered")
            except AssertionError:
                raise AssertionError(f"not all delivered: {await counts(ledger, ids)}") from None
            elapsed = time.monotonic() - began

            # (The simulator hands it to any bound session: either profile's.)
            async def stop_applied() -> bool:
                return any([await redis.sismember(keys.opt_outs(p), QUITTER) for p in PROFILES])

            await wait_for(stop_applied, 20, "STOP applied")
            assert daemons[0].daemon.api is not None
            await views_over_the_profiles(f"http://127.0.0.1:{daemons[0].daemon.api.port}")
        finally:
            codes = [await d.stop() for d in daemons]
        assert codes == [0, 0]
        # None lost, none sent twice: the SMSC took each message once.
        assert smsc.stats()["segments"] == n, smsc.stats()
        assert int(await redis.hget(keys.stats("otp"), "possible_duplicates") or 0) == 0
        # Both instances sent part of the work (each counts what it recorded `sent`).
        sent = [
            sum(d.daemon.metrics.profile(p).statuses.get("sent", 0) for p in PROFILES)
            for d in daemons
        ]
        assert min(sent) > 0 and sum(sent) >= n, sent
        # Per profile, every message's events in lifecycle order, and its record's
        # history the same.
        for profile in PROFILES:
            seen, wrong = await in_lifecycle_order(redis, profile)
            assert seen >= 4 * n // 2 and wrong == [], (profile, wrong[:5])
        for record in await ledger.find(ids[:500]):
            assert record is not None
            history = [h["status"] for h in record["history"]]
            assert history == ["queued", "sending", "sent", "delivered"], history
        # No job id locator (a record is found by looking in the profiles, across the
        # masters); no key of the old layout exists.
        assert [k async for k in redis.scan_iter(match="sms:loc:*")] == []
        assert (await ledger.get("c-1", profiles=PROFILES) or {}).get("profile") == "promo"
        assert [k async for k in redis.scan_iter(match="sms:msg:*")] == []
        assert await redis.exists("sms:events", "sms:callbacks") == 0
    print(f"cluster: {n} messages, 2 instances, {n / elapsed:.0f} msg/s end to end")
