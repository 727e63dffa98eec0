"""``[[inbound_routes]]`` with `account` and `profiles`: checked with their paths,
matched in order per destination (an account route never changes where a message
is posted, a callback route never which account gets it), listed by check-config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.config import ConfigError, first_account, first_callback, parse_settings
from router.summary import config_lines

from .binds.test_smpp_flow import smpp_config
from .conftest import NUMBERS
from .daemon.test_process import cli, write_config

PERSON = "+447911123456"


def _data(tmp: Path, routes: list[dict[str, Any]]) -> dict[str, Any]:
    data = smpp_config("redis://127.0.0.1:1", tmp, 1, callback="http://app/in")
    data["accounts"] = {
        "acme": {"smpp_password": "secret1"},
        "web": {"api_token": "t" * 20},
    }
    data["inbound_routes"] = routes
    return data


def test_bad_account_routes_name_their_path(tmp_path: Path) -> None:
    data = _data(
        tmp_path,
        [
            {"account": "acme"},
            {"account": "nobody"},
            {"account": "web", "to": [NUMBERS[0]]},
            {"to": [NUMBERS[0]]},
            {"profiles": ["sms", "ghost"], "account": "acme"},
            {"account": 7},
        ],
    )
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, env={})
    assert caught.value.problems == [
        "inbound_routes[5].account: must be a valid string",
        "inbound_routes[1].account: no account 'nobody' (have: acme, web)",
        "inbound_routes[2].account: account 'web' has no smpp_password (inbound messages "
        "go to its SMPP receiver/transceiver sessions)",
        "inbound_routes[3].callback_url: required key is missing",
        "inbound_routes[4].profiles: no profile 'ghost'",
    ]


def test_each_destination_takes_its_first_matching_route(tmp_path: Path) -> None:
    settings = parse_settings(
        _data(
            tmp_path,
            [
                {"keywords": ["join"], "callback_url": "http://r/join"},
                {"to": [NUMBERS[0]], "profiles": ["sms"], "account": "acme"},
                {"from": ["+44"], "callback_url": "http://r/uk", "account": "acme"},
                {"account": "acme"},
            ],
        ),
        env={},
    )
    routes = settings.inbound_routes

    def where(
        text: str | None, to: str = NUMBERS[0], source: str = PERSON, profile: str = "sms"
    ) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
        return (
            first_callback(routes, source, to, text, profile),
            first_account(routes, source, to, text, profile),
        )

    # JOIN is posted to route 0's URL; route 1 (no callback_url) gives it to acme.
    assert where("JOIN now") == (("http://r/join", 0), ("acme", 1))
    # Route 1 names only an account: the post goes on to route 2's URL.
    assert where("hello") == (("http://r/uk", 2), ("acme", 1))
    # Another profile: route 1 does not match; route 2 takes both.
    assert where("hello", profile="else") == (("http://r/uk", 2), ("acme", 2))
    # Nothing for the URL: the profile's own callback_url (None here); route 3 for acme.
    assert where(None, to=NUMBERS[1], source="+15550000000") == (None, ("acme", 3))


async def test_check_config_lists_account_routes(tmp_path: Path) -> None:
    data = _data(
        tmp_path,
        [
            {"to": [NUMBERS[0]], "profiles": ["sms"], "account": "acme"},
            {"keywords": ["stop"], "account": "acme"},
            {"account": "acme", "callback_url": "https://r/all?token=x"},
            {"from": ["+44"], "account": "acme"},
            {"callback_url": "https://r/late"},
        ],
    )
    lines = config_lines(parse_settings(data, env={}))
    assert lines[-5:] == [
        f"inbound_routes[0]: profiles=sms to={NUMBERS[0]} -> smpp account acme",
        # An opt-out keyword is routed to an account: the client hears of it.
        "inbound_routes[1]: keywords=STOP -> smpp account acme",
        "inbound_routes[2]: (no to/keywords/from: matches every inbound message)"
        " -> https://r/all, smpp account acme",
        "inbound_routes[3]: from=+44 -> smpp account acme"
        " (never reached: inbound_routes[2] takes every message)",
        "inbound_routes[4]: (no to/keywords/from: matches every inbound message)"
        " -> https://r/late (never reached: inbound_routes[2] takes every message)",
    ]
    # The command itself, on a file (what the operator runs).
    rest = {k: v for k, v in data.items() if k != "inbound_routes"}
    path = write_config(tmp_path / "router.toml", rest)
    with path.open("a") as file:
        file.write(f'\n[[inbound_routes]]\nto = ["{NUMBERS[0]}"]\naccount = "acme"\n')
    code, out, err = await cli("check-config", "-c", str(path))
    assert code == 0, err
    assert f"inbound_routes[0]: to={NUMBERS[0]} -> smpp account acme" in out
