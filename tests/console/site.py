"""What the console's tests share: a configuration with console tokens, the real
HTTP application (`build_app`) served on a free port over a real Redis (the fixtures
`data`, `settings` and `http`, which tests/console/conftest.py offers every test there:
a module changes the configuration by its own `data`), signing in, reading and
changing pages over plain HTTP, and a daemon with its API served by worker processes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from router.api.app import build_app
from router.api.common import ApiContext
from router.client import Client
from router.config import Settings, parse_settings
from router.console.auth import COOKIE
from router.daemon.daemon import Daemon
from router.store.ledger import Ledger

from ..binds.test_smpp_flow import smpp_config
from ..conftest import Provider, config_dict, serve_app, wait_for

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


def smpp_console_config(
    redis_url: str, tmp: Path, smsc_port: int, api_port: int = 0
) -> dict[str, Any]:
    """The SMPP tests' configuration (profile ``sms`` over SMPP to the SMSC simulator on
    `smsc_port`) with the API listening on `api_port` (0: any free port) and the
    console's admin key."""
    data = smpp_config(redis_url, tmp, smsc_port)
    data["api"] = {
        "listen": f"127.0.0.1:{api_port}",
        "keys": {"ops": {"token": ADMIN, "scopes": ["admin"]}},
    }
    return data


def settings_of(data: dict[str, Any], tmp: Path) -> Settings:
    """`data` loaded as the router loads its file (relative paths from `tmp`)."""
    return parse_settings(data, env={}, base_dir=tmp)


@pytest.fixture
def data(redis_url: str, provider: Provider, tmp_path: Path) -> dict[str, Any]:
    """The console tests' configuration (`console_config`); a module that needs another
    defines its own `data`."""
    return console_config(redis_url, provider.url, tmp_path)


@pytest.fixture
def settings(data: dict[str, Any], tmp_path: Path) -> Settings:
    """`data` loaded."""
    return settings_of(data, tmp_path)


@pytest.fixture
async def http(settings: Settings, redis: Redis) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of the HTTP application serving `settings` (`console_site`)."""
    async with console_site(settings, redis) as client:
        yield client


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


async def admin_session(http: aiohttp.ClientSession) -> tuple[str, str]:
    """Sign in with the admin key: the session and the CSRF token its forms carry."""
    session = await sign_in(http, ADMIN)
    return session, await csrf_of(http, session)


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


async def get(http: aiohttp.ClientSession, session: str, path: str) -> tuple[int, str]:
    """GET `path` as `session` (no redirect followed); the status and the body."""
    async with http.get(path, headers=cookie(session), allow_redirects=False) as response:
        return response.status, await response.text()


async def post(
    http: aiohttp.ClientSession, session: str, path: str, form: dict[str, str]
) -> tuple[int, str, str]:
    """POST `form` to `path` as `session`; the status, the Location (or "") and the
    body."""
    async with http.post(
        path, data=form, headers=cookie(session), allow_redirects=False
    ) as response:
        return response.status, response.headers.get("Location", ""), await response.text()


async def done(
    http: aiohttp.ClientSession, session: str, path: str, form: dict[str, str], back: str
) -> str:
    """POST a change that succeeds (303 back to page `back`); that page then."""
    status, location, body = await post(http, session, path, form)
    assert status == 303, body
    assert location.startswith(f"{back}?"), location
    status, page = await get(http, session, location)
    assert status == 200
    return page


def outcome(page: str) -> str:
    """What the page says a change did (its ``data-outcome`` line)."""
    found = re.search(r"<p [^>]*data-outcome>([^<]*)</p>", page)
    assert found is not None, page
    return found.group(1)


def error(page: str) -> str:
    """Why the page refused a change (its ``data-error`` line)."""
    found = re.search(r"<p [^>]*data-error>([^<]*)</p>", page)
    assert found is not None, page
    return found.group(1)


async def refused_to_readers_and_without_csrf(
    http: aiohttp.ClientSession, changes: dict[str, dict[str, str]]
) -> None:
    """Each change (path: form without its CSRF token) is refused to a ``read``
    session, and to an admin's without its own CSRF token (none, a made-up one, the
    reader's)."""
    reader = await sign_in(http, READER)
    admin = await sign_in(http, ADMIN)
    reader_csrf = await csrf_of(http, reader)
    for path, form in changes.items():
        status, _, body = await post(http, reader, path, {**form, "csrf": reader_csrf})
        assert status == 403 and "lacks the &#39;admin&#39; scope" in body, path
        for csrf in [{}, {"csrf": "x" * 43}, {"csrf": reader_csrf}]:
            status, _, body = await post(http, admin, path, {**form, **csrf})
            assert status == 403 and "CSRF token is missing or wrong" in body, (path, csrf)


async def status_of(redis: Redis, job_id: str) -> str | None:
    """A message's status in the ledger (None: no record)."""
    record = await Ledger(redis, retention=60, events_maxlen=10).get(job_id)
    return None if record is None else str(record["status"])


async def workers_base(daemon: Daemon) -> str:
    """The base URL of `daemon`'s API worker processes (``[api] workers = 2``), once
    both have started."""
    await wait_for(lambda: daemon.api_workers is not None, 30, "workers started")
    workers = daemon.api_workers
    assert workers is not None
    await wait_for(lambda: len(workers.pids) == 2, 30, "two workers")
    return f"http://127.0.0.1:{workers.port}"


def each_on_a_new_connection(base: str = "") -> aiohttp.ClientSession:
    """A client (no cookies kept) that opens a new connection for each request, so the
    kernel hands each to any of the API's worker processes."""
    return aiohttp.ClientSession(
        base or None,
        connector=aiohttp.TCPConnector(force_close=True),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
