"""A real Redis Sentinel set on loopback: one master, its replicas, three sentinels.

Every process is a ``redis-server`` (``--sentinel`` mode for the sentinels, or
``redis-sentinel`` when that is on PATH) on a free port, with its files in its own
directory. `SentinelSet.stop` ends all of them, whatever state a test left.
Used by tests/store/test_sentinel.py and bench/failover.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis
from redis.asyncio import Redis

from .conftest import RedisServer, free_port

SERVICE = "mymaster"
# A replica syncs at once rather than after the default 5 s of diskless-sync delay.
NODE_ARGS = ("--repl-diskless-sync-delay", "0")


def sentinel_command(conf: Path) -> list[str]:
    """How to start a sentinel on `conf`: redis-sentinel, else redis-server --sentinel."""
    binary = shutil.which("redis-sentinel")
    if binary is not None:
        return [binary, str(conf)]
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not on PATH")
    return [server, str(conf), "--sentinel"]


class SentinelSet:
    """One master, `replicas` replicas, `sentinels` sentinels (quorum 2)."""

    def __init__(self, workdir: Path, *, replicas: int = 1, sentinels: int = 3) -> None:
        self.workdir = workdir
        self.master = RedisServer(workdir / "node0", free_port(), extra=NODE_ARGS)
        self.replicas = [
            RedisServer(
                workdir / f"node{i + 1}",
                free_port(),
                extra=(*NODE_ARGS, "--replicaof", "127.0.0.1", str(self.master.port)),
            )
            for i in range(replicas)
        ]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def nodes(self) -> list[RedisServer]:
        return [self.master, *self.replicas]

    @property
    def url(self) -> str:
        """The router's ``[router] redis`` for this set."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def start(self, timeout: float = 60) -> None:
        """Start every process and wait until the sentinels know the whole set.

        A sentinel that exits at once (its free port was taken meanwhile) is started
        again on another port; a time-out says what each sentinel saw, and its log."""
        for node in self.nodes:
            node.start()
        deadline = time.monotonic() + timeout
        for replica in self.replicas:
            self._wait(lambda r=replica: _link_up(r.port), deadline, "replica in sync")
        for index in range(len(self.sentinel_ports)):
            self._sentinels.append(self._start_sentinel(index))
        others, replicas = len(self.sentinel_ports) - 1, len(self.replicas)
        while True:
            for index, proc in enumerate(self._sentinels):
                if proc.poll() is not None:
                    self.sentinel_ports[index] = free_port()
                    self._sentinels[index] = self._start_sentinel(index)
            if all(_sees_quietly(p, others, replicas) for p in self.sentinel_ports):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinel set: timed out; {self._diagnosis()}")
            time.sleep(0.1)

    def _start_sentinel(self, index: int) -> subprocess.Popen[bytes]:
        port = self.sentinel_ports[index]
        directory = self.workdir / f"sentinel{index}"
        directory.mkdir(parents=True, exist_ok=True)
        conf = directory / "sentinel.conf"
        conf.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            f'dir "{directory}"\n'
            f'logfile "{directory / "sentinel.log"}"\n'
            "sentinel resolve-hostnames no\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        return subprocess.Popen(
            sentinel_command(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _diagnosis(self) -> str:
        """What each sentinel knows, and the end of its log (for a time-out's message)."""
        parts = []
        for index, port in enumerate(self.sentinel_ports):
            try:
                client = redis.Redis(port=port, socket_timeout=1)
                try:
                    state = client.sentinel_master(SERVICE)
                finally:
                    client.close()
                seen = (
                    f"sees {state['num-other-sentinels']} sentinels, {state['num-slaves']} replicas"
                )
            except (redis.RedisError, OSError) as exc:
                seen = f"does not answer ({exc})"
            log = self.workdir / f"sentinel{index}" / "sentinel.log"
            tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
            parts.append(f"sentinel {port} {seen}; log: {' | '.join(tail)}")
        return "; ".join(parts)

    def stop(self) -> None:
        """End every process (the sentinels first: no fail-over while stopping)."""
        for proc in self._sentinels:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()

    def kill_master(self) -> RedisServer:
        """kill -9 the current master; returns it (to start again later)."""
        master = self.node(self.master_port())
        master.kill()
        return master

    def master_port(self) -> int:
        """The master's port as the sentinels say now."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(port=port, socket_timeout=1)
                try:
                    address = client.sentinel_get_master_addr_by_name(SERVICE)
                finally:
                    client.close()
                if address:
                    return int(address[1])
        raise RuntimeError("no sentinel names a master")

    async def wait_failover(self, old_port: int, within: float = 30) -> float:
        """Wait until the sentinels name a new master that answers as one; seconds taken."""
        began = time.monotonic()
        while time.monotonic() - began < within:
            port = await asyncio.to_thread(self.master_port)
            if port != old_port and await _role(port) == "master":
                return time.monotonic() - began
            await asyncio.sleep(0.1)
        raise AssertionError(f"no fail-over within {within} s")

    def rejoin(self, node: RedisServer) -> None:
        """Start a killed node again as a replica of the current master (what an
        operator or config management does with the old master after a fail-over)."""
        node.extra = (*NODE_ARGS, "--replicaof", "127.0.0.1", str(self.master_port()))
        node.start()

    @staticmethod
    def _wait(check: object, deadline: float, what: str) -> None:
        assert callable(check)
        while True:
            with contextlib.suppress(redis.RedisError, OSError):
                if check():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"sentinel set: timed out waiting for {what}")
            time.sleep(0.1)


def _link_up(port: int) -> bool:
    client = redis.Redis(port=port, socket_timeout=1)
    try:
        return client.info("replication").get("master_link_status") == "up"
    finally:
        client.close()


def _sees_quietly(port: int, others: int, replicas: int) -> bool:
    with contextlib.suppress(redis.RedisError, OSError):
        return _sees(port, others, replicas)
    return False


def _sees(port: int, others: int, replicas: int) -> bool:
    client = redis.Redis(port=port, socket_timeout=1)
    try:
        state = client.sentinel_master(SERVICE)
    finally:
        client.close()
    return int(state["num-other-sentinels"]) >= others and int(state["num-slaves"]) >= replicas


async def _role(port: int) -> str:
    client = Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        reply = await client.execute_command("ROLE")
        role = reply[0]
        return role.decode() if isinstance(role, bytes) else str(role)
    except (redis.RedisError, OSError):
        return ""
    finally:
        await client.aclose()
