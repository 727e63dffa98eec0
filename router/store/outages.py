"""Redis outages: how every long-running loop waits for Redis to come back.

One `RedisOutages` per daemon counts outages and logs each one twice (a warning
when it starts, an info line with its length when it ends), whatever number of
loops notice it. Each loop owns a `Pause`: after a Redis error it backs off
(`backoff`) and tries again; after a success it reports Redis as answering.
Only Redis errors are paused on: any other exception is a bug and ends the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterError,
    MasterDownError,
    ReadOnlyError,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = structlog.get_logger("router.outages")

# What a loop waits out: Redis unreachable, slow, loading, or answering with an error.
# SlotNotCoveredError is redis-py's cluster client finding no node for a slot; it is
# no RedisError (its base, RedisClusterException, also means bugs: keys of several
# slots in one script or transaction, which are not waited out).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, SlotNotCoveredError, OSError)
# What one message's handling waits out and then retries: the server is not there.
# redis-py wraps socket errors in these; a bare OSError or a ResponseError there is
# not taken for an outage (the entry is left pending instead of resent in a loop).
# A Sentinel fail-over shows as these too: the master's connections break
# (ConnectionError), the sentinels name no master for a while (MasterNotFoundError, a
# ConnectionError), a demoted master answers writes with READONLY (ReadOnlyError; the
# sentinel pool turns it into a ConnectionError, a plain URL through a moved address
# does not), a replica cut from its master answers MASTERDOWN.
# A Redis Cluster losing a master shows as these for its slots (the node's connections
# fail) and then as CLUSTERDOWN (ClusterDownError, a ClusterError) for every slot until
# a replica takes over or the master is back; no usable slot map is ClusterUnreachable
# (router/store/connections.py, a ConnectionError) or SlotNotCoveredError. Resharding shows
# as TRYAGAIN, and as MOVED/ASK (AskError) or ClusterError("TTL exhausted") when the
# redirections outrun redis-py's own following of them.
REDIS_DOWN: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    MasterDownError,
    ClusterError,
    TryAgainError,
    AskError,
    SlotNotCoveredError,
)


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential back-off with jitter: base * 2^(attempt-1), capped, times 0.5..1."""
    raw = min(cap, base * 2.0 ** max(0, attempt - 1))
    return raw * random.uniform(0.5, 1.0)


def describe(exc: BaseException) -> str:
    """A one-line description of a Redis error (no traceback, no URL with a password)."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# An outage whose end is followed by another failure within this many seconds goes on
# (one warning, one "answers again" per outage): on a Redis Cluster with one master
# down, the loops on the other masters' slots succeed while those on its slots fail.
SETTLE = 1.0


class RedisOutages:
    """Whether Redis answers, as seen by all loops of one daemon; counted for health."""

    def __init__(self, redis: Redis | None = None) -> None:
        self.count = 0
        self.errors = 0  # Redis errors noticed by the loops (metrics: redis errors)
        self.down_since: float | None = None  # wall clock, for the health record
        self._down_mono = 0.0
        self.last_seconds: float | None = None
        self.redis = redis
        self._dropping: asyncio.Task[None] | None = None
        self._since = 0.0  # wall clock start of the outage that is settling
        self._settling: asyncio.TimerHandle | None = None  # logs its end unless it goes on

    def _drop_idle(self) -> None:
        """Close the pool's idle connections: after a restart of the server their sockets
        are dead, and each would fail one call later (a false second outage)."""
        if self.redis is None or (self._dropping is not None and not self._dropping.done()):
            return
        redis: Redis | RedisCluster = self.redis

        async def drop() -> None:
            with contextlib.suppress(*REDIS_ERRORS):
                if isinstance(redis, RedisCluster):
                    # No single pool: each node has its own idle connections.
                    for node in redis.get_nodes():
                        await node.disconnect_free_connections()
                else:
                    await redis.connection_pool.disconnect(inuse_connections=False)

        self._dropping = asyncio.get_running_loop().create_task(drop())

    def down(self, doing: str, exc: BaseException) -> bool:
        """Note a failure; True (and one warning) if it starts a new outage."""
        self.errors += 1
        if self.down_since is not None:
            return False
        if self._settling is not None:  # it ended a moment ago: the same outage goes on
            self._settling.cancel()
            self._settling = None
            self.down_since = self._since
            return False
        self.count += 1
        self.down_since = time.time()
        self._down_mono = time.monotonic()
        log.warning("redis unreachable; pausing until it answers", doing=doing, error=describe(exc))
        self._drop_idle()
        return True

    def up(self) -> None:
        """Note a success; ends the outage (one info line with its length) if there was one."""
        if self.down_since is None:
            return
        lasted = time.monotonic() - self._down_mono
        self.last_seconds = round(lasted, 1)
        self._since, self.down_since = self.down_since, None
        self._drop_idle()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._answered(lasted)
            return
        self._settling = loop.call_later(SETTLE, self._answered, lasted)

    def _answered(self, lasted: float) -> None:
        self._settling = None
        log.info("redis answers again; resuming", outage_seconds=round(lasted, 1))

    def health(self) -> dict[str, Any]:
        return {
            "redis_outages": self.count,
            "redis_down_since": self.down_since,
            "redis_last_outage_seconds": self.last_seconds,
        }


class Pause:
    """One loop's back-off while Redis is unreachable (logging is `RedisOutages`' job)."""

    def __init__(self, outages: RedisOutages, *, base: float = 0.2, cap: float = 5.0) -> None:
        self.outages = outages
        self.failures = 0
        self.base = base
        self.cap = cap

    def reset(self) -> None:
        """The last Redis call worked."""
        self.failures = 0
        self.outages.up()

    async def after_error(
        self, doing: str, exc: BaseException, stopping: asyncio.Event | None = None
    ) -> None:
        """Note the error and wait a back-off (less if `stopping` is set meanwhile)."""
        self.failures += 1
        self.outages.down(doing, exc)
        delay = backoff(self.failures, self.base, self.cap)
        if stopping is None:
            await asyncio.sleep(delay)
            return
        try:
            await asyncio.wait_for(stopping.wait(), delay)
        except TimeoutError:
            pass
