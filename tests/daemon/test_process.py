"""The daemon and the CLI as real processes: signals, kill -9, embedded Redis."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from router import Client
from router.config import parse_settings
from router.store import keys

from ..binds.test_flow import all_final
from ..conftest import Provider, config_dict, wait_for
from ..shipped import shipped_config


def write_config(path: Path, data: dict[str, Any]) -> Path:
    lines: list[str] = []

    def emit(prefix: str, table: dict[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict) or k == "form"}
        if prefix:
            lines.append(f"[{prefix}]")
        for key, value in scalars.items():
            lines.append(f"{json.dumps(key)} = {_toml(value)}")
        for key, value in table.items():
            if isinstance(value, dict) and key != "form":
                emit(f"{prefix}.{json.dumps(key)}" if prefix else json.dumps(key), value)

    emit("", data)
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):  # of scalars, or of inline tables ([[routes]])
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


async def start_daemon(config: Path, log: Path) -> asyncio.subprocess.Process:
    handle = log.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "router",
            "run",
            "-c",
            str(config),
            stdout=handle,
            stderr=handle,
        )
    finally:
        handle.close()


async def cli(*args: str, stdin: bytes | None = None, columns: int = 200) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": str(columns)},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def crash_and_restart(
    redis: Redis,
    provider: Provider,
    redis_url: str,
    tmp_path: Path,
    how: signal.Signals,
    jobs: int = 1500,
    window: int = 16,
) -> tuple[list[str], Counter[str]]:
    data = config_dict(redis_url, provider.url, window=window)
    data["router"]["shutdown_grace"] = 10
    config = write_config(tmp_path / "router.toml", data)
    settings = parse_settings(data, env={}, base_dir=tmp_path)
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": f"c{i}"} for i in range(jobs)]
    )
    provider.latency = 0.005
    log = tmp_path / "daemon.log"
    proc = await start_daemon(config, log)
    await wait_for(lambda: len(provider.requests) >= jobs // 4, 60, "a quarter sent")
    proc.send_signal(how)
    code = await asyncio.wait_for(proc.wait(), 30)
    if how == signal.SIGTERM:
        assert code == 0, log.read_text()[-3000:]
    else:
        assert code == -signal.SIGKILL
    assert len(provider.requests) < jobs, "stopped too late to prove anything"
    proc = await start_daemon(config, log)
    try:
        await wait_for(lambda: all_final(redis, ids), 90, "every job sent after restart")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    return ids, provider.refs


async def test_sigterm_mid_run_loses_nothing_and_sends_nothing_twice(
    redis: Redis, provider: Provider, redis_url: str, tmp_path: Path
) -> None:
    ids, refs = await crash_and_restart(redis, provider, redis_url, tmp_path, signal.SIGTERM)
    assert set(refs) == set(ids)
    assert max(refs.values()) == 1
    assert await redis.hget(keys.stats("alerts"), "possible_duplicates") is None


async def test_kill_9_mid_run_loses_nothing_and_counts_possible_duplicates(
    redis: Redis, provider: Provider, redis_url: str, tmp_path: Path
) -> None:
    window = 16
    ids, refs = await crash_and_restart(
        redis, provider, redis_url, tmp_path, signal.SIGKILL, window=window
    )
    assert set(refs) == set(ids)
    twice = [ref for ref, n in refs.items() if n > 1]
    assert max(refs.values()) <= 2
    assert len(twice) <= 2 * window  # window + unsettled_max (one window by default)
    counted = int(await redis.hget(keys.stats("alerts"), "possible_duplicates") or 0)
    # Every real duplicate is counted. The count may also hold messages recorded
    # `sending` that were still waiting for the gate (recorded windows + unsettled_max,
    # at least 64, ahead so the window never runs dry).
    assert len(twice) <= counted <= 2 * window + max(2 * window, 64)


async def test_two_instances_one_killed_the_other_claims_its_work(
    redis: Redis, provider: Provider, redis_url: str, tmp_path: Path
) -> None:
    """Two instances share a profile; one is killed with SIGKILL and never comes back:
    the other claims its pending entries once they are `claim_idle` old and finishes
    every job. Nothing is lost; a message sent twice can only be one the killed
    instance had on the wire or answered and not recorded (at most its window +
    unsettled_max), and each is counted."""
    jobs, window = 1500, 16
    configs = []
    for name in ("one", "two"):
        data = config_dict(redis_url, provider.url, window=window)
        data["router"].update(instance=name, shutdown_grace=10)
        configs.append(write_config(tmp_path / f"{name}.toml", data))
    settings = parse_settings(data, env={}, base_dir=tmp_path)
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": f"k{i}"} for i in range(jobs)]
    )
    provider.latency = 0.005
    log = tmp_path / "daemons.log"
    one = await start_daemon(configs[0], log)
    two = await start_daemon(configs[1], log)
    try:
        await wait_for(lambda: len(provider.requests) >= jobs // 4, 60, "a quarter sent")
        one.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(one.wait(), 30) == -signal.SIGKILL
        assert len(provider.requests) < jobs, "killed too late to prove anything"
        await wait_for(lambda: all_final(redis, ids), 90, "every job sent by the survivor")
    finally:
        two.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(two.wait(), 30) == 0, log.read_text()[-3000:]
    refs = provider.refs
    assert set(refs) == set(ids)
    twice = [ref for ref, n in refs.items() if n > 1]
    assert max(refs.values()) <= 2 and len(twice) <= 2 * window  # window + unsettled_max
    counted = int(await redis.hget(keys.stats("alerts"), "possible_duplicates") or 0)
    assert len(twice) <= counted
    # The survivor took the dead instance's entries over: none is left pending.
    pending = await redis.xpending(keys.queue("alerts"), keys.GROUP)
    assert pending["pending"] == 0


async def test_check_config_lists_every_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
[profiles.a]
protocol = "http"
numbers = ["+16501112345"]
windw = 3
[profiles.a.http]
url = "http://127.0.0.1:1/send"
[profiles.b]
protocol = "smpp"
numbers = ["+16501112345"]
[profiles.b.smpp]
host = "127.0.0.1"
port = 70000
system_id = "x"
password = "y"
"""
    )
    code, out, err = await cli("check-config", str(bad))
    assert code == 1
    text = out + err
    assert "profiles.a.windw: unknown key" in text
    assert "profiles.b.smpp.port: must be between 1 and 65535" in text
    assert "+16501112345 already belongs to profile 'a'" in text

    code, out, _ = await cli("check-config", str(shipped_config(tmp_path)))
    assert code == 0 and out.startswith("OK")


async def test_cli_against_embedded_redis(provider: Provider, tmp_path: Path) -> None:
    """send, enqueue, status, log and the daemon all find the same embedded Redis."""
    data = config_dict("embedded", provider.url)
    data["router"]["state_dir"] = str(tmp_path / "var")
    config = str(write_config(tmp_path / "router.toml", data))

    code, out, err = await cli(
        "send", "-c", config, "--to", "+447911123456", "--text", "hi", "--id", "cli-1"
    )
    assert code == 0, err
    assert out.strip() == "cli-1"
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        "".join(
            json.dumps({"id": f"bulk-{i}", "to": "+447911123456", "text": f"b{i}"}) + "\n"
            for i in range(50)
        )
    )
    code, out, err = await cli("enqueue", "-c", config, str(jobs))
    assert code == 0, err
    assert "enqueued 50 jobs" in out
    # The CLI stopped the embedded server it started; its append-only file kept the work.
    assert not await _socket_answers(tmp_path / "var" / "redis.sock")
    code, out, _ = await cli("status", "-c", config, "cli-1", "--json")
    assert code == 0 and json.loads(out)["status"] == "queued"

    log = tmp_path / "daemon.log"
    proc = await start_daemon(Path(config), log)
    try:
        await wait_for(lambda: len(provider.requests) == 51, 30, "51 sent")
        code, out, _ = await cli("status", "-c", config, "cli-1", "--json")
        assert json.loads(out)["status"] == "sent"
        code, out, _ = await cli("health", "-c", config, "--json")
        assert code == 0 and json.loads(out)[0]["instance"] == "test"
        await asyncio.sleep(0.2)
        code, out, _ = await cli("log", "-c", config, "--json", "--status", "sent")
        assert code == 0
        lines = [json.loads(line) for line in out.strip().splitlines()]
        assert len(lines) == 51
        assert {r["id"] for r in lines} == {"cli-1"} | {f"bulk-{i}" for i in range(50)}
        code, out, _ = await cli("log", "-c", config, "--limit", "5")
        assert code == 0
        # Ids readable in full; newest first (a batch's outcomes share one time, and
        # batches finish in any order, so "newest" is by the records' own times).
        shown = re.findall(r"\b(bulk-\d+|cli-1)\b", out)
        assert len(shown) == 5, out
        newest = max(float(r["updated_at"]) for r in lines)
        assert shown[0] in {r["id"] for r in lines if float(r["updated_at"]) == newest}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, log.read_text()[-2000:]
    # The daemon stopped its embedded Redis on the way out.
    assert not await _socket_answers(tmp_path / "var" / "redis.sock")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"to": "+447911123456", "text": "ok"}\nnot json\n{"text": "no to"}\n')
    code, _, err = await cli("enqueue", "-c", config, str(bad))
    assert code == 1
    assert "bad.jsonl:2: not JSON" in err


async def test_dead_letter_cli(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path
) -> None:
    data = config_dict(redis_url, provider.url)
    config = str(write_config(tmp_path / "router.toml", data))
    await redis.xadd(keys.dead_letters("alerts"), {"reason": "job.to: required", "job": b"\x80"})
    code, out, _ = await cli("dlq", "list", "-c", config, "--profile", "alerts", "--json")
    assert code == 0
    row = json.loads(out.strip().splitlines()[0])
    assert row["reason"] == "job.to: required"
    code, _, err = await cli("dlq", "drop", "-c", config, "--profile", "alerts")
    assert code != 0 and "--all" in err
    code, out, _ = await cli("dlq", "replay", "-c", config, "--profile", "alerts", "--all")
    assert code == 0 and "replayed 1" in out
    assert await redis.xlen(keys.queue("alerts")) == 1
    assert await redis.xlen(keys.dead_letters("alerts")) == 0


async def _socket_answers(path: Path) -> bool:
    if not path.exists():  # noqa: ASYNC240 - a stat of a local socket
        return False
    client = Redis(unix_socket_path=str(path), socket_connect_timeout=0.5)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


async def test_the_demo_reaches_delivery_reports() -> None:
    """The README's first command: embedded Redis, the simulator, the daemon."""
    code, out, err = await cli("demo", "--count", "40", "--limit", "60")
    assert code == 0, out + err
    assert "delivered" in out and "rejected" not in out
