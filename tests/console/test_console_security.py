"""The web console's security rules over plain HTTP, against the daemon's real HTTP
application on a real Redis: no session is sent to sign-in; wrong tokens are refused
alike and throttled; the cookie's flags; a ``read`` session cannot change anything; a
change without the CSRF token is refused and changes nothing; sessions are shared
through Redis and end at sign-out; no open redirect; Redis down is a page, not a 500."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from router.config import ApiSettings, Settings
from router.console.auth import COOKIE, FAILURES_ALLOWED
from router.store import keys

from ..conftest import free_port
from .site import (
    ACCOUNT,
    ADMIN,
    READER,
    console_site,
    cookie,
    csrf_of,
    get,
    post,
    set_cookie,
    settings_of,
    sign_in,
)

_TTL = ApiSettings.model_fields["console_session_ttl"].default  # 8 h


async def _sessions(redis: Redis) -> list[bytes]:
    return [k async for k in redis.scan_iter(match=keys.console_sessions_pattern())]


async def _ended(http: aiohttp.ClientSession, session: str, path: str, csrf: str) -> None:
    """POST sign-out (or ending every session): back to sign-in, the cookie cleared."""
    async with http.post(
        path, data={"csrf": csrf}, headers=cookie(session), allow_redirects=False
    ) as response:
        assert response.status == 303 and response.headers["Location"] == "/console/login"
        assert set_cookie(response)[COOKIE].value == ""


async def test_without_a_session_every_page_goes_to_sign_in(http: aiohttp.ClientSession) -> None:
    async with http.get("/console", allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"] == "/console/login"
    async with http.get("/console/overview/live", allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"] == "/console/login?next=%2Fconsole%2Foverview%2Flive"
    # An htmx poll is told to take the whole page to sign-in, back to where it was.
    poll = {"HX-Request": "true", "HX-Current-URL": "http://127.0.0.1/console"}
    async with http.get("/console/overview/live", headers=poll) as response:
        assert response.status == 200 and response.headers["HX-Redirect"] == "/console/login"
        assert await response.text() == ""
    # A made-up cookie is no session.
    async with http.get("/console", headers=cookie("x" * 43), allow_redirects=False) as response:
        assert response.status == 303
    async with http.get("/console/login") as response:
        assert response.status == 200
        page = await response.text()
        assert 'name="token"' in page and 'type="password"' in page
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["Cache-Control"] == "no-store"


async def test_wrong_tokens_are_refused_alike_then_throttled(
    http: aiohttp.ClientSession, redis: Redis
) -> None:
    for token in ["x" * 32, "", ADMIN[:-1] + "b", "y" * 5000, "z" * 40]:
        async with http.post("/console/login", data={"token": token}) as response:
            assert response.status == 401
            text = await response.text()
            assert "Unknown token." in text
            assert token[:30] not in text or not token
            assert "Set-Cookie" not in response.headers
    assert await _sessions(redis) == []
    # The sixth try is throttled, even with the right token, and says when to come back.
    async with http.post("/console/login", data={"token": ADMIN}) as response:
        assert response.status == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert "Too many wrong tokens" in await response.text()
        assert "Set-Cookie" not in response.headers
    assert await _sessions(redis) == []
    count = await redis.get(keys.console_failures("127.0.0.1"))
    assert count is not None and int(count) == FAILURES_ALLOWED
    # Once the window is over the right token signs in.
    await redis.delete(keys.console_failures("127.0.0.1"))
    assert await sign_in(http, ADMIN)


async def test_the_cookie_flags(http: aiohttp.ClientSession) -> None:
    async with http.post(
        "/console/login", data={"token": READER}, allow_redirects=False
    ) as response:
        assert response.status == 303 and response.headers["Location"] == "/console"
        morsel = set_cookie(response)[COOKIE]
        raw = response.headers["Set-Cookie"]
    assert len(morsel.value) >= 43  # token_urlsafe(32)
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/console"
    assert morsel["max-age"] == str(_TTL)
    assert not morsel["secure"] and "secure" not in raw.lower()
    # Behind an https proxy the cookie is Secure.
    https = {"X-Forwarded-Proto": "https"}
    async with http.post(
        "/console/login", data={"token": READER}, headers=https, allow_redirects=False
    ) as response:
        assert set_cookie(response)[COOKIE]["secure"] is True


async def test_a_read_session_looks_but_cannot_change(
    http: aiohttp.ClientSession, redis: Redis
) -> None:
    admin = await sign_in(http, ADMIN)
    reader = await sign_in(http, READER)
    status, page = await get(http, reader, "/console")
    assert status == 200 and "Overview" in page and "watch (read)" in page
    assert "revoke-all" not in page  # no button it could not use
    csrf = await csrf_of(http, reader)
    status, _, body = await post(http, reader, "/console/sessions/revoke-all", {"csrf": csrf})
    assert status == 403 and "lacks the &#39;admin&#39; scope" in body
    assert len(await _sessions(redis)) == 2
    status, page = await get(http, admin, "/console")
    assert status == 200 and "revoke-all" in page
    # An account's token signs in too, with the account's scopes.
    shop = await sign_in(http, ACCOUNT)
    assert "shop (send, read)" in (await get(http, shop, "/console"))[1]


async def test_a_change_without_the_csrf_token_is_refused(
    http: aiohttp.ClientSession, redis: Redis
) -> None:
    admin = await sign_in(http, ADMIN)
    other = await sign_in(http, READER)
    csrf = await csrf_of(http, admin)
    assert csrf != await csrf_of(http, other)
    for form in [{}, {"csrf": ""}, {"csrf": "x" * len(csrf)}, {"csrf": await csrf_of(http, other)}]:
        for path in ["/console/sessions/revoke-all", "/console/logout"]:
            status, _, body = await post(http, admin, path, form)
            assert status == 403 and "CSRF token is missing or wrong" in body, (path, form)
    assert len(await _sessions(redis)) == 2  # nothing ended
    async with http.get("/console", headers=cookie(admin), allow_redirects=False) as response:
        assert response.status == 200
    await _ended(http, admin, "/console/sessions/revoke-all", csrf)
    assert await _sessions(redis) == []
    for gone in (admin, other):
        async with http.get("/console", headers=cookie(gone), allow_redirects=False) as r:
            assert r.status == 303


async def test_sessions_are_shared_and_end_at_sign_out(
    http: aiohttp.ClientSession, settings: Settings, redis: Redis, redis_url: str
) -> None:
    session = await sign_in(http, ADMIN)
    stored = await _sessions(redis)
    # Redis holds the SHA-256 of the cookie's value, never the value itself.
    assert stored == [keys.console_session(hashlib.sha256(session.encode()).hexdigest()).encode()]
    assert 0 < await redis.ttl(stored[0]) <= _TTL
    stored_values = (await redis.hgetall(stored[0])).values()
    assert all(ADMIN not in str(value) for value in stored_values)
    # A second instance on the same Redis knows the session.
    second_redis = Redis.from_url(redis_url)
    try:
        async with console_site(settings, second_redis) as second:
            async with second.get("/console", headers=cookie(session)) as response:
                assert response.status == 200 and "ops (admin)" in await response.text()
            await _ended(second, session, "/console/logout", await csrf_of(second, session))
    finally:
        await second_redis.aclose()
    # Signed out on the second: the first refuses the old cookie.
    async with http.get("/console", headers=cookie(session), allow_redirects=False) as response:
        assert response.status == 303
    assert await _sessions(redis) == []


async def test_a_new_token_in_the_configuration_ends_the_old_sessions(
    data: dict[str, Any], tmp_path: Path, http: aiohttp.ClientSession, redis: Redis
) -> None:
    session = await sign_in(http, ADMIN)
    data["api"]["keys"]["ops"]["token"] = "n" * 32
    async with console_site(settings_of(data, tmp_path), redis) as reloaded:
        async with reloaded.get(
            "/console", headers=cookie(session), allow_redirects=False
        ) as response:
            assert response.status == 303
    assert await _sessions(redis) == []


@pytest.mark.parametrize(
    ("given", "goes"),
    [
        ("https://evil.example/console", "/console"),
        ("//evil.example/console", "/console"),
        ("/\\evil.example", "/console"),
        ("/console//evil.example", "/console"),
        ("/elsewhere", "/console"),
        ("javascript:alert(1)", "/console"),
        ("/console/overview/live", "/console/overview/live"),
        ("/console/messages?status=failed", "/console/messages?status=failed"),
    ],
)
async def test_sign_in_goes_only_to_a_console_page(
    http: aiohttp.ClientSession, given: str, goes: str
) -> None:
    async with http.post(
        "/console/login", data={"token": READER, "next": given}, allow_redirects=False
    ) as response:
        assert response.status == 303 and response.headers["Location"] == goes
    async with http.get("/console/login", params={"next": given}) as response:
        kept = re.search(r'name="next" value="([^"]*)"', await response.text())
        assert kept is not None and kept.group(1) == goes.replace("&", "&amp;")


async def test_redis_down_is_said_not_a_server_error(settings: Settings) -> None:
    nowhere = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        async with console_site(settings, nowhere) as http:
            async with http.get("/console", headers=cookie("x" * 43)) as response:
                assert response.status == 503
                assert "Redis unavailable" in await response.text()
            poll = {"HX-Request": "true", **cookie("x" * 43)}
            async with http.get("/console/overview/live", headers=poll) as response:
                # The poll swaps the message in and keeps polling.
                assert response.status == 200
                assert "Redis unavailable" in await response.text()
            async with http.post("/console/login", data={"token": ADMIN}) as response:
                assert response.status == 503
    finally:
        await nowhere.aclose()


async def test_static_files_are_the_vendored_ones_cached_long(
    http: aiohttp.ClientSession,
) -> None:
    async with http.get("/console/login") as response:
        page = await response.text()
    script = re.search(r'<script src="(/console/static/htmx\.min\.js\?v=[0-9a-f]{12})"', page)
    assert script is not None
    async with http.get(script.group(1)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/javascript")
        assert "max-age=31536000" in response.headers["Cache-Control"]
        body = await response.read()
    listed = (Path(__file__).parents[2] / "router/console/static/VENDORED.txt").read_text()
    assert f"sha256 {hashlib.sha256(body).hexdigest()}" in listed
    assert b'version:"2.0.11"' in body
    for wrong in ["nothing.js", "..%2F..%2Fpyproject.toml", ".hidden.css", "VENDORED"]:
        async with http.get(f"/console/static/{wrong}") as response:
            assert response.status == 404, wrong


async def test_sign_in_posted_from_another_site_is_refused(
    http: aiohttp.ClientSession, redis: Redis
) -> None:
    """Login CSRF: another site's page cannot sign the browser in (as its own token)."""
    for origin in ["https://evil.example", "http://127.0.0.1.evil.example", "null"]:
        async with http.post(
            "/console/login", data={"token": READER}, headers={"Origin": origin}
        ) as response:
            assert response.status == 403, origin
            assert "Set-Cookie" not in response.headers
    assert await _sessions(redis) == []
    ours = str(http._base_url).rstrip("/")  # the page's own origin
    assert await sign_in(http, READER, headers={"Origin": ours})
    # Behind a proxy: the host the browser used, as the proxy names it.
    proxied = {"Origin": "https://sms.example.com", "X-Forwarded-Host": "sms.example.com"}
    assert await sign_in(http, READER, headers=proxied)
