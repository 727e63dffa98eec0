"""A connector shared by two profiles, on a real 3-master Redis Cluster with two
instances (issue 19): each delivery report and inbound message reaches the profile it
belongs to, whichever instance's session it arrives on. The two profiles' keys live on
different masters, so any step that mixed them would be refused here."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router import Client
from router.config import Settings, parse_settings
from router.store import keys
from router.store.connections import open_redis
from router.store.ledger import Ledger
from sims.smscsim import SmscSimulator

from ..binds import test_smpp_flow
from ..binds.test_smpp_flow import Inbox
from ..cluster import RedisClusterSet, cluster_running, cluster_unsupported
from ..conftest import NUMBERS, RunningDaemon, number_tables, wait_for

inbox = test_smpp_flow.inbox  # the callback_url fixture, shared

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(cluster_unsupported() is not None, reason=str(cluster_unsupported())),
]

PROFILES = ("otp", "promo")  # on different masters (tests/store/test_cluster.py)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterSet]:
    with cluster_running(tmp_path / "cluster") as nodes:
        yield nodes


def shared_settings(url: str, port: int, instance: str, tmp: Path, callback: str) -> Settings:
    """Profiles `otp` and `promo`, no protocol of their own, over connector `shared`."""
    profiles: dict[str, Any] = {
        name: {
            "global": i == 0,
            "direction": "both",
            "callback_url": callback,
            "numbers": [NUMBERS[i]],
        }
        for i, name in enumerate(PROFILES)
    }
    data = {
        "router": {
            "redis": url,
            "instance": instance,
            "shutdown_grace": 5,
            "state_dir": str(tmp / instance),
        },
        "queue": {"batch": 200, "schedule_poll": 0.05, "block_ms": 100, "claim_idle": 5},
        **number_tables(NUMBERS[:2]),
        "profiles": profiles,
        "connectors": {
            "shared": {
                "protocol": "smpp",
                "direction": "both",
                "window": 50,
                "smpp": {
                    "host": "127.0.0.1",
                    "port": port,
                    "system_id": "smppclient1",
                    "password": "password",
                    "response_timeout": 2,
                    "reconnect_max": 0.5,
                },
            }
        },
        "routes": [{"connectors": ["shared"]}],
    }
    return parse_settings(data, env={})


async def test_a_shared_connector_on_a_cluster_hands_each_profile_its_own(
    cluster: RedisClusterSet, smsc: SmscSimulator, tmp_path: Path, inbox: Inbox
) -> None:
    n = 2000
    port: int = smsc.port  # type: ignore[attr-defined]
    settings = [
        shared_settings(cluster.url, port, name, tmp_path, inbox.url) for name in ("one", "two")
    ]
    assert cluster.index_of(keys.queue("otp")) != cluster.index_of(keys.queue("promo"))
    async with open_redis(settings[0]) as redis:
        client = Client.from_settings(redis, settings[0])
        ids = await client.send_many(
            [{"to": "+447911123456", "text": f"m{i}", "profile": PROFILES[i % 2]} for i in range(n)]
        )
        daemons = [RunningDaemon(s) for s in settings]
        ledger = Ledger(redis, retention=3600, events_maxlen=100_000)
        try:
            await wait_for(lambda: smsc.stats()["sessions"] >= 2, 20, "both instances bound")

            async def statuses() -> Counter[str]:
                return Counter(r["status"] if r else "missing" for r in await ledger.find(ids))

            try:
                await wait_for(lambda: _all_delivered(statuses, n), 120, "every message delivered")
            except AssertionError:
                raise AssertionError(f"not all delivered: {await statuses()}") from None
            # Inbound to each profile's number, on whichever session the SMSC picks.
            for i, profile in enumerate(PROFILES):
                await smsc.inject("+447911000009", NUMBERS[i].lstrip("+"), f"hi {profile}")
            await wait_for(lambda: len(inbox.messages) == 2, 30, "two inbound posts")
        finally:
            codes = [await d.stop() for d in daemons]
        assert codes == [0, 0]
        assert smsc.stats()["segments"] == n  # each message taken once
        for record in await ledger.find(ids[:200]):
            assert record is not None and record["connector"] == "shared"
            assert record["provider_message_id"].startswith("shared/")
        assert {m["text"]: m["profile"] for m in inbox.messages} == {
            "hi otp": "otp",
            "hi promo": "promo",
        }
        # No report was kept early for the other profile and left over.
        for profile in PROFILES:
            assert await redis.hlen(keys.early_reports(profile)) == 0


async def _all_delivered(statuses: Any, n: int) -> bool:
    return bool((await statuses())["delivered"] == n)
