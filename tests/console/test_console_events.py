"""The console's live events over plain HTTP and a real websocket, against the real
application and Redis: the page; the socket authenticated by the console session
(none: sent to sign in, no upgrade), refused from another site's page; it carries the
/v1/events protocol (subscribe, then the events as they are written); an account's
session gets only its own messages' events."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from router import Client
from router.config import Settings
from router.console import events as console_events
from router.policy.accounts import Caller

from .site import ACCOUNT, ADMIN, cookie, csrf_of, get, post, sign_in


async def _next_status(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next message that is an event (heartbeats passed over)."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.receive_str(), 10))
        if message["type"] != "heartbeat":
            return message  # type: ignore[no-any-return]


async def test_the_page_and_a_socket_of_the_session(
    http: aiohttp.ClientSession, redis: Redis, settings: Settings
) -> None:
    session = await sign_in(http, ADMIN)
    status, text = await get(http, session, "/console/events")
    assert status == 200
    assert 'data-ws="/console/events/ws"' in text and "/console/static/events.js" in text
    assert "<script>" not in text  # the CSP allows no inline script
    async with http.ws_connect("/console/events/ws", headers=cookie(session)) as ws:
        await ws.send_json({"status": ["queued"], "heartbeat": 1})
        assert (await _next_status(ws))["type"] == "subscribed"
        await Client.from_settings(redis, settings).send_many(
            [{"id": "e-1", "to": "+4915100000001", "text": "x"}]
        )
        event = await _next_status(ws)
        assert (event["type"], event["id"], event["status"]) == ("status", "e-1", "queued")
    # A bad subscription closes with the API's code, naming the field.
    async with http.ws_connect("/console/events/ws", headers=cookie(session)) as ws:
        await ws.send_json({"status": ["lost"]})
        closed = await ws.receive()
        assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == 4400
        assert "status:" in str(closed.extra)


async def test_no_session_and_another_site_are_refused(http: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with http.ws_connect("/console/events/ws"):
            pass
    # (sent to sign in: the client follows the 303 there, where no socket is)
    assert refused.value.request_info.real_url.path == "/console/login"
    async with http.get("/console/events", allow_redirects=False) as page:
        assert page.status == 303 and page.headers["Location"].startswith("/console/login")
    session = await sign_in(http, ADMIN)
    headers = {**cookie(session), "Origin": "https://evil.example"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with http.ws_connect("/console/events/ws", headers=headers):
            pass
    assert refused.value.status == 403
    # Not an upgrade: a page saying so.
    async with http.get("/console/events/ws", headers=cookie(session)) as answer:
        assert answer.status == 400


async def test_an_account_gets_only_its_own_events(
    http: aiohttp.ClientSession, redis: Redis, settings: Settings
) -> None:
    session = await sign_in(http, ACCOUNT)
    client = Client.from_settings(redis, settings)
    async with http.ws_connect("/console/events/ws", headers=cookie(session)) as ws:
        await ws.send_json({"heartbeat": 1})
        assert (await _next_status(ws))["type"] == "subscribed"
        await client.send_many([{"id": "not-mine", "to": "+4915100000001", "text": "x"}])
        shop = Caller("shop", settings.accounts["shop"])
        await client.send_many([{"id": "mine", "to": "+4915100000001", "text": "x"}], caller=shop)
        event = await _next_status(ws)
        assert event["id"] == "mine"
    async with http.ws_connect("/console/events/ws", headers=cookie(session)) as ws:
        await ws.send_json({"account": "someone-else"})
        closed = await ws.receive()
        assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == 4403


async def test_signing_out_ends_the_socket(
    http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Looked at every 0.2 s here (15 s in service) so the test is quick.
    monkeypatch.setattr(console_events, "SESSION_CHECK", 0.2)
    session = await sign_in(http, ADMIN)
    async with http.ws_connect("/console/events/ws", headers=cookie(session)) as ws:
        await ws.send_json({"heartbeat": 1})
        assert (await _next_status(ws))["type"] == "subscribed"
        csrf = await csrf_of(http, session)
        status, _, _ = await post(http, session, "/console/logout", {"csrf": csrf})
        assert status == 303
        while True:
            message = await asyncio.wait_for(ws.receive(), 5)
            if message.type != aiohttp.WSMsgType.TEXT:
                break
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert message.data == console_events.SESSION_ENDED
