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
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client as TwilioClient

from router.api.app import build_app
from router.api.common import ApiContext
from router.api.twilio import message_resource
from router.client import Client
from router.config import Settings
from router.store.ledger import Ledger

from ..conftest import NUMBERS, Provider, RunningDaemon, free_port, wait_for

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
        # MediaUrl is taken (tests/api/test_mms_doors.py); content templates are not.
        ({**good, "content_sid": "HX" + "0" * 32}, 21619, "ContentSid"),
        ({**good, "media_url": ["example.com/a.png"]}, 21620, "MediaUrl[0]"),
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


# -- the Message list: filters, paging, Twilio-shaped errors -------------------------

LIST_KEYS = {
    "end", "first_page_uri", "messages", "next_page_uri", "page", "page_size",
    "previous_page_uri", "start", "uri",
}  # fmt: skip


def _sids(items: Any) -> list[str]:
    return [m.sid for m in items]


async def test_sdk_lists_the_sms_log_with_filters_and_follows_the_page_links(
    make_settings: Callable[..., Settings],
    provider: Provider,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    base = await started(run_daemon(twilio_settings(make_settings)))
    client = sdk(base)

    async def send(**kwargs: Any) -> str:
        message = await asyncio.to_thread(client.messages.create, body="listed", **kwargs)
        return message.sid or ""

    async def all_sent(sids: list[str]) -> None:
        for sid in sids:
            await wait_for(lambda sid=sid: _is(_status(client, sid), "sent"), 15, f"{sid} sent")

    # Before the boundary: three from alerts' number to the UK, two from bulk's pool
    # (profile bulk sends from UK) to a US number: two profiles, one merged log.
    early = [await send(to=UK, from_=NUMBERS[0]) for _ in range(3)]
    early += [await send(to=NUMBERS[2], messaging_service_sid="bulk") for _ in range(2)]
    await all_sent(early)
    boundary = int(time.time()) + 1
    await asyncio.sleep(boundary - time.time() + 0.05)
    late = [await send(to=UK, from_=NUMBERS[1]) for _ in range(2)]
    await all_sent(late)
    everything = set(early + late)

    async def listed(**kwargs: Any) -> list[str]:
        return _sids(await asyncio.to_thread(client.messages.list, **kwargs))

    newest_first = await listed()
    assert set(newest_first) == everything and len(newest_first) == 7
    # The log is newest change first (two sent in one batch may finish in any order).
    assert set(newest_first[:2]) == set(late)
    assert set(await listed(to=UK)) == set(early[:3] + late)
    assert set(await listed(from_=UK)) == set(early[3:])
    assert set(await listed(from_=NUMBERS[1], to=UK)) == set(late)
    assert await listed(to="+15005550006") == []
    # The SDK sends a datetime as YYYY-MM-DDTHH:MM:SSZ: compared to the second.
    at = datetime.fromtimestamp(boundary, UTC)
    assert set(await listed(date_sent_after=at)) == set(late)
    assert set(await listed(date_sent_before=at - timedelta(seconds=1))) == set(early)
    # Dates (GMT) as Twilio takes them: DateSent one day, < and > on or before/after it.
    fetched = [await asyncio.to_thread(client.messages(s).fetch) for s in sorted(everything)]
    by_day: dict[str, set[str]] = {}
    for message in fetched:
        assert message.date_sent is not None
        by_day.setdefault(message.date_sent.date().isoformat(), set()).add(message.sid or "")
    day = min(by_day)
    assert set(await listed(date_sent=day)) == by_day[day]
    assert set(await listed(date_sent_before=day)) == by_day[day]
    assert set(await listed(date_sent_after=day)) == everything
    assert await listed(date_sent="2001-01-01") == []
    assert await listed(date_sent_before="2001-01-01") == []
    assert set(await listed(date_sent_after="2001-01-01", to=UK)) == set(early[:3] + late)

    # Pages of 2: `list` follows next_page_uri to the end, or stops at `limit`.
    assert await listed(page_size=2) == newest_first
    assert await listed(limit=5, page_size=2) == newest_first[:5]
    assert await listed(limit=3) == newest_first[:3]  # PageSize = limit, one page
    # Forward page by page, then back by previous_page_uri: the same pages.
    page = await asyncio.to_thread(client.messages.page, page_size=2)
    pages = [_sids(page)]
    assert page.previous_page_url is None
    while page.next_page_url:
        page = await asyncio.to_thread(page.next_page)
        pages.append(_sids(page))
    assert pages == [newest_first[i : i + 2] for i in range(0, 7, 2)]
    for expected in reversed(pages[:-1]):
        page = await asyncio.to_thread(page.previous_page)
        assert _sids(page) == expected
    assert page.previous_page_url is None  # back at the first page

    # A filtered list pages the same way, across both profiles.
    filtered = await asyncio.to_thread(client.messages.page, page_size=1, to=UK)
    assert "To=%2B447911123456" in (filtered.next_page_url or "")
    newest_to_uk = _sids(filtered)  # a page is an iterator: read once
    assert len(newest_to_uk) == 1 and newest_to_uk[0] in late


async def _status(client: TwilioClient, sid: str) -> str:
    return (await asyncio.to_thread(client.messages(sid).fetch)).status or ""


async def test_list_page_shape_and_bad_parameters(bare_api: str) -> None:
    url = f"{bare_api}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    basic = base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
    auth = {"Authorization": f"Basic {basic}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=auth) as response:
            assert response.status == 200
            empty = await response.json()
        path = f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
        assert empty == {
            "end": 0,
            "first_page_uri": f"{path}?PageSize=50&Page=0",
            "messages": [],
            "next_page_uri": None,
            "page": 0,
            "page_size": 50,
            "previous_page_uri": None,
            "start": 0,
            "uri": f"{path}?PageSize=50&Page=0",
        }
        # Twilio's largest page is 1,000: a larger PageSize (the SDK sends its `limit`
        # as the page size) is served 1,000 a page.
        async with http.get(url, headers=auth, params={"PageSize": "5000"}) as response:
            page = await response.json()
            assert set(page) == LIST_KEYS and page["page_size"] == 1000
        async with http.get(url, params={"PageSize": "5"}) as response:
            assert response.status == 401 and (await response.json())["code"] == 20003
        for params, name in (
            ({"PageSize": "0"}, "PageSize"),
            ({"PageSize": "ten"}, "PageSize"),
            ({"DateSent": "yesterday"}, "DateSent"),
            ({"DateSent<": "2024-02-30"}, "DateSent<"),
            ({"DateSent>": "2024-01-01T10:00:00"}, "DateSent>"),  # no time zone
            ({"To": " 447911123456"}, "To"),  # a + left unencoded arrives as a space
            ({"PageToken": "PAnotatoken"}, "PageToken"),
            ({"PageToken": "XY"}, "PageToken"),
            ({"Page": "2"}, "Page"),
        ):
            async with http.get(url, headers=auth, params=params) as response:
                error = await response.json()
                assert response.status == 400, params
            assert error["code"] == 20001 and error["status"] == 400, params
            assert error["message"].startswith(f"Invalid parameter {name}:"), error
            assert error["more_info"] == "https://www.twilio.com/docs/errors/20001"


async def test_every_error_under_the_twilio_path_is_in_twilio_shape(bare_api: str) -> None:
    basic = base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
    auth = {"Authorization": f"Basic {basic}"}
    messages = f"/2010-04-01/Accounts/{ACCOUNT}/Messages"
    async with aiohttp.ClientSession() as http:
        for method, path, allowed in (
            ("DELETE", f"{messages}.json", "GET, POST"),
            ("PUT", f"{messages}.json", "GET, POST"),
            ("POST", f"{messages}/SM{'0' * 32}.json", "GET"),
            ("DELETE", f"{messages}/SM{'0' * 32}.json", "GET"),
        ):
            async with http.request(method, bare_api + path, headers=auth) as response:
                assert response.status == 405, (method, path)
                assert response.headers["Allow"] == allowed
                body = await response.json()
            assert body == {
                "code": 20004,
                "message": f"Method not allowed: {method} (allowed: {allowed})",
                "more_info": "https://www.twilio.com/docs/errors/20004",
                "status": 405,
            }
        # Credentials are checked first, as for the other methods.
        async with http.delete(bare_api + f"{messages}.json") as response:
            assert response.status == 401 and (await response.json())["code"] == 20003
        for method, path in (
            ("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json"),
            ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json"),
            ("GET", f"{messages}/SM{'0' * 32}/Media.json"),
            ("GET", f"/2010-04-01/Accounts/{ACCOUNT}.json"),
            ("GET", "/2010-04-01/"),
        ):
            async with http.request(method, bare_api + path, headers=auth) as response:
                assert response.status == 404, (method, path)
                assert await response.json() == {
                    "code": 20404,
                    "message": f"The requested resource {path} was not found",
                    "more_info": "https://www.twilio.com/docs/errors/20404",
                    "status": 404,
                }
    # The SDK reads them as its usual exceptions.
    client = sdk(bare_api)
    gone = await sdk_error(client.messages("SM" + "0" * 32).delete)
    assert (gone.status, gone.code) == (405, 20004)
    with pytest.raises(TwilioException) as caught:
        await asyncio.to_thread(client.calls.list)
    assert "Unable to fetch page" in str(caught.value)
