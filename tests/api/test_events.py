"""Events out: signed callbacks (checked with the `standardwebhooks` package) and the
``GET /v1/events`` websocket (a real aiohttp client against a real daemon)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from binds.smpp.pdu import ESM_UDHI, ShortMessage
from router import Client
from router.api import events as api_events
from router.api.app import build_app
from router.api.common import ApiContext
from router.config import ConfigError, Settings
from router.engine.inbound import CallbackPoster, Inbound
from router.signing import secret_key, sign
from router.store import keys
from router.store.ledger import Ledger

from ..conftest import NUMBERS, Provider, RedisServer, RunningDaemon, free_port, serve_app, wait_for
from .test_api import TOKENS, api_settings

MakeSettings = Callable[..., Settings]
Start = Callable[[Settings], RunningDaemon]
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
READER = {"Authorization": f"Bearer {TOKENS['reader']}"}


@dataclass
class Receiver:
    """A real application endpoint: keeps every request's headers and raw body."""

    url: str = ""
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    refuse: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), await request.read()))
        if self.refuse > 0:
            self.refuse -= 1
            return web.Response(status=503)
        return web.Response(status=204)

    def verified(self, secret: str | bytes = SECRET) -> list[tuple[str, dict[str, Any]]]:
        """(webhook-id, body) of every request, each signature checked."""
        hook = Webhook(secret)
        return [(headers["webhook-id"], hook.verify(body, headers)) for headers, body in self.got]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    box = Receiver()
    app = web.Application()
    app.router.add_post("/hook", box.handle)
    runner, base = await serve_app(app)
    box.url = f"{base}/hook"
    yield box
    await runner.cleanup()


# -- signing -------------------------------------------------------------------------


def test_signatures_verify_with_the_standardwebhooks_package() -> None:
    body = json.dumps({"id": "a", "status": "sent", "text": "olá"}).encode()
    now = int(time.time())
    headers = sign(SECRET, "status-1-0", now, body)
    assert Webhook(SECRET).verify(body, headers)["text"] == "olá"
    # A raw secret is its UTF-8 bytes; receivers pass those bytes.
    raw = "a plain secret of some length"
    assert Webhook(raw.encode()).verify(body, sign(raw, "x", now, body))["id"] == "a"
    # Unpadded base64 after whsec_ reads like the libraries read it.
    assert secret_key(SECRET.rstrip("=")) == b"k" * 32
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"z" * 32).decode()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # an old timestamp: a replay
        Webhook(SECRET).verify(body, sign(SECRET, "status-1-0", now - 3600, body))


def test_webhook_secret_config_forms_and_errors(make_settings: MakeSettings) -> None:
    settings = make_settings(webhook_secret=SECRET)
    assert settings.profiles["alerts"].webhook_key == b"k" * 32
    assert settings.profiles["bulk"].webhook_key is None
    assert SECRET not in repr(settings.profiles["alerts"])
    for bad, says in (("whsec_***", "followed by base64"), ("short", "at least 16 bytes")):
        with pytest.raises(ConfigError) as caught:
            make_settings(webhook_secret=bad)
        problems = "\n".join(caught.value.problems)
        assert "profiles.alerts.webhook_secret" in problems and says in problems
        assert bad not in problems


# -- status callbacks ----------------------------------------------------------------


async def test_status_callbacks_are_signed_and_a_retry_keeps_its_webhook_id(
    redis: Redis,
    make_settings: MakeSettings,
    provider: Provider,
    run_daemon: Start,
    receiver: Receiver,
) -> None:
    settings = make_settings(status_callback_url=receiver.url, webhook_secret=SECRET)
    receiver.refuse = 1  # the very first post is refused, then tried again
    run_daemon(settings)
    client = Client.from_settings(redis, settings)
    job = await client.send("+447911123456", "hi", id="signed-1")
    # The profile's url applies from `sending` on: sending (refused, then again), sent.
    await wait_for(lambda: len(receiver.got) == 3, 20, "sending (twice) and sent posted")
    posts = receiver.verified()
    assert all(body["id"] == job and body["profile"] == "alerts" for _, body in posts)
    # The refused post (the first to arrive) was tried again: same webhook-id, same bytes.
    refused = receiver.got[0]
    again = [got for got in receiver.got[1:] if got[0]["webhook-id"] == refused[0]["webhook-id"]]
    assert len(again) == 1 and again[0][1] == refused[1]
    taken = {body["status"]: hook_id for hook_id, body in posts}
    assert set(taken) == {"sending", "sent"} and len(set(taken.values())) == 2
    assert all(h.startswith("status-") for h in taken.values())
    # The bulk profile has no secret: its posts are not signed.
    await client.send(
        "+16501112345", "hey", profile="bulk", id="plain-1", status_callback_url=receiver.url
    )
    await wait_for(lambda: len(receiver.got) == 6, 20, "bulk's queued, sending and sent")
    for headers, body in receiver.got[3:]:
        assert json.loads(body)["id"] == "plain-1" and "webhook-signature" not in headers


# -- inbound: callbacks and events ---------------------------------------------------


def _message(text: bytes, *, esm: int = 0) -> ShortMessage:
    return ShortMessage(
        source="447911123456",
        source_ton=1,
        destination=NUMBERS[0].lstrip("+"),
        dest_ton=1,
        esm_class=esm,
        short_message=text,
    )


@pytest.fixture
async def bare_api(redis: Redis, make_settings: MakeSettings) -> AsyncIterator[str]:
    """The API application alone (no daemon) on a free port: its base URL."""
    settings = api_settings(make_settings)
    context = ApiContext(
        settings=settings,
        redis=redis,
        ledger=Ledger(redis, retention=60, events_maxlen=1000),
        client=Client.from_settings(redis, settings),
    )
    runner = web.AppRunner(build_app(context), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def _subscribe(
    http: aiohttp.ClientSession, base: str, **sub: Any
) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(f"{base}/v1/events", headers=READER)
    await ws.send_json(sub)
    ready = await ws.receive_json(timeout=10)
    assert ready["type"] == "subscribed"
    return ws


async def _next_event(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10) -> dict[str, Any]:  # noqa: ASYNC109
    """The next message that is not a heartbeat."""
    while True:
        msg = await ws.receive_json(timeout=timeout)
        if msg["type"] != "heartbeat":
            return dict(msg)


async def test_inbound_messages_are_events_and_their_callbacks_are_signed(
    redis: Redis, bare_api: str, receiver: Receiver
) -> None:
    inbound = Inbound(redis, "alerts", forward=True, reassembly_timeout=0.2)
    poster = CallbackPoster(
        redis, "alerts", receiver.url, consumer="t", inbound=inbound, webhook_key=b"r" * 20
    )
    receiver.refuse = 1
    async with aiohttp.ClientSession() as http:
        ws = await _subscribe(http, bare_api, status=["inbound"])
        await inbound.handle(_message(b"hello"))
        # Two parts (UDH reference 7 of 2), then one part whose second never comes.
        await inbound.handle(_message(b"\x05\x00\x03\x07\x02\x01Good ", esm=ESM_UDHI))
        await inbound.handle(_message(b"\x05\x00\x03\x07\x02\x02morning", esm=ESM_UDHI))
        await inbound.handle(_message(b"\x05\x00\x03\x08\x02\x01Half", esm=ESM_UDHI))
        events = [await _next_event(ws) for _ in range(2)]
        assert [(e["type"], e["text"], e["parts"]) for e in events] == [
            ("inbound", "hello", 1),
            ("inbound", "Good morning", 2),
        ]
        stopping = asyncio.Event()
        running = asyncio.create_task(poster.run(stopping))
        try:
            late = await _next_event(ws)  # flushed by the poster's loop after 0.2 s
            assert (late["text"], late["incomplete"]) == ("Half", True)
            await wait_for(lambda: poster.posted == 3, 20, "three inbound posts")
        finally:
            stopping.set()
            await running
        await ws.close()
    posts = receiver.verified(b"r" * 20)
    assert [body["text"] for _, body in posts] == ["hello", "hello", "Good morning", "Half"]
    assert posts[0] == posts[1]  # the retry: same webhook-id, same body
    assert all(hook_id == body["id"] for hook_id, body in posts)
    assert [e["id"] for e in [*events, late]] == [body["id"] for _, body in posts[1:]]


# -- the websocket against a daemon --------------------------------------------------


@pytest.fixture
async def daemon_api(make_settings: MakeSettings, provider: Provider, run_daemon: Start) -> str:
    running = run_daemon(api_settings(make_settings))
    await wait_for(lambda: running.daemon.api is not None and running.daemon.api.port, 10)
    assert running.daemon.api is not None
    return f"http://127.0.0.1:{running.daemon.api.port}"


async def _collect(
    ws: aiohttp.ClientWebSocketResponse, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while not done(got):
        got.append(await _next_event(ws, 30))
    return got


async def test_every_change_of_1000_messages_arrives_in_order_with_filters(
    redis: Redis, daemon_api: str, make_settings: MakeSettings
) -> None:
    client = Client.from_settings(redis, make_settings())
    ids = [f"ws-{i}" for i in range(1000)]
    watched = set(ids[::100])
    async with aiohttp.ClientSession() as http:
        everything = await _subscribe(http, daemon_api)
        some = await _subscribe(http, daemon_api, status=["sent"], ids=sorted(watched))
        other = await _subscribe(http, daemon_api, profile="bulk", heartbeat=1)
        await client.send_many([{"to": "+447911123456", "text": f"n{i}", "id": i} for i in ids])

        def all_sent(got: list[dict[str, Any]]) -> bool:
            return sum(e.get("status") == "sent" for e in got) == len(ids)

        events = await _collect(everything, all_sent)
        picked = await _collect(some, lambda got: len(got) == len(watched))
        heartbeat = await other.receive_json(timeout=5)
        for ws in (everything, some, other):
            await ws.close()
    per_message: dict[str, list[str]] = {}
    for event in events:
        assert event["type"] == "status" and event["profile"] == "alerts"
        per_message.setdefault(event["id"], []).append(event["status"])
    assert set(per_message) == set(ids)
    assert all(seq == ["queued", "sending", "sent"] for seq in per_message.values())
    order = [tuple(map(int, e["event_id"].split("-"))) for e in events]
    assert order == sorted(order) and len(set(order)) == len(order)
    assert {e["id"] for e in picked} == watched and {e["status"] for e in picked} == {"sent"}
    assert heartbeat["type"] == "heartbeat"  # bulk had nothing; only heartbeats came


async def test_resume_from_the_last_event_id_misses_nothing(
    redis: Redis, daemon_api: str, make_settings: MakeSettings
) -> None:
    client = Client.from_settings(redis, make_settings())
    async with aiohttp.ClientSession() as http:
        ws = await _subscribe(http, daemon_api)
        jobs = [{"to": "+447911123456", "text": "x", "id": f"r-{i}"} for i in range(200)]
        await client.send_many(jobs)
        first = await _collect(ws, lambda got: len(got) == 150)
        await ws.close()
        ws = await _subscribe(http, daemon_api, **{"from": first[-1]["event_id"]})
        rest = await _collect(
            ws, lambda got: sum(e["status"] == "sent" for e in [*first, *got]) == 200
        )
        await ws.close()
    seen = [e["event_id"] for e in [*first, *rest]]
    rows: Any = await redis.xrange(keys.events("alerts"), min=seen[0])
    assert seen == [r[0].decode() for r in rows][: len(seen)]
    assert len(seen) == 600


async def test_auth_and_bad_subscriptions(daemon_api: str) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(f"{daemon_api}/v1/events")
        assert caught.value.status == 401
        bad = {"Authorization": "Bearer " + "x" * 32}
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(f"{daemon_api}/v1/events", headers=bad)
        assert caught.value.status == 401
        async with http.get(f"{daemon_api}/v1/events", headers=READER) as response:
            assert response.status == 400 and "websocket" in (await response.json())["error"]
        for sub, says in (
            ({"status": ["nope"]}, "status: unknown 'nope'"),
            ({"from": "yesterday"}, "from: must be"),
            ({"colour": 1}, "colour: unknown key"),
        ):
            ws = await http.ws_connect(f"{daemon_api}/v1/events", headers=READER)
            await ws.send_json(sub)
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 4400 and says in msg.extra


async def test_close_reasons_fit_a_close_frame_in_whole_words(bare_api: str) -> None:
    """A close frame holds 123 bytes of reason: ours are short, and a quoted value is
    shortened at a word boundary with an ellipsis, never cut inside a word or a
    character."""

    async def reason_for(sub: dict[str, Any]) -> str:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{bare_api}/v1/events", headers=READER)
            await ws.send_json(sub)
            msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE, msg
        assert ws.close_code == api_events.BAD_SUBSCRIPTION
        reason = str(msg.extra)
        assert len(reason.encode()) <= 123, reason  # RFC 6455: 125 bytes less the code
        return reason

    # Was 124 bytes with the list of statuses, cut inside "undelivered".
    assert await reason_for({"status": ["bogus"]}) == (
        'status: unknown \'bogus\' (a message status, "inbound" or "click")'
    )
    # A long value of two-byte characters: was cut inside a word and a character.
    long = await reason_for({"status": ["délivré " * 30]})
    quoted = long.split("'")[1]
    assert long.startswith("status: unknown 'délivré ") and long.endswith('"inbound" or "click")')
    assert quoted.endswith("\u2026") and set(quoted[:-1].split()) == {"délivré"}
    key = await reason_for({"k" * 300: 1})
    assert key == "k" * 37 + "\u2026: unknown key"  # 40 bytes of a value
    position = await reason_for({"from": {"bulk " * 50: "soon"}})
    assert (
        position == "from." + "bulk " * 6 + 'bulk\u2026: must be an event id like "1700000000000-0"'
    )


def test_fit_counts_utf8_bytes_and_keeps_whole_words() -> None:
    fit = api_events.fit
    assert fit("short reason") == "short reason"
    exact = "x" * 123
    assert fit(exact) == exact
    words = "one two three four five six seven"
    assert fit(words, 20) == "one two three…" and len(fit(words, 20).encode()) <= 20
    assert fit("one, two, three", 12) == "one, two…"  # no dangling comma before it
    assert fit("one, two, three", 11) == "one…"
    assert fit("é" * 100, 21) == "é" * 9 + "…"  # 18 + 3 bytes: never half a character
    assert fit("€uro " * 40).endswith("€uro…") and len(fit("€uro " * 40).encode()) <= 123


# -- resilience: Redis outages, slow clients, trimmed history ------------------------


async def _add_events(redis: Redis, start: int, count: int, pad: int = 0) -> list[str]:
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(start, start + count):
            fields = {"id": f"e-{i}", "profile": "alerts", "status": "sent", "at": "1.5"}
            if pad:
                fields["note"] = "x" * pad
            pipe.xadd(keys.events("alerts"), fields)  # type: ignore[arg-type]
        return [entry.decode() for entry in await pipe.execute()]


@pytest.fixture
async def own_redis_api(tmp_path: Path, make_settings: MakeSettings) -> AsyncIterator[Any]:
    """A redis-server of the test's own (append-only) and the API app on it."""
    server = RedisServer(tmp_path / "redis", free_port(), appendonly=True)
    server.start()
    redis = Redis.from_url(server.url)
    settings = api_settings(make_settings)
    context = ApiContext(
        settings=settings,
        redis=redis,
        ledger=Ledger(redis, retention=60, events_maxlen=1000),
        client=Client.from_settings(redis, settings),
    )
    runner = web.AppRunner(build_app(context), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield server, redis, f"http://127.0.0.1:{port}"
    await runner.cleanup()
    await redis.aclose()
    server.stop()


async def test_a_redis_outage_keeps_the_socket_and_resumes_after_the_last_event(
    own_redis_api: Any,
) -> None:
    server, redis, base = own_redis_api
    async with aiohttp.ClientSession() as http:
        ws = await _subscribe(http, base, heartbeat=1)
        before = await _add_events(redis, 0, 5)
        got = [await _next_event(ws) for _ in range(5)]
        await asyncio.sleep(1.5)  # the append-only file has them (fsync every second)
        server.kill()
        beats = [await ws.receive_json(timeout=5) for _ in range(2)]  # still open
        assert {b["type"] for b in beats} == {"heartbeat"}
        assert beats[-1]["last_event_id"] == before[-1]
        server.start()
        after = await _add_events(Redis.from_url(server.url), 5, 5)
        got += [await _next_event(ws, 20) for _ in range(5)]
        await ws.close()
    assert [e["event_id"] for e in got] == before + after
    assert [e["id"] for e in got] == [f"e-{i}" for i in range(10)]


async def test_a_client_that_takes_nothing_is_closed_and_memory_stays_bounded(
    redis: Redis, bare_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_events, "SEND_STALL", 1.0)
    async with aiohttp.ClientSession() as http:
        ws = await _subscribe(http, bare_api, **{"from": "0"})
        await _add_events(redis, 0, 20_000, pad=2000)  # ~40 MB: more than the sockets hold
        await asyncio.sleep(4)  # the client reads nothing meanwhile
        received = 0
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            received += 1
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == api_events.TOO_SLOW and "too slow" in msg.extra
        assert 0 < received < 20_000


async def test_resuming_from_a_trimmed_id_says_so(redis: Redis, bare_api: str) -> None:
    ids = await _add_events(redis, 0, 10)
    await redis.xtrim(keys.events("alerts"), maxlen=4, approximate=False)
    async with aiohttp.ClientSession() as http:
        ws = await _subscribe(http, bare_api, **{"from": ids[0]})
        assert await ws.receive_json(timeout=5) == {
            "type": "gap",
            "after": ids[0],
            "profile": "alerts",
        }
        got = [await _next_event(ws) for _ in range(4)]
        await ws.close()
    assert [e["event_id"] for e in got] == ids[6:]


async def test_stopping_the_daemon_closes_subscribers_with_1001(
    make_settings: MakeSettings, provider: Provider, run_daemon: Start
) -> None:
    running = run_daemon(api_settings(make_settings))
    await wait_for(lambda: running.daemon.api is not None and running.daemon.api.port, 10)
    assert running.daemon.api is not None
    base = f"http://127.0.0.1:{running.daemon.api.port}"
    async with aiohttp.ClientSession() as http:
        ws = await _subscribe(http, base, heartbeat=300)
        started = time.monotonic()
        stopping = asyncio.create_task(running.stop())
        msg = await ws.receive(timeout=15)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1001
        assert await stopping == 0
        assert time.monotonic() - started < 10
