"""Providers reporting back over HTTP: the Twilio bind with its status callbacks and
inbound webhook, and generic Web-URL delivery-report webhooks.

Twilio is played by a real aiohttp server speaking the Messages API; it calls the
daemon back like Twilio does, its requests signed by the `twilio` SDK's own
`RequestValidator` (code we did not write), so the daemon's signature check is held
against Twilio's. The daemon is the real one, with its API on a free port.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict
from redis.asyncio import Redis
from twilio.request_validator import RequestValidator

from binds.base import Accepted, Failed, OutboundMessage, Retry
from binds.twilio import TwilioSender, TwilioSpec
from router.api.app import build_app
from router.api.common import ApiContext
from router.api.providers import (
    ProviderHooks,
    providers_of,
    status_callback_url,
    twilio_signature,
    verify_twilio,
)
from router.client import Client
from router.config import ConfigError, Settings, parse_settings
from router.engine.inbound import Inbound
from router.engine.receipts import Reports
from router.store import keys
from router.store.ledger import Ledger

from ..binds import test_smpp_flow
from ..binds.test_smpp_flow import Inbox
from ..conftest import Provider, RunningDaemon, config_dict, serve_app, wait_for
from .test_api_twilio import started

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-auth-token-0123456789"
inbox = test_smpp_flow.inbox  # the callback_url fixture, shared
TW_NUMBER = "+14155552672"
PERSON = "+14155552673"
WEBHOOK_SECRET = "w" * 24
HMAC_SECRET = "h" * 24


@dataclass
class FakeTwilio:
    """Twilio's Messages API: answers a sid, then calls the StatusCallback (signed with
    the SDK) as Twilio would. What happens to a message depends on its `To`."""

    url: str = ""
    requests: list[dict[str, str]] = field(default_factory=list)
    # To -> plan: "deliver" (default), "undeliver", "early" (the callback before the
    # answer), "silent" (no callback), "invalid" (400 with Twilio code 21211),
    # "throttle" (429 once, then "deliver").
    plans: dict[str, str] = field(default_factory=dict)
    # (status posted, the router's HTTP answer), in order.
    callbacks: list[tuple[str, int]] = field(default_factory=list)
    media: list[list[str]] = field(default_factory=list)  # each request's MediaUrl values
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _count: int = 0

    async def create(self, request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
        if request.match_info["sid"] != SID or request.headers.get("Authorization") != expected:
            return web.json_response({"code": 20003, "message": "Authenticate"}, status=401)
        posted = await request.post()
        form = {k: str(v) for k, v in posted.items()}
        self.requests.append(form)
        self.media.append([str(v) for v in posted.getall("MediaUrl", [])])
        plan = self.plans.get(form["To"], "deliver")
        if plan == "invalid":
            body = {
                "code": 21211,
                "message": f"The 'To' number {form['To']} is not a valid phone number.",
                "more_info": "https://www.twilio.com/docs/errors/21211",
                "status": 400,
            }
            return web.json_response(body, status=400)
        if plan == "throttle":
            self.plans[form["To"]] = "deliver"
            return web.json_response(
                {"code": 20429, "message": "Too Many Requests"},
                status=429,
                headers={"Retry-After": "0"},
            )
        self._count += 1
        sid = f"SM{self._count:032x}"
        callback = form.get("StatusCallback")
        if plan == "early" and callback:
            # Twilio's callback reaches the router before its answer to the create.
            await self.call_back(callback, sid, "delivered")
        elif callback and plan in ("deliver", "undeliver"):
            task = asyncio.create_task(self._later(callback, sid, plan))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        body = {"sid": sid, "status": "queued", "to": form["To"], "error_code": None}
        return web.json_response(body, status=201)

    async def _later(self, url: str, sid: str, plan: str) -> None:
        await asyncio.sleep(0.05)
        await self.call_back(url, sid, "sent")
        if plan == "deliver":
            await self.call_back(url, sid, "delivered")
        else:
            await self.call_back(url, sid, "undelivered", ErrorCode="30003")

    async def call_back(self, url: str, sid: str, status: str, **extra: str) -> int:
        params = {
            "AccountSid": SID,
            "MessageSid": sid,
            "SmsSid": sid,
            "MessageStatus": status,
            "SmsStatus": status,
            "ApiVersion": "2010-04-01",
            **extra,
        }
        signature = RequestValidator(TOKEN).compute_signature(url, params)
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, data=params, headers={"X-Twilio-Signature": signature}) as answer,
        ):
            self.callbacks.append((status, answer.status))
            return answer.status


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio()
    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", fake.create)
    runner, fake.url = await serve_app(app)
    yield fake
    await runner.cleanup()


def providers_config(
    redis_url: str, provider_url: str, twilio_url: str, callback_url: str, tmp: Path
) -> dict[str, Any]:
    """`alerts` and `bulk` (Web-URL, with reports) and `tw` (Twilio, both ways)."""
    data = config_dict(redis_url, provider_url)
    data["router"]["state_dir"] = str(tmp / "var")
    data["numbers"][TW_NUMBER] = {"features": ["SmsSender"], "campaign": "test"}
    data["api"] = {"listen": "127.0.0.1:0"}
    data["profiles"]["alerts"]["http"]["reports"] = {
        "id_field": "data.id",
        "status_field": "data.state",
        "error_field": "data.err",
        "statuses": {"DELIVRD": "delivered", "UNDELIV": "undelivered", "ACCEPTD": "sent"},
        "secret": "env:WEBHOOK_SECRET",
    }
    data["profiles"]["bulk"]["http"]["reports"] = {
        "id_field": "msgid",
        "status_field": "status",
        "statuses": {"1": "delivered", "2": "undelivered", "16": "failed"},
        "error_field": "reason",
        "check": "hmac-sha256",
        "secret": HMAC_SECRET,
    }
    data["profiles"]["tw"] = {
        "protocol": "twilio",
        "direction": "both",
        "numbers": [TW_NUMBER],
        "callback_url": callback_url,
        "stop_text": "You are unsubscribed.",
        "twilio": {"account_sid": SID, "auth_token": "env:TWILIO_TOKEN", "base_url": twilio_url},
    }
    return data


ENV = {"TWILIO_TOKEN": TOKEN, "WEBHOOK_SECRET": WEBHOOK_SECRET}


@dataclass
class Router:
    running: RunningDaemon
    base: str  # the API's URL
    client: Client
    ledger: Ledger

    async def status(self, job_id: str) -> str:
        record = await self.ledger.get(job_id)
        return "" if record is None else str(record["status"])

    async def until(self, job_id: str, status: str, timeout: float = 15) -> dict[str, Any]:  # noqa: ASYNC109
        async def reached() -> bool:
            return await self.status(job_id) == status

        await wait_for(reached, timeout, f"{job_id} {status}")
        record = await self.ledger.get(job_id)
        assert record is not None
        return record


@pytest.fixture
async def router(
    redis: Redis,
    redis_url: str,
    provider: Provider,
    twilio: FakeTwilio,
    inbox: Inbox,
    tmp_path: Path,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> Router:
    data = providers_config(redis_url, provider.url, twilio.url, inbox.url, tmp_path)
    settings = parse_settings(data, env=ENV, base_dir=tmp_path)
    running = run_daemon(settings)
    return Router(
        running,
        await with_hooks(running, 3),
        Client.from_settings(redis, settings),
        Ledger(redis, retention=60, events_maxlen=1000),
    )


async def with_hooks(running: RunningDaemon, hooks: int) -> str:
    """The running daemon's API URL, once it listens and has registered `hooks`
    provider hooks."""
    base = await started(running)
    await wait_for(lambda: len(running.daemon.providers) == hooks, 10, "provider hooks")
    return base


def _history(record: dict[str, Any]) -> list[str]:
    return [step["status"] for step in record["history"]]


# ---------------------------------------------------------------- Twilio


async def test_a_twilio_message_is_sent_then_delivered_by_its_status_callback(
    router: Router, twilio: FakeTwilio
) -> None:
    job = await router.client.send("+14155552699", "hello twilio", profile="tw")
    record = await router.until(job, "delivered")
    assert _history(record)[-2:] == ["sent", "delivered"]
    assert record["provider_message_id"].startswith("SM")
    (request,) = twilio.requests
    assert request == {
        "To": "+14155552699",
        "From": TW_NUMBER,
        "Body": "hello twilio",
        "StatusCallback": f"{router.base}/v1/providers/tw/status",
    }
    # "sent" changed nothing; "delivered" was applied; both answered 200.
    assert twilio.callbacks == [("sent", 200), ("delivered", 200)]


async def test_undelivered_keeps_twilios_error_code(router: Router, twilio: FakeTwilio) -> None:
    twilio.plans["+14155552698"] = "undeliver"
    job = await router.client.send("+14155552698", "never arrives", profile="tw")
    record = await router.until(job, "undelivered")
    assert record["dlr_stat"] == "undelivered" and record["dlr_err"] == "30003"
    assert "30003" in record["error_raw"]


async def test_a_callback_before_sent_is_recorded_still_ends_delivered(
    router: Router, twilio: FakeTwilio
) -> None:
    twilio.plans["+14155552697"] = "early"
    job = await router.client.send("+14155552697", "fast network", profile="tw")
    record = await router.until(job, "delivered")
    assert twilio.callbacks == [("delivered", 200)]
    assert _history(record)[-2:] == ["sent", "delivered"]


async def test_a_bad_signature_is_refused_and_changes_nothing(
    router: Router, twilio: FakeTwilio
) -> None:
    twilio.plans["+14155552696"] = "silent"
    job = await router.client.send("+14155552696", "quiet", profile="tw")
    record = await router.until(job, "sent")
    sid = record["provider_message_id"]
    url = f"{router.base}/v1/providers/tw/status"
    params = {"MessageSid": sid, "MessageStatus": "delivered", "AccountSid": SID}
    forged = RequestValidator("not-the-token").compute_signature(url, params)
    other_url = RequestValidator(TOKEN).compute_signature(url + "?x=1", params)
    async with aiohttp.ClientSession() as http:
        for headers in ({"X-Twilio-Signature": forged}, {"X-Twilio-Signature": other_url}, {}):
            async with http.post(url, data=params, headers=headers) as answer:
                assert answer.status == 403
                assert "X-Twilio-Signature" in (await answer.json())["error"]
        # Signed over other parameters than those posted.
        good = RequestValidator(TOKEN).compute_signature(url, params)
        tampered = {**params, "MessageStatus": "failed"}
        async with http.post(url, data=tampered, headers={"X-Twilio-Signature": good}) as answer:
            assert answer.status == 403
    await asyncio.sleep(0.2)
    assert await router.status(job) == "sent"
    # Signed right, it is applied: failed, with Twilio's error code.
    assert await twilio.call_back(url, sid, "failed", ErrorCode="30008") == 200
    record = await router.until(job, "failed")
    assert record["dlr_err"] == "30008"


async def test_twilio_refusals_map_to_failed_with_its_code_and_throttling_retries(
    router: Router, twilio: FakeTwilio
) -> None:
    twilio.plans["+14155552695"] = "invalid"
    twilio.plans["+14155552694"] = "throttle"
    bad = await router.client.send("+14155552695", "nope", profile="tw")
    slow = await router.client.send("+14155552694", "later", profile="tw")
    record = await router.until(bad, "failed")
    assert record["error_code"] == "twilio_21211"
    assert "not a valid phone number" in record["error"]
    record = await router.until(slow, "delivered")
    assert sum(r["To"] == "+14155552694" for r in twilio.requests) == 2


async def test_inbound_stop_over_the_twilio_webhook_opts_out_and_reaches_callback_url(
    router: Router,
    twilio: FakeTwilio,
    inbox: Inbox,
    redis: Redis,
) -> None:
    url = f"{router.base}/v1/providers/tw/inbound"
    params = {
        "MessageSid": "SM" + "f" * 32,
        "AccountSid": SID,
        "From": PERSON,
        "To": TW_NUMBER,
        "Body": "STOP",
        "NumMedia": "0",
        "NumSegments": "1",
    }
    signature = RequestValidator(TOKEN).compute_signature(url, params)
    async with aiohttp.ClientSession() as http:
        forged = {"X-Twilio-Signature": signature[::-1]}
        async with http.post(url, data={**params, "From": "+14155552600"}, headers=forged) as a:
            assert a.status == 403
        async with http.post(url, data=params, headers={"X-Twilio-Signature": signature}) as a:
            assert a.status == 200
            assert a.content_type == "text/xml"
            assert "<Response/>" in await a.text()
    assert await redis.sismember(keys.opt_outs("tw"), PERSON)
    await wait_for(lambda: inbox.messages, 10, "inbound posted")
    (posted,) = inbox.messages
    assert posted["from"] == PERSON and posted["to"] == TW_NUMBER
    assert posted["text"] == "STOP" and posted["opt_out"] == "stop"
    assert posted["profile"] == "tw"
    # The stop_text reply goes out through Twilio, from the number that was texted.
    await wait_for(lambda: any(r["To"] == PERSON for r in twilio.requests), 10, "reply")
    reply = next(r for r in twilio.requests if r["To"] == PERSON)
    assert reply["Body"] == "You are unsubscribed." and reply["From"] == TW_NUMBER
    # The forged one was never stored.
    assert not await redis.sismember(keys.opt_outs("tw"), "+14155552600")


# ---------------------------------------------------------------- Web-URL reports


async def test_web_reports_with_a_token(router: Router, provider: Provider) -> None:
    job = await router.client.send("+14155552690", "report me", profile="alerts")
    record = await router.until(job, "sent")
    pid = record["provider_message_id"]
    url = f"{router.base}/v1/providers/alerts/report"

    def report(state: str, **data: Any) -> dict[str, Any]:
        return {"data": {"id": pid, "state": state, **data}}

    token = {"X-Webhook-Token": WEBHOOK_SECRET}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=report("DELIVRD")) as answer:
            assert answer.status == 401
        async with http.post(
            url, json=report("DELIVRD"), headers={"X-Webhook-Token": "x" * 24}
        ) as answer:
            assert answer.status == 403
        async with http.post(url, json=report("WHATEVER"), headers=token) as answer:
            assert answer.status == 400
            error = (await answer.json())["error"]
            assert "'WHATEVER'" in error and "data.state" in error
        async with http.post(url, json={"data": {"state": "DELIVRD"}}, headers=token) as answer:
            assert answer.status == 400
            assert "data.id" in (await answer.json())["error"]
        async with http.post(url, json=report("ACCEPTD"), headers=token) as answer:
            assert answer.status == 200 and (await answer.json())["applied"] is False
        assert await router.status(job) == "sent"
        async with http.post(url, json=report("UNDELIV", err="006"), headers=token) as answer:
            assert answer.status == 200 and (await answer.json())["applied"] is True
    record = await router.until(job, "undelivered")
    assert record["dlr_stat"] == "UNDELIV" and record["dlr_err"] == "006"


async def test_web_reports_with_an_hmac_of_the_form_body(router: Router) -> None:
    job = await router.client.send("+14155552691", "signed report", profile="bulk")
    record = await router.until(job, "sent")
    body = f"msgid={record['provider_message_id']}&status=1".encode()
    good = hmac.new(HMAC_SECRET.encode(), body, hashlib.sha256).hexdigest()
    bad = hmac.new(b"other" * 5, body, hashlib.sha256).hexdigest()
    url = f"{router.base}/v1/providers/bulk/report"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=body, headers=form) as answer:
            assert answer.status == 401
        async with http.post(url, data=body, headers={**form, "X-Signature": bad}) as answer:
            assert answer.status == 403
        assert await router.status(job) == "sent"
        async with http.post(url, data=body, headers={**form, "X-Signature": good}) as answer:
            assert answer.status == 200
        # A Twilio endpoint is no way in for a Web-URL profile, nor reports for Twilio's.
        async with http.post(f"{router.base}/v1/providers/bulk/status", data={}) as answer:
            assert answer.status == 404
        async with http.post(f"{router.base}/v1/providers/tw/report", data=body) as answer:
            assert answer.status == 404
    record = await router.until(job, "delivered")
    assert record["dlr_stat"] == "1"


# ---------------------------------------------------------------- pieces


async def test_behind_a_proxy_the_signature_covers_public_url(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    """Twilio signs the URL it called: [api] public_url + path + query, not ours."""
    data = providers_config(redis_url, "http://127.0.0.1:9/", "http://127.0.0.1:9", "", tmp_path)
    data["api"]["public_url"] = "https://sms.example.com/base/"
    data["profiles"]["tw"]["direction"] = "outbound"
    del data["profiles"]["tw"]["callback_url"]
    settings = parse_settings(data, env=ENV, base_dir=tmp_path)
    public = "https://sms.example.com/base/v1/providers/tw/status"
    assert status_callback_url(settings, "tw", 4321) == public
    ledger = Ledger(redis, retention=60, events_maxlen=100)
    context = ApiContext(settings, redis, ledger, Client.from_settings(redis, settings))
    providers_of(context)["tw"] = ProviderHooks(
        Reports(redis, ledger, "tw", id_format="as-is"),
        Inbound(redis, "tw", forward=False, reassembly_timeout=1),
    )
    runner = web.AppRunner(build_app(context))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    local = f"http://127.0.0.1:{port}/v1/providers/tw/status?attempt=2"
    params = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "sent"}
    sdk = RequestValidator(TOKEN)
    try:
        async with aiohttp.ClientSession() as http:
            for signed_url, status in ((public + "?attempt=2", 200), (local, 403)):
                headers = {"X-Twilio-Signature": sdk.compute_signature(signed_url, params)}
                async with http.post(local, data=params, headers=headers) as answer:
                    assert answer.status == status, signed_url
            # Outbound only: Twilio's inbound is acknowledged, not stored or posted.
            inbound = local.replace("status", "inbound")
            params = {"From": PERSON, "To": TW_NUMBER, "Body": "STOP"}
            signed = sdk.compute_signature(
                inbound.replace(local[: local.index("/v1")], "https://sms.example.com/base"), params
            )
            async with http.post(
                inbound, data=params, headers={"X-Twilio-Signature": signed}
            ) as answer:
                assert answer.status == 200
        assert not await redis.exists(keys.inbound("tw"), keys.opt_outs("tw"))
    finally:
        await runner.cleanup()


@given(
    path=st.text(alphabet="abcXYZ019/-_", max_size=20),
    query=st.dictionaries(st.sampled_from("abc"), st.text(max_size=5), max_size=2),
    params=st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=12)), max_size=6),
    port=st.sampled_from(["", ":8080", ":443"]),
)
def test_our_signature_is_twilios(
    path: str, query: dict[str, str], params: list[tuple[str, str]], port: str
) -> None:
    """Held against the SDK's RequestValidator, repeated and unicode parameters included."""
    url = f"https://example.com{port}/{path}" + (f"?{urlencode(query)}" if query else "")
    multi = MultiDict(params)
    sdk = RequestValidator(TOKEN)
    assert twilio_signature(url, params, TOKEN) == sdk.compute_signature(url, multi)
    assert verify_twilio(url, params, TOKEN, sdk.compute_signature(url, multi))
    # Twilio signs with or without the port; both pass, as with the SDK.
    signed = sdk.compute_signature(url.replace(port, "") if port else url, multi)
    assert verify_twilio(url, params, TOKEN, signed) == sdk.validate(url, multi, signed)
    assert not verify_twilio(url, params, TOKEN + "x", sdk.compute_signature(url, multi))


async def test_the_bind_maps_twilio_answers(twilio: FakeTwilio) -> None:
    spec = TwilioSpec(
        account_sid=SID,
        auth_token=TOKEN,
        messaging_service_sid="MG" + "ab" * 16,
        base_url=twilio.url,
        window=2,
    )
    sender = TwilioSender("t/twilio", spec)
    await sender.start()
    try:

        def message(to: str) -> OutboundMessage:
            return OutboundMessage(id="j1", source=TW_NUMBER, destination=to, text="hi {x}")

        ok = await sender.submit(message("+14155552680"))
        assert isinstance(ok, Accepted) and ok.provider_message_id == "SM" + "0" * 31 + "1"
        # A Messaging Service picks the sender: no From; no StatusCallback without an API.
        assert twilio.requests[-1] == {
            "To": "+14155552680",
            "Body": "hi {x}",
            "MessagingServiceSid": "MG" + "ab" * 16,
        }
        twilio.plans["+14155552681"] = "invalid"
        refused = await sender.submit(message("+14155552681"))
        assert isinstance(refused, Failed) and refused.code == "twilio_21211"
        assert refused.reason.startswith("twilio 21211 (http 400): The 'To' number")
        twilio.plans["+14155552682"] = "throttle"
        throttled = await sender.submit(message("+14155552682"))
        assert isinstance(throttled, Retry) and throttled.code == "http_429"
        assert throttled.after == 0
    finally:
        await sender.close()
    wrong = TwilioSender(
        "t/twilio", TwilioSpec(account_sid=SID, auth_token="wrong-token-xx", base_url=twilio.url)
    )
    await wrong.start()
    try:
        denied = await wrong.submit(OutboundMessage("j2", TW_NUMBER, "+14155552683", "x"))
        assert isinstance(denied, Failed) and denied.code == "twilio_20003"
        assert "wrong-token-xx" not in denied.reason + denied.raw
    finally:
        await wrong.close()


def _twilio_profile(**extra: Any) -> dict[str, Any]:
    profile = {
        "protocol": "twilio",
        "numbers": [TW_NUMBER],
        "twilio": {"account_sid": SID, "auth_token": "env:TWILIO_TOKEN"},
    }
    profile.update(extra)
    return profile


def _problems(data: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, env=ENV if env is None else env)
    return caught.value.problems


def test_config_checks_name_the_problem(redis_url: str) -> None:
    base = config_dict(redis_url, "http://127.0.0.1:9/send")
    base["numbers"][TW_NUMBER] = {"campaign": "test"}

    data = json.loads(json.dumps(base))
    data["profiles"]["tw"] = _twilio_profile()
    del data["profiles"]["tw"]["twilio"]
    assert 'profiles.tw.twilio: required when protocol = "twilio"' in _problems(data)

    data = json.loads(json.dumps(base))
    data["profiles"]["tw"] = _twilio_profile(direction="both", callback_url="http://a.example/")
    problems = _problems(data)
    assert any(p.startswith("profiles.tw.direction:") and "[api] listen" in p for p in problems)

    data = json.loads(json.dumps(base))
    data["profiles"]["tw"] = _twilio_profile(direction="both")
    data["api"] = {"listen": "127.0.0.1:0"}
    assert any(p.startswith("profiles.tw.callback_url:") for p in _problems(data))

    data = json.loads(json.dumps(base))
    data["profiles"]["tw"] = _twilio_profile(http={"url": "http://x.example/"})
    data["profiles"]["tw"]["twilio"]["account_sid"] = "AC123"
    data["profiles"]["tw"]["twilio"]["messaging_service_sid"] = "MGxyz"
    problems = _problems(data)
    assert any(p.startswith("profiles.tw.twilio.account_sid:") for p in problems)
    assert any(p.startswith("profiles.tw.twilio.messaging_service_sid:") for p in problems)
    assert 'profiles.tw.http: not used when protocol = "twilio"; remove it' in problems

    data = json.loads(json.dumps(base))
    data["profiles"]["tw"] = _twilio_profile()
    problems = _problems(data, env={})
    assert any(
        p.startswith("profiles.tw.twilio.auth_token:") and "TWILIO_TOKEN" in p for p in problems
    )

    data = json.loads(json.dumps(base))
    data["profiles"]["alerts"]["http"]["reports"] = {
        "id_field": "id",
        "status_field": "s",
        "statuses": {"D": "delivered", "X": "gone"},
        "check": "md5",
        "secret": "short",
    }
    problems = _problems(data)
    assert any(p.startswith("profiles.alerts.http.reports:") and "[api]" in p for p in problems)
    assert any(p.startswith("profiles.alerts.http.reports.statuses.X:") for p in problems)
    assert any(p.startswith("profiles.alerts.http.reports.check:") for p in problems)
    assert any(p.startswith("profiles.alerts.http.reports.secret:") for p in problems)

    data = json.loads(json.dumps(base))
    data["profiles"]["tw"] = _twilio_profile()
    settings = parse_settings(data, env=ENV)
    tw = settings.profiles["tw"].twilio
    assert tw is not None and tw.auth_token.get_secret_value() == TOKEN
    assert tw.base_url == "https://api.twilio.com"
    assert TOKEN not in repr(settings)
