"""The command line as an operator meets it: real processes, real Redis."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis

from router import Client
from router.config import Settings, parse_settings
from router.store import keys

from ..conftest import Provider, RunningDaemon, config_dict, free_port, wait_for
from ..daemon.test_process import cli, write_config


def _config(tmp_path: Path, redis_url: str, provider: Provider) -> str:
    return str(write_config(tmp_path / "router.toml", config_dict(redis_url, provider.url)))


async def test_check_config_takes_dash_c_like_every_command(
    tmp_path: Path, redis_url: str, provider: Provider
) -> None:
    config = _config(tmp_path, redis_url, provider)
    code, out, err = await cli("check-config", "-c", config)
    assert code == 0, err
    assert out.startswith("OK") and "alerts" in out
    code, out, _ = await cli("check-config", config)
    assert code == 0 and out.startswith("OK")
    code, _, err = await cli("check-config", "-c", config, str(tmp_path / "other.toml"))
    assert code != 0 and "-c PATH or PATH" in err


async def test_enqueue_names_every_bad_line_once_with_its_field(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    config = _config(tmp_path, redis_url, provider)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join(
            [
                json.dumps({"to": "+447911123456", "text": "fine"}),
                "not json",
                json.dumps({"text": "no destination"}),
                json.dumps({"to": "+447911123456", "text": "x", "from": "+447700900123"}),
                "",
                json.dumps({"to": "+447911123456", "text": "x", "colour": "red"}),
                json.dumps({"to": "+447911123456", "text": "x", "profile": "nope"}),
            ]
        )
        + "\n"
    )
    code, _, err = await cli("enqueue", "-c", config, str(bad))
    assert code == 1
    lines = err.strip().splitlines()
    assert lines == [
        f"{bad}:2: not JSON (Expecting value)",
        f"{bad}:3: to: required",
        f"{bad}:4: from: +447700900123 is not a number of profile 'alerts'",
        f"{bad}:6: colour: unknown field",
        f"{bad}:7: profile: unknown profile 'nope'",
        "5 bad line(s); nothing enqueued",
    ]
    assert await redis.xlen(keys.queue("alerts")) == 0


async def test_enqueue_counts_duplicates_apart(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    config = _config(tmp_path, redis_url, provider)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        "".join(
            json.dumps({"id": f"dup-{i}", "to": "+447911123456", "text": "t"}) + "\n"
            for i in range(10)
        )
    )
    code, out, err = await cli("enqueue", "-c", config, str(jobs))
    assert code == 0, err
    assert "enqueued 10 jobs" in out and "duplicates" not in out
    code, out, err = await cli("enqueue", "-c", config, str(jobs))
    assert code == 0, err
    assert "enqueued 0 jobs" in out
    assert "10 dropped as duplicates" in out
    assert await redis.xlen(keys.queue("alerts")) == 10


async def test_send_from_outside_the_pool_fails_at_once(tmp_path: Path, provider: Provider) -> None:
    # No Redis answers on this port: the check must not need one.
    config = _config(tmp_path, f"redis://127.0.0.1:{free_port()}/0", provider)
    code, out, err = await cli(
        "send", "-c", config, "--to", "+447911123456", "--text", "x", "--from", "+447700900123"
    )
    assert code == 1 and not out
    assert "from: +447700900123 is not a number of profile 'alerts'" in err
    code, _, err = await cli(
        "send", "-c", config, "--profile", "nope", "--to", "+447911123456", "--text", "x"
    )
    assert code == 1 and "unknown profile 'nope'" in err


async def test_log_keeps_ids_whole_at_80_columns(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    data = config_dict(redis_url, provider.url)
    config = str(write_config(tmp_path / "router.toml", data))
    client = Client.from_settings(redis, parse_settings(data, env={}, base_dir=tmp_path))
    long_id = "order-2026-11-23-0f3c9a1e5b7d4e2f8a6c1b3d5e7f9a0b"
    await client.send("+447911123456", "hello", id=long_id)
    code, out, err = await cli("log", "-c", config, columns=80)
    assert code == 0, err
    assert long_id in out
    assert max(len(line) for line in out.splitlines()) <= 80


async def test_dlq_list_without_profile_lists_every_profile(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    config = _config(tmp_path, redis_url, provider)
    await redis.xadd(keys.dead_letters("alerts"), {"reason": "job.to: required", "at": "1"})
    await redis.xadd(keys.dead_letters("bulk"), {"reason": "job.text: required", "at": "2"})
    code, out, err = await cli("dlq", "list", "-c", config, "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert {(r["profile"], r["reason"]) for r in rows} == {
        ("alerts", "job.to: required"),
        ("bulk", "job.text: required"),
    }
    for command, extra in (
        (["dlq", "list"], []),
        (["dlq", "replay"], ["--all"]),
        (["log"], []),
    ):
        code, _, err = await cli(*command, "-c", config, "--profile", "nope", *extra)
        assert code == 1, command
        assert "unknown profile 'nope'" in err, command


async def test_health_shows_backlog_and_counters_per_profile(
    tmp_path: Path,
    redis_url: str,
    provider: Provider,
    redis: Redis,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    data = config_dict(redis_url, provider.url)
    config = str(write_config(tmp_path / "router.toml", data))
    await redis.hset(keys.stats("bulk"), "reports_missing", 3)
    running = run_daemon(parse_settings(data, env={}, base_dir=tmp_path))

    async def both_workers() -> bool:
        # The first beat may come while the second profile's worker is being started.
        raw = await redis.get("sms:health:test")
        return bool(raw) and {"alerts", "bulk"} <= set(json.loads(raw).get("backlog", {}))

    await wait_for(both_workers, 20, "a health beat with both profiles")
    code, out, err = await cli("health", "-c", config)
    await running.stop()
    assert code == 0, err
    assert "test pid" in out
    assert "profile alerts: stream 0, pending 0, scheduled 0, dead-letter stream 0" in out
    assert "profile bulk: stream 0, pending 0, scheduled 0, dead-letter stream 0" in out
    assert "  running totals: reports missing 3" in out
