"""Operator commands from a shell without the daemon's secrets (systemd gives them to the
daemon through LoadCredential= or an EnvironmentFile): the commands that only reach Redis
still work; `check-config` and `run` still need every secret; an unresolvable
`[router] redis_password` stops every command. Real processes, a real Redis, a real
SMSC simulator."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from router import Client
from router.config import ConfigError, UnresolvedSecret, parse_settings
from sims.smscsim import SmscSimulator

from ..binds.test_smpp_flow import smpp_config
from ..conftest import config_dict, wait_for
from ..daemon.test_process import write_config

SECRET = "Zq7!pW3x"  # the SMPP password: 8 characters, never seen in any output
MISSING = "profiles.sms.smpp.password: environment variable SMPP_PW is not set"


def _shell() -> dict[str, str]:
    """An operator's shell: none of the daemon's secrets."""
    drop = {"SMPP_PW", "REDIS_PW", "SMS_ROUTER_CONFIG", "COLUMNS", "LINES"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "COLUMNS": "200"}


async def sms_router(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """`sms-router ARGS` run in `cwd` with exactly the environment `env`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", *args, cwd=cwd, env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    text_out, text_err = out.decode(), err.decode()
    assert SECRET not in text_out and SECRET not in text_err
    return proc.returncode, text_out, text_err


def _config(redis_url: str, tmp_path: Path, smsc: SmscSimulator) -> dict[str, Any]:
    smsc.config.accounts["smppclient1"] = SECRET
    return smpp_config(redis_url, tmp_path, smsc.port, smpp={"password": "env:SMPP_PW"})


async def test_redis_only_commands_work_from_a_shell_without_the_daemons_secrets(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator
) -> None:
    data = _config(redis_url, tmp_path, smsc)
    config = str(write_config(tmp_path / "router.toml", data))
    log = tmp_path / "daemon.log"
    with log.open("ab") as handle:  # the daemon has its secret, as under systemd
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router", "run", "-c", config, cwd=tmp_path,
            env={**_shell(), "SMPP_PW": SECRET}, stdout=handle, stderr=handle,
        )  # fmt: skip
    shell = _shell()
    try:
        await wait_for(lambda: redis.exists("sms:health:test"), 30, "the first health beat")
        settings = parse_settings(data, env={"SMPP_PW": SECRET}, base_dir=tmp_path)
        [job] = await Client.from_settings(redis, settings).send_many(
            [{"to": "+447700900123", "text": "hello"}]
        )

        async def delivered() -> bool:
            code, out, _ = await sms_router("status", job, "-c", config, cwd=tmp_path, env=shell)
            return code == 0 and "delivered" in out

        await wait_for(delivered, 30, "the job delivered, seen by `status` from the shell")
        code, out, err = await sms_router("health", "-c", config, cwd=tmp_path, env=shell)
        assert code == 0, out + err
        assert "status: ready" in out, out
        code, out, err = await sms_router("log", "-c", config, cwd=tmp_path, env=shell)
        assert code == 0 and job in out, out + err
        for args in (("dlq", "list"), ("numbers", "--profile", "sms")):
            code, out, err = await sms_router(*args, "-c", config, cwd=tmp_path, env=shell)
            assert code == 0, f"{args}: {out}{err}"
        code, out, err = await sms_router("reload", "-c", config, cwd=tmp_path, env=shell)
        assert code == 0, out + err
        assert out.splitlines() == [
            f"reloaded instance test (pid {daemon.pid}) from {tmp_path / 'router.toml'}",
            "  nothing changed",
        ]
        # The commands that use the secrets still need them, from this shell too.
        code, out, err = await sms_router("check-config", "-c", config, cwd=tmp_path, env=shell)
        assert code == 1 and MISSING in out + err, out + err
        code, out, err = await sms_router("run", "-c", config, cwd=tmp_path, env=shell)
        assert code == 1 and "configuration error" in err and MISSING in err, out + err
        assert daemon.returncode is None  # the refused `run` left the daemon alone
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 30) == 0, log.read_text()
    assert SECRET not in log.read_text()


async def test_an_unresolvable_redis_password_stops_every_command(
    redis_url: str, tmp_path: Path, smsc: SmscSimulator
) -> None:
    data = _config(redis_url, tmp_path, smsc)
    data["router"]["redis_password"] = "env:REDIS_PW"
    config = str(write_config(tmp_path / "router.toml", data))
    shell = {**_shell(), "SMPP_PW": SECRET}  # only the Redis password is missing
    commands = [
        ("health",), ("status", "some-job"), ("log",), ("reload",), ("dlq", "list"),
        ("dlq", "drop", "--profile", "sms", "--entry", "1-0"),
        ("optout", "list", "--profile", "sms"),
        ("lists", "show", "--profile", "sms"), ("numbers", "--profile", "sms"),
        ("migrate-keys", "--dry-run"), ("check-config",), ("run",),
    ]  # fmt: skip
    results = await asyncio.gather(
        *(sms_router(*args, "-c", config, cwd=tmp_path, env=shell) for args in commands)
    )
    for args, (code, out, err) in zip(commands, results, strict=True):
        assert code == 1, f"{args}: {out}{err}"
        assert "router.redis_password: environment variable REDIS_PW is not set" in out + err, (
            f"{args}: {out}{err}"
        )


async def test_without_secrets_everything_else_is_still_checked(
    redis_url: str, tmp_path: Path, smsc: SmscSimulator
) -> None:
    data = _config(redis_url, tmp_path, smsc)
    data["profiles"]["sms"]["window"] = "many"
    config = str(write_config(tmp_path / "router.toml", data))
    code, out, err = await sms_router("health", "-c", config, cwd=tmp_path, env=_shell())
    assert code == 1 and "configuration error" in err, out + err
    assert "profiles.sms.window:" in err
    assert MISSING not in err  # the secret itself is not what stops it
    # A secret that this shell does resolve is checked as before: too long for SMPP.
    data["profiles"]["sms"]["window"] = 10
    config = str(write_config(tmp_path / "router.toml", data))
    env = {**_shell(), "SMPP_PW": "nine-char"}
    code, out, err = await sms_router("health", "-c", config, cwd=tmp_path, env=env)
    assert code == 1 and "profiles.sms.smpp.password: must be at most 8 characters" in err


def test_an_unresolved_secret_shows_nothing_and_cannot_be_read(tmp_path: Path) -> None:
    data = smpp_config("redis://127.0.0.1:1", tmp_path, 1, smpp={"password": "env:SMPP_PW"})
    with pytest.raises(ConfigError) as raised:
        parse_settings(data, env={})
    assert MISSING in raised.value.problems
    settings = parse_settings(data, env={}, resolve_secrets=False)
    smpp = settings.profiles["sms"].smpp
    assert smpp is not None
    password = smpp.password
    assert isinstance(password, UnresolvedSecret)
    assert str(password) == "**********" and "SMPP_PW" in repr(password)
    with pytest.raises(RuntimeError, match="secret env:SMPP_PW was not resolved"):
        password.get_secret_value()
    with pytest.raises(RuntimeError, match="not resolved"):
        smpp.to_spec(settings.profiles["sms"])  # never handed to an SMPP bind


def test_template_and_api_secrets_unresolved_are_placeholders_not_problems() -> None:
    data = config_dict("redis://127.0.0.1:1", "http://127.0.0.1:1/send")
    data["profiles"]["alerts"]["http"]["headers"] = {"X-Key": "{secret:PROVIDER_TOKEN}"}
    data["api"] = {
        "listen": "127.0.0.1:0",
        "keys": {"ops": {"token": "env:API_TOKEN", "scopes": ["read"]}},
    }
    with pytest.raises(ConfigError) as raised:
        parse_settings(data, env={})
    assert set(raised.value.problems) == {
        'profiles.alerts.http.headers."X-Key": secret PROVIDER_TOKEN is not set '
        "(environment variable PROVIDER_TOKEN or systemd credential)",
        "api.keys.ops.token: environment variable API_TOKEN is not set",
    }
    settings = parse_settings(data, env={}, resolve_secrets=False)
    token = settings.secrets["PROVIDER_TOKEN"]
    assert isinstance(token, UnresolvedSecret)
    with pytest.raises(RuntimeError, match=r"secret \{secret:PROVIDER_TOKEN\} was not resolved"):
        token.get_secret_value()
    with pytest.raises(RuntimeError, match="secret env:API_TOKEN was not resolved"):
        settings.api.keys["ops"].token.get_secret_value()
    # A secret name that is not a variable name is still a problem.
    data["profiles"]["alerts"]["http"]["headers"] = {"X-Key": "{secret:9bad}"}
    with pytest.raises(ConfigError, match="must be a variable name"):
        parse_settings(data, env={}, resolve_secrets=False)
