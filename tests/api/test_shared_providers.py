"""Provider webhooks of a connector several profiles share (issue 19): Twilio's
StatusCallback and inbound webhook, and a Web-URL provider's reports, come to
``/v1/providers/<connector>/…`` and reach the profile each message belongs to. A real
daemon, a real Redis, the fake Twilio of test_providers and the HTTP provider."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis
from twilio.request_validator import RequestValidator

from router.client import Client
from router.config import Settings, parse_settings
from router.store.ledger import Ledger

from ..binds import test_smpp_flow
from ..binds.test_smpp_flow import Inbox
from ..conftest import Provider, RunningDaemon, config_dict, wait_for
from .test_providers import ENV, SID, TOKEN, FakeTwilio, twilio  # noqa: F401 - fixture

inbox = test_smpp_flow.inbox  # the callback_url fixture, shared

FIRST, SECOND = "+14155552672", "+14155552674"  # one number per profile
PERSON = "+14155552673"


def shared_config(
    redis_url: str, provider_url: str, twilio_url: str, callback: str, tmp: Path
) -> dict[str, Any]:
    """Profiles `one` and `two` (no protocol of their own) over connector `tw`
    (Twilio, both ways); connector `web` (Web-URL with reports) unused by routes."""
    data = config_dict(redis_url, provider_url)
    http = data["profiles"]["alerts"]["http"]
    data["router"]["state_dir"] = str(tmp / "var")
    data["api"] = {"listen": "127.0.0.1:0"}
    data["numbers"] = {n: {"features": ["SmsSender"], "campaign": "test"} for n in (FIRST, SECOND)}
    data["profiles"] = {
        name: {
            "global": name == "one",
            "direction": "both",
            "numbers": [number],
            "callback_url": callback,
        }
        for name, number in (("one", FIRST), ("two", SECOND))
    }
    data["connectors"] = {
        "tw": {
            "protocol": "twilio",
            "direction": "both",
            "twilio": {
                "account_sid": SID,
                "auth_token": "env:TWILIO_TOKEN",
                "base_url": twilio_url,
            },
        },
        "web": {
            "protocol": "http",
            "http": {
                **http,
                "reports": {
                    "id_field": "msgid",
                    "status_field": "status",
                    "statuses": {"1": "delivered", "2": "undelivered"},
                    "secret": "env:WEBHOOK_SECRET",
                },
            },
        },
    }
    data["routes"] = [
        {"to": ["+4479"], "connectors": ["web"]},
        {"connectors": ["tw"]},
    ]
    return data


async def test_twilio_callbacks_of_a_shared_connector_reach_each_profile(
    redis: Redis,
    redis_url: str,
    provider: Provider,
    twilio: FakeTwilio,  # noqa: F811 - the fixture
    inbox: Inbox,
    tmp_path: Path,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    data = shared_config(redis_url, provider.url, twilio.url, inbox.url, tmp_path)
    settings = parse_settings(data, env=ENV, base_dir=tmp_path)
    running = run_daemon(settings)
    await wait_for(lambda: running.daemon.api is not None and running.daemon.api.port, 10, "api")
    assert running.daemon.api is not None
    base = f"http://127.0.0.1:{running.daemon.api.port}"
    await wait_for(lambda: {"tw", "web"} <= set(running.daemon.providers), 10, "hooks")
    client = Client.from_settings(redis, settings)
    ids = await client.send_many(
        [
            {"to": f"+1415555{i:04d}", "text": "x", "profile": ("one", "two")[i % 2]}
            for i in range(6)
        ]
    )
    ledger = Ledger(redis, retention=60, events_maxlen=100)

    async def delivered() -> bool:
        return all(r is not None and r["status"] == "delivered" for r in await ledger.find(ids))

    await wait_for(delivered, 20, "every message delivered by its StatusCallback")
    assert {r["StatusCallback"] for r in twilio.requests} == {f"{base}/v1/providers/tw/status"}
    records = [r for r in await ledger.find(ids) if r]
    assert {r["profile"] for r in records} == {"one", "two"}
    assert all(r["provider_message_id"].startswith("tw/SM") for r in records)

    url = f"{base}/v1/providers/tw/inbound"
    params = {"MessageSid": "SM" + "e" * 32, "AccountSid": SID, "From": PERSON, "To": SECOND}
    params["Body"] = "hello two"
    signature = RequestValidator(TOKEN).compute_signature(url, params)
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=params, headers={"X-Twilio-Signature": signature}) as answer,
    ):
        assert answer.status == 200
    await wait_for(lambda: inbox.messages, 10, "inbound posted")
    (posted,) = inbox.messages
    assert posted["profile"] == "two" and posted["text"] == "hello two"


async def test_web_reports_of_a_shared_connector_reach_the_profile_that_sent(
    redis: Redis,
    redis_url: str,
    provider: Provider,
    twilio: FakeTwilio,  # noqa: F811 - the fixture
    inbox: Inbox,
    tmp_path: Path,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    data = shared_config(redis_url, provider.url, twilio.url, inbox.url, tmp_path)
    for number in (FIRST, SECOND):
        data["numbers"][number]["features"].append("InternationalSmsSender")
    settings = parse_settings(data, env=ENV, base_dir=tmp_path)
    running = run_daemon(settings)
    await wait_for(lambda: running.daemon.api is not None and running.daemon.api.port, 10, "api")
    assert running.daemon.api is not None
    base = f"http://127.0.0.1:{running.daemon.api.port}"
    client = Client.from_settings(redis, settings)
    mine = await client.send("+447911000001", "a", profile="one")
    theirs = await client.send("+447911000002", "b", profile="two")
    ledger = Ledger(redis, retention=60, events_maxlen=100)

    async def sent() -> bool:
        return all(r and r["status"] == "sent" for r in await ledger.find([mine, theirs]))

    await wait_for(sent, 20, "both sent over web")
    for job, state in ((mine, "1"), (theirs, "2")):
        record = await ledger.get(job)
        assert record is not None and record["provider_message_id"].startswith("web/")
        provider_id = record["provider_message_id"].removeprefix("web/")
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{base}/v1/providers/web/report",
                data={"msgid": provider_id, "status": state},
                headers={"X-Webhook-Token": ENV["WEBHOOK_SECRET"]},
            ) as answer,
        ):
            assert answer.status == 200, await answer.text()
    one, two = await ledger.find([mine, theirs])
    assert one is not None and one["status"] == "delivered" and one["profile"] == "one"
    assert two is not None and two["status"] == "undelivered" and two["profile"] == "two"
