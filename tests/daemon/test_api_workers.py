"""`[api] workers`: processes that serve the API's port together (SO_REUSEPORT).

They answer as the daemon does (authentication, validation errors naming the field, a
202 only once the job is in Redis), the kernel spreads connections over them, what
only the daemon knows (readiness, metrics) is forwarded to it, a reload reaches them,
SIGTERM drains them with nothing accepted lost, a killed worker is started again, and
they do not outlive a daemon killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from router.config import Settings, parse_settings
from router.store.ledger import Ledger

from ..conftest import Provider, RunningDaemon, config_dict, wait_for
from .test_process import start_daemon, write_config

TOKEN = "w" * 32
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_workers(data: dict[str, Any], port: int = 0, workers: int = 2) -> dict[str, Any]:
    data["api"] = {
        "listen": f"127.0.0.1:{port}",
        "workers": workers,
        "keys": {"app": {"token": TOKEN, "scopes": ["send", "read"]}},
    }
    return data


def worker_pids(daemon: int) -> list[int]:
    """The daemon's children that run an API worker."""
    found = []
    for child in Path(f"/proc/{daemon}/task/{daemon}/children").read_text().split():
        try:
            if b"router.daemon.api_worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
        except OSError:
            pass
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        # A zombie has exited too (its parent has not reaped it yet).
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def server_pids(port: int, client_ports: set[int], pids: list[int]) -> dict[int, int]:
    """client port -> pid of the process holding the server's end of that connection
    (from /proc/net/tcp and each process' file descriptors)."""
    inode_of: dict[int, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], int(fields[9])
        if int(local.split(":")[1], 16) == port and inode:
            inode_of[int(remote.split(":")[1], 16)] = inode
    owner: dict[int, int] = {}
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owner[int(link[8:-1])] = pid
    return {c: owner[inode_of[c]] for c in client_ports if inode_of.get(c) in owner}


async def all_listening(http: aiohttp.ClientSession, base: str, restarts: int = 0) -> bool:
    """Whether the daemon says both workers listen (after `restarts` restarts)."""
    try:
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
    except aiohttp.ClientError:
        return False
    return (
        "sms_router_api_workers 2.0" in text
        and f"sms_router_api_worker_restarts_total {restarts:.1f}" in text
    )


async def post(http: aiohttp.ClientSession, base: str, job: Any, token: str = TOKEN) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(f"{base}/v1/messages", json=job, headers=headers) as response:
        return response.status, await response.json()


async def test_workers_serve_the_api_as_the_daemon_does(
    redis: Redis,
    make_settings: Callable[..., Settings],
    provider: Provider,
    run_daemon: Callable[[Settings], RunningDaemon],
    redis_url: str,
) -> None:
    data = with_workers(config_dict(redis_url, provider.url))
    running = run_daemon(parse_settings(data))
    await wait_for(lambda: running.daemon.api_workers is not None, 30, "workers started")
    workers = running.daemon.api_workers
    assert workers is not None
    await wait_for(lambda: len(workers.pids) == 2, 30, "two workers")
    base = f"http://127.0.0.1:{workers.port}"
    ledger = Ledger(redis, retention=60, events_maxlen=1000)
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: running.daemon.workers, 30, "profiles up")
        status, body = await post(http, base, {"to": "+14155552671", "text": "hi"}, "x" * 32)
        assert (status, body) == (401, {"error": "Authorization: unknown token"})
        status, body = await post(http, base, {"to": "+1", "text": "hi"})
        assert status == 400 and body["error"].startswith("to: "), body
        status, body = await post(http, base, {"to": "+14155552671", "txt": "hi"})
        assert (status, body) == (400, {"error": "txt: unknown field"})
        # A 202 only once the job is in Redis: its record is there when the answer is.
        for i in range(20):
            status, body = await post(http, base, {"to": "+14155552671", "text": f"w{i}"})
            assert status == 202 and body["status"] == "queued", body
            record = await ledger.get(body["id"], profiles=["alerts", "bulk"])
            assert record is not None and record["history"][0]["status"] == "queued"
        # What only the daemon knows comes from the daemon, through any worker.
        async with http.get(f"{base}/readyz") as response:
            assert response.status in (200, 503)
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
        assert "sms_router_api_workers 2.0" in text
        assert 'sms_router_api_worker_cpu_seconds_total{worker="1"}' in text
        async with http.get(f"{base}/v1/profiles", headers=HEADERS) as response:
            assert response.status == 200
            names = [p["name"] for p in (await response.json())["profiles"]]
            assert names == ["alerts", "bulk"]


async def test_the_port_is_shared_by_the_workers(
    make_settings: Callable[..., Settings],
    provider: Provider,
    run_daemon: Callable[[Settings], RunningDaemon],
    redis_url: str,
) -> None:
    running = run_daemon(parse_settings(with_workers(config_dict(redis_url, provider.url))))
    await wait_for(lambda: running.daemon.api_workers is not None, 30, "workers started")
    workers = running.daemon.api_workers
    assert workers is not None
    await wait_for(lambda: len(workers.pids) == 2, 30, "two workers")
    port = workers.port
    body = json.dumps({"to": "+14155552671", "text": "spread"}).encode()
    request = (
        f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    connections = []
    try:
        for _ in range(40):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            status = await asyncio.wait_for(reader.readline(), 10)
            assert status.startswith(b"HTTP/1.1 202"), status
            connections.append((reader, writer))
        mine = {w.get_extra_info("sockname")[1] for _, w in connections}
        owners = server_pids(port, mine, [*workers.pids, os.getpid()])
        assert set(owners) == mine
        # Every connection is a worker's (the daemon only holds the port) and the
        # kernel gave them to both.
        assert set(owners.values()) == set(workers.pids), owners
    finally:
        for _, writer in connections:
            writer.close()


async def test_sigterm_drains_the_workers_and_loses_no_accepted_job(
    redis: Redis, provider: Provider, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    data = with_workers(config_dict(redis_url, provider.url), port)
    config = write_config(tmp_path / "router.toml", data)
    log = tmp_path / "daemon.log"
    proc = await start_daemon(config, log)
    base = f"http://127.0.0.1:{port}"
    accepted: list[str] = []
    refused = 0
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: all_listening(http, base), 30, "both workers listen")
        workers = worker_pids(proc.pid)
        assert len(workers) == 2

        async def client(n: int) -> None:
            nonlocal refused
            i = 0
            while True:
                try:
                    status, body = await post(
                        http, base, {"to": "+14155552671", "text": f"{n}.{i}"}
                    )
                except (TimeoutError, aiohttp.ClientError):
                    return  # the listeners are gone
                if status == 202:
                    accepted.append(body["id"])
                else:
                    refused += 1
                i += 1

        clients = [asyncio.create_task(client(n)) for n in range(20)]
        await wait_for(lambda: len(accepted) >= 200, 30, "load running")
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        await asyncio.wait_for(asyncio.gather(*clients), 30)
    assert code == 0, log.read_text()[-3000:]
    assert not [pid for pid in workers if alive(pid)]
    ledger = Ledger(redis, retention=60, events_maxlen=1000)
    records = await ledger.find(accepted)
    assert all(r is not None for r in records), "a job answered 202 is not in Redis"
    assert refused == 0
    text = log.read_text()
    assert "api worker stopping" in text


async def test_a_killed_worker_is_started_again_and_reload_reaches_workers(
    provider: Provider, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    data = with_workers(config_dict(redis_url, provider.url), port)
    config = write_config(tmp_path / "router.toml", data)
    log = tmp_path / "daemon.log"
    proc = await start_daemon(config, log)
    base = f"http://127.0.0.1:{port}"
    job = {"to": "+14155552671", "text": "again"}
    try:
        async with aiohttp.ClientSession() as http:
            await wait_for(lambda: all_listening(http, base), 30, "both workers listen")
            first = worker_pids(proc.pid)
            assert len(first) == 2
            os.kill(first[0], signal.SIGKILL)
            await wait_for(lambda: all_listening(http, base, 1), 30, "the worker started again")
            now = worker_pids(proc.pid)
            assert len(now) == 2 and first[1] in now and first[0] not in now
            for _ in range(10):
                assert (await post(http, base, job))[0] == 202
            # A reload: the workers take the new key (and drop the old one).
            new = "n" * 32
            data["api"]["keys"] = {"app": {"token": new, "scopes": ["send"]}}
            write_config(config, data)
            proc.send_signal(signal.SIGHUP)

            async def reloaded() -> bool:
                statuses = {(await post(http, base, job, new))[0] for _ in range(8)}
                return statuses == {202}

            await wait_for(reloaded, 30, "the workers took the new key")
            assert {(await post(http, base, job))[0] for _ in range(8)} == {401}
        assert "api worker exited; starting it again" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, log.read_text()[-3000:]


async def test_workers_do_not_outlive_a_killed_daemon(
    provider: Provider, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "router.toml", with_workers(config_dict(redis_url, provider.url), port)
    )
    proc = await start_daemon(config, tmp_path / "daemon.log")
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: all_listening(http, f"http://127.0.0.1:{port}"), 30, "listening")
    workers = worker_pids(proc.pid)
    assert len(workers) == 2
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    await wait_for(lambda: not [pid for pid in workers if alive(pid)], 15, "workers gone")


async def test_a_worker_that_cannot_start_stops_the_daemon(
    provider: Provider, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "router.toml", with_workers(config_dict(redis_url, provider.url), port)
    )
    log = tmp_path / "daemon.log"
    proc = await start_daemon(config, log)
    # Killed as soon as it exists: long before it has imported the router and listens.
    for _ in range(6000):
        if started := worker_pids(proc.pid):
            break
        await asyncio.sleep(0.005)
    os.kill(started[0], signal.SIGKILL)
    assert await asyncio.wait_for(proc.wait(), 30) == 1
    text = log.read_text()
    assert "an api worker could not start; stopping" in text, text[-3000:]
    assert "did not start listening" in text


async def test_sigterm_to_the_whole_group_stops_without_restarts(
    provider: Provider, redis_url: str, tmp_path: Path
) -> None:
    """systemd's stop signals every process of the unit at once (KillMode=control-group):
    the workers stopping then are not started again."""
    port = free_port()
    config = write_config(
        tmp_path / "router.toml", with_workers(config_dict(redis_url, provider.url), port)
    )
    log = tmp_path / "daemon.log"
    proc = await start_daemon(config, log)
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: all_listening(http, f"http://127.0.0.1:{port}"), 30, "listening")
    for pid in [*worker_pids(proc.pid), proc.pid]:
        os.kill(pid, signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0, log.read_text()[-3000:]
    assert "starting it again" not in log.read_text()
