"""Signals and instances, with the daemon as a real process: SIGHUP is logged and
ignored; one live daemon per instance name (the lease in Redis)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from pathlib import Path

import pytest
from redis.asyncio import Redis

from router import Client
from router.config import parse_settings
from router.daemon.daemon import health_key
from router.daemon.lease import InstanceTaken, Lease, lease_key

from ..binds.test_flow import all_final
from ..conftest import Provider, config_dict, wait_for
from .test_process import start_daemon, write_config


async def _holder(redis: Redis) -> dict[str, object]:
    raw = await redis.get(lease_key("test"))
    return json.loads(raw) if raw else {}


async def _running(redis: Redis, pid: int) -> bool:
    """The daemon `pid` has started: it publishes its health record."""
    raw = await redis.get(health_key("test"))
    return bool(raw) and json.loads(raw).get("pid") == pid


async def _stop(proc: asyncio.subprocess.Process, log: Path) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0, log.read_text()[-3000:]  # noqa: ASYNC240 - a small local file


async def test_sighup_reloads_and_keeps_serving(
    redis: Redis, provider: Provider, redis_url: str, tmp_path: Path
) -> None:
    data = config_dict(redis_url, provider.url)
    config = write_config(tmp_path / "router.toml", data)
    log = tmp_path / "daemon.log"
    proc = await start_daemon(config, log)
    try:
        await wait_for(lambda: _running(redis, proc.pid), 30, "daemon started")
        proc.send_signal(signal.SIGHUP)
        await wait_for(
            lambda: "configuration reloaded" in log.read_text(),
            10,
            "the reload's log line",
        )
        settings = parse_settings(data, env={}, base_dir=tmp_path)
        job = await Client.from_settings(redis, settings).send("+447911123456", "after hup")
        await wait_for(lambda: all_final(redis, [job]), 20, "a job sent after SIGHUP")
        assert proc.returncode is None
    finally:
        await _stop(proc, log)


async def test_second_daemon_with_a_live_name_refuses_to_start(
    redis: Redis, provider: Provider, redis_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "router.toml", config_dict(redis_url, provider.url))
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = await start_daemon(config, first_log)
    try:
        await wait_for(lambda: _running(redis, first.pid), 30, "first daemon started")
        second = await start_daemon(config, second_log)
        assert await asyncio.wait_for(second.wait(), 30) == 1
        lines = [line for line in second_log.read_text().splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert lines[0].startswith("error: instance 'test' is already running on host ")
        assert f"{socket.gethostname()} (pid {first.pid})" in lines[0]
        assert first.returncode is None
        assert (await _holder(redis))["pid"] == first.pid
    finally:
        await _stop(first, first_log)
    assert not await redis.exists(lease_key("test")), "lease released at shutdown"


async def test_restart_after_kill_9_takes_over_the_dead_daemons_lease(
    redis: Redis, provider: Provider, redis_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "router.toml", config_dict(redis_url, provider.url))
    log = tmp_path / "daemon.log"
    first = await start_daemon(config, log)
    await wait_for(lambda: _running(redis, first.pid), 30, "first daemon started")
    first.send_signal(signal.SIGKILL)
    assert await asyncio.wait_for(first.wait(), 30) == -signal.SIGKILL
    # Its lease would outlive the test: only the dead pid on this host lets us in.
    await redis.pexpire(lease_key("test"), 600_000)
    second = await start_daemon(config, log)
    try:
        await wait_for(lambda: _running(redis, second.pid), 30, "restarted daemon took over")
        assert (await _holder(redis))["pid"] == second.pid
    finally:
        await _stop(second, log)


async def test_lease_taken_by_another_daemon_stops_this_one_with_exit_1(
    redis: Redis, provider: Provider, redis_url: str, tmp_path: Path
) -> None:
    """What a daemon finds when its lease lapsed in a Redis outage and another took it."""
    config = write_config(tmp_path / "router.toml", config_dict(redis_url, provider.url))
    log = tmp_path / "daemon.log"
    proc = await start_daemon(config, log)
    await wait_for(lambda: _running(redis, proc.pid), 30, "daemon started")
    other = {"host": "elsewhere", "pid": 4242, "started_at": 0}
    await redis.set(lease_key("test"), json.dumps(other), px=60_000)
    assert await asyncio.wait_for(proc.wait(), 30) == 1
    text = log.read_text()
    assert "instance lease taken by another daemon" in text
    assert '"other_host": "elsewhere"' in text and '"other_pid": 4242' in text
    assert (await _holder(redis)) == other, "the other daemon's lease is left alone"


async def test_a_lease_holding_our_own_pid_is_a_dead_predecessors(redis: Redis) -> None:
    """In a container a restarted daemon often gets its predecessor's pid (1): a lease on
    this host naming our own pid was left by a process that is gone, not a live twin."""
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": 1.0}
    await redis.set(lease_key("twin"), json.dumps(mine), px=60_000)
    lease = Lease(redis, "twin", ttl=15)
    await lease.acquire()
    assert json.loads(await redis.get(lease_key("twin")) or b"{}")["started_at"] != 1.0
    other = {"host": socket.gethostname(), "pid": os.getppid(), "started_at": 2.0}
    await redis.set(lease_key("live"), json.dumps(other), px=60_000)
    with pytest.raises(InstanceTaken, match=f"pid {os.getppid()}"):
        await Lease(redis, "live", ttl=15).acquire()
