"""MMS over Web-URL and Twilio binds: ``{media}`` / ``{media_json}`` against a real
HTTP server (the provider fixture of test_http_bind)."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from binds.base import Accepted, OutboundMessage
from binds.http import HttpSender, HttpSpec, uses_media
from binds.twilio import TwilioSender, TwilioSpec
from tests.binds import test_http_bind
from tests.binds.test_http_bind import Provider

provider = test_http_bind.provider  # the fixture: a real server recording requests

MEDIA = ("https://cdn.example.com/a.jpg", "https://cdn.example.com/b,c.png?x=1&y=2")
MMS = OutboundMessage(
    id="m1", source="+15550001111", destination="+15550002222", text="look", media=MEDIA
)
SMS = OutboundMessage(id="s1", source="+15550001111", destination="+15550002222", text="hi")


async def _send(spec: HttpSpec, message: OutboundMessage) -> None:
    sender = HttpSender("p", spec)
    await sender.start()
    try:
        assert isinstance(await sender.submit(message), Accepted)
    finally:
        await sender.close()


def test_which_specs_carry_media() -> None:
    assert uses_media("https://x/{media}")
    assert uses_media({"a": {"b": ["{media_json}"]}})
    assert not uses_media("https://x/{{media}}", {"text": "{text}"}, None)
    assert HttpSpec(url="https://x/", json={"m": "{media_json}"}).carries_media
    assert not HttpSpec(url="https://x/", form={"t": "{text}"}).carries_media
    spec = TwilioSpec(account_sid="AC" + "0" * 32, auth_token="tok-123456")
    assert spec.http_spec().carries_media


async def test_a_form_field_of_media_alone_repeats_once_per_url(provider: Provider) -> None:
    spec = HttpSpec(
        url=f"{provider.base}/send",
        form={"to": "{to}", "MediaUrl": "{media}", "all": "[{media}]", "j": "{media_json}"},
    )
    await _send(spec, MMS)
    await _send(spec, SMS)
    mms, sms = (parse_qsl(s.body.decode(), keep_blank_values=True) for s in provider.seen)
    assert [v for k, v in mms if k == "MediaUrl"] == list(MEDIA)
    assert dict(mms)["all"] == "[" + ",".join(MEDIA) + "]"
    assert json.loads(dict(mms)["j"]) == list(MEDIA)  # {media_json} alone: JSON text
    assert [k for k, _v in sms] == ["to", "all", "j"]  # an SMS sends no MediaUrl


async def test_a_get_query_repeats_media_and_json_leaves_are_arrays(provider: Provider) -> None:
    await _send(
        HttpSpec(url=f"{provider.base}/q", method="GET", form={"m": "{media}", "to": "{to}"}), MMS
    )
    await _send(
        HttpSpec(
            url=f"{provider.base}/j",
            json={
                "to": "{to}",
                "media_urls": "{media_json}",
                "m": "{media}",
                "note": "urls: {media_json}",
            },
        ),
        MMS,
    )
    query = parse_qsl(urlsplit(provider.seen[0].raw_path_qs).query)
    assert [v for k, v in query if k == "m"] == list(MEDIA)
    body = json.loads(provider.seen[1].body)
    assert body["media_urls"] == list(MEDIA) and body["m"] == list(MEDIA)
    assert json.loads(body["note"].removeprefix("urls: ")) == list(MEDIA)


async def test_twilio_sends_media_url_per_item(provider: Provider) -> None:
    async def created(_request: web.Request) -> web.StreamResponse:
        return web.json_response({"sid": "MM" + "1" * 32}, status=201)

    provider.handler = created
    spec = TwilioSpec(account_sid="AC" + "0" * 32, auth_token="tok-123456", base_url=provider.base)
    sender = TwilioSender("tw", spec)
    await sender.start()
    try:
        assert isinstance(await sender.submit(MMS), Accepted)
        assert isinstance(await sender.submit(SMS), Accepted)
    finally:
        await sender.close()
    mms, sms = (parse_qsl(s.body.decode(), keep_blank_values=True) for s in provider.seen)
    assert [v for k, v in mms if k == "MediaUrl"] == list(MEDIA)
    assert dict(mms)["Body"] == "look"
    assert "MediaUrl" not in dict(sms)
