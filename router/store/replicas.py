"""``[router] replicas_ack``: WAIT for replicas after each record-then-acknowledge step.

Redis replicates asynchronously: a master that dies (and is replaced by its replica
in a Sentinel fail-over) loses the writes it acknowledged but had not passed on yet.
For the steps that record an outcome and acknowledge the work entry, that loss
would make the new master resend a message the provider already took. With
``replicas_ack = N`` such a step runs as ``EVALSHA ...; WAIT N timeout`` in one round
trip, so the pipeline moves on only once N replicas hold it (or the time-out passed).
The enqueue step waits the same way (`Ledger.enqueue`), so a job the router told its
producer was queued survives a fail-over too. Fewer acknowledgements are counted
(``replica_ack_short`` in the profile's stats, in messages) and logged once per
spell, never an error: the message was recorded.

WAIT names no key and counts only the writes of its own connection. On Redis Cluster
it is sent to the master serving the step's keys (`roundtrip.OnNodeOf`), which runs it
right after the step on the same connection; a WAIT reaching any other node would
answer at once and prove nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from router.store import keys, roundtrip

log = structlog.get_logger("router.replicas")

SHORT_FIELD = "replica_ack_short"  # field of keys.stats(profile)


class ReplicaWait:
    """Runs a script followed by ``WAIT replicas timeout`` on the same connection."""

    def __init__(self, redis: Redis, replicas: int, timeout_ms: int) -> None:
        self._redis = redis
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self.short_steps = 0  # steps of this process acknowledged by too few replicas
        self._short_since: float | None = None  # monotonic start of the current spell

    @property
    def wanted(self) -> bool:
        """Whether steps wait for replicas at all (False costs nothing)."""
        return self.replicas > 0

    async def run(
        self,
        script: AsyncScript,
        script_keys: Sequence[str],
        args: Sequence[Any],
        *,
        profile: str,
        messages: int,
    ) -> Any:
        """The script's reply, once `replicas` replicas acknowledged it or the time-out
        passed (then `messages` are counted short for `profile`). A new master after a
        fail-over has an empty script cache (so has one whose cache was flushed):
        `roundtrip.execute` loads the script and runs the step and its WAIT again."""
        reply, acked = await roundtrip.execute(
            self._redis,
            [roundtrip.evalsha(script, script_keys, args), self.command(script_keys[0])],
            [script],
        )
        await self.note(int(acked), {profile: messages})
        return reply

    def command(self, key: str | None = None) -> roundtrip.Command:
        """The WAIT to send after a step's commands, on the same connection: on a
        cluster, on the node serving `key` (a key the step wrote)."""
        wait = ("WAIT", self.replicas, self.timeout_ms)
        return wait if key is None else (*wait, roundtrip.OnNodeOf(key))

    async def note(self, acked: int, messages: Mapping[str, int]) -> None:
        """Count a step's messages (profile -> how many) short when fewer than
        `replicas` replicas acknowledged it (WAIT's answer, `acked`)."""
        if acked >= self.replicas:
            if self._short_since is not None:
                log.info(
                    "replicas acknowledge again",
                    wanted=self.replicas,
                    short_seconds=round(time.monotonic() - self._short_since, 1),
                )
                self._short_since = None
            return
        self.short_steps += 1
        for profile, count in messages.items():
            await self._redis.hincrby(keys.stats(profile), SHORT_FIELD, count)
        if self._short_since is None:
            self._short_since = time.monotonic()
            log.warning(
                "fewer replicas acknowledged a step than replicas_ack asks; "
                "counting them (replica_ack_short) until they catch up",
                profiles=sorted(messages),
                wanted=self.replicas,
                acknowledged=acked,
                timeout_ms=self.timeout_ms,
            )
