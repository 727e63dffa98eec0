"""What an operator meets in the first hour, each reproduced with real processes and a
real Redis: tables at 80 columns, bad ids and limits, a missing configuration file,
`health` exit codes and labels, the demo's note on simulated failures."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from io import StringIO
from pathlib import Path

from redis.asyncio import Redis
from rich.console import Console

from router import Client
from router.config import Settings, parse_settings
from router.store import keys
from sims.demo import DELIVERED_RATIO, print_summary

from ..binds.test_smpp_flow import smpp_config
from ..conftest import Provider, RunningDaemon, config_dict, free_port, wait_for
from ..daemon.test_process import cli, write_config

TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
LONG_ID = "order-2026-11-23-0f3c9a1e5b7d4e2f8a6c1b3d5e7f9a0b"


async def piped(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """The command run as from a shell in `cwd` whose output goes to a pipe, with
    exactly the environment `env` (no COLUMNS unless given)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _bare_env() -> dict[str, str]:
    """This environment without COLUMNS, LINES and SMS_ROUTER_CONFIG."""
    drop = {"COLUMNS", "LINES", "SMS_ROUTER_CONFIG"}
    return {k: v for k, v in os.environ.items() if k not in drop}


async def _records(tmp_path: Path, redis_url: str, provider: Provider, redis: Redis) -> str:
    data = config_dict(redis_url, provider.url)
    config = str(write_config(tmp_path / "router.toml", data))
    client = Client.from_settings(redis, parse_settings(data, env={}, base_dir=tmp_path))
    await client.send("+447911123456", "hello", id=LONG_ID)
    await client.send("+447911123456", "hello again", id="short-1")
    return config


async def test_log_at_80_columns_through_a_pipe_shows_whole_cells(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    config = await _records(tmp_path, redis_url, provider, redis)
    # A pipe with no COLUMNS: rich's 80 columns, what `sms-router log | less` gets.
    code, out, err = await piped("log", "-c", config, cwd=tmp_path, env=_bare_env())
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[0].split() == ["updated", "id", "status"]
    row = next(line for line in lines if LONG_ID in line)
    # One line per record, every cell whole: no fragments on the following lines.
    assert TIME.search(row) and row.split()[-1] == "queued"
    assert len(lines) == 3
    assert "not shown at 80 columns: profile, to, from, tries, note" in err
    assert "--json" in err
    # Wide enough: every column, no hint.
    code, out, err = await cli("log", "-c", config, columns=200)
    assert code == 0 and not err
    assert out.splitlines()[0].split() == [
        "updated", "id", "profile", "status", "to", "from", "tries", "note"
    ]  # fmt: skip


async def test_log_ids_stay_whole_even_narrower_than_the_id(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    config = await _records(tmp_path, redis_url, provider, redis)
    code, out, err = await cli("log", "-c", config, columns=30)
    assert code == 0, err
    assert out.splitlines()[0].split() == ["id"]  # nothing else fits
    assert LONG_ID in [line.strip() for line in out.splitlines()]
    assert "updated, profile, status" in err


async def test_dlq_list_at_80_columns_keeps_the_entry_id_replay_needs(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    config = str(write_config(tmp_path / "router.toml", config_dict(redis_url, provider.url)))
    reason = "job.to: required (every job needs a destination number in E.164 form)"
    entry = await redis.xadd(
        keys.dead_letters("alerts"), {"reason": reason, "at": "1700000000", "job": b"\x80"}
    )
    entry_id = entry.decode()
    code, out, err = await piped("dlq", "list", "-c", config, cwd=tmp_path, env=_bare_env())
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    row = next(line for line in lines if entry_id in line)
    assert row.split()[:2] == ["alerts", entry_id]
    assert "job.to: required" in row  # the reason wraps, it is not dropped
    assert "E.164 form)" in out  # its end, on a following line
    # The id as listed is what replay takes.
    code, out, err = await cli(
        "dlq", "replay", "-c", config, "--profile", "alerts", "--entry", entry_id
    )
    assert code == 0 and "replayed 1" in out, err


async def test_dlq_replay_and_drop_name_a_bad_entry_id(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    config = str(write_config(tmp_path / "router.toml", config_dict(redis_url, provider.url)))
    await redis.xadd(keys.dead_letters("alerts"), {"reason": "x", "job": b"\x80"})
    for command in ("replay", "drop"):
        for bogus in ("bogus", "+", "1-2-3", "99999999999999999999999-0"):
            code, out, err = await cli(
                "dlq", command, "-c", config, "--profile", "alerts", "--entry", bogus
            )
            assert code == 1, (command, bogus, out)
            assert f"--entry {bogus!r} is not a dead-letter entry id" in err
            assert "1700000000000-0" in err and "user_script" not in err
        # Well formed, but not there: said, exit 1.
        code, out, err = await cli(
            "dlq", command, "-c", config, "--profile", "alerts", "--entry", "1-0"
        )
        assert code == 1 and "error: no dead letter 1-0 in profile alerts" in err
    assert await redis.xlen(keys.dead_letters("alerts")) == 1


async def test_status_shows_status_first_and_an_unknown_id_is_an_error(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    config = await _records(tmp_path, redis_url, provider, redis)
    code, out, err = await cli("status", "-c", config, LONG_ID)
    assert code == 0, err
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert names[:5] == ["status", "id", "profile", "to", "text"]
    assert out.splitlines()[0].split() == ["status", "queued"]
    code, out, err = await cli("status", "-c", config, "doesnotexist")
    assert code == 1 and not out
    assert err.strip() == "error: no message with id 'doesnotexist'"


async def test_log_and_dlq_list_refuse_a_limit_below_one(
    tmp_path: Path, redis_url: str, provider: Provider
) -> None:
    config = str(write_config(tmp_path / "router.toml", config_dict(redis_url, provider.url)))
    for command in (["log"], ["dlq", "list"]):
        for limit in ("0", "-5"):
            code, out, err = await cli(*command, "-c", config, "--limit", limit)
            assert code == 2, (command, limit, out)
            assert "Invalid value for '--limit'" in err and ">=1" in err


async def test_a_missing_configuration_says_how_to_name_one(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, _, err = await piped("log", cwd=elsewhere, env=_bare_env())
    assert code == 1
    assert "router.toml: file not found" in err
    assert f"looked for router.toml in {elsewhere}" in err
    assert "-c PATH" in err and "$SMS_ROUTER_CONFIG" in err
    env = {**_bare_env(), "SMS_ROUTER_CONFIG": str(tmp_path / "gone.toml")}
    code, _, err = await piped("status", "x", cwd=elsewhere, env=env)
    assert code == 1 and "gone.toml: file not found" in err
    assert "named by $SMS_ROUTER_CONFIG" in err


async def test_health_exit_codes_and_dead_letter_labels(
    tmp_path: Path,
    redis_url: str,
    provider: Provider,
    redis: Redis,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    data = config_dict(redis_url, provider.url)
    config = str(write_config(tmp_path / "router.toml", data))
    code, _, err = await cli("health", "-c", config)
    assert code == 1 and "no router instance is running" in err

    await redis.hset(keys.stats("alerts"), "dead_lettered", 5)
    for _ in range(2):
        await redis.xadd(keys.dead_letters("alerts"), {"reason": "x"})
    running = run_daemon(parse_settings(data, env={}, base_dir=tmp_path))
    try:
        await wait_for(lambda: redis.exists("sms:health:test"), 20, "the first health beat")
        code, out, err = await cli("health", "-c", config)
    finally:
        await running.stop()
    assert code == 0, out + err
    assert "profile alerts: stream 0, pending 0, scheduled 0, dead-letter stream 2" in out
    assert "  running totals: dead lettered 5" in out
    assert out.splitlines()[-1] == "status: ready"


async def test_health_exits_2_while_a_bind_is_down(
    tmp_path: Path,
    redis_url: str,
    redis: Redis,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    # An SMPP profile whose SMSC does not answer: its one bind stays down.
    data = smpp_config(redis_url, tmp_path, free_port())
    config = str(write_config(tmp_path / "router.toml", data))
    running = run_daemon(parse_settings(data, env={}, base_dir=tmp_path))
    try:
        await wait_for(lambda: redis.exists("sms:health:test"), 20, "the first health beat")
        code, out, err = await cli("health", "-c", config)
        json_code, _, _ = await cli("health", "-c", config, "--json")
    finally:
        await running.stop()
    assert code == 2, out + err
    assert json_code == 2
    assert "status: degraded" in out
    assert re.search(r"test: bind sms/smpp0 down \((connecting|disconnected|binding)", out), out
    assert "test: profile sms not ready: no bind can send" in out


def test_demo_summary_says_the_simulator_fails_some_on_purpose() -> None:
    buffer = StringIO()
    console = Console(file=buffer, width=200)
    print_summary(console, Counter(delivered=97, undelivered=3), DELIVERED_RATIO)
    text = buffer.getvalue()
    row = next(line for line in text.splitlines() if "undelivered" in line and "3" in line)
    assert "simulated" in row
    assert "reports about 3% of messages undelivered on purpose" in text
    assert "delivered ratio 0.97" in text


async def test_health_exits_2_when_a_daemon_reports_redis_unreachable(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    """A daemon cut off from Redis (the CLI still reaches it, e.g. across a partition)
    publishes `redis_down_since` once Redis answers it again; the record as it writes
    it (router/daemon/daemon.py `_beat`), with every bind ready."""
    config = str(write_config(tmp_path / "router.toml", config_dict(redis_url, provider.url)))
    now = time.time()
    record = {
        "instance": "far",
        "host": "elsewhere",
        "pid": 4242,
        "started_at": now - 60,
        "at": now,
        "config": "/etc/sms-router/router.toml",
        "redis_outages": 1,
        "redis_down_since": now - 5,
        "profiles": {"alerts": {"in_flight": 0, "capacity": 8, "ready": True}},
        "backlog": {},
        "binds": {"alerts/http": {"state": "ready", "error": None, "ready": True}},
    }
    await redis.set("sms:health:far", json.dumps(record), ex=15)
    code, out, err = await cli("health", "-c", config)
    assert code == 2, out + err
    assert "  redis outages: 1 (down now)" in out
    assert re.search(r"far: redis unreachable from the daemon since \d\d:\d\d:\d\d", out)
    record["redis_down_since"] = None
    await redis.set("sms:health:far", json.dumps(record), ex=15)
    code, out, err = await cli("health", "-c", config, "--json")
    assert code == 0, out + err
    assert json.loads(out)[0]["problems"] == []


async def test_reload_names_a_daemon_that_is_gone(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    """A health record still there (its TTL) for a process that already exited."""
    config = str(write_config(tmp_path / "router.toml", config_dict(redis_url, provider.url)))
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()
    record = {"instance": "test", "host": socket.gethostname(), "pid": gone.pid, "config": config}
    await redis.set("sms:health:test", json.dumps(record), ex=15)
    code, out, err = await cli("reload", "-c", config)
    assert code == 1 and not out
    assert f"error: instance 'test': no process {gone.pid} (stopped?)" in err
    record["config"] = None
    await redis.set("sms:health:test", json.dumps(record), ex=15)
    code, out, err = await cli("reload", "-c", config)
    assert code == 1 and "was not started from a configuration file" in err
