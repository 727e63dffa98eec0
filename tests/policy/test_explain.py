"""Explaining a routing decision from the configuration (router/policy/explain.py):
the sender the rules allow, the route that matches, the connectors in strategy order
with their health and price, `no_route`, and the input errors naming their field."""

from __future__ import annotations

from typing import Any

import pytest

from router.config import Settings, parse_settings
from router.policy.explain import ExplainError, explain, health_from_records

US_LONG, UK_LONG, UK_OTHER = "+14155552671", "+447911123456", "+447911123457"
TO_UK, TO_US, TO_FR = "+447700900123", "+12125550123", "+33612345678"


def _http(price: dict[str, float] | None = None) -> dict[str, Any]:
    connector: dict[str, Any] = {
        "protocol": "http",
        "http": {"url": "http://127.0.0.1:9/send", "form": {"to": "{to}", "text": "{text}"}},
    }
    if price is not None:
        connector["prices"] = price
    return connector


def config(routes: list[dict[str, Any]], **profile: Any) -> Settings:
    """Profile `routed` (no protocol: `routes` apply) with a US long code on a confirmed
    campaign, a UK long code and `ACME`; connectors `east`, `west` and `cheap` with
    prices; and profile `inline`, a connector of its own."""
    routed: dict[str, Any] = {"numbers": [US_LONG, UK_LONG, "ACME"], **profile}
    numbers = {
        US_LONG: {"campaign": "c"},
        UK_LONG: {"features": ["SmsSender", "InternationalSmsSender"]},
    }
    return parse_settings(
        {
            "router": {"redis": "redis://127.0.0.1:9"},
            "campaigns": {"c": {"brand": "B", "status": "Confirmed", "use_cases": ["otp"]}},
            "numbers": {n: d for n, d in numbers.items() if n in routed["numbers"]},
            "connectors": {
                "east": _http({"+44": 0.04, "default": 0.05}),
                "west": _http({"+44": 0.03, "+447": 0.045}),
                "cheap": _http(),
            },
            "routes": routes,
            "profiles": {"routed": routed, "inline": {**_http(), "numbers": [UK_OTHER]}},
        },
        env={},
    )


def names(found: Any) -> list[str]:
    return [c.name for c in found.connectors]


def test_failover_keeps_route_order_and_goes_to_the_first_healthy_one() -> None:
    settings = config([{"to": ["+44"], "connectors": ["east", "west", "cheap"]}])
    health = {"east": "down", "west": "up"}
    found = explain(settings, "routed", "+44 7700 900123", health=health, health_source="2")
    assert found.outcome == "send" and found.code is None
    assert found.to == TO_UK  # normalised
    assert found.route is not None
    assert (found.route.index, found.route.label, found.route.strategy) == (0, "routes[0]",
                                                                            "failover")  # fmt: skip
    assert found.route.conditions == {"to": ["+44"]}
    assert names(found) == ["east", "west", "cheap"]
    assert [c.state for c in found.connectors] == ["down", "up", "unknown"]
    assert found.connector == "west"  # east is down
    # Every connector down: the first holds it, as the engine does.
    down = explain(settings, "routed", TO_UK, health=dict.fromkeys(names(found), "down"))
    assert down.connector == "east"


def test_least_cost_ranks_by_the_price_of_the_longest_prefix() -> None:
    settings = config([{"connectors": ["east", "west", "cheap"], "strategy": "least_cost"}],
                      numbers=[UK_LONG])  # fmt: skip
    # +44 7700...: west's "+447" (0.045) beats its "+44"; east's "+44" is cheaper.
    mobile = explain(settings, "routed", TO_UK)
    assert [(c.name, c.price, c.price_prefix) for c in mobile.connectors] == [
        ("east", 0.04, "+44"), ("west", 0.045, "+447"), ("cheap", None, None),
    ]  # fmt: skip
    assert mobile.connector == "east"
    # +33: only east has a price (its default); west has none for it: unknown, last.
    france = explain(settings, "routed", TO_FR)
    assert [(c.name, c.price, c.price_prefix) for c in france.connectors] == [
        ("east", 0.05, "default"), ("west", None, None), ("cheap", None, None),
    ]  # fmt: skip
    # The cheapest down: the next cheapest takes it.
    assert explain(settings, "routed", TO_UK, health={"east": "open"}).connector == "west"


def test_weighted_shows_weights_and_no_single_connector() -> None:
    route = {"connectors": ["east", "west"], "strategy": "weighted", "weights": [80, 20]}
    found = explain(config([route]), "routed", TO_UK)
    assert [(c.name, c.weight) for c in found.connectors] == [("east", 80), ("west", 20)]
    assert found.connector is None and found.outcome == "send"


def test_an_alphanumeric_sender_to_a_us_number_is_refused() -> None:
    settings = config([{"connectors": ["east"]}])
    found = explain(settings, "routed", TO_US, sender="ACME")
    assert found.outcome == "rejected" and found.code == "sender_not_allowed"
    assert found.sender.given and found.sender.number == "ACME"
    assert found.sender.kind == "alphanumeric"
    assert found.reason is not None and "alphanumeric" in found.reason
    assert found.connector is None
    # The same sender to the UK is fine.
    uk = explain(settings, "routed", TO_UK, sender="ACME")
    assert uk.outcome == "send" and uk.sender.refusal is None and uk.connector == "east"


def test_without_from_the_first_allowed_number_respecting_sender_preference() -> None:
    settings = config([{"connectors": ["east"]}], sender_preference=["alphanumeric"])
    uk = explain(settings, "routed", TO_UK)
    assert (uk.sender.number, uk.sender.kind, uk.sender.given) == ("ACME", "alphanumeric", False)
    assert uk.sender.candidates == ("ACME",)
    # To the US the alphanumeric ID may not send: the long code on its campaign does.
    us = explain(settings, "routed", TO_US)
    assert us.sender.number == US_LONG and us.outcome == "send"
    # No preference: the pool's order, every allowed number a candidate (the US long
    # code may not send abroad).
    plain = explain(config([{"connectors": ["east"]}]), "routed", TO_UK)
    assert plain.sender.number == UK_LONG
    assert plain.sender.candidates == (UK_LONG, "ACME")


def test_a_use_case_outside_the_campaign_refuses_the_us_long_code() -> None:
    settings = config([{"connectors": ["east"]}], numbers=[US_LONG])
    assert explain(settings, "routed", TO_US, use_case="otp").outcome == "send"
    found = explain(settings, "routed", TO_US, use_case="marketing")
    assert found.code == "use_case_not_allowed" and found.sender.number is None
    assert found.route is None and found.connectors == ()


def test_no_route_says_so_with_the_reason() -> None:
    settings = config([{"to": ["+44"], "connectors": ["east"]}])
    found = explain(settings, "routed", TO_FR, sender=UK_LONG)
    assert found.outcome == "rejected" and found.code == "no_route"
    assert found.reason is not None
    assert f"no route matches a message to {TO_FR} from long code {UK_LONG}" in found.reason
    assert found.route is None and found.connectors == () and found.connector is None
    body = found.as_dict()
    assert body["code"] == "no_route" and body["route"] is None and body["from"] == UK_LONG


def test_routes_match_on_the_senders_kind_and_use_case() -> None:
    settings = config(
        [
            {"senders": ["alphanumeric"], "connectors": ["cheap"]},
            {"use_cases": ["otp"], "connectors": ["west"]},
            {"connectors": ["east"]},
        ]
    )
    assert names(explain(settings, "routed", TO_UK, sender="ACME")) == ["cheap"]
    assert names(explain(settings, "routed", TO_UK, sender=UK_LONG, use_case="otp")) == ["west"]
    found = explain(settings, "routed", TO_UK, sender=UK_LONG)
    assert found.route is not None and found.route.index == 2 and names(found) == ["east"]


def test_an_inline_profile_is_its_own_connector() -> None:
    settings = config([{"to": ["+44"], "connectors": ["east"]}])
    found = explain(settings, "inline", TO_UK, health={"inline": "up"})
    assert found.route is not None
    assert (found.route.index, found.route.label) == (None, "own connector")
    assert [(c.name, c.state) for c in found.connectors] == [("inline", "up")]
    assert found.connector == "inline" and found.sender.number == UK_OTHER


@pytest.mark.parametrize(
    ("profile", "to", "sender", "field", "words"),
    [
        ("nosuch", TO_UK, None, "profile", "unknown profile 'nosuch'"),
        ("routed", "07700900123", None, "to", "not a valid E.164 number"),
        ("routed", "+1", None, "to", "not a valid E.164 number"),
        ("routed", TO_UK, "AC-ME", "from", "is not a sender"),
        ("routed", TO_UK, "+447700900999", "from", "is not a number of profile 'routed'"),
    ],
)
def test_bad_input_names_its_field(
    profile: str, to: str, sender: str | None, field: str, words: str
) -> None:
    settings = config([{"connectors": ["east"]}])
    with pytest.raises(ExplainError) as caught:
        explain(settings, profile, to, sender=sender)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ") and words in str(caught.value)


def test_no_profile_means_the_global_one() -> None:
    settings = config([{"connectors": ["east"]}], **{"global": True})
    assert explain(settings, None, TO_UK).profile == "routed"
    with pytest.raises(ExplainError, match=r"^profile: required"):
        explain(config([{"connectors": ["east"]}]), None, TO_UK)


def test_health_is_the_best_any_instance_reports() -> None:
    records = [
        {"connectors": {"east": {"state": "down"}, "west": {"state": "open"}}},
        {"connectors": {"east": {"state": "up"}, "west": {"state": "half-open"}}},
        {"connectors": {"west": {"state": "nonsense"}, "odd": "up"}},
        {"instance": "old daemon, no connectors"},
    ]
    assert health_from_records(records) == {"east": "up", "west": "half-open"}
    assert health_from_records([]) == {}


def test_quality_follows_the_live_ranking_when_given() -> None:
    settings = config([{"connectors": ["east", "west", "cheap"], "strategy": "quality"}],
                      numbers=[UK_LONG])  # fmt: skip
    assert names(explain(settings, "routed", TO_UK)) == ["east", "west", "cheap"]
    asked: list[tuple[str, int, str]] = []

    def ranking(profile: str, route: Any, to: str) -> list[str]:
        asked.append((profile, route.index, to))
        return ["west", "east"]  # as a daemon's quality board ranks them now

    found = explain(settings, "routed", TO_UK, quality=ranking)
    assert names(found) == ["west", "east", "cheap"]  # an unranked one keeps the end
    assert found.connector == "west"
    assert asked == [("routed", 0, TO_UK)]
