"""``GET /v1/route`` on a real daemon, Redis and HTTP provider: the route, the connectors
in strategy order with this instance's live health and their prices, the sender, the
rejections (no_route, sender_not_allowed) as answers, bad input as 400 naming the
field, the read scope, and the OpenAPI document."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from router.config import Settings, parse_settings

from ..conftest import Provider, RunningDaemon, free_port, wait_for
from .test_api_messages import Api, start_api

UK_LONG, TO_UK, TO_US, TO_FR = "+447911123456", "+447700900123", "+12125550123", "+33612345678"


def routed_settings(redis_url: str, provider_url: str, tmp: Path) -> Settings:
    """Profile `routed` (global, no protocol of its own) over two connectors: `dark`,
    SMPP to a port nobody listens on (down after 0.2 s), and `carrier`, the HTTP
    provider (up). `+44` goes least-cost over both; nothing else has a route."""
    http = {
        "url": provider_url,
        "form": {"from": "{from}", "to": "{to}", "text": "{text}", "ref": "{id}"},
        "message_id": "json:id",
    }
    smpp = {"host": "127.0.0.1", "port": free_port(), "system_id": "x", "password": "pw",
            "reconnect_max": 0.5}  # fmt: skip
    dark = {"+44": 0.02}
    route = {"to": ["+44"], "connectors": ["carrier", "dark"], "strategy": "least_cost"}
    return parse_settings(
        {
            "router": {"redis": redis_url, "instance": "test", "state_dir": str(tmp / "var")},
            "queue": {"block_ms": 100},
            "numbers": {UK_LONG: {"features": ["SmsSender", "InternationalSmsSender"]}},
            "connectors": {
                "dark": {"protocol": "smpp", "failover_after": 0.2, "smpp": smpp, "prices": dark},
                "carrier": {"protocol": "http", "http": http, "prices": {"+447": 0.035}},
            },
            "routes": [route],
            "profiles": {"routed": {"global": True, "numbers": [UK_LONG, "ACME"]}},
        },
        env={},
    )


@pytest.fixture
async def api(
    redis: Redis,
    redis_url: str,
    provider: Provider,
    tmp_path: Path,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> AsyncIterator[Api]:
    async with start_api(routed_settings(redis_url, provider.url, tmp_path), run_daemon) as on:
        yield on


async def _route(api: Api, key: str = "reader", **query: str) -> tuple[int, Any]:
    return await api.call("GET", "/v1/route", key, params=query)


async def test_the_route_its_connectors_in_order_with_live_health_and_price(api: Api) -> None:
    async def dark_is_down() -> bool:
        status, body = await _route(api, to=TO_UK)
        assert status == 200, body
        return {c["name"]: c["state"] for c in body["connectors"]}.get("dark") == "down"

    await wait_for(dark_is_down, 10, "connector dark down")
    status, body = await _route(api, to="+44 7700 900123")
    assert status == 200
    assert body["profile"] == "routed" and body["to"] == TO_UK and body["outcome"] == "send"
    assert body["route"] == {"index": 0, "label": "routes[0]", "strategy": "least_cost",
                             "conditions": {"to": ["+44"]}}  # fmt: skip
    # least_cost: dark (0.02 for +44) ranks before carrier (0.035 for +447), but it is
    # down: the message goes over carrier.
    assert [(c["name"], c["state"], c["price"], c["price_prefix"]) for c in body["connectors"]] == [
        ("dark", "down", 0.02, "+44"), ("carrier", "up", 0.035, "+447"),
    ]  # fmt: skip
    assert body["connector"] == "carrier"
    assert body["sender"]["number"] == UK_LONG and body["sender"]["given"] is False
    assert body["sender"]["candidates"] == [UK_LONG, "ACME"]
    assert body["health_source"] == "instance test"
    status, body = await _route(api, to=TO_UK, **{"from": "ACME", "profile": "routed"})
    assert status == 200 and body["from"] == "ACME" and body["sender"]["kind"] == "alphanumeric"
    assert body["connector"] == "carrier"


async def test_rejections_are_answers(api: Api) -> None:
    status, body = await _route(api, to=TO_US, **{"from": "ACME"})
    assert status == 200
    assert (body["outcome"], body["code"]) == ("rejected", "sender_not_allowed")
    assert body["sender"]["refusal"]["code"] == "sender_not_allowed"
    assert body["connector"] is None
    status, body = await _route(api, to=TO_FR)
    assert status == 200
    assert (body["outcome"], body["code"], body["route"]) == ("rejected", "no_route", None)
    assert body["reason"].startswith(f"no route matches a message to {TO_FR} from long code")


async def test_an_mms_over_connectors_that_carry_no_media_goes_as_links(api: Api) -> None:
    status, body = await _route(api, to=TO_UK, mms="true")
    assert status == 200 and body["outcome"] == "send"
    reason = f"{UK_LONG} has no MmsSender feature; ACME is an alphanumeric sender ID (no MMS)"
    assert body["mms"] == {"as": "link", "reason": reason}
    status, body = await _route(api, to=TO_UK)
    assert status == 200 and body["mms"] is None


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({"to": "12"}, "to: '12' is not a valid E.164 number (must start with '+')"),
        ({"to": TO_UK, "profile": "nosuch"}, "profile: unknown profile 'nosuch' (configured: "
                                             "routed)"),
        ({"to": TO_UK, "from": "+447700900999"}, "from: +447700900999 is not a number of "
                                                 "profile 'routed'"),
        ({"to": TO_UK, "from": "AC-ME"}, "from: 'AC-ME' is not a sender"),
        ({"profile": "routed"}, "to: required"),
        ({"to": TO_UK, "sender": "ACME"}, "sender: unknown field"),
    ],
)  # fmt: skip
async def test_bad_input_is_a_400_naming_the_field(
    api: Api, query: dict[str, str], error: str
) -> None:
    status, body = await _route(api, **query)
    assert status == 400
    assert body["error"].startswith(error), body


async def test_it_needs_the_read_scope_and_is_in_the_document(api: Api) -> None:
    assert (await _route(api, "sender", to=TO_UK))[0] == 403
    assert (await _route(api, None, to=TO_UK))[0] == 401
    assert (await _route(api, "ops", to=TO_UK))[0] == 200
    status, document = await api.call("GET", "/openapi.json", None)
    assert status == 200
    operation = document["paths"]["/v1/route"]["get"]
    assert operation["security"] == [{"bearer": []}] and "Scope: `read`" in operation["description"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert set(params) == {"profile", "to", "from", "use_case", "mms"}
    assert params["to"]["required"] and params["profile"]["schema"]["enum"] == ["routed"]
    assert set(operation["responses"]) >= {"200", "400", "401", "403"}
