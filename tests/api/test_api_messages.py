"""The message, profile and dead-letter endpoints on a real daemon, Redis and HTTP
provider: send one and a batch, idempotency, errors naming the field, the SMS log
page by page, profiles and numbers, dead letters, scopes, the OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from router.client import Client
from router.config import Settings, parse_settings
from router.numbers import normalise_e164
from router.store import keys
from router.store.queue import WorkQueue

from ..conftest import Provider, RunningDaemon, config_dict, wait_for

TOKENS = {"ops": "o" * 32, "reader": "r" * 32, "sender": "s" * 32}
UK = "+447911123456"
US = "+14155550123"


def with_api(settings: Settings, max_body: int = 200_000) -> Settings:
    """`settings` with the API on a free port and three keys: admin, read, send."""
    keys_ = {
        "ops": {"token": TOKENS["ops"], "scopes": ["admin"]},
        "reader": {"token": TOKENS["reader"], "scopes": ["read"]},
        "sender": {"token": TOKENS["sender"], "scopes": ["send"]},
    }
    api = settings.api.model_validate(
        {"listen": "127.0.0.1:0", "keys": keys_, "max_body": max_body}
    )
    return settings.model_copy(update={"api": api})


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


@dataclass
class Api:
    """A session on the daemon's API, with the admin token unless told otherwise."""

    http: aiohttp.ClientSession
    running: RunningDaemon

    async def call(
        self, method: str, path: str, key: str | None = "ops", **kwargs: Any
    ) -> tuple[int, Any]:
        headers = auth(key) if key else {}
        async with self.http.request(method, path, headers=headers, **kwargs) as response:
            return response.status, await response.json()

    async def record(self, job_id: str) -> dict[str, Any]:
        status, body = await self.call("GET", f"/v1/messages/{job_id}", "reader")
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def all_sent(self, ids: list[str]) -> bool:
        return all([(await self.record(i))["status"] == "sent" for i in ids])


@contextlib.asynccontextmanager
async def start_api(
    settings: Settings, run_daemon: Callable[[Settings], RunningDaemon]
) -> AsyncIterator[Api]:
    running = run_daemon(with_api(settings))
    await wait_for(lambda: running.daemon.api is not None and running.daemon.api.port, 10)
    assert running.daemon.api is not None
    base = f"http://127.0.0.1:{running.daemon.api.port}"
    async with aiohttp.ClientSession(base_url=base) as http:
        api = Api(http, running)

        async def ready() -> bool:
            async with http.get("/readyz") as response:
                return response.status == 200

        await wait_for(ready, 10, "ready")
        yield api


@pytest.fixture
async def api(
    redis: Redis,
    make_settings: Callable[..., Settings],
    run_daemon: Callable[[Settings], RunningDaemon],
) -> AsyncIterator[Api]:
    async with start_api(make_settings(), run_daemon) as started:
        yield started


async def test_send_one_and_a_batch(api: Api, provider: Provider) -> None:
    status, one = await api.call("POST", "/v1/messages", "sender", json={"to": UK, "text": "hi"})
    assert status == 202 and one["status"] == "queued" and one["id"]
    jobs = [{"to": UK, "text": f"n{i}", "meta": {"i": i}} for i in range(3)]
    jobs.append({"to": "+44 7911 123-456", "text": "spaced", "id": "mine-1", "profile": "bulk"})
    status, batch = await api.call("POST", "/v1/messages", "sender", json={"messages": jobs})
    assert status == 202
    assert (batch["queued"], batch["duplicates"]) == (4, 0)
    assert batch["messages"][3] == {"id": "mine-1", "status": "queued"}
    ids = [one["id"], *(m["id"] for m in batch["messages"])]
    await wait_for(lambda: api.all_sent(ids), 20, "all sent")
    assert provider.refs == dict.fromkeys(ids, 1)
    record = await api.record("mine-1")
    assert record["profile"] == "bulk" and record["to"] == UK
    assert [s["status"] for s in record["history"]] == ["queued", "sending", "sent"]
    assert (await api.record(ids[1]))["meta"] == {"i": 0}


async def test_the_same_id_is_never_sent_twice(api: Api, provider: Provider) -> None:
    job = {"to": UK, "text": "once", "id": "idem-1"}
    assert await api.call("POST", "/v1/messages", json=job) == (
        202,
        {"id": "idem-1", "status": "queued"},
    )
    assert await api.call("POST", "/v1/messages", json=job) == (
        202,
        {"id": "idem-1", "status": "duplicate"},
    )
    twice = {"messages": [{**job, "id": "idem-2"}, {**job, "id": "idem-2"}, job]}
    status, batch = await api.call("POST", "/v1/messages", json=twice)
    assert status == 202 and (batch["queued"], batch["duplicates"]) == (1, 2)
    assert [m["status"] for m in batch["messages"]] == ["queued", "duplicate", "duplicate"]
    await wait_for(lambda: api.all_sent(["idem-1", "idem-2"]), 20, "sent")
    await asyncio.sleep(0.3)  # room for a second send, were there one
    assert provider.refs == {"idem-1": 1, "idem-2": 1}


def _e164_error(number: str) -> str:
    with pytest.raises(ValueError) as caught:
        normalise_e164(number)
    return str(caught.value)


async def test_every_error_names_the_field(api: Api) -> None:
    ok = {"to": UK, "text": "x"}
    cases: list[tuple[Any, str]] = [
        ({"to": "12", "text": "x"}, f"to: {_e164_error('12')}"),
        ({"messages": [ok, ok, ok, {"to": "+1", "text": "x"}]},
         f"messages[3].to: {_e164_error('+1')}"),
        ({"text": "x"}, "to: required"),
        ({"messages": [ok, {"text": "x"}]}, "messages[1].to: required"),
        ({**ok, "colour": "red"}, "colour: unknown field"),
        ({**ok, "text": 5}, "text: input should be a valid string"),
        ({**ok, "profile": "nope"}, "profile: unknown profile 'nope'"),
        ({**ok, "template": "t"}, "template: give 'text' or 'template', not both"),
        ({**ok, "text": ""}, "text: must not be empty"),
        ({**ok, "send_at": "tomorrow"},
         "send_at: 'tomorrow' is not unix seconds or an ISO 8601 time"),
        ({**ok, "send_at": True}, "send_at: must be unix seconds or an ISO 8601 time"),
        ({**ok, "from": "+14082223333", "profile": "bulk"},
         "from: +14082223333 is not a number of profile 'bulk'"),
        ({**ok, "meta": {"n": 10**30}}, "meta: cannot be encoded (Integer value out of range)"),
        ({**ok, "status_callback_url": "ftp://x"},
         "status_callback_url: must be an http:// or https:// URL"),
        ({**ok, "id": "a b"}, "id: must be at most 128 characters without spaces"),
        ({"messages": []}, "messages: list should have at least 1 item after validation, not 0"),
        ({"messages": [ok] * 1001},
         "messages: list should have at most 1000 items after validation, not 1001"),
        ({"messages": [ok], "to": UK}, "to: unknown field"),
        ([ok], "body: input should be a valid dictionary or instance of Job"),
    ]  # fmt: skip
    for body, error in cases:
        assert await api.call("POST", "/v1/messages", json=body) == (400, {"error": error}), body
    status, body = await api.call("POST", "/v1/messages", data=b"{nope")
    assert status == 400 and body["error"].startswith("body: not valid JSON")
    status, body = await api.call("POST", "/v1/messages", data=b"[" * 50_000 + b"]" * 50_000)
    assert (status, body) == (400, {"error": "body: nested too deeply"})
    status, body = await api.call("POST", "/v1/messages", data=b" " * 200_001)
    assert status == 413 and "api.max_body" in body["error"]

    queries = [
        ("limit=0", "limit: input should be greater than or equal to 1"),
        ("limit=many", "limit: input should be a valid integer, unable to parse string as an "
                       "integer"),
        ("status=lost", "status: input should be 'queued', 'scheduled', 'sending', "
                        "'delivered', 'expired', 'failed', 'rejected', 'sent' or 'undelivered'"),
        ("since=yesterday",
         "since: 'yesterday' is neither a duration (e.g. 15m, 2h, 1d) nor an ISO 8601 time"),
        ("since=2024-01-01T00:00:00", "since: '2024-01-01T00:00:00' has no time zone "
                                      "(add Z or +00:00)"),
        ("cursor=zzz", "cursor: not a next_cursor of this API"),
        ("profile=nope", "profile: unknown profile 'nope'"),
        ("to=12", f"to: {_e164_error('12')}"),
        ("colour=red", "colour: unknown field"),
    ]  # fmt: skip
    for query, error in queries:
        assert await api.call("GET", f"/v1/messages?{query}") == (400, {"error": error}), query
    assert await api.call("GET", "/v1/messages/nobody") == (
        404,
        {"error": "id: no message 'nobody'"},
    )
    assert await api.call("GET", "/v1/profiles/nope/numbers") == (
        404,
        {"error": "profile: unknown profile 'nope'"},
    )
    replay = "/v1/profiles/alerts/dead-letters/replay"
    for body, error in [
        ({"entries": ["x"]}, "entries[0]: 'x' is not a dead-letter entry id"),
        ({}, "entries: required (or all: true)"),
        ({"all": True, "entries": []}, "all: give entries or all, not both"),
        ({"all": "yes"}, "all: input should be a valid boolean"),
    ]:
        assert await api.call("POST", replay, json=body) == (400, {"error": error}), body
    status, body = await api.call("GET", "/v1/profiles/alerts/dead-letters?limit=5000")
    assert (status, body) == (400, {"error": "limit: input should be less than or equal to 1000"})


async def test_scopes(api: Api) -> None:
    job = {"to": UK, "text": "x"}
    status, body = await api.call("POST", "/v1/messages", None, json=job)
    assert status == 401 and body["error"].startswith("Authorization:")
    status, body = await api.call("POST", "/v1/messages", "reader", json=job)
    assert status == 403 and "lacks the 'send' scope" in body["error"]
    for path in ("/v1/messages", "/v1/messages/x", "/v1/profiles", "/v1/profiles/alerts/numbers"):
        status, body = await api.call("GET", path, "sender")
        assert status == 403 and "lacks the 'read' scope" in body["error"], path
        assert (await api.call("GET", path, "reader"))[0] in (200, 404), path
    letters = "/v1/profiles/alerts/dead-letters"
    for key in ("reader", "sender"):
        status, body = await api.call("GET", letters, key)
        assert status == 403 and "lacks the 'admin' scope" in body["error"]
        status, body = await api.call("POST", f"{letters}/replay", key, json={"all": True})
        assert status == 403
    assert (await api.call("GET", letters, "ops"))[0] == 200


async def test_the_log_page_by_page(api: Api) -> None:
    jobs = [{"to": UK, "text": f"log {i}", "id": f"log-{i:02d}"} for i in range(25)]
    jobs.append({"to": "+447911123457", "text": "other", "id": "log-other", "profile": "bulk"})
    status, _ = await api.call("POST", "/v1/messages", json={"messages": jobs})
    assert status == 202
    ids = [j["id"] for j in jobs]
    await wait_for(lambda: api.all_sent(ids), 20, "all sent")

    seen: list[str] = []
    pages = 0
    cursor = None
    while True:
        query = "limit=10&status=sent" + (f"&cursor={cursor}" if cursor else "")
        status, page = await api.call("GET", f"/v1/messages?{query}", "reader")
        assert status == 200
        pages += 1
        assert len(page["messages"]) <= 10
        seen += [m["id"] for m in page["messages"]]
        # Newest change first, in the order Redis recorded the changes. Up to three
        # outcome flushes run at once, each stamped with the router's clock when it
        # was made, so two batches recorded within a flush of each other may carry
        # their times in the other order (a few ms; not a page boundary problem: the
        # cursor follows the recording order, checked below by seeing each id once).
        updated = [m["updated_at"] for m in page["messages"]]
        assert all(later <= newer + 0.25 for newer, later in itertools.pairwise(updated))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    assert pages in (3, 4)  # 26 records; the last page may come back empty
    record = (await api.call("GET", "/v1/messages?limit=1", "reader"))[1]["messages"][0]
    assert record == await api.record(record["id"])  # the log shows the record itself

    status, page = await api.call("GET", "/v1/messages?to=%2B44%207911%20123457", "reader")
    assert [m["id"] for m in page["messages"]] == ["log-other"]
    status, page = await api.call("GET", "/v1/messages?profile=bulk&since=5m", "reader")
    assert [m["id"] for m in page["messages"]] == ["log-other"]
    status, page = await api.call("GET", "/v1/messages?since=2099-01-01T00:00:00Z", "reader")
    assert page == {"messages": [], "next_cursor": None}
    status, page = await api.call("GET", "/v1/messages?status=failed", "reader")
    assert page == {"messages": [], "next_cursor": None}


async def test_profiles_and_numbers(
    redis: Redis,
    provider: Provider,
    redis_url: str,
    tmp_path: Any,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    data = config_dict(redis_url, provider.url)
    data["router"]["state_dir"] = str(tmp_path / "var")
    data["campaigns"]["low"] = {"brand": "T", "status": "Confirmed", "tier": "LowVolume"}
    data["campaigns"]["pending"] = {"brand": "T", "status": "Pending"}
    data["numbers"]["+16501112345"]["sms_enabled"] = False
    data["numbers"]["+14082223333"]["campaign"] = "low"
    data["numbers"]["+14155552671"]["campaign"] = "pending"
    settings = parse_settings(data, env={}, base_dir=tmp_path)
    async with start_api(settings, run_daemon) as api:
        status, body = await api.call("GET", "/v1/profiles", "reader")
        assert status == 200
        alerts, bulk = body["profiles"]
        assert alerts == {
            "name": "alerts",
            "protocol": "http",
            "direction": "outbound",
            "processing": "async",
            "window": 8,
            "tps": 0.0,
            "sender": "round_robin",
            "numbers": 3,
            "global": True,
            "ready": True,
        }
        assert (bulk["name"], bulk["numbers"], bulk["global"]) == ("bulk", 1, False)

        status, sent = await api.call("POST", "/v1/messages", json={"to": US, "text": "capped"})
        await wait_for(lambda: api.all_sent([sent["id"]]), 20, "sent")
        status, body = await api.call("GET", "/v1/profiles/alerts/numbers", "reader")
        assert status == 200 and body["profile"] == "alerts" and len(body["day"]) == 8
        off, low, pending = body["numbers"]
        assert off["number"] == "+16501112345" and not off["can_send"]
        assert off["refusal"] == {
            "code": "no_capable_sender",
            "reason": "+16501112345: sms_enabled = false",
        }
        assert low == {
            "number": "+14082223333",
            "kind": "long_code",
            "features": ["SmsSender", "InternationalSmsSender"],
            "sms_enabled": True,
            "campaign": "low",
            "verified": False,
            "can_send": True,
            "refusal": None,
            "daily_cap": 6000,
            "sent_today": 1,  # the only number that may send: it sent the one above
        }
        assert not pending["can_send"] and pending["refusal"]["code"] == "campaign_not_confirmed"
        assert (pending["daily_cap"], pending["sent_today"]) == (6000, 0)  # LowVolume: a cap


async def _dlq_len_is(redis: Redis, n: int) -> bool:
    return int(await redis.xlen(keys.dead_letters("alerts"))) == n


async def test_dead_letters_list_replay_and_drop(
    redis: Redis,
    provider: Provider,
    make_settings: Callable[..., Settings],
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    settings = make_settings(queue={"claim_idle": 0.2, "max_deliveries": 1})
    client = Client.from_settings(redis, settings)
    first = await client.send(UK, "again", id="dead-1")
    await client.send(UK, "gone", id="dead-2")
    taken = WorkQueue(redis, "alerts", "crashed")  # a consumer that takes both and dies
    await taken.ensure_group()
    assert len(await taken.read_new(2, 100)) == 2
    await asyncio.sleep(0.3)
    async with start_api(settings, run_daemon) as api:
        await wait_for(lambda: _dlq_len_is(redis, 2), 20, "dead letters")
        path = "/v1/profiles/alerts/dead-letters"
        status, body = await api.call("GET", f"{path}?limit=10")
        assert status == 200 and body["profile"] == "alerts"
        letters = sorted(body["dead_letters"], key=lambda d: d["job"]["id"])
        assert [d["job"]["id"] for d in letters] == ["dead-1", "dead-2"]
        assert all("delivered 2 times" in d["reason"] and d["at"] > 0 for d in letters)
        assert letters[0]["job"]["text"] == "again"
        assert (await api.record(first))["status"] == "rejected"

        status, body = await api.call(
            "POST", f"{path}/replay", json={"entries": [letters[0]["entry"]]}
        )
        assert (status, body) == (200, {"replayed": 1})
        await wait_for(lambda: api.all_sent([first]), 20, "replayed job sent")
        assert provider.refs == {first: 1}
        assert await api.call("POST", f"{path}/drop", json={"all": True}) == (200, {"dropped": 1})
        assert await api.call("GET", path) == (200, {"profile": "alerts", "dead_letters": []})
        assert await api.call("POST", f"{path}/replay", json={"all": True}) == (
            200,
            {"replayed": 0},
        )


async def test_openapi_lists_every_endpoint(api: Api) -> None:
    status, doc = await api.call("GET", "/openapi.json", None)
    assert status == 200 and doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert api.running.daemon.api is not None
    # Twilio's API (documented by Twilio), the websocket, the providers' webhooks,
    # Kannel's sendsms (docs/sendsms.md: it answers Kannel's text, not JSON),
    # Prometheus' exposition (docs/operations.md) and tracked links' redirects
    # (docs/mms-and-links.md) are not OpenAPI operations.
    elsewhere = (
        "/2010-04-01/", "/v1/events", "/v1/providers/", "/metrics", "/cgi-bin/", "/l/",
        "/console",  # HTML pages, not the API
    )  # fmt: skip
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in api.running.daemon.api.app.router.routes()
        if route.resource is not None
        and route.method != "HEAD"
        and not route.resource.canonical.startswith(elsewhere)
    }
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert routes == documented
    for path, ops in doc["paths"].items():
        for op in ops.values():
            if path.startswith("/v1/"):
                assert op["security"] == [{"bearer": []}]
                assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }
    params = {p["name"] for p in doc["paths"]["/v1/messages"]["get"]["parameters"]}
    assert params == {"profile", "status", "to", "account", "since", "limit", "cursor"}
    job = doc["components"]["schemas"]["Job"]
    assert job["required"] == ["to"] and "from" in job["properties"]


async def test_concurrent_single_requests_share_calls_and_keep_their_own_answers(
    api: Api, redis: Redis
) -> None:
    """Single-job requests in flight together are enqueued in shared Redis calls; a bad
    one is refused alone and a repeated id is a duplicate, each request told its own."""
    bodies: list[dict[str, Any]] = [
        {"id": f"c{i}", "to": "+447911123456", "text": f"m{i}"} for i in range(150)
    ]
    bodies[40] = {"id": "bad", "to": "+1", "text": "x"}
    bodies[90] = {"id": "c10", "to": "+447911123456", "text": "again"}
    answers = await asyncio.gather(
        *(api.call("POST", "/v1/messages", json=body) for body in bodies)
    )
    statuses = Counter(status for status, _ in answers)
    assert statuses == {202: 149, 400: 1}
    assert answers[40][1]["error"].startswith("to: ")
    by_id = Counter((doc["id"], doc["status"]) for status, doc in answers if status == 202)
    assert by_id[("c10", "queued")] + by_id[("c10", "duplicate")] == 2
    assert by_id[("c10", "duplicate")] == 1
    assert (
        await redis.exists(
            *[keys.record("alerts", f"c{i}") for i in range(150) if i not in (40, 90)]
        )
        == 148
    )
