"""The console served by API worker processes (`[api] workers`): every connection is a
worker's, the kernel spreads new connections over them, and a session made on one
is known to the others (Redis), until sign-out ends it for all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from router.config import Settings
from router.console.auth import COOKIE

from ..conftest import Provider, RunningDaemon, wait_for
from .site import ADMIN, console_config, settings_of

CONNECTIONS = 20


async def _fresh(base: str, session: str) -> list[int]:
    """The status of GET /console on `CONNECTIONS` new connections with `session`."""
    statuses = []
    for _ in range(CONNECTIONS):
        # A new connection each time, so the kernel may hand it to either worker.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar()
        ) as http:
            async with http.get(
                f"{base}/console", headers={"Cookie": f"{COOKIE}={session}"}, allow_redirects=False
            ) as response:
                statuses.append(response.status)
    return statuses


async def test_workers_share_the_sessions(
    redis: Redis,
    redis_url: str,
    provider: Provider,
    tmp_path: Path,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    data = console_config(redis_url, provider.url, tmp_path)
    data["api"]["workers"] = 2
    running = run_daemon(settings_of(data, tmp_path))
    await wait_for(lambda: running.daemon.api_workers is not None, 30, "workers started")
    workers = running.daemon.api_workers
    assert workers is not None
    await wait_for(lambda: len(workers.pids) == 2, 30, "two workers")
    base = f"http://127.0.0.1:{workers.port}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.post(
            f"{base}/console/login", data={"token": ADMIN}, allow_redirects=False
        ) as response:
            assert response.status == 303
            session = response.cookies[COOKIE].value
        assert await _fresh(base, session) == [200] * CONNECTIONS
        async with http.get(f"{base}/console", headers={"Cookie": f"{COOKIE}={session}"}) as r:
            page = await r.text()
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        async with http.post(
            f"{base}/console/logout",
            data={"csrf": csrf},
            headers={"Cookie": f"{COOKIE}={session}"},
            allow_redirects=False,
        ) as response:
            assert response.status == 303
    assert await _fresh(base, session) == [303] * CONNECTIONS
