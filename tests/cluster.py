"""A real Redis Cluster on loopback: N masters (3 by default), optionally replicas.

Each node is a ``redis-server --cluster-enabled yes`` (tests/conftest.py's
`RedisServer`) on a free port with its files (``nodes.conf``, the append-only file
if asked) in its own directory. The cluster is made with plain commands (each master
takes a slot range and a config epoch, then meets the first; each replica meets the
first and is told ``CLUSTER REPLICATE`` its master), so it needs neither redis-cli nor
three nodes at least. `RedisClusterSet.stop` ends every process and removes the
files, whatever state a test left. Used by tests/store/test_cluster_conn.py,
tests/store/test_cluster.py and tests/store/test_cluster_failover.py.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from .conftest import RedisServer

SLOTS = 16384
# A short node time-out: a killed master is marked failed (CLUSTERDOWN everywhere)
# after 1 s, and cleared again 2 s after that once it answers (Redis' rule for a
# master that kept its slots).
NODE_TIMEOUT_MS = 1000


def free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free too: an
    ephemeral port from the kernel is often above 55535, where the bus cannot be."""
    for _ in range(200):
        port = random.randint(20_000, 40_000)
        with socket.socket() as data, socket.socket() as bus:
            try:
                data.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


def cluster_unsupported() -> str | None:
    """Why this redis-server cannot run a cluster (None: it can, or it is missing, and
    then conftest's RedisServer fails the test rather than skipping it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    number = version.partition(" v=")[2].split(" ", 1)[0]
    major = int(number.split(".")[0]) if number[:1].isdigit() else 0
    return None if major >= 3 else f"redis-server {number or '?'} has no cluster mode"


class RedisClusterSet:
    """`masters` cluster masters splitting the 16384 slots evenly, each with `replicas`
    replicas. `nodes` holds the masters first (indices 0 .. masters - 1), then the
    replicas (master i's are at masters + i * replicas ...); a fail-over swaps roles,
    not indices."""

    def __init__(
        self, workdir: Path, *, masters: int = 3, replicas: int = 0, appendonly: bool = False
    ) -> None:
        self.workdir = workdir
        self.masters = masters
        self.replicas = replicas
        self.nodes = [
            RedisServer(
                workdir / f"node{i}",
                free_cluster_port(),
                appendonly=appendonly,
                extra=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",  # inside the node's --dir
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    "--logfile",
                    "redis.log",
                    # A replica's first sync starts at once (the default waits 5 s for
                    # more replicas to share the transfer).
                    "--repl-diskless-sync-delay",
                    "0",
                    # CLUSTER SLOTS lists a replica once its replication offset is not 0:
                    # an idle master moves it by pinging its replicas (10 s by default).
                    "--repl-ping-replica-period",
                    "1",
                ),
            )
            for i in range(masters * (1 + replicas))
        ]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """The router's ``[router] redis`` for this cluster (every node as a seed)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, index: int | None = None, timeout: float = 60) -> None:
        """Start every node, give each its slot range, join them and wait until all
        agree; or (`index`) start that one node again on its port and files after
        `kill`: it rejoins from its nodes.conf (`wait_ok` waits for that)."""
        if index is not None:
            self.nodes[index].start()
            return
        for node in self.nodes:
            node.start()
        count = self.masters
        for index, node in enumerate(self.nodes[:count]):
            with _client(node.port) as client:
                if client.info("cluster").get("cluster_enabled") != 1:
                    raise RuntimeError(f"redis-server on {node.port} has cluster mode off")
                first, last = index * SLOTS // count, (index + 1) * SLOTS // count - 1
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
                # Distinct epochs from the start: no collision to resolve (as redis-cli does).
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
        with _client(self.nodes[0].port) as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        deadline = time.monotonic() + timeout
        for index in range(count, len(self.nodes)):
            master = self.nodes[(index - count) // self.replicas]
            self._replicate(self.nodes[index].port, master.port, deadline)
        for node in self.nodes[count:]:
            self._wait_link(node.port, deadline)
        self.wait_ok(max(0.1, deadline - time.monotonic()), replicas=self.replicas)

    def _replicate(self, port: int, master_port: int, deadline: float) -> None:
        """Make node `port` a replica of the master on `master_port`, once it has heard
        of that master (the MEET spreads by gossip)."""
        with _client(master_port) as client:
            master_id = client.execute_command("CLUSTER", "MYID").decode()
        while True:
            try:
                with _client(port) as client:
                    client.execute_command("CLUSTER", "REPLICATE", master_id)
                return
            except redis.ResponseError as exc:  # ERR Unknown node ...
                if time.monotonic() > deadline:
                    raise AssertionError(f"node {port} cannot replicate {master_id}") from exc
            time.sleep(0.05)

    def _wait_link(self, port: int, deadline: float) -> None:
        """Wait until the replica on `port` is in sync with its master."""
        while True:
            with contextlib.suppress(redis.RedisError), _client(port) as client:
                if client.info("replication").get("master_link_status") == "up":
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"replica {port}: master link not up")
            time.sleep(0.05)

    def wait_ok(self, timeout: float = 20, *, replicas: int = 0) -> None:
        """Wait until every running node says cluster_state:ok, knows every node and
        serves the same slot map, each slot range with `replicas` replicas at least
        (blocking: call it from a thread in async code). A killed node is left out, but
        its slots must be served by a running one: its replica, after a fail-over."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                maps = set()
                for node in self.running:
                    with _client(node.port) as client:
                        info = client.execute_command("CLUSTER", "INFO").decode()
                        slots = client.execute_command("CLUSTER", "SLOTS")
                    fields = dict(line.split(":", 1) for line in info.split("\r\n") if ":" in line)
                    if fields.get("cluster_state") != "ok" or fields.get(
                        "cluster_known_nodes"
                    ) != str(len(self.nodes)):
                        state = fields.get("cluster_state")
                        known = fields.get("cluster_known_nodes")
                        raise RuntimeError(
                            f"node {node.port}: cluster_state {state}, "
                            f"knows {known} of {len(self.nodes)} nodes"
                        )
                    maps.add(
                        frozenset(
                            (
                                int(s[0]),
                                int(s[1]),
                                int(s[2][1]),
                                frozenset(int(r[1]) for r in s[3:]),
                            )
                            for s in slots
                        )
                    )
                ranges = next(iter(maps))
                alive = {node.port for node in self.running}
                if (
                    len(maps) == 1
                    and sum(b - a + 1 for a, b, _, _ in ranges) == SLOTS
                    and all(master in alive for _, _, master, _ in ranges)
                    and all(len(r) >= replicas for *_, r in ranges)
                ):
                    return
                last = f"nodes disagree on slots: {maps}"
            except (redis.RedisError, RuntimeError, OSError) as exc:
                last = str(exc)
            time.sleep(0.05)
        raise AssertionError(f"cluster not ok within {timeout} s: {last}")

    @property
    def running(self) -> list[RedisServer]:
        """The nodes whose process runs."""
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def port_of(self, key: str) -> int:
        """The port of the master serving `key`'s slot."""
        with _client(self.running[0].port) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
        for first, last, master, *_ in self._slots():
            if first <= slot <= last:
                return int(master[1])
        raise AssertionError(f"slot {slot} is not served")

    def index_of(self, key: str) -> int:
        """The index in `nodes` of the master serving `key`'s slot."""
        return self.ports.index(self.port_of(key))

    def replica_ports_of(self, key: str) -> list[int]:
        """The ports of the replicas of the master serving `key`'s slot (as the slot
        map lists them)."""
        with _client(self.running[0].port) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
        for first, last, _master, *replicas in self._slots():
            if first <= slot <= last:
                return [int(r[1]) for r in replicas]
        raise AssertionError(f"slot {slot} is not served")

    def kill(self, index: int) -> None:
        """kill -9 node `index` (its files stay, for `start(index)`)."""
        self.nodes[index].kill()

    def stop(self) -> None:
        """End every node and remove their files."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                if node.proc is not None and node.proc.poll() is None:
                    node.proc.kill()
                    node.proc.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _slots(self) -> list[list[Any]]:
        for node in self.running:
            with contextlib.suppress(redis.RedisError), _client(node.port) as client:
                return list(client.execute_command("CLUSTER", "SLOTS"))
        raise AssertionError("no node answers CLUSTER SLOTS")


@contextlib.contextmanager
def _client(port: int) -> Iterator[redis.Redis]:
    """A plain (non-cluster) client of one node."""
    client = redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=1)
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def cluster_running(workdir: Path, **options: Any) -> Iterator[RedisClusterSet]:
    """A started `RedisClusterSet` (`options` as its constructor takes), stopped and
    removed afterwards whatever happened."""
    nodes = RedisClusterSet(workdir, **options)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
