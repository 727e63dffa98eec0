"""The doors take MMS (issue 22): a job's ``media`` (1 to 10 http(s) URLs) through
``POST /v1/messages`` (one and a batch) and the Twilio-compatible API (``MediaUrl``,
repeated, driven by the official `twilio` SDK), refused with the same words as the wire
decoder's; the record, the ``queued`` event (websocket and status callback), the SMS
log and Twilio's Message and Media resources show ``num_media`` and the URLs. The API
alone on real Redis (no workers: the sending side is not what is tested here)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from router.api.app import build_app
from router.api.common import ApiContext
from router.client import Client
from router.config import Settings
from router.engine.callbacks import StatusPoster, body_of
from router.policy.jobs import JobError, decode_job, encode_job
from router.store import keys
from router.store.connections import as_text
from router.store.ledger import Ledger

from ..conftest import NUMBERS, Receiver, serve_app, wait_for
from .test_api_messages import TOKENS, auth
from .test_api_twilio import ACCOUNT, TOKEN, UK, sdk, sdk_error

PNG = "https://media.example.com/a/cat.png"
JPG = "https://cdn.example.org/b/dog.jpg?size=large"
ME = re.compile(r"^ME[0-9a-f]{32}$")


@pytest.fixture
async def doors(redis: Redis, make_settings: Callable[..., Settings]) -> AsyncIterator[str]:
    """The JSON API (keys ops, reader, sender) and the Twilio-compatible API on one
    application, no workers: its base URL."""
    settings = make_settings()
    api = settings.api.model_validate(
        {
            "listen": "127.0.0.1:0",
            "keys": {
                "ops": {"token": TOKENS["ops"], "scopes": ["admin"]},
                "reader": {"token": TOKENS["reader"], "scopes": ["read"]},
            },
            "twilio": {"account_sid": ACCOUNT, "auth_token": TOKEN},
        }
    )
    settings = settings.model_copy(update={"api": api})
    context = ApiContext(
        settings=settings,
        redis=redis,
        ledger=Ledger(redis, retention=600, events_maxlen=1000),
        client=Client.from_settings(redis, settings),
    )
    runner, base = await serve_app(build_app(context))
    yield base
    await runner.cleanup()


async def call(
    http: aiohttp.ClientSession, method: str, url: str, key: str = "ops", **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, url, headers=auth(key), **kwargs) as response:
        return response.status, await response.json()


async def queued_total(redis: Redis) -> int:
    """Entries on the profiles' work streams (what a refused request must not add)."""
    return sum([int(await redis.xlen(keys.queue(p))) for p in ("alerts", "bulk")])


def decoder_says(media: Any) -> str:
    """The wire decoder's words for a job with this `media` (``media[1]: ...``)."""
    with pytest.raises(JobError) as caught:
        decode_job(encode_job({"to": UK, "text": "x", "media": media}), default_id="x")
    return str(caught.value).removeprefix("job.")


async def test_post_messages_takes_media_and_every_view_shows_it(
    redis: Redis, doors: str, receiver: Receiver
) -> None:
    stopping = asyncio.Event()
    poster = StatusPoster(redis, consumer="t", profiles=["alerts"], base_delay=0.05)
    posting = asyncio.create_task(poster.run(stopping))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{doors}/v1/events", headers=auth("reader")) as ws:
                await ws.send_json({"profile": "alerts"})
                assert (await ws.receive_json(timeout=10))["type"] == "subscribed"
                mms = {"id": "mms-1", "to": UK, "text": "look", "media": [PNG, JPG],
                       "status_callback_url": receiver.url}  # fmt: skip
                assert await call(http, "POST", f"{doors}/v1/messages", json=mms) == (
                    202,
                    {"id": "mms-1", "status": "queued"},
                )
                # Media alone, no text: an MMS too.
                alone = {"id": "mms-2", "to": UK, "media": [PNG]}
                assert (await call(http, "POST", f"{doors}/v1/messages", json=alone))[0] == 202
                sms = {"id": "sms-1", "to": UK, "text": "plain"}
                assert (await call(http, "POST", f"{doors}/v1/messages", json=sms))[0] == 202
                events = [await ws.receive_json(timeout=10) for _ in range(3)]

            # The queued events: an MMS's carry its URLs and how many; an SMS's neither.
            by_id = {e["id"]: e for e in events}
            assert by_id["mms-1"]["status"] == "queued"
            assert by_id["mms-1"]["media"] == [PNG, JPG] and by_id["mms-1"]["num_media"] == 2
            assert by_id["mms-2"]["media"] == [PNG] and by_id["mms-2"]["num_media"] == 1
            assert "media" not in by_id["sms-1"] and "num_media" not in by_id["sms-1"]

            # The record, from the enqueue on.
            status, record = await call(http, "GET", f"{doors}/v1/messages/mms-1", "reader")
            assert status == 200, record
            assert (record["media"], record["num_media"]) == ([PNG, JPG], 2)
            assert record["text"] == "look" and record["status"] == "queued"
            status, record = await call(http, "GET", f"{doors}/v1/messages/sms-1", "reader")
            assert status == 200 and "media" not in record and "num_media" not in record

            # The SMS log.
            status, page = await call(http, "GET", f"{doors}/v1/messages", "reader")
            assert status == 200, page
            logged = {r["id"]: r for r in page["messages"]}
            assert (logged["mms-1"]["media"], logged["mms-1"]["num_media"]) == ([PNG, JPG], 2)
            assert logged["mms-2"]["num_media"] == 1 and "num_media" not in logged["sms-1"]

        # The status callback of `queued`, as the application receives it.
        await wait_for(lambda: receiver.got, 10, "the queued callback")
        (posted,) = receiver.got
        assert posted["id"] == "mms-1" and posted["status"] == "queued"
        assert (posted["media"], posted["num_media"]) == ([PNG, JPG], 2)
    finally:
        stopping.set()
        await posting

    # The event stream's entry holds them whole, as compact JSON (the record keeps long
    # values in pieces; its reader joins them, as the GET above shows).
    rows: Any = await redis.xrange(keys.events("alerts"))
    queued = next(f for _, f in rows if as_text(f[b"id"]) == "mms-1")
    assert as_text(queued[b"media"]) == json.dumps([PNG, JPG], separators=(",", ":"))


async def test_post_messages_refuses_bad_media_naming_the_url(redis: Redis, doors: str) -> None:
    eleven = [f"https://m.example.com/{i}.png" for i in range(11)]
    cases: list[tuple[Any, str]] = [
        ([PNG, "ftp://files.example.com/a.png"], "media[1]"),
        (["/relative.png"], "media[0]"),
        ([PNG, "https://"], "media[1]"),
        ([PNG, "https://x.example.com/a b.png"], "media[1]"),
        ([PNG, 7], "media[1]"),
        ([], "media"),
        (eleven, "media"),
        (PNG, "media"),  # a string, not a list
    ]
    async with aiohttp.ClientSession() as http:
        for media, field in cases:
            says = decoder_says(media)
            assert says.startswith(f"{field}: "), says
            one = {"to": UK, "text": "x", "media": media}
            status, body = await call(http, "POST", f"{doors}/v1/messages", json=one)
            assert (status, body) == (400, {"error": says}), media
            batch = {"messages": [{"to": UK, "text": "ok"}, one]}
            status, body = await call(http, "POST", f"{doors}/v1/messages", json=batch)
            assert (status, body) == (400, {"error": f"messages[1].{says}"}), media
        # The words, once spelled out.
        status, body = await call(
            http, "POST", f"{doors}/v1/messages", json={"to": UK, "media": [PNG, "ftp://x/y"]}
        )
        assert body == {"error": "media[1]: must be an absolute http:// or https:// URL"}
    assert await queued_total(redis) == 0  # nothing of a refused request is enqueued


async def test_python_client_sends_media(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    client = Client.from_settings(redis, make_settings())
    job_id = await client.send(UK, media=[PNG, JPG])  # no text: an MMS of media alone
    record = await client.ledger.get(job_id, profiles=["alerts", "bulk"])
    assert record is not None and "text" not in record
    assert (record["media"], record["num_media"]) == ([PNG, JPG], 2)
    with pytest.raises(JobError) as caught:
        await client.send(UK, "x", media=[PNG, "mailto:a@example.com"])
    assert caught.value.field == "media[1]"
    assert str(caught.value).endswith("media[1]: must be an absolute http:// or https:// URL")
    assert await queued_total(redis) == 1


async def test_the_openapi_document_shows_media(doors: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{doors}/openapi.json") as response:
            document = await response.json()
    schemas = document["components"]["schemas"]
    (media,) = [o for o in schemas["Job"]["properties"]["media"]["anyOf"] if o["type"] == "array"]
    assert (media["minItems"], media["maxItems"]) == (1, 10)
    assert media["items"]["type"] == "string" and media["items"]["maxLength"] == 2048
    record = schemas["MessageRecord"]["properties"]
    assert {"media", "num_media", "mms"} <= set(record)
    examples = document["paths"]["/v1/messages"]["post"]["requestBody"]["content"][
        "application/json"
    ]["examples"]
    assert examples["mms"]["value"]["media"] == ["https://example.com/receipt.png"]


def test_status_bodies_of_an_mms_and_of_an_sms() -> None:
    """What the callbacks and the websocket send for an event's fields: an MMS's
    `media` as a list with `num_media`, `mms` (how it went) as it is; an SMS's body
    unchanged."""
    sending = {"id": "a", "status": "sending", "at": "1.5", "media": json.dumps([PNG]),
               "mms": "link", "url": "https://app.example.com/status"}  # fmt: skip
    assert body_of(sending) == {
        "id": "a",
        "status": "sending",
        "at": 1.5,
        "media": [PNG],
        "num_media": 1,
        "mms": "link",
    }
    sms = {"id": "b", "status": "sent", "at": "2", "to": UK}
    assert body_of(sms) == {"id": "b", "status": "sent", "at": 2.0, "to": UK}


# -- the Twilio-compatible API -----------------------------------------------------------


async def test_twilio_sdk_sends_an_mms_and_lists_its_media(doors: str) -> None:
    client = sdk(doors)
    message = await asyncio.to_thread(
        client.messages.create, to=UK, from_=NUMBERS[0], body="a picture", media_url=[PNG, JPG]
    )
    assert message.num_media == "2" and message.body == "a picture"
    assert message.status == "queued" and message.from_ == NUMBERS[0]
    media_uri = f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{message.sid}/Media.json"
    assert message.subresource_uris == {"media": media_uri}
    fetched = await asyncio.to_thread(client.messages(message.sid).fetch)
    assert fetched.num_media == "2"

    items = await asyncio.to_thread(client.messages(message.sid).media.list)
    assert len(items) == 2
    sids = [item.sid for item in items]
    assert all(ME.match(s or "") for s in sids) and len(set(sids)) == 2
    for item in items:
        assert (item.parent_sid, item.account_sid) == (message.sid, ACCOUNT)
        assert (
            item.uri
            == f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{message.sid}/Media/{item.sid}.json"
        )
        assert item.content_type is None and item.date_created == fetched.date_created
    # The same sids at every read, and one fetched alone.
    again = await asyncio.to_thread(client.messages(message.sid).media.list)
    assert [item.sid for item in again] == sids
    one = await asyncio.to_thread(client.messages(message.sid).media(sids[1]).fetch)
    assert one.sid == sids[1] and one.parent_sid == message.sid
    # Paged as Twilio pages: one item a page.
    paged = await asyncio.to_thread(client.messages(message.sid).media.list, page_size=1)
    assert [item.sid for item in paged] == sids

    # Media alone, no Body.
    alone = await asyncio.to_thread(
        client.messages.create, to=UK, from_=NUMBERS[0], media_url=[JPG]
    )
    assert alone.num_media == "1" and alone.body == ""
    # An SMS: no media.
    sms = await asyncio.to_thread(client.messages.create, to=UK, from_=NUMBERS[0], body="hi")
    assert sms.num_media == "0"
    assert await asyncio.to_thread(client.messages(sms.sid).media.list) == []
    # The SMS log as Twilio's list.
    listed = {m.sid: m.num_media for m in await asyncio.to_thread(client.messages.list)}
    assert listed[message.sid] == "2" and listed[alone.sid] == "1" and listed[sms.sid] == "0"

    # Raw HTTP: the content path redirects to the URL; an unknown media sid is 404.
    basic = base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
    headers = {"Authorization": f"Basic {basic}"}
    base = f"{doors}/2010-04-01/Accounts/{ACCOUNT}/Messages/{message.sid}/Media"
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{base}/{sids[1]}", allow_redirects=False) as response:
            assert response.status == 307 and response.headers["Location"] == JPG
        async with http.get(f"{base}.json") as response:
            page = await response.json()
        assert set(page) == {"end", "first_page_uri", "media_list", "next_page_uri", "page",
                             "page_size", "previous_page_uri", "start", "uri"}  # fmt: skip
        assert (page["start"], page["end"], page["page"], page["next_page_uri"]) == (0, 1, 0, None)
        for path in (f"{base}/ME{'0' * 32}.json", f"{base}/ME{'0' * 32}"):
            async with http.get(path, allow_redirects=False) as response:
                assert response.status == 404 and (await response.json())["code"] == 20404
        async with http.delete(f"{base}.json") as response:
            assert response.status == 405 and (await response.json())["code"] == 20004
        async with http.get(f"{base}.json", headers={"Authorization": "Basic eDp5"}) as response:
            assert response.status == 401


async def test_twilio_refuses_bad_media_in_twilio_terms(redis: Redis, doors: str) -> None:
    create = sdk(doors).messages.create
    good = {"to": UK, "from_": NUMBERS[0], "body": "x"}
    eleven = [f"https://m.example.com/{i}.png" for i in range(11)]
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**good, "media_url": [PNG, "ftp://x/y.png"]}, 21620,
         "MediaUrl[1]: must be an absolute http:// or https:// URL"),
        ({**good, "media_url": ["cat.png"]}, 21620, "MediaUrl[0]: "),
        ({**good, "media_url": eleven}, 21623, "MediaUrl: must hold 1 to 10 URLs, not 11"),
        ({"to": UK, "from_": NUMBERS[0]}, 21602, "body"),  # neither Body nor MediaUrl
        ({**good, "content_sid": "HX" + "0" * 32}, 21619, "ContentSid"),
    ]  # fmt: skip
    for kwargs, code, words in cases:
        error = await sdk_error(lambda kwargs=kwargs: create(**kwargs))  # type: ignore[misc]
        assert (error.status, error.code) == (400, code), (kwargs, error.msg)
        assert words in error.msg, (kwargs, error.msg)
    assert await queued_total(redis) == 0
