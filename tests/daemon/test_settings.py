"""Configuration: every problem reported at once with its path; secrets never shown."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from router.config import ConfigError, load_settings, parse_settings, resolve_config_path

from ..shipped import shipped_config

ROOT = Path(__file__).resolve().parents[2]


def base() -> dict[str, Any]:
    return {
        "router": {"redis": "redis://127.0.0.1:6379/0"},
        "profiles": {
            "a": {
                "global": True,
                "protocol": "http",
                "numbers": ["+16501112345", "+14082223333"],
                "http": {"url": "https://p.example/send", "form": {"to": "{to}"}},
            },
            "b": {
                "protocol": "smpp",
                "numbers": ["+447911123456"],
                "smpp": {"host": "127.0.0.1", "system_id": "x", "password": "pw"},
            },
        },
    }


def problems(data: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, env=env or {})
    return caught.value.problems


def test_shipped_file_is_valid(tmp_path: Path) -> None:
    # A copy with the API token files `make run` creates (tests/shipped.py).
    settings = load_settings(shipped_config(tmp_path))
    assert settings.global_profile == "demo"
    assert len(settings.summary_lines()) == len(settings.profiles)
    assert settings.router.state_dir == tmp_path / "var"


def test_config_path_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMS_ROUTER_CONFIG", "/etc/sms/router.toml")
    assert resolve_config_path("x.toml") == Path("x.toml")
    assert resolve_config_path(None) == Path("/etc/sms/router.toml")
    monkeypatch.delenv("SMS_ROUTER_CONFIG")
    assert resolve_config_path(None) == Path("router.toml")


def test_numbers_are_normalised_and_looked_up_in_any_spelling() -> None:
    data = base()
    data["profiles"]["a"]["numbers"] = ["+1 650-111-2345"]
    settings = parse_settings(data, env={})
    assert settings.profiles["a"].numbers == ["+16501112345"]
    assert settings.profile_of_number("+1 (650) 111 2345") == "a"
    assert settings.profile_of_number("+447911123456") == "b"
    assert settings.profile_of_number("+33612345678") is None


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split("/")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()

CASES: list[tuple[str, Any, str]] = [
    ("profiles/a/windw", 3, "profiles.a.windw: unknown key"),
    ("profiles/b/smpp/port", 70000, "profiles.b.smpp.port: must be between 1 and 65535"),
    ("profiles/b/numbers", ["+16501112345"], "profiles.b.numbers: +16501112345 already belongs"),
    (
        "profiles/a/numbers",
        ["+16501112345", "+1 650 111 2345"],
        "profiles.a.numbers: +16501112345 is listed twice",
    ),
    ("profiles/b/global", True, "profiles.b.global: only one profile may be global"),
    ("profiles/a/numbers", [], "profiles.a.numbers: List should have at least 1 item"),
    ("profiles/a/numbers", ["+1650"], "profiles.a.numbers[0]: '+1650' is not a valid E.164"),
    ("profiles/a/numbers", ["6501112345"], "must start with '+'"),
    ("profiles/a/http", _DELETE, 'profiles.a.http: required when protocol = "http"'),
    ("profiles/b/http", {"url": "https://x.example/"}, "profiles.b.http: not used when protocol"),
    ("profiles/a/processing", "asap", "profiles.a.processing: must be 'sync' or 'async'"),
    ("profiles/a/protocol", "ftp", "profiles.a.protocol: must be 'http', 'smpp' or 'twilio'"),
    ("profiles/a/window", 0, "profiles.a.window: must be between 1 and 10000"),
    ("profiles/a/http/url", "https://x/{bad}", "profiles.a.http.url: unknown placeholder {bad}"),
    ("profiles/a/http/form", {"t": "{to"}, "profiles.a.http.form.t: unmatched '{'"),
    ("profiles/a/http/message_id", "xpath:id", "profiles.a.http.message_id: must be json:"),
    ("profiles/a/http/method", "DELETE", "profiles.a.http.method: must be"),
    ("profiles/a/callback_url", "ftp://x", "profiles.a.callback_url: must be an absolute http"),
    ("profiles/b/smpp/system_id", "x" * 16, "profiles.b.smpp.system_id: String should have at"),
    ("router/redis", "mysql://x", 'router.redis: must be "embedded" or a redis://'),
    ("router/log_format", "xml", "router.log_format: must be"),
    ("queue/batch", 0, "queue.batch: must be between 1 and 10000"),
    ("numbers/+15550000000", {"features": ["SmsSender"]}, "is in no profile's numbers"),
    ("numbers/+16501112345", {"campaign": "NOPE"}, "campaign: unknown campaign 'NOPE'"),
    ("numbers/+16501112345", {"features": ["Fax"]}, 'numbers."+16501112345".features[0]: must'),
    ("numbers/oops!", {}, "numbers.\"oops!\": 'oops!' is not a sender"),
    ("campaigns/C1", {"tier": "Huge"}, "campaigns.C1.brand: required key is missing"),
    ("secrets", {"x": "y"}, "secrets: unknown key"),
    ("profiles/b/smpp/password", "123456789", "profiles.b.smpp.password: must be at most 8"),
    ("profiles/b/smpp/vendor_status", {"abc": "retry"}, "'abc' is not a status code"),
    ("profiles/b/smpp/long_messages", "udh32", "profiles.b.smpp.long_messages: must be"),
    ("profiles/b/smpp/gsm_data_coding", 3, "profiles.b.smpp.gsm_data_coding: must be 0 or 1"),
]


@pytest.mark.parametrize(("path", "value", "expected"), CASES, ids=[c[2][:40] for c in CASES])
def test_each_mistake_is_named_with_its_path(path: str, value: Any, expected: str) -> None:
    data = base()
    _set(data, path, value)
    found = problems(data)
    assert any(expected in p for p in found), found


def test_profile_name_and_direction_rules() -> None:
    data = base()
    data["profiles"]["a b"] = data["profiles"].pop("a")
    data["profiles"]["b"]["direction"] = "both"
    data["profiles"]["b"]["smpp"]["bind"] = "transmitter"
    found = problems(data)
    assert any(p.startswith('profiles."a b": a profile name uses only') for p in found)
    assert any(p.startswith("profiles.b.smpp.bind: a transmitter cannot receive") for p in found)
    assert any(p.startswith("profiles.b.callback_url: required when direction") for p in found)


def test_toll_free_number_cannot_have_mms() -> None:
    data = base()
    data["profiles"]["a"]["numbers"].append("+18005550100")
    data["numbers"] = {"+18005550100": {"features": ["SmsSender", "MmsSender"]}}
    found = problems(data)
    assert found == ['numbers."+18005550100".features: a toll-free number cannot have MmsSender']


def test_all_problems_come_at_once() -> None:
    data = base()
    data["profiles"]["a"]["windw"] = 3
    data["profiles"]["b"]["smpp"]["port"] = 0
    data["profiles"]["b"]["numbers"] = ["+16501112345"]
    data["queue"] = {"max_attempts": 0}
    assert len(problems(data)) == 4


def test_secrets_from_env_file_and_credentials(tmp_path: Path) -> None:
    data = base()
    data["profiles"]["b"]["smpp"]["password"] = "env:SMPP_PASSWORD"
    data["profiles"]["a"]["http"]["headers"] = {"Authorization": "Bearer {secret:TOKEN}"}
    settings = parse_settings(data, env={"SMPP_PASSWORD": "s3cr3tpw", "TOKEN": "tok-123456"})
    smpp = settings.profiles["b"].smpp
    assert smpp is not None and smpp.password.get_secret_value() == "s3cr3tpw"
    assert settings.secrets["TOKEN"].get_secret_value() == "tok-123456"
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert "s3cr3tpw" not in shown and "tok-123456" not in shown

    (tmp_path / "pw.txt").write_text("fromfile\n")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "TOKEN").write_text("cred-token\n")
    data["profiles"]["b"]["smpp"]["password"] = "file:pw.txt"
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}
    settings = parse_settings(data, env=env, base_dir=tmp_path)
    smpp = settings.profiles["b"].smpp
    assert smpp is not None and smpp.password.get_secret_value() == "fromfile"
    assert settings.secrets["TOKEN"].get_secret_value() == "cred-token"


def test_missing_secrets_are_named_without_values() -> None:
    data = base()
    data["profiles"]["b"]["smpp"]["password"] = "env:SMPP_PASSWORD"
    data["profiles"]["a"]["http"]["headers"] = {"Authorization": "Bearer {secret:TOKEN}"}
    found = problems(data)
    assert "profiles.b.smpp.password: environment variable SMPP_PASSWORD is not set" in found
    assert any(p.startswith("profiles.a.http.headers.Authorization: secret TOKEN") for p in found)

    # A resolved secret never leaks into the error about something else.
    bad = copy.deepcopy(data)
    bad["profiles"]["a"]["windw"] = 1
    with pytest.raises(ConfigError) as caught:
        parse_settings(bad, env={"SMPP_PASSWORD": "s3cr3tpw", "TOKEN": "tok-123456"})
    assert "s3cr3tpw" not in str(caught.value) and "tok-123456" not in str(caught.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "none.toml")
    assert caught.value.problems == [f"{tmp_path / 'none.toml'}: file not found"]
    broken = tmp_path / "broken.toml"
    broken.write_text("[router\nredis = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(broken)
    assert caught.value.problems[0].startswith(f"{broken}: not valid TOML")


def test_accounts_are_checked_with_their_paths() -> None:
    data = base()
    data["accounts"] = {
        "shop": {"smpp_password": "env:SHOP_PW", "api_token": "t" * 20, "profiles": ["b", "a"]},
        "bad name!": {"api_token": "t" * 20},
        "nothing": {"tps": 5},
        "long": {"smpp_password": "123456789", "profiles": ["zzz"]},
    }
    data["smpp_server"] = {"listen": "127.0.0.1:2776", "cert": "server.pem"}
    found = problems(data, env={"SHOP_PW": "s3cret"})
    assert any(p.startswith('accounts."bad name!": an account name') for p in found), found
    assert "accounts.nothing: needs smpp_password, api_token or both (a way in)" in found
    assert any(p.startswith("accounts.long.smpp_password:") and "1-8" in p for p in found)
    assert "accounts.long.profiles: no profile 'zzz'" in found
    assert "smpp_server: cert and key go together (TLS needs both)" in found
    del data["accounts"]["bad name!"], data["accounts"]["nothing"], data["accounts"]["long"]
    data["smpp_server"] = {"listen": "127.0.0.1:2776"}
    settings = parse_settings(data, env={"SHOP_PW": "s3cret"})
    shop = settings.accounts["shop"]
    assert shop.smpp_password is not None and shop.smpp_password.get_secret_value() == "s3cret"
    assert shop.scopes == ["send", "read"] and shop.window == 100 and shop.profiles == ["b", "a"]
    assert settings.smpp_server.listen == "127.0.0.1:2776" and settings.sendsms.listen is None
