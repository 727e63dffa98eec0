"""Accounts at the HTTP doors, on a real daemon, Redis and HTTP provider: an account's
api_token authenticates it (with its scopes) beside ``[api.keys]``; its jobs are
admitted (default and allowed profiles, allowed senders) and taken from its rate
(429 with Retry-After, nothing enqueued) and daily quota (exactly its number); the
account is recorded on each message and filters the SMS log (API and CLI) and the
websocket; the Twilio-compatible door does the same in Twilio's terms, driven by the
official SDK."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client as TwilioClient

from router.config import Settings, parse_settings

from ..conftest import NUMBERS, Provider, RunningDaemon, config_dict, wait_for
from ..daemon.test_process import cli, write_config

TOKENS = {
    "ops": "o" * 32,  # an [api.keys] key, admin
    "acme": "a" * 32,  # profile bulk only, one sender, a quota of 5 a day
    "fast": "f" * 32,  # any profile, 2 messages/s
    "boss": "b" * 32,  # an admin account
    "writer": "w" * 32,  # send only
}
UK = "+447911123456"  # bulk's number
US = "+14155550123"
TWILIO_SID = "AC" + "0123456789abcdef" * 2


def accounts_config(redis_url: str, provider: Provider, tmp_path: Path) -> dict[str, Any]:
    data = config_dict(redis_url, provider.url)
    data["router"]["state_dir"] = str(tmp_path / "var")
    data["api"] = {
        "listen": "127.0.0.1:0",
        "keys": {"ops": {"token": TOKENS["ops"], "scopes": ["admin"]}},
        "twilio": {"account_sid": TWILIO_SID, "auth_token": "t" * 32},
    }
    data["accounts"] = {
        "acme": {
            "api_token": TOKENS["acme"],
            "profiles": ["bulk"],
            "senders": [UK],
            "daily_quota": 5,
        },
        "fast": {"api_token": TOKENS["fast"], "tps": 2},
        "boss": {"api_token": TOKENS["boss"], "scopes": ["admin"]},
        "writer": {"api_token": TOKENS["writer"], "scopes": ["send"]},
    }
    return data


class Api:
    """A session on the daemon's API."""

    def __init__(self, http: aiohttp.ClientSession, base: str, config: Path) -> None:
        self.http = http
        self.base = base
        self.config = config

    async def call(
        self, method: str, path: str, who: str = "ops", **kwargs: Any
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {"Authorization": f"Bearer {TOKENS[who]}"}
        async with self.http.request(method, path, headers=headers, **kwargs) as response:
            return response.status, await response.json(), dict(response.headers)

    async def send(self, who: str, job: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        return await self.call("POST", "/v1/messages", who, json=job)

    async def record(self, job_id: str) -> dict[str, Any] | None:
        status, body, _ = await self.call("GET", f"/v1/messages/{job_id}")
        assert status in (200, 404), body
        return body if status == 200 else None


@pytest.fixture
async def api(
    redis: Redis,
    redis_url: str,
    provider: Provider,
    tmp_path: Path,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> AsyncIterator[Api]:
    data = accounts_config(redis_url, provider, tmp_path)
    config = write_config(tmp_path / "router.toml", data)
    running = run_daemon(parse_settings(data, env={}, base_dir=tmp_path))
    await wait_for(lambda: running.daemon.api is not None and running.daemon.api.port, 10)
    assert running.daemon.api is not None
    base = f"http://127.0.0.1:{running.daemon.api.port}"
    async with aiohttp.ClientSession(base_url=base) as http:

        async def ready() -> bool:
            async with http.get("/readyz") as response:
                return response.status == 200

        await wait_for(ready, 10, "ready")
        yield Api(http, base, config)


async def test_an_accounts_token_authenticates_it_with_its_scopes(api: Api) -> None:
    status, one, _ = await api.send("acme", {"to": UK, "text": "hi"})
    assert status == 202, one
    record = await api.record(one["id"])
    # Its default profile (the first it may use), and the account on the record.
    assert record is not None and record["profile"] == "bulk" and record["account"] == "acme"
    # An account without `profiles` sends through the global one, as a key does.
    status, two, _ = await api.send("fast", {"to": US, "text": "hi"})
    assert status == 202
    record = await api.record(two["id"])
    assert record is not None and (record["profile"], record["account"]) == ("alerts", "fast")
    # [api.keys] keep working, and record no account.
    status, three, _ = await api.send("ops", {"to": US, "text": "hi"})
    assert status == 202
    record = await api.record(three["id"])
    assert record is not None and "account" not in record
    # Scopes: `writer` may send, not read.
    assert (await api.send("writer", {"to": US, "text": "hi"}))[0] == 202
    status, body, _ = await api.call("GET", "/v1/messages", "writer")
    assert status == 403 and body["error"] == (
        "Authorization: account 'writer' lacks the 'read' scope"
    )
    async with api.http.get("/v1/messages", headers={"Authorization": "Bearer " + "x" * 32}) as r:
        assert r.status == 401


async def test_what_the_account_does_not_allow_is_refused_naming_the_field(api: Api) -> None:
    status, body, _ = await api.send("acme", {"to": US, "text": "hi", "profile": "alerts"})
    assert status == 403
    assert body["error"] == (
        "profile: account 'acme' may not send through 'alerts' (allowed: bulk)"
    )
    status, body, _ = await api.send("acme", {"to": US, "text": "hi", "from": NUMBERS[0]})
    assert (status, body["error"]) == (
        403,
        f"from: account 'acme' may not send from '{NUMBERS[0]}'",
    )
    # A batch is all or nothing: the good first job is not enqueued either.
    jobs = [{"to": US, "text": "ok", "id": "acme-ok"}, {"to": US, "text": "x", "from": US}]
    status, body, _ = await api.send("acme", {"messages": jobs})
    assert (status, body["error"]) == (
        403,
        f"messages[1].from: account 'acme' may not send from '{US}'",
    )
    assert await api.record("acme-ok") is None
    # A malformed job is still 400 naming its field, as for a key.
    status, body, _ = await api.send("acme", {"messages": [{"to": "+1", "text": "x"}]})
    assert status == 400 and body["error"].startswith("messages[0].to:")
    # A job cannot claim another account.
    status, body, _ = await api.send("acme", {"to": US, "text": "x", "account": "fast"})
    assert status == 400


async def test_over_its_rate_is_429_with_retry_after_and_nothing_enqueued(api: Api) -> None:
    jobs = [{"to": US, "text": f"n{i}"} for i in range(2)]
    assert (await api.send("fast", {"messages": jobs}))[0] == 202  # its one-second burst
    status, body, headers = await api.send("fast", {"to": US, "text": "more", "id": "fast-3"})
    assert status == 429
    assert body["error"] == "account: account 'fast' is over its rate of 2 messages/s"
    assert headers["Retry-After"] == "1"  # 0.5 s, rounded up
    assert await api.record("fast-3") is None
    status, body, headers = await api.send("fast", {"messages": jobs})
    assert status == 429 and headers["Retry-After"] == "1"
    await asyncio.sleep(1.0)
    assert (await api.send("fast", {"to": US, "text": "more", "id": "fast-3"}))[0] == 202
    assert await api.record("fast-3") is not None


async def test_the_daily_quota_stops_at_exactly_its_number(api: Api) -> None:
    answers = await asyncio.gather(
        *(api.send("acme", {"to": US, "text": f"n{i}", "id": f"q{i}"}) for i in range(9))
    )
    accepted = [i for i, (status, _b, _h) in enumerate(answers) if status == 202]
    refused = [(body, headers) for status, body, headers in answers if status == 429]
    assert len(accepted) == 5 and len(refused) == 4, answers
    body, headers = refused[0]
    assert body["error"].startswith("account: account 'acme' reached its daily quota of 5")
    assert 1 <= int(headers["Retry-After"]) <= 86_400  # the next UTC day
    for i in range(9):
        assert (await api.record(f"q{i}") is not None) == (i in accepted)
    # A batch that would pass it is refused whole, and counts nothing.
    status, _, _ = await api.send("acme", {"messages": [{"to": US, "text": "x"}]})
    assert status == 429


async def _ids(api: Api, query: str, who: str = "ops") -> set[str]:
    status, page, _ = await api.call("GET", f"/v1/messages?since=1h{query}", who)
    assert status == 200, page
    return {m["id"] for m in page["messages"]}


async def test_the_account_filters_the_log_and_an_account_reads_only_its_own(api: Api) -> None:
    for who, job_id in (("acme", "a1"), ("acme", "a2"), ("fast", "f1"), ("ops", "o1")):
        assert (await api.send(who, {"to": US, "text": "x", "id": job_id}))[0] == 202
    # Settled first: a record that changes while the log is read moves above the page.
    await wait_for(lambda: _all_sent(api, ["a1", "a2", "f1", "o1"]), 20, "sent")
    assert await _ids(api, "&account=acme") == {"a1", "a2"}
    assert await _ids(api, "&account=fast", "boss") == {"f1"}  # an admin account
    assert await _ids(api, "", "acme") == {"a1", "a2"}  # its own, unasked
    assert await _ids(api, "&account=acme", "acme") == {"a1", "a2"}
    status, body, _ = await api.call("GET", "/v1/messages?account=fast", "acme")
    assert (status, body["error"]) == (
        403,
        "account: account 'acme' may read only its own messages",
    )
    # Another account's message is not found.
    assert (await api.call("GET", "/v1/messages/f1", "acme"))[0] == 404
    assert (await api.call("GET", "/v1/messages/a1", "acme"))[0] == 200
    # The CLI: sms-router log --account.
    code, out, err = await cli("log", "-c", str(api.config), "--account", "acme", "--json")
    assert code == 0, err
    assert {json.loads(line)["id"] for line in out.splitlines()} == {"a1", "a2"}


async def _events(
    api: Api, who: str, sub: dict[str, Any], until: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {TOKENS[who]}"}
    async with api.http.ws_connect("/v1/events", headers=headers) as ws:
        await ws.send_json({**sub, "from": "0"})
        assert (await ws.receive_json(timeout=10))["type"] == "subscribed"
        with contextlib.suppress(TimeoutError):
            while not until(got):
                msg = await ws.receive_json(timeout=10)
                if msg["type"] == "status":
                    got.append(msg)
    return got


def _sent(job_id: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda got: any(e["id"] == job_id and e["status"] == "sent" for e in got)


async def test_the_websocket_filters_by_account(api: Api) -> None:
    for who, job_id in (("ops", "o1"), ("fast", "f1"), ("acme", "a1")):
        assert (await api.send(who, {"to": US, "text": "x", "id": job_id}))[0] == 202
    await wait_for(lambda: _all_sent(api, ["o1", "f1", "a1"]), 20, "sent")
    # Every status of acme's message (later events carry no account: its record says).
    got = await _events(api, "ops", {"account": "acme"}, _sent("a1"))
    assert {e["id"] for e in got} == {"a1"}
    assert [e["status"] for e in got] == ["queued", "sending", "sent"]
    assert got[0]["account"] == "acme"  # the queued event names it
    # An account sees only its own, unasked.
    got = await _events(api, "fast", {}, _sent("f1"))
    assert {e["id"] for e in got} == {"f1"}
    got = await _events(api, "ops", {"account": ["acme", "fast"]}, _sent("a1"))
    assert {e["id"] for e in got} == {"a1", "f1"}
    headers = {"Authorization": f"Bearer {TOKENS['acme']}"}
    async with api.http.ws_connect("/v1/events", headers=headers) as ws:
        await ws.send_json({"account": "fast"})
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 4403
        assert msg.extra == "account: 'acme' may read only its own messages, not 'fast''s"


async def _all_sent(api: Api, ids: list[str]) -> bool:
    records = [await api.record(i) for i in ids]
    return all(r is not None and r["status"] == "sent" for r in records)


def _sdk(api: Api, user: str, password: str) -> TwilioClient:
    client = TwilioClient(user, password, account_sid=TWILIO_SID)
    client.api.base_url = api.base
    return client


async def test_the_twilio_door_sends_as_the_account(api: Api) -> None:
    # Twilio's SDK with the account's name and api_token (as an API key's sid/secret).
    client = _sdk(api, "acme", TOKENS["acme"])
    message = await asyncio.to_thread(client.messages.create, to=US, from_=UK, body="hi")
    record = await api.record(message.sid or "")
    assert record is not None and record["account"] == "acme" and record["profile"] == "bulk"
    # A From of a profile it may not use: Twilio's 21606, naming the field.
    with pytest.raises(TwilioRestException) as caught:
        await asyncio.to_thread(client.messages.create, to=US, from_=NUMBERS[0], body="x")
    assert (caught.value.status, caught.value.code) == (400, 21606)
    assert "From: account 'acme' may not send through 'alerts'" in caught.value.msg
    # It reads only its own messages.
    other = await asyncio.to_thread(
        _sdk(api, TWILIO_SID, "t" * 32).messages.create, to=US, from_=NUMBERS[0], body="y"
    )
    listed = await asyncio.to_thread(client.messages.list)
    assert {m.sid for m in listed} == {message.sid}
    with pytest.raises(TwilioRestException) as caught:
        await asyncio.to_thread(client.messages(other.sid or "").fetch)
    assert caught.value.status == 404
    # A wrong token is Twilio's 20003.
    with pytest.raises(TwilioRestException) as caught:
        await asyncio.to_thread(_sdk(api, "acme", "z" * 32).messages(message.sid or "").fetch)
    assert (caught.value.status, caught.value.code) == (401, 20003)


async def test_the_twilio_door_answers_over_the_rate_with_20429(api: Api) -> None:
    path = f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
    headers = {"Authorization": f"Bearer {TOKENS['fast']}"}
    form = {"To": US, "From": NUMBERS[0], "Body": "x"}
    answers = []
    for _ in range(3):
        async with api.http.post(path, data=form, headers=headers) as response:
            answers.append((response.status, await response.json(), response.headers))
    assert [a[0] for a in answers] == [201, 201, 429]
    _, body, got = answers[2]
    assert body["code"] == 20429 and body["status"] == 429
    assert body["message"] == "Too Many Requests: account 'fast' is over its rate of 2 messages/s"
    assert got["Retry-After"] == "1"
