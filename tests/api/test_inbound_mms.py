"""Inbound MMS over provider webhooks: Twilio's (``NumMedia``, ``MediaUrlN``,
``MediaContentTypeN``, signed with the `twilio` SDK's own `RequestValidator`) and a
Web-URL provider's (``[profiles.P.http.inbound]``, a token or an HMAC of the body).

The daemon is the real one, with its API on a free port; the application's
callback_url is a real aiohttp server (`Inbox`), and the ``GET /v1/events``
websocket is read with a real aiohttp client.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from redis.asyncio import Redis
from twilio.request_validator import RequestValidator

from router.config import ConfigError, Settings, parse_settings
from router.store import keys
from router.store.connections import as_text

from ..binds.test_smpp_flow import Inbox
from ..conftest import Provider, RunningDaemon, wait_for
from .test_api import TOKENS
from .test_api_twilio import started
from .test_events import _next_event, _subscribe
from .test_providers import (
    ENV,
    HMAC_SECRET,
    PERSON,
    TOKEN,
    TW_NUMBER,
    WEBHOOK_SECRET,
    FakeTwilio,
    inbox,
    providers_config,
    twilio,
    with_hooks,
)
from .test_shared_providers import FIRST, SECOND, shared_config

__all__ = ["inbox", "twilio"]  # fixtures, shared

ALERTS_NUMBER = "+16501112345"  # alerts' first number (tests/conftest.py NUMBERS)
BULK_NUMBER = "+447911123456"
PLAIN_NUMBER = "+14155552677"
PHOTO = "https://media.example.com/m/photo-1.jpg"
CLIP = "https://media.example.com/m/clip-2.mp4"


def mms_config(
    redis_url: str, provider_url: str, twilio_url: str, callback_url: str, tmp: Path
) -> dict[str, Any]:
    """`tw` (Twilio, both ways); `alerts` (Web-URL, JSON inbound with a token, media as
    objects); `bulk` (Web-URL, form inbound with an HMAC, media as URLs); `plain`
    (Web-URL without http.inbound)."""
    data = providers_config(redis_url, provider_url, twilio_url, callback_url, tmp)
    data["api"]["keys"] = {"reader": {"token": TOKENS["reader"], "scopes": ["read"]}}
    alerts = data["profiles"]["alerts"]
    alerts.update(direction="both", callback_url=callback_url)
    alerts["http"]["inbound"] = {
        "from_field": "data.from",
        "to_field": "data.to",
        "text_field": "data.text",
        "media_field": "data.media",
        "media_url_key": "href",
        "media_type_key": "mime",
        "secret": "env:WEBHOOK_SECRET",
    }
    bulk = data["profiles"]["bulk"]
    bulk.update(direction="both", callback_url=callback_url)
    bulk["http"]["inbound"] = {
        "from_field": "msisdn",
        "to_field": "to",
        "text_field": "text",
        "media_field": "media",
        "check": "hmac-sha256",
        "secret": HMAC_SECRET,
    }
    data["numbers"][PLAIN_NUMBER] = {"features": ["SmsSender"], "campaign": "test"}
    data["profiles"]["plain"] = {
        "protocol": "http",
        "numbers": [PLAIN_NUMBER],
        "http": {k: v for k, v in bulk["http"].items() if k not in ("reports", "inbound")},
    }
    return data


@pytest.fixture
async def base(
    redis: Redis,  # emptied before the daemon starts, not under it
    redis_url: str,
    provider: Provider,
    twilio: FakeTwilio,
    inbox: Inbox,
    tmp_path: Path,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> str:
    """The running daemon's API URL, once its provider hooks are registered."""
    data = mms_config(redis_url, provider.url, twilio.url, inbox.url, tmp_path)
    running = run_daemon(parse_settings(data, env=ENV, base_dir=tmp_path))
    return await with_hooks(running, 3)


def twilio_mms(body: str, *media: tuple[str, str], **extra: str) -> dict[str, str]:
    """Twilio's incoming-message parameters for an MMS with `media` (url, type)."""
    params = {
        "MessageSid": "MM" + "a" * 32,
        "AccountSid": "AC" + "0123456789abcdef" * 2,
        "From": PERSON,
        "To": TW_NUMBER,
        "Body": body,
        "NumMedia": str(len(media)),
        "NumSegments": "1",
    }
    for index, (url, kind) in enumerate(media):
        params[f"MediaUrl{index}"] = url
        params[f"MediaContentType{index}"] = kind
    params.update(extra)
    return params


async def post_twilio(
    http: aiohttp.ClientSession, url: str, params: dict[str, str], *, signed: bool = True
) -> tuple[int, str]:
    """POST `params` as Twilio does (signed with the SDK unless not `signed`): the
    status and the body of the answer."""
    headers = {"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(url, params)}
    async with http.post(url, data=params, headers=headers if signed else {}) as answer:
        return answer.status, await answer.text()


async def stored_inbound(redis: Redis, profile: str) -> list[dict[str, Any]]:
    """The inbound events on `profile`'s event stream (each message stored is one)."""
    rows = await redis.xrange(keys.events(profile)) or []
    found = [{as_text(k): as_text(v) for k, v in (fields or {}).items()} for _, fields in rows]
    return [f for f in found if f.get("type") == "inbound"]


# ---------------------------------------------------------------- Twilio


async def test_twilio_mms_reaches_the_callback_and_the_websocket_with_its_media(
    base: str, inbox: Inbox, twilio: FakeTwilio, redis: Redis
) -> None:
    url = f"{base}/v1/providers/tw/inbound"
    media = [(PHOTO, "image/jpeg"), (CLIP, "video/mp4")]
    async with aiohttp.ClientSession() as http:
        ws = await _subscribe(http, base, status=["inbound"], profile="tw")
        status, text = await post_twilio(http, url, twilio_mms("look at these", *media))
        assert status == 200 and "<Response/>" in text
        # A media-only MMS: its Body empty.
        status, _ = await post_twilio(http, url, twilio_mms("", (PHOTO, "image/png")))
        assert status == 200
        events = [await _next_event(ws), await _next_event(ws)]
        await ws.close()
    expected = [
        {"url": PHOTO, "content_type": "image/jpeg"},
        {"url": CLIP, "content_type": "video/mp4"},
    ]
    await wait_for(lambda: len(inbox.messages) == 2, 10, "both posted")
    first, alone = inbox.messages
    assert first["profile"] == "tw" and first["from"] == PERSON and first["to"] == TW_NUMBER
    assert first["text"] == "look at these"
    assert first["num_media"] == 2 and first["media"] == expected
    assert alone["text"] == "" and alone["num_media"] == 1
    assert alone["media"] == [{"url": PHOTO, "content_type": "image/png"}]
    # The websocket's events are the same messages, media and all.
    assert [e["type"] for e in events] == ["inbound", "inbound"]
    assert [e["id"] for e in events] == [first["id"], alone["id"]]
    assert events[0]["media"] == expected and events[0]["num_media"] == 2
    assert events[1]["media"] == alone["media"]
    assert not await redis.sismember(keys.opt_outs("tw"), PERSON)


async def test_an_mms_whose_text_is_stop_still_opts_out(
    base: str, inbox: Inbox, twilio: FakeTwilio, redis: Redis
) -> None:
    url = f"{base}/v1/providers/tw/inbound"
    async with aiohttp.ClientSession() as http:
        status, _ = await post_twilio(http, url, twilio_mms("STOP", (PHOTO, "image/jpeg")))
    assert status == 200
    assert await redis.sismember(keys.opt_outs("tw"), PERSON)
    await wait_for(lambda: inbox.messages, 10, "posted")
    (posted,) = inbox.messages
    assert posted["opt_out"] == "stop" and posted["num_media"] == 1
    assert posted["media"] == [{"url": PHOTO, "content_type": "image/jpeg"}]


async def test_twilio_media_out_of_bounds_or_unsigned_are_refused_naming_the_field(
    base: str, inbox: Inbox, redis: Redis
) -> None:
    url = f"{base}/v1/providers/tw/inbound"
    good = (PHOTO, "image/jpeg")
    eleven = [(f"https://media.example.com/{i}.jpg", "image/jpeg") for i in range(11)]
    cases: list[tuple[dict[str, str], str]] = [
        (twilio_mms("x", good, NumMedia="two"), "NumMedia: must be a whole number from 0 to 10"),
        (twilio_mms("x", good, NumMedia="-1"), "NumMedia:"),
        (twilio_mms("x", *eleven), "NumMedia: must be a whole number from 0 to 10, not '11'"),
        (twilio_mms("x", good, NumMedia="2"), "MediaUrl1: required"),
        (
            twilio_mms("x", good, ("ftp://media.example.com/a.jpg", "image/jpeg")),
            "MediaUrl1: must be an absolute http:// or https:// URL",
        ),
        (
            twilio_mms("x", ("https://media.example.com/" + "a" * 2030, "image/jpeg")),
            "MediaUrl0: longer than 2048 characters",
        ),
        (twilio_mms("x", (PHOTO, "image/" + "j" * 250)), "MediaContentType0: must be a media type"),
        (twilio_mms("x", (PHOTO, "image/jpeg\r\nX: y")), "MediaContentType0: must be a media type"),
    ]
    async with aiohttp.ClientSession() as http:
        for params, says in cases:
            status, text = await post_twilio(http, url, params)
            assert status == 400, params
            assert says in json.loads(text)["error"], (says, text)
        # Unsigned: refused by the signature check before anything is read.
        status, text = await post_twilio(http, url, twilio_mms("x", good), signed=False)
        assert status == 403 and "X-Twilio-Signature" in text
    assert await stored_inbound(redis, "tw") == []
    assert inbox.messages == []


# ---------------------------------------------------------------- Web-URL


async def test_web_inbound_json_with_a_token_carries_media_objects(
    base: str, inbox: Inbox, redis: Redis
) -> None:
    url = f"{base}/v1/providers/alerts/inbound"
    token = {"X-Webhook-Token": WEBHOOK_SECRET}

    def message(**data: Any) -> dict[str, Any]:
        media = [{"href": PHOTO, "mime": "image/jpeg"}, {"href": CLIP, "mime": "video/mp4"}]
        return {"data": {"from": PERSON, "to": ALERTS_NUMBER, "text": "hi", "media": media, **data}}

    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=message()) as answer:
            assert answer.status == 401
        async with http.post(url, json=message(), headers={"X-Webhook-Token": "x" * 24}) as a:
            assert a.status == 403
        refused = [
            (message(media=[{"href": "javascript:alert(1)"}]), "data.media[0].href: must be"),
            (message(media=[{"href": PHOTO, "mime": 7}]), "data.media[0].mime: must be a media"),
            (message(media=[{"mime": "image/png"}]), "data.media[0].href: required"),
            (message(media=[PHOTO] * 11), "data.media: at most 10 media, not 11"),
            (message(media={"href": PHOTO}), "data.media: must be a list"),
            (message(**{"from": ""}), "data.from: missing"),
        ]
        for body, says in refused:
            async with http.post(url, json=body, headers=token) as answer:
                assert answer.status == 400, body
                assert says in (await answer.json())["error"], says
        async with http.post(url, json=message(), headers=token) as answer:
            assert answer.status == 200
            assert await answer.json() == {"status": "ok", "num_media": 2}
    await wait_for(lambda: inbox.messages, 10, "posted")
    (posted,) = inbox.messages
    assert posted["profile"] == "alerts" and posted["from"] == PERSON
    assert posted["to"] == ALERTS_NUMBER and posted["text"] == "hi"
    assert posted["num_media"] == 2
    assert posted["media"] == [
        {"url": PHOTO, "content_type": "image/jpeg"},
        {"url": CLIP, "content_type": "video/mp4"},
    ]
    assert len(await stored_inbound(redis, "alerts")) == 1


async def test_web_inbound_form_with_an_hmac_takes_urls_repeated_or_as_a_json_list(
    base: str, inbox: Inbox
) -> None:
    url = f"{base}/v1/providers/bulk/inbound"
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    async def post(pairs: list[tuple[str, str]], *, sign: bool = True) -> tuple[int, Any]:
        body = urlencode(pairs).encode()
        signature = hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers = {**form, "X-Signature": f"sha256={signature}"} if sign else form
        async with http.post(url, data=body, headers=headers) as answer:
            return answer.status, await answer.json()

    who = [("msisdn", PERSON), ("to", BULK_NUMBER)]
    async with aiohttp.ClientSession() as http:
        assert (await post([*who, ("text", "x")], sign=False))[0] == 401
        status, body = await post([*who, ("text", "two"), ("media", PHOTO), ("media", CLIP)])
        assert (status, body) == (200, {"status": "ok", "num_media": 2})
        status, _ = await post([*who, ("text", "list"), ("media", json.dumps([CLIP]))])
        assert status == 200
        status, _ = await post([*who, ("media", PHOTO)])  # media alone, no text field
        assert status == 200
        status, _ = await post([*who, ("text", "plain sms")])
        assert status == 200
        status, body = await post([*who, ("text", "x"), ("media", PHOTO), ("media", "/rel")])
        assert status == 400 and body["error"].startswith("media[1]: must be an absolute")
        status, body = await post([*who, ("media", "[not json")])
        assert status == 400 and body["error"].startswith("media: not a JSON list")
        status, body = await post(who)  # neither text nor media
        assert status == 400 and body["error"].startswith("text: missing")
    await wait_for(lambda: len(inbox.messages) == 4, 10, "four posted")
    by_text = {m["text"]: m for m in inbox.messages}
    assert by_text["two"]["media"] == [
        {"url": PHOTO, "content_type": None},
        {"url": CLIP, "content_type": None},
    ]
    assert by_text["list"]["media"] == [{"url": CLIP, "content_type": None}]
    assert by_text[""]["num_media"] == 1 and by_text[""]["profile"] == "bulk"
    # An SMS: num_media 0 and no media key, the body otherwise as before.
    sms = by_text["plain sms"]
    assert sms["num_media"] == 0 and "media" not in sms


async def test_inbound_to_a_carrier_without_an_inbound_webhook_is_404(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/providers/plain/inbound", json={}) as answer:
            assert answer.status == 404
            assert "[profiles.plain.http.inbound]" in (await answer.json())["error"]
        async with http.post(f"{base}/v1/providers/nobody/inbound", json={}) as answer:
            assert answer.status == 404
            assert "'nobody'" in (await answer.json())["error"]


# ---------------------------------------------------------------- shared connectors


async def test_mms_over_a_shared_connector_reaches_the_profile_owning_the_number(
    redis: Redis,
    redis_url: str,
    provider: Provider,
    twilio: FakeTwilio,
    inbox: Inbox,
    tmp_path: Path,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    """``[connectors.web.http.inbound]`` and the shared Twilio connector: each MMS goes
    to the profile whose number it was sent to, media and all."""
    data = shared_config(redis_url, provider.url, twilio.url, inbox.url, tmp_path)
    data["connectors"]["web"]["direction"] = "both"
    data["connectors"]["web"]["http"]["inbound"] = {
        "from_field": "from",
        "to_field": "to",
        "media_field": "media",
        "secret": "env:WEBHOOK_SECRET",
    }
    running = run_daemon(parse_settings(data, env=ENV, base_dir=tmp_path))
    base = await started(running)
    await wait_for(lambda: {"tw", "web"} <= set(running.daemon.providers), 10, "hooks")
    media = [{"url": PHOTO, "content_type": "image/gif"}]
    async with aiohttp.ClientSession() as http:
        token = {"X-Webhook-Token": WEBHOOK_SECRET}
        body = {"from": PERSON, "to": SECOND, "media": media}
        async with http.post(f"{base}/v1/providers/web/inbound", json=body, headers=token) as a:
            assert a.status == 200
        url = f"{base}/v1/providers/tw/inbound"
        params = twilio_mms("to one", (CLIP, "video/mp4"), To=FIRST)
        assert (await post_twilio(http, url, params))[0] == 200
    await wait_for(lambda: len(inbox.messages) == 2, 10, "both posted")
    by_profile = {m["profile"]: m for m in inbox.messages}
    assert by_profile["two"]["media"] == media and by_profile["two"]["text"] == ""
    assert by_profile["one"]["media"] == [{"url": CLIP, "content_type": "video/mp4"}]
    assert by_profile["one"]["text"] == "to one"


def test_a_web_inbound_webhook_needs_a_carrier_that_takes_inbound(tmp_path: Path) -> None:
    data = mms_config("redis://127.0.0.1:1/0", "http://127.0.0.1:9/send",
                      "http://127.0.0.1:9", "http://127.0.0.1:9/in", tmp_path)  # fmt: skip
    data["profiles"]["alerts"]["direction"] = "outbound"
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, env=ENV, base_dir=tmp_path)
    assert caught.value.problems == [
        'profiles.alerts.http.inbound: needs direction = "both" (inbound messages would be '
        "answered but not stored)"
    ]
