"""The console on Redis Cluster: sessions, the sign-in throttle and the overview work
when the keys live on several masters (health records in different slots, each
profile's keys under its own hash tag)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from router.store import instances, keys
from router.store.connections import open_redis

from ..cluster import cluster_running, cluster_unsupported
from ..conftest import Provider
from .site import ADMIN, console_config, console_site, get, settings_of, sign_in

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(cluster_unsupported() is not None, reason=str(cluster_unsupported())),
]


async def test_the_console_on_a_cluster(tmp_path: Path, provider: Provider) -> None:
    with cluster_running(tmp_path / "nodes") as nodes:
        settings = settings_of(console_config(nodes.url, provider.url, tmp_path), tmp_path)
        async with open_redis(settings) as redis:
            now = time.time()
            for name in ("edge-1", "edge-2", "edge-3"):
                record: dict[str, Any] = {"instance": name, "at": now, "started_at": now}
                await instances.publish(redis, name, record, 15)
            await redis.xadd(keys.events("alerts"), {"id": "j1", "status": "delivered"})
            await redis.xadd(keys.queue("bulk"), {"job": b"x"})
            async with console_site(settings, redis) as http:
                async with http.post("/console/login", data={"token": "x" * 32}) as response:
                    assert response.status == 401
                session = await sign_in(http, ADMIN)
                status, page = await get(http, session, "/console/overview/live")
                assert status == 200
    # INFO of one node (a node the client picks): a version, not "?".
    assert "<dt>version</dt><dd>?</dd>" not in page and "<dt>version</dt><dd>" in page
    assert all(f'data-instance="{name}"' in page for name in ("edge-1", "edge-2", "edge-3"))
    assert 'data-status="delivered"' in page
    assert '<tr data-profile="bulk">' in page and "<td>bulk</td><td>1</td>" in page
