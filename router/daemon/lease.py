"""The instance lease: one running daemon per `instance` name.

Two daemons with the same name are the same consumer in every group: both would
recover (and resend) the same pending entries. At start-up a daemon takes
``sms:lease:<instance>`` (SET NX with a TTL, value = host, pid, start time); the
health beat renews it while the value is still ours, and shutdown deletes it.
A lease left by a killed daemon on this host whose pid no longer exists is taken
over at once; one left from another host runs out after its TTL.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from redis.asyncio import Redis

from router.errors import RouterError
from router.store import scripts

# Renew while ours, take over a dead holder's, release only ours (lua/lease_*.lua).
_RENEW = scripts.source("lease_renew")
_TAKE_OVER = scripts.source("lease_take_over")
_RELEASE = scripts.source("lease_release")


class InstanceTaken(RouterError, RuntimeError):
    """Another live daemon holds this instance name."""


def lease_key(instance: str) -> str:
    return f"sms:lease:{instance}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


class Lease:
    """This daemon's claim on its instance name."""

    def __init__(self, redis: Redis, instance: str, ttl: float) -> None:
        self._redis = redis
        self.instance = instance
        self.key = lease_key(instance)
        self.ttl_ms = int(ttl * 1000)
        self.host = socket.gethostname()
        self.value = json.dumps(
            {"host": self.host, "pid": os.getpid(), "started_at": round(time.time(), 3)}
        )
        self._renew = redis.register_script(_RENEW)
        self._take_over = redis.register_script(_TAKE_OVER)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self) -> None:
        """Take the lease, or raise `InstanceTaken` naming the holder."""
        for _ in range(3):  # a holder may vanish between our reads
            if await self._redis.set(self.key, self.value, nx=True, px=self.ttl_ms):
                return
            raw = await self._redis.get(self.key)
            if raw is None:
                continue
            seen = raw.decode() if isinstance(raw, bytes) else str(raw)
            holder = _holder(seen)
            pid = int(holder.get("pid", -1))
            # Our own pid in a lease we did not write: a predecessor that died and whose
            # pid we were given again (a container's pid 1 after a restart).
            if holder.get("host") == self.host and (pid == os.getpid() or not _pid_alive(pid)):
                if await self._take_over(keys=[self.key], args=[seen, self.value, self.ttl_ms]):
                    return
                continue
            raise InstanceTaken(
                f"instance {self.instance!r} is already running on host "
                f"{holder.get('host', '?')} (pid {holder.get('pid', '?')}); stop it or give "
                "this daemon another [router] instance name"
            )
        raise InstanceTaken(f"instance {self.instance!r}: could not take its lease in Redis")

    async def renew(self) -> int:
        """1 renewed, 2 re-taken after it lapsed (a Redis outage), 0 another daemon has it."""
        return int(await self._renew(keys=[self.key], args=[self.value, self.ttl_ms]))

    async def holder(self) -> dict[str, Any]:
        raw = await self._redis.get(self.key)
        return _holder(raw.decode() if isinstance(raw, bytes) else str(raw or "{}"))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.value])


def _holder(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}
