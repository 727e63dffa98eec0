"""Redis connections: an existing server by URL, a Sentinel-watched master, a Redis
Cluster, or a private embedded server.

``redis = "embedded"`` runs a ``redis-server`` child with its append-only file
and a unix socket under ``state_dir`` (no TCP port unless ``embedded_port`` is
set). Whoever starts it holds ``state_dir/redis.lock``; another process of the
same configuration (a CLI command next to the daemon) finds the socket and
uses the running server instead of starting a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.typing import EncodableT

from router.config import RouterSettings, Settings
from router.errors import RouterError
from router.store.redis_url import (
    ClusterUrl,
    is_cluster_url,
    is_sentinel_url,
    parse_cluster_url,
    parse_sentinel_url,
)
from router.systemd import child_environment

MAX_CONNECTIONS = 128  # per process; Redis' default maxclients is 10,000
# A cluster node's connections beyond the commands in flight: the client's own topology
# refresh (CLUSTER SLOTS, COMMAND) may run on a node while a command waits there.
CLUSTER_SPARE_CONNECTIONS = 4


class RedisUnavailable(RouterError, RuntimeError):
    """Redis could not be reached or the embedded server could not start."""


def as_text(value: Any) -> str:
    """Redis replies come as bytes (jobs are binary); most fields are text."""
    return value.decode() if isinstance(value, bytes) else str(value)


class EmbeddedRedis:
    """A private ``redis-server`` child living under `state_dir`."""

    def __init__(self, state_dir: Path, port: int = 0) -> None:
        self.state_dir = state_dir.resolve()
        self.port = port
        self.socket = self.state_dir / "redis.sock"
        self._lock: IO[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    async def acquire(self, *, adopt: bool, wait: float = 30.0) -> None:
        """Use the running server, or start one. `adopt` takes over a server left
        behind by a process that died, so it is stopped when we stop."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            alive = await self._answers()
            if alive and not adopt:
                return
            if self._try_lock():
                if not alive:
                    await self._spawn()
                return
            if alive:
                return  # another live process owns it; share it
            if asyncio.get_running_loop().time() > deadline:
                raise RedisUnavailable(
                    f"embedded Redis in {self.state_dir} is locked by another process "
                    "that does not answer; is an old sms-router still starting?"
                )
            await asyncio.sleep(0.1)

    async def release(self) -> None:
        """Stop the server if we started or adopted it."""
        if self._lock is None:
            return
        if self._process is not None:
            self._process.send_signal(signal.SIGTERM)  # redis flushes its AOF on TERM
            try:
                await asyncio.to_thread(self._process.wait, 15)
            except subprocess.TimeoutExpired:
                self._process.kill()
        elif await self._answers():
            with contextlib.suppress(RedisError, OSError):
                client = Redis.from_url(self.url)
                await client.shutdown(nosave=False)
        self._lock.close()
        self._lock = None
        self._process = None

    def _try_lock(self) -> bool:
        handle = open(self.state_dir / "redis.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock = handle
        return True

    async def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        client = Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=2)
        try:
            return bool(await client.ping())
        except (RedisError, OSError):
            return False
        finally:
            await client.aclose()

    async def _spawn(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisUnavailable(
                "redis-server is not on PATH (embedded Redis needs it; "
                "`make run` installs it, or: apt-get install redis-server)"
            )
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.state_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--logfile",
            str(self.state_dir / "redis.log"),
        ]
        # One short fork+exec at startup; the loop has nothing else to do yet.
        self._process = subprocess.Popen(  # noqa: ASYNC220
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            env=child_environment(),  # not NOTIFY_SOCKET: we alone talk to systemd
            start_new_session=True,  # a Ctrl-C in the terminal goes to us, not to it
        )
        for _ in range(200):
            if self._process.poll() is not None:
                raise RedisUnavailable(
                    f"embedded redis-server exited with {self._process.returncode}; "
                    f"see {self.state_dir / 'redis.log'}"
                )
            if await self._answers():
                return
            await asyncio.sleep(0.05)
        raise RedisUnavailable(f"embedded redis-server did not answer on {self.socket}")


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when we die, even by kill -9 (it then saves)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (asks the sentinels where the master is at each new connection,
    drops connections to a demoted master) that makes callers wait for a free
    connection, like the URL path's `BlockingConnectionPool`."""


class ClusterUnreachable(RouterError, RedisConnectionError):
    """No seed or known cluster node gave a usable slot map (none answered, or they
    leave slots uncovered or disagree): an outage, like a refused connection."""


class RouterCluster(RedisCluster):
    """redis-py's cluster client with the single-server pool's manners.

    Callers wait for a connection rather than fail: redis-py's cluster nodes raise
    MaxConnectionsError when their pool is full, so at most `in_flight` commands and
    pipelines run at once (each holds at most one connection per node). A missing slot
    map raises `ClusterUnreachable` (a ConnectionError, which the loops wait out)
    instead of redis-py's RedisClusterException, which is also raised for bugs.
    """

    def __init__(self, *, in_flight: int, **options: Any) -> None:
        super().__init__(**options)
        self.in_flight = asyncio.Semaphore(in_flight)

    async def initialize(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> RedisCluster:
        try:
            return await super().initialize(additional_startup_nodes_info, last_failed_node_name)
        except RedisClusterException as exc:
            raise ClusterUnreachable(f"no usable cluster slot map: {exc}") from exc

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        async with self.in_flight, _closed_is_an_outage():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:
            raise RedisClusterException("shard_hint is not supported in cluster mode")
        # redis-py's typing declares `_event_dispatcher` on the commands protocol, which
        # ClusterPipeline never sets (nor reads): mypy takes the class for abstract.
        return _WaitingPipeline(self, transaction)  # type: ignore[abstract]


class _WaitingPipeline(ClusterPipeline):
    """A cluster pipeline that waits for its turn like a command (`RouterCluster`)."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        client = cast(RouterCluster, self.cluster_client)
        async with client.in_flight, _closed_is_an_outage():
            return await super().execute(raise_on_error, allow_redirections)


# What redis-py's connection calls on its (then missing) reader and writer streams.
_STREAM_METHODS = frozenset(
    {"write", "writelines", "drain", "read", "readline", "readexactly", "readuntil", "close"}
)


@contextlib.asynccontextmanager
async def _closed_is_an_outage() -> AsyncIterator[None]:
    """A cluster command whose connection redis-py closed under it is a ConnectionError.

    When reloading the slot map fails (during a fail-over: the dead master asked for
    COMMAND), redis-py 8.1 disconnects every connection of every node, those in use by
    other commands too (NodesManager.aclose); such a command then fails on its missing
    stream with AttributeError ('NoneType' object has no attribute 'writelines'). The
    loops must wait that out as the outage it is, not stop or dead-letter a job.
    """
    try:
        yield
    except AttributeError as exc:
        if exc.obj is not None or exc.name not in _STREAM_METHODS:
            raise  # any other AttributeError is a bug
        raise RedisConnectionError(f"connection closed while in use ({exc})") from exc


def _cluster_client(target: ClusterUrl, router: RouterSettings) -> RouterCluster:
    """A cluster client on the seed nodes with the single-server client's time-outs."""
    return RouterCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        in_flight=MAX_CONNECTIONS,
        max_connections=MAX_CONNECTIONS + CLUSTER_SPARE_CONNECTIONS,  # per node
        # No retries inside redis-py: a failed call raises at once (after the client
        # marks its slot map for a refresh) and the caller's loop waits the outage out.
        # MOVED/ASK/TRYAGAIN redirections are still followed: they are not failures.
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=router.redis_connect_timeout,
        socket_timeout=router.redis_socket_timeout,
        health_check_interval=router.redis_health_check,
        password=(
            router.redis_password.get_secret_value() if router.redis_password is not None else None
        ),
    )


@contextlib.asynccontextmanager
async def open_redis(settings: Settings, *, daemon: bool = False) -> AsyncIterator[Redis]:
    """A Redis client for the configured server, starting the embedded one if needed.

    The daemon (`daemon=True`) adopts an embedded server left by a killed run;
    a CLI command only starts one if none runs, and stops what it started.
    A ``redis+sentinel://`` URL gives a client of the master the sentinels name: after
    a fail-over its next connections go to the new master (the loops wait out the
    switch as an outage, see router/store/outages.py). A ``redis+cluster://`` URL gives a
    `RouterCluster` typed as `Redis`: it offers the part of the API the router uses, and
    every script and transaction keeps its keys in one slot (the profile's hash tag).
    """
    embedded: EmbeddedRedis | None = None
    sentinel: Sentinel | None = None
    url = settings.router.redis
    if url == "embedded":
        embedded = EmbeddedRedis(settings.router.state_dir, settings.router.embedded_port)
        await embedded.acquire(adopt=daemon)
        url = embedded.url
    router = settings.router
    # A bounded pool that makes callers wait for a connection rather than fail: a burst
    # of delivery reports must slow down, not be refused.
    # No retries inside redis-py (Retry(..., 0)): a failed call raises at once and the
    # caller's loop waits the outage out (router/store/outages.py), logging it once.
    options: dict[str, Any] = {
        "max_connections": MAX_CONNECTIONS,
        "timeout": 60,
        "socket_connect_timeout": router.redis_connect_timeout,
        "socket_timeout": router.redis_socket_timeout,
        "health_check_interval": router.redis_health_check,
        "retry": Retry(NoBackoff(), 0),
    }
    if router.redis_password is not None:
        options["password"] = router.redis_password.get_secret_value()
    client: Redis
    if is_cluster_url(url):
        # RedisCluster is no subclass of Redis but offers the commands, scripts and
        # pipelines the router calls on `Redis`; one cast here keeps every user's typing.
        client = cast(Redis, _cluster_client(parse_cluster_url(url), router))
    elif is_sentinel_url(url):
        target = parse_sentinel_url(url)
        sentinel = Sentinel(
            list(target.sentinels),
            # A sentinel answers "where is the master" at once or is skipped for the
            # next one: short time-outs, no retries.
            sentinel_kwargs={
                "socket_connect_timeout": router.redis_connect_timeout,
                "socket_timeout": router.redis_connect_timeout,
                "retry": Retry(NoBackoff(), 0),
            },
        )
        client = sentinel.master_for(
            target.service,
            connection_pool_class=BlockingSentinelPool,
            db=target.db,
            check_connection=True,  # PING a new connection: a dead address fails there
            **options,
        )
    else:
        client = Redis(connection_pool=BlockingConnectionPool.from_url(url, **options))
    try:
        try:
            await client.ping()
        except (RedisError, RedisClusterException, OSError) as exc:
            raise RedisUnavailable(f"cannot reach Redis at {_safe_url(url)}: {exc}") from None
        yield client
    finally:
        await client.aclose()
        if sentinel is not None:
            await sentinel.aclose()
        if embedded is not None:
            await embedded.release()


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
