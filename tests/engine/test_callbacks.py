"""Status callbacks are posted independently: a hanging application slows only itself,
and shutdown does not wait for it beyond the grace period."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from redis.asyncio import Redis

from router import Client
from router.config import Settings
from router.engine.callbacks import GROUP, PER_HOST
from router.store import keys

from ..conftest import RunningDaemon, free_port, wait_for

Start = Callable[[Settings], RunningDaemon]


@dataclass
class Apps:
    """Two applications: one answers at once, one never answers."""

    fast_url: str = ""
    hanging_url: str = ""
    fast: list[tuple[str, str]] = field(default_factory=list)
    hanging_now: int = 0
    hanging_peak: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def answer(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.fast.append((body["id"], body["status"]))
        return web.Response(status=204)

    async def hang(self, request: web.Request) -> web.Response:
        self.hanging_now += 1
        self.hanging_peak = max(self.hanging_peak, self.hanging_now)
        try:
            await self.release.wait()
            return web.Response(status=204)
        finally:
            self.hanging_now -= 1


@pytest.fixture
async def apps() -> AsyncIterator[Apps]:
    state = Apps()
    runners = []
    for path, handler in (("/fast", state.answer), ("/hang", state.hang)):
        app = web.Application()
        app.router.add_post(path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        url = f"http://127.0.0.1:{port}{path}"
        if path == "/fast":
            state.fast_url = url
        else:
            state.hanging_url = url
    try:
        yield state
    finally:
        state.release.set()
        for runner in runners:
            await runner.cleanup()


async def test_a_hanging_status_callback_url_delays_neither_others_nor_shutdown(
    redis: Redis, apps: Apps, make_settings: Callable[..., Settings], run_daemon: Start
) -> None:
    settings = make_settings(status_callback_url=apps.hanging_url)
    client = Client.from_settings(redis, settings)
    # The hanging application's changes come first on the callbacks stream.
    slow_ids = await client.send_many([{"to": "+447911123456", "text": f"s{i}"} for i in range(30)])
    running = run_daemon(settings)
    await wait_for(lambda: apps.hanging_now > 0, 20, "posts to the hanging application")
    fast_ids = await client.send_many(
        [
            {"to": "+447911123456", "text": f"f{i}", "status_callback_url": apps.fast_url}
            for i in range(20)
        ]
    )
    started = time.monotonic()
    # (`queued` is left out: the client may write it after the worker's `sending`.)
    want = {(i, s) for i in fast_ids for s in ("sending", "sent")}
    # Well before one hanging post times out (callback_timeout = 10 s).
    await wait_for(lambda: want <= set(apps.fast), 8, "every fast callback")
    assert time.monotonic() - started < 8
    assert 0 < apps.hanging_peak <= PER_HOST
    grace = settings.router.shutdown_grace
    started = time.monotonic()
    assert await running.stop() == 0
    assert time.monotonic() - started < grace + 3
    # The hanging application's changes were not lost: they stay pending for the restart.
    pending = await redis.xpending(keys.callbacks("alerts"), GROUP)
    assert pending["pending"] >= PER_HOST
    assert await redis.xlen(keys.callback_dead_letters("alerts")) == 0
    assert len(slow_ids) == 30
