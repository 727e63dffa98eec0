"""What the console's tests share: a configuration with console tokens, the real
HTTP application (`build_app`) served on a free port over a real Redis, and signing
in over plain HTTP."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from router.api.app import build_app
from router.api.common import ApiContext
from router.client import Client
from router.config import Settings, parse_settings
from router.console.auth import COOKIE
from router.store.ledger import Ledger

from ..conftest import config_dict, serve_app

ADMIN = "a" * 32  # [api.keys.ops], scope admin
READER = "r" * 32  # [api.keys.watch], scope read
ACCOUNT = "c" * 32  # [accounts.shop], scopes send and read


def console_config(redis_url: str, provider_url: str, tmp: Path) -> dict[str, Any]:
    """The tests' small configuration (conftest's `config_dict`) with console tokens:
    an admin key, a read key and an account."""
    data = config_dict(redis_url, provider_url)
    data["router"]["state_dir"] = str(tmp / "var")
    data["api"] = {
        "listen": "127.0.0.1:0",
        "keys": {
            "ops": {"token": ADMIN, "scopes": ["admin"]},
            "watch": {"token": READER, "scopes": ["read"]},
        },
    }
    data["accounts"] = {"shop": {"api_token": ACCOUNT, "scopes": ["send", "read"]}}
    return data


def settings_of(data: dict[str, Any], tmp: Path) -> Settings:
    return parse_settings(data, env={}, base_dir=tmp)


@asynccontextmanager
async def console_site(settings: Settings, redis: Redis) -> AsyncIterator[aiohttp.ClientSession]:
    """The daemon's HTTP application on a free port; a client that follows no
    redirects and keeps no cookies (each test says which cookie it sends)."""
    context = ApiContext(
        settings=settings,
        redis=redis,
        ledger=Ledger(redis, retention=60, events_maxlen=100),
        client=Client.from_settings(redis, settings),
    )
    runner, base = await serve_app(build_app(context))
    try:
        async with aiohttp.ClientSession(
            base_url=base, cookie_jar=aiohttp.DummyCookieJar()
        ) as http:
            yield http
    finally:
        await runner.cleanup()


def set_cookie(response: aiohttp.ClientResponse) -> SimpleCookie:
    """The console cookie the response sets (parsed from its Set-Cookie header)."""
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        jar.load(header)
    assert COOKIE in jar, f"no {COOKIE} cookie set: {response.headers.getall('Set-Cookie', [])}"
    return jar


async def sign_in(
    http: aiohttp.ClientSession, token: str, headers: dict[str, str] | None = None
) -> str:
    """Sign in with `token`; the session's cookie value."""
    async with http.post(
        "/console/login", data={"token": token}, allow_redirects=False, headers=headers
    ) as response:
        assert response.status == 303, await response.text()
        return set_cookie(response)[COOKIE].value


def cookie(session_id: str) -> dict[str, str]:
    """The request header that carries a console session."""
    return {"Cookie": f"{COOKIE}={session_id}"}


async def csrf_of(http: aiohttp.ClientSession, session_id: str) -> str:
    """The CSRF token the overview's forms carry for this session."""
    async with http.get("/console", headers=cookie(session_id), allow_redirects=False) as r:
        assert r.status == 200
        found = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert found is not None
    return found.group(1)
