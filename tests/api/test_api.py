"""The HTTP surface's shared parts: probes, JSON errors, bearer tokens and scopes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from router.api.app import build_app
from router.api.common import API_KEY, ApiContext, ApiError, json_response, read_json, scoped
from router.client import Client
from router.config import Settings
from router.store.ledger import Ledger

from ..conftest import Provider, RunningDaemon, wait_for

TOKENS = {"ops": "o" * 32, "reader": "r" * 32}


def api_settings(make_settings: Callable[..., Settings]) -> Settings:
    settings = make_settings()
    keys = {
        "ops": {"token": TOKENS["ops"], "scopes": ["admin"]},
        "reader": {"token": TOKENS["reader"], "scopes": ["read"]},
    }
    api = settings.api.model_validate({"listen": "127.0.0.1:0", "keys": keys, "max_body": 2048})
    return settings.model_copy(update={"api": api})


async def test_probes_answer_once_the_daemon_is_up(
    make_settings: Callable[..., Settings],
    provider: Provider,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    running = run_daemon(api_settings(make_settings))
    await wait_for(lambda: running.daemon.api is not None and running.daemon.api.port, 10)
    assert running.daemon.api is not None
    base = f"http://127.0.0.1:{running.daemon.api.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200 and await response.json() == {"status": "ok"}

        async def ready() -> bool:
            async with http.get(f"{base}/readyz") as response:
                return response.status == 200

        await wait_for(ready, 10, "ready")
        async with http.get(f"{base}/nowhere") as response:
            assert response.status == 404
            assert (await response.json())["error"] == "Not Found"


@pytest.fixture
async def app_client(redis: Any, make_settings: Callable[..., Settings]) -> Any:
    settings = api_settings(make_settings)
    context = ApiContext(
        settings=settings,
        redis=redis,
        ledger=Ledger(redis, retention=60, events_maxlen=100),
        client=Client.from_settings(redis, settings),
    )
    app = build_app(context)

    @scoped("send")
    async def send(request: web.Request) -> web.Response:
        body = await read_json(request)
        if "to" not in body:
            raise ApiError(400, "to: required")
        return json_response({"ok": True, "key": request[API_KEY]})

    app.router.add_post("/t/send", send)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
        yield http
    await runner.cleanup()


async def test_tokens_scopes_and_json_errors(app_client: aiohttp.ClientSession) -> None:
    http = app_client
    ops = {"Authorization": f"Bearer {TOKENS['ops']}"}
    async with http.post("/t/send", json={"to": "x"}) as response:
        assert response.status == 401
        assert (await response.json())["error"].startswith("Authorization:")
    async with http.post("/t/send", json={}, headers={"Authorization": "Bearer " + "x" * 32}) as r:
        assert r.status == 401 and "unknown token" in (await r.json())["error"]
    reader = {"Authorization": f"Bearer {TOKENS['reader']}"}
    async with http.post("/t/send", json={"to": "x"}, headers=reader) as response:
        assert response.status == 403
        assert "lacks the 'send' scope" in (await response.json())["error"]
    async with http.post("/t/send", json={"to": "x"}, headers=ops) as response:
        assert response.status == 200 and await response.json() == {"ok": True, "key": "ops"}
    async with http.post("/t/send", json={}, headers=ops) as response:
        assert response.status == 400 and await response.json() == {"error": "to: required"}
    async with http.post("/t/send", data=b"{nope", headers=ops) as response:
        assert response.status == 400
        assert (await response.json())["error"].startswith("body: not valid JSON")
    async with http.post("/t/send", data=b"x" * 5000, headers=ops) as response:
        assert response.status == 413
        assert "api.max_body = 2048" in (await response.json())["error"]
    async with http.get("/t/send", headers=ops) as response:
        assert response.status == 405
