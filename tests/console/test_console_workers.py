"""The console served by API worker processes (`[api] workers`): every connection is a
worker's, the kernel spreads new connections over them, and a session made on one
is known to the others (Redis), until sign-out ends it for all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from router.config import Settings

from ..conftest import RunningDaemon
from .site import (
    ADMIN,
    csrf_of,
    each_on_a_new_connection,
    get,
    post,
    settings_of,
    sign_in,
    workers_base,
)

CONNECTIONS = 20


async def _fresh(base: str, session: str) -> list[int]:
    """The status of GET /console on `CONNECTIONS` new connections with `session`."""
    async with each_on_a_new_connection(base) as http:
        return [(await get(http, session, "/console"))[0] for _ in range(CONNECTIONS)]


async def test_workers_share_the_sessions(
    redis: Redis,
    data: dict[str, Any],
    tmp_path: Path,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    data["api"]["workers"] = 2
    base = await workers_base(run_daemon(settings_of(data, tmp_path)).daemon)
    async with each_on_a_new_connection(base) as http:
        session = await sign_in(http, ADMIN)
        assert await _fresh(base, session) == [200] * CONNECTIONS
        csrf = await csrf_of(http, session)
        status, _, _ = await post(http, session, "/console/logout", {"csrf": csrf})
        assert status == 303
    assert await _fresh(base, session) == [303] * CONNECTIONS
