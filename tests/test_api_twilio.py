"""The Twilio-compatible submission API, driven by the official `twilio` SDK (which
we did not write) pointed at the router: a real daemon, real Redis, a real HTTP
provider. The SDK is synchronous (requests), so it runs in a thread."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client as TwilioClient

from router.api import ApiContext, build_app
from router.api_twilio import message_resource
from router.client import Client
from router.config import Settings
from router.ledger import Ledger

from .conftest import NUMBERS, Provider, RunningDaemon, free_port, wait_for

ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "t" * 32
UK = "+447911123456"  # profile bulk's number
SID = re.compile(r"^SM[0-9a-f]{32}$")


def twilio_settings(make_settings: Callable[..., Settings], **twilio: Any) -> Settings:
    settings = make_settings()
    api = settings.api.model_validate(
        {
            "listen": "127.0.0.1:0",
            "twilio": {"account_sid": ACCOUNT, "auth_token": TOKEN, **twilio},
        }
    )
    return settings.model_copy(update={"api": api})


def sdk(base: str, *, token: str = TOKEN, account: str = ACCOUNT) -> TwilioClient:
    """The official client, its API domain's base URL moved from api.twilio.com to us."""
    client = TwilioClient(ACCOUNT, token, account_sid=account)
    client.api.base_url = base
    return client


async def started(running: RunningDaemon) -> str:
    await wait_for(lambda: running.daemon.api is not None and running.daemon.api.port, 10)
    assert running.daemon.api is not None
    return f"http://127.0.0.1:{running.daemon.api.port}"


@pytest.fixture
async def status_app() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An application receiving status callbacks."""
    got: list[dict[str, Any]] = []

    async def take(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/status", take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/status", got
    await runner.cleanup()


async def test_sdk_sends_through_the_router_and_fetches_the_status(
    make_settings: Callable[..., Settings],
    provider: Provider,
    run_daemon: Callable[[Settings], RunningDaemon],
    status_app: tuple[str, list[dict[str, Any]]],
) -> None:
    base = await started(run_daemon(twilio_settings(make_settings)))
    client = sdk(base)
    callback_url, callbacks = status_app
    before = datetime.now(UTC).replace(microsecond=0)
    message = await asyncio.to_thread(
        client.messages.create,
        to=UK,
        from_=NUMBERS[1],
        body="hello from the SDK",
        status_callback=callback_url,
        validity_period=600,
    )
    assert SID.match(message.sid or "")
    # The record as it is when read back: a worker in the same process may already be
    # sending it.
    assert message.status in ("queued", "sending", "sent")
    assert (message.account_sid, message.to, message.from_) == (ACCOUNT, UK, NUMBERS[1])
    assert message.body == "hello from the SDK" and message.num_segments == "1"
    assert message.direction == "outbound-api" and message.api_version == "2010-04-01"
    assert message.error_code is None and message.price is None
    assert message.uri == f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{message.sid}.json"
    # The SDK parsed our RFC 2822 date into a datetime.
    assert isinstance(message.date_created, datetime) and message.date_created >= before

    # The provider got it from the number the application chose, keyed by the sid.
    await wait_for(lambda: any(r.get("ref") == message.sid for r in provider.requests), 10)
    sent = next(r for r in provider.requests if r["ref"] == message.sid)
    assert (sent["from"], sent["to"], sent["text"]) == (NUMBERS[1], UK, "hello from the SDK")

    async def fetched_status() -> str | None:
        fetched = await asyncio.to_thread(client.messages(message.sid).fetch)
        return fetched.status if fetched.status == "sent" else None

    await wait_for(fetched_status, 10, "status sent")
    fetched = await asyncio.to_thread(client.messages(message.sid).fetch)
    assert fetched.sid == message.sid and fetched.body == "hello from the SDK"
    assert isinstance(fetched.date_sent, datetime) and fetched.error_code is None
    # StatusCallback became the job's status_callback_url.
    await wait_for(lambda: "sent" in {c["status"] for c in callbacks if c["id"] == message.sid}, 10)


async def test_messaging_service_scheduling_and_validity(
    make_settings: Callable[..., Settings],
    provider: Provider,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    base = await started(run_daemon(twilio_settings(make_settings)))
    client = sdk(base)
    # MessagingServiceSid names a profile; the profile picks the sender.
    pooled = await asyncio.to_thread(
        client.messages.create, to=NUMBERS[0], messaging_service_sid="bulk", body="from a pool"
    )
    assert pooled.messaging_service_sid == "bulk" and pooled.status in ("queued", "sending", "sent")
    # SendAt with ScheduleType=fixed: answered `scheduled`, sent once due.
    # Whole seconds: the SDK sends SendAt as YYYY-MM-DDTHH:MM:SSZ.
    at = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    later = await asyncio.to_thread(
        client.messages.create,
        to=NUMBERS[0],
        messaging_service_sid="bulk",
        body="later",
        schedule_type="fixed",
        send_at=at,
    )
    assert later.status == "scheduled"
    # A validity period shorter than the wait to SendAt: it expires instead.
    doomed = await asyncio.to_thread(
        client.messages.create,
        to=NUMBERS[0],
        from_=UK,
        body="too late",
        schedule_type="fixed",
        send_at=at,
        validity_period=1,
    )

    async def status(sid: str) -> str:
        return (await asyncio.to_thread(client.messages(sid).fetch)).status or ""

    await wait_for(lambda: any(r.get("ref") == pooled.sid for r in provider.requests), 10)
    assert next(r for r in provider.requests if r["ref"] == pooled.sid)["from"] == UK
    await wait_for(lambda: _is(status(pooled.sid), "sent"), 10, "pooled sent")
    fetched = await asyncio.to_thread(client.messages(pooled.sid).fetch)
    assert fetched.messaging_service_sid == "bulk" and fetched.from_ == UK
    assert await status(later.sid) == "scheduled"
    await wait_for(lambda: any(r.get("ref") == later.sid for r in provider.requests), 15)
    assert time.time() >= at.timestamp() - 0.6  # the worker sends up to 0.5 s early
    await wait_for(lambda: _is(status(doomed.sid), "failed"), 15, "expired")
    expired = await asyncio.to_thread(client.messages(doomed.sid).fetch)
    assert expired.error_code == 30036 and "expired" in (expired.error_message or "")
    assert all(r.get("ref") != doomed.sid for r in provider.requests)


async def _is(value: Any, wanted: str) -> bool:
    return bool(await value == wanted)


@pytest.fixture
async def bare_api(redis: Any, make_settings: Callable[..., Settings]) -> AsyncIterator[str]:
    """The API alone (no workers) on a free port: enough for what is refused at once."""
    settings = twilio_settings(make_settings)
    context = ApiContext(
        settings=settings,
        redis=redis,
        ledger=Ledger(redis, retention=60, events_maxlen=100),
        client=Client.from_settings(redis, settings),
    )
    runner = web.AppRunner(build_app(context))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def sdk_error(call: Callable[[], Any]) -> TwilioRestException:
    with pytest.raises(TwilioRestException) as caught:
        await asyncio.to_thread(call)
    return caught.value


async def test_sdk_raises_twilio_errors(bare_api: str) -> None:
    client = sdk(bare_api)
    create = client.messages.create

    good = {"to": UK, "from_": NUMBERS[0], "body": "x"}
    wrong = await sdk_error(lambda: sdk(bare_api, token="x" * 32).messages.create(**good))
    assert (wrong.status, wrong.code) == (401, 20003)
    other = "AC" + "f" * 32
    elsewhere = await sdk_error(lambda: sdk(bare_api, account=other).messages.create(**good))
    assert (elsewhere.status, elsewhere.code) == (401, 20003)

    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"to": "12ab", "from_": NUMBERS[0], "body": "x"}, 21211, "To:"),
        ({"to": "", "from_": NUMBERS[0], "body": "x"}, 21604, "'To'"),
        ({"to": UK, "from_": NUMBERS[0]}, 21602, "body"),
        ({"to": UK, "from_": NUMBERS[0], "body": "x" * 1601}, 21617, "1600"),
        ({"to": UK, "body": "x"}, 21603, "'From'"),
        ({"to": UK, "from_": "+15005550006", "body": "x"}, 21606, "+15005550006"),
        ({"to": UK, "messaging_service_sid": "MGnope", "body": "x"}, 21701, "MGnope"),
        # From must be one of the messaging service's (profile's) numbers.
        (
            {"to": UK, "messaging_service_sid": "bulk", "from_": NUMBERS[0], "body": "x"},
            21606,
            "bulk",
        ),
        ({"to": UK, "from_": NUMBERS[0], "body": "x", "validity_period": 0}, 21624, "validity"),
        ({"to": UK, "from_": NUMBERS[0], "body": "x", "validity_period": 36001}, 21624, "36000"),
        (
            {"to": UK, "from_": NUMBERS[0], "body": "x", "status_callback": "ftp://x"},
            21609,
            "StatusCallback",
        ),
        ({"to": UK, "from_": NUMBERS[0], "body": "x", "send_at": "soon"}, 35114, "SendAt"),
        ({"to": UK, "from_": NUMBERS[0], "body": "x", "schedule_type": "fixed"}, 35111, "SendAt"),
        ({**good, "schedule_type": "daily", "send_at": "2030-01-01T00:00:00Z"}, 35126, "fixed"),
        ({**good, "media_url": ["https://example.com/a.png"]}, 21619, "MediaUrl"),
    ]
    for kwargs, code, words in cases:
        error = await sdk_error(lambda kwargs=kwargs: create(**kwargs))  # type: ignore[misc]
        assert (error.status, error.code) == (400, code), (kwargs, error.msg)
        assert words in error.msg, (kwargs, error.msg)

    missing = await sdk_error(client.messages("SM" + "0" * 32).fetch)
    assert (missing.status, missing.code) == (404, 20404)


async def test_raw_http_shapes(bare_api: str, make_settings: Callable[..., Settings]) -> None:
    url = f"{bare_api}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    form = {"To": UK, "From": NUMBERS[0], "Body": "raw"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=form) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Basic")
            assert await response.json() == {
                "code": 20003,
                "message": "Authenticate",
                "more_info": "https://www.twilio.com/docs/errors/20003",
                "status": 401,
            }
        basic = base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
        auth = {"Authorization": f"Basic {basic}"}
        async with http.post(url, data=form, headers=auth) as response:
            assert response.status == 201
            created = await response.json()
        assert SID.match(created["sid"]) and created["status"] == "queued"
        assert re.match(r"^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000$", created["date_created"])
        assert created["date_sent"] is None and created["from"] == NUMBERS[0]
        # A JSON body is not Twilio's format: nothing is read, so To is missing.
        async with http.post(url, json=form, headers=auth) as response:
            assert response.status == 400 and (await response.json())["code"] == 21604


async def test_off_without_the_twilio_section(
    redis: Any, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    api = settings.api.model_validate({"listen": "127.0.0.1:0"})
    settings = settings.model_copy(update={"api": api})
    context = ApiContext(
        settings=settings,
        redis=redis,
        ledger=Ledger(redis, retention=60, events_maxlen=100),
        client=Client.from_settings(redis, settings),
    )
    runner = web.AppRunner(build_app(context))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        error = await sdk_error(
            lambda: sdk(f"http://127.0.0.1:{port}").messages.create(
                to=UK, from_=NUMBERS[0], body="x"
            )
        )
        assert (error.status, error.code) == (404, 20404)
    finally:
        await runner.cleanup()


def test_statuses_and_errors_in_twilio_terms() -> None:
    """Records of each final status as Twilio's status and error code."""
    base = {"id": "SM" + "1" * 32, "to": UK, "created_at": 1.0, "updated_at": 2.0}

    def resource(**record: Any) -> dict[str, Any]:
        return message_resource({**base, "history": [], **record}, ACCOUNT)

    opted = resource(status="rejected", error_code="opted_out", error=f"{UK} opted out")
    assert (opted["status"], opted["error_code"]) == ("failed", 21610)
    assert opted["error_message"] == f"opted_out: {UK} opted out"
    capped = resource(status="rejected", error_code="daily_cap_reached", error="cap 10")
    assert (capped["status"], capped["error_code"]) == ("failed", 30008)
    history = [{"status": "expired", "at": 3.0, "note": "validity passed before sending"}]
    expired = resource(status="expired", history=history)
    assert (expired["status"], expired["error_code"]) == ("failed", 30036)
    undelivered = resource(status="undelivered", error_code="dlr_undeliv", error_raw="stat:UNDELIV")
    assert (undelivered["status"], undelivered["error_code"]) == ("undelivered", 30008)
    delivered = resource(status="delivered", history=[{"status": "sent", "at": 0.0, "note": ""}])
    assert delivered["error_code"] is None
    assert delivered["date_sent"] == "Thu, 01 Jan 1970 00:00:00 +0000"
    assert resource(status="scheduled")["status"] == "scheduled"
