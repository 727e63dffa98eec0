"""Which routes an MMS takes (routes' ``kind``, connectors that carry media) and which
numbers may send one, from a parsed configuration (no Redis)."""

from __future__ import annotations

from typing import Any

from router.config import parse_settings
from router.policy.mms import with_links
from router.policy.routes import RouteTable
from router.policy.rules import SenderRules

from ..conftest import number_tables

US = "+16501112345"
UK = "+447911123456"
TF = "+18005550100"


def _settings(routes: list[dict[str, Any]], **numbers: Any) -> Any:
    smpp = {"host": "127.0.0.1", "port": 2775, "system_id": "s", "password": "p"}
    http = {"url": "http://127.0.0.1:9/send", "form": {"to": "{to}", "text": "{text}"}}
    tables = number_tables([US])
    tables["numbers"][US]["features"].append("MmsSender")
    tables["numbers"].update(numbers)
    return parse_settings(
        {
            "router": {"redis": "redis://127.0.0.1:1/0"},
            **tables,
            "connectors": {
                "smsc": {"protocol": "smpp", "smpp": smpp},
                "web": {"protocol": "http", "http": http},
                "webmms": {
                    "protocol": "http",
                    "http": {**http, "json": None, "form": {"m": "{media}"}},
                },
                "tw": {
                    "protocol": "twilio",
                    "twilio": {"account_sid": "AC" + "0" * 32, "auth_token": "x" * 32},
                },
            },
            "routes": routes,
            "profiles": {"p": {"numbers": [US, *numbers]}},
        },
        env={},
    )


def test_an_mms_takes_only_connectors_that_carry_media() -> None:
    settings = _settings(
        [
            {"connectors": ["smsc", "web"]},  # no media: never an MMS's
            {"to": ["+44"], "connectors": ["smsc", "tw", "webmms"], "strategy": "weighted",
             "weights": [1, 2, 3]},
            {"connectors": ["smsc"]},
        ]
    )  # fmt: skip
    table = RouteTable(settings)
    assert [
        settings.all_connectors()[c].carries_media for c in ("smsc", "web", "webmms", "tw")
    ] == [
        False,
        False,
        True,
        True,
    ]
    sms = table.match("p", UK, US, None)
    assert sms is not None and sms.connectors == ("smsc", "web") and not sms.mms
    mms = table.match("p", UK, US, None, "mms")
    assert mms is not None and mms.index == 1 and mms.mms
    assert (mms.connectors, mms.weights) == (("tw", "webmms"), (2, 3))
    assert table.match("p", US, US, None, "mms") is None  # no route to +1 carries media


def test_a_route_of_one_kind_matches_only_that_kind() -> None:
    table = RouteTable(
        _settings([{"kind": "mms", "connectors": ["tw"]}, {"kind": "sms", "connectors": ["smsc"]}])
    )
    assert table.match("p", UK, US, None, "sms").connectors == ("smsc",)  # type: ignore[union-attr]
    assert table.match("p", UK, US, None, "mms").connectors == ("tw",)  # type: ignore[union-attr]


def test_who_may_send_an_mms() -> None:
    settings = _settings(
        [{"connectors": ["tw"]}],
        **{
            TF: {"features": ["SmsSender"], "verified": True},
            "ACME": {"features": ["SmsSender", "MmsSender"]},
            "+14082223333": {"features": ["SmsSender"], "campaign": "test"},
        },
    )
    rules = SenderRules("p", settings.profiles["p"].numbers, settings)
    assert rules.mms_problem(US) is None
    assert rules.mms_problem(TF) == f"{TF} is toll-free (no MMS)"
    assert rules.mms_problem("ACME") == "ACME is an alphanumeric sender ID (no MMS)"
    assert rules.mms_problem("+14082223333") == "+14082223333 has no MmsSender feature"


def test_the_fallback_text_puts_each_link_on_a_line() -> None:
    assert with_links("Hi", ["https://a/1.jpg", "https://b/2.png"]) == (
        "Hi\nhttps://a/1.jpg\nhttps://b/2.png"
    )
    assert with_links("", ["https://a/1.jpg"]) == "https://a/1.jpg"
