"""`sms-router route`: the decision for one message with the connectors' health from
the running instances' health records. The command as a real process (`python -m
router.cli_route`, the click command router/cli.py registers), a real Redis, and for
live health a real daemon whose SMPP connector has no SMSC to bind to."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

import router.daemon.daemon as daemon_module
from router.config import Settings, load_settings

from ..conftest import Provider, RunningDaemon, free_port, wait_for

UK_LONG, TO_UK, TO_US, TO_FR = "+447911123456", "+447700900123", "+12125550123", "+33612345678"
PASSWORD_VARIABLE = "ROUTE_TEST_SMPP_PW"  # the daemon's secret: not in the operator's shell


def write(tmp: Path, redis_url: str, provider_url: str, smpp_port: int) -> Path:
    """Profile `routed` (no protocol) and profile `inline` (its own HTTP connector);
    connectors `dark` (SMPP, nobody listening; its password a secret only the daemon
    has) and `carrier` (the HTTP provider). `+44` fails over dark -> carrier; no other
    destination has a route."""
    text = f"""
[router]
redis = "{redis_url}"
instance = "route-test"
state_dir = "{tmp / "var"}"
shutdown_grace = 2

[queue]
block_ms = 100

[numbers."{UK_LONG}"]
features = ["SmsSender", "InternationalSmsSender"]

[connectors.dark]
protocol = "smpp"
failover_after = 0.2
prices = {{ "+44" = 0.02 }}
smpp = {{ host = "127.0.0.1", port = {smpp_port}, system_id = "x", password = "env:{PASSWORD_VARIABLE}", reconnect_max = 0.5 }}

[connectors.carrier]
protocol = "http"
prices = {{ "+447" = 0.035, default = 0.05 }}
http = {{ url = "{provider_url}", form = {{ to = "{{to}}", text = "{{text}}" }} }}

[[routes]]
to = ["+44"]
connectors = ["dark", "carrier"]

[profiles.routed]
global = true
numbers = ["{UK_LONG}", "ACME"]

[profiles.inline]
protocol = "http"
numbers = ["+447911123457"]
http = {{ url = "{provider_url}", form = {{ to = "{{to}}", text = "{{text}}" }} }}
"""  # noqa: E501 - one TOML line per connector reads best
    path = tmp / "router.toml"
    path.write_text(text)
    return path


async def route(config: Path, *args: str, columns: int = 80) -> tuple[int, str, str]:
    """The command as an operator runs it: no daemon secrets in the environment."""
    env = {k: v for k, v in os.environ.items() if k not in (PASSWORD_VARIABLE, "COLUMNS")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router.cli_route", "-c", str(config), *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**env, "COLUMNS": str(columns)},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def rows(out: str) -> list[list[str]]:
    """The connector table's rows (rank, name, state, price, price key...)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["#", "connector"])
    return [line.split() for line in lines[start + 1 :] if line.strip() and line[0].isdigit()]


@pytest.fixture
def config(tmp_path: Path, redis_url: str, provider: Provider) -> Path:
    return write(tmp_path, redis_url, provider.url, free_port())


async def test_live_health_from_a_running_daemon(
    redis: Redis,
    config: Path,
    run_daemon: Callable[[Settings], RunningDaemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(daemon_module, "HEALTH_EVERY", 1.0)  # its record, every second
    settings = load_settings(config, env={PASSWORD_VARIABLE: "pw"})
    run_daemon(settings)

    async def dark_down() -> bool:
        raw = await redis.get("sms:health:route-test")
        return bool(raw) and json.loads(raw)["connectors"].get("dark", {}).get("state") == "down"

    await wait_for(dark_down, 15, "the daemon reports dark down")
    code, out, err = await route(config, "--to", "+44 7700 900123")
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80
    assert rows(out) == [["1", "dark", "down", "0.02", "+44"],
                         ["2", "carrier", "up", "0.035", "+447"]]  # fmt: skip
    assert "routes[0] (to +44), strategy failover" in out
    assert f"{UK_LONG} (long code)" in out and "1 running instance(s)" in out
    assert out.rstrip().splitlines()[-1] == "sends over carrier"
    code, out, err = await route(config, "--to", TO_UK, "--from", "ACME", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert [(c["name"], c["state"]) for c in body["connectors"]] == [
        ("dark", "down"), ("carrier", "up"),
    ]  # fmt: skip
    assert body["connector"] == "carrier" and body["sender"]["kind"] == "alphanumeric"


async def test_a_connector_is_up_if_any_instance_says_so(redis: Redis, config: Path) -> None:
    one = {"instance": "a", "connectors": {"dark": {"state": "up"}, "carrier": {"state": "down"}}}
    two = {"instance": "b", "connectors": {"dark": {"state": "down"}, "carrier": {"state": "open"}}}
    await redis.set("sms:health:a", json.dumps(one), ex=30)
    await redis.set("sms:health:b", json.dumps(two), ex=30)
    code, out, err = await route(config, "--profile", "routed", "--to", TO_UK)
    assert code == 0, err
    assert [row[:3] for row in rows(out)] == [["1", "dark", "up"], ["2", "carrier", "open"]]
    assert "2 running instance(s)" in out and out.rstrip().endswith("sends over dark")


async def test_no_daemon_health_unknown_and_an_inline_profile(redis: Redis, config: Path) -> None:
    code, out, err = await route(config, "--profile", "inline", "--to", TO_UK)
    assert code == 0, err
    assert "own connector, strategy failover" in out
    assert rows(out) == [["1", "inline", "unknown", "unknown", "-"]]
    assert "unknown: no router instance is running" in out


async def test_rejections_exit_1_with_the_code_and_reason(redis: Redis, config: Path) -> None:
    code, out, err = await route(config, "--to", TO_FR, "--from", UK_LONG)
    assert code == 1, err
    assert "route     none matches" in out
    assert "rejected: no_route: no route matches a message to +33612345678 from long" in out
    code, out, err = await route(config, "--to", TO_US, "--from", "ACME", "--json")
    assert code == 1, err
    body = json.loads(out)
    assert (body["outcome"], body["code"]) == ("rejected", "sender_not_allowed")
    assert "does not accept alphanumeric sender IDs" in body["reason"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--profile", "nosuch", "--to", TO_UK], "error: profile: unknown profile 'nosuch'"),
        (["--to", "0770 0900123"], "error: to: '0770 0900123' is not a valid E.164 number"),
        (["--to", TO_UK, "--from", "+447700900999"],
         "error: from: +447700900999 is not a number of profile 'routed'"),
    ],
)  # fmt: skip
async def test_bad_input_exits_1_naming_the_field(
    redis: Redis, config: Path, args: list[str], error: str
) -> None:
    code, out, err = await route(config, *args)
    assert code == 1 and out == ""
    assert err.startswith(error), err


async def test_sms_router_route_is_registered(config: Path) -> None:
    """router/cli.py registers the command: `sms-router route` is this one."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "route", "--help",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "Explain where a message would go" in out.decode()
