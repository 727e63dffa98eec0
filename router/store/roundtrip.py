"""Pipelines and MULTIs that work the same on one Redis and on Redis Cluster.

redis-py 8.1's cluster pipeline refuses some methods outright (``evalsha``, ``mget``)
and, in a MULTI, fails on the replies of typed methods (``smembers``, ``xack``...: it
hands their callbacks an unexpected ``keys`` argument); a single server's pipeline
holding `Script` objects asks ``SCRIPT EXISTS`` first, a round trip of its own. Here a
pipeline is a list of plain commands (`evalsha` builds the command of a script);
`execute` sends them in one round trip and, when Redis has not got a script (a
restarted or new master, a flushed cache), loads the scripts and runs again only the
commands that failed for that, so nothing runs twice.

A command that names no key (``WAIT``) may end with `OnNodeOf(key)`: on a cluster it
then goes to the master serving `key`'s slot, in that node's share of the pipeline, on
the same connection and after the commands before it there (redis-py's cluster
pipeline sends each node's commands in order on one connection); on a single server
the marker is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

Command = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class OnNodeOf:
    """The last item of a command that names no key: run it on the node serving
    `key`'s slot (on a cluster; ignored on a single server)."""

    key: str


def is_cluster(redis: Redis) -> bool:
    """Whether `redis` is a cluster client (typed `Redis` by router/store/connections.py)."""
    return isinstance(redis, RedisCluster)


def evalsha(script: AsyncScript, script_keys: Sequence[str], args: Sequence[Any]) -> Command:
    """The command that runs `script` on `script_keys` with `args`."""
    return ("EVALSHA", script.sha, len(script_keys), *script_keys, *args)


async def execute(
    redis: Redis,
    commands: Sequence[Command],
    scripts: Sequence[AsyncScript] = (),
    *,
    transaction: bool = False,
) -> list[Any]:
    """The replies of `commands`, sent in one pipeline (a MULTI when `transaction`).
    A command's error is raised (the first one), after every command ran. When some
    ran again for a missing script, every ``WAIT`` runs again too, in its place: it
    must follow the writes it waits for."""
    replies: list[Any] = [None] * len(commands)
    todo = list(range(len(commands)))
    for attempt in range(2):
        cluster = cast(RedisCluster, redis) if is_cluster(redis) else None
        if cluster is not None and any(c and isinstance(c[-1], OnNodeOf) for c in commands):
            # The nodes are looked up before the pipeline runs: a slot map marked stale
            # by a failed call is loaded now, so the pipeline routes the scripts by the
            # same map.
            await cluster.initialize()
        async with redis.pipeline(transaction=transaction) as pipe:
            for i in todo:
                command = commands[i]
                if command and isinstance(command[-1], OnNodeOf):
                    if cluster is not None:
                        node = cluster.get_node_from_key(command[-1].key)
                        pipe.execute_command(*command[:-1], target_nodes=node)
                    else:
                        pipe.execute_command(*command[:-1])
                else:
                    pipe.execute_command(*command)
            got = await pipe.execute(raise_on_error=False)
        again = []
        for i, reply in zip(todo, got, strict=True):
            if isinstance(reply, NoScriptError) and attempt == 0:
                again.append(i)
            else:
                replies[i] = reply
        if not again:
            break
        again = sorted({*again, *(i for i in todo if _is_wait(commands[i]))})
        for script in scripts:
            await redis.script_load(script.script)  # on every master of a cluster
        todo = again
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _is_wait(command: Command) -> bool:
    return bool(command) and str(command[0]).upper() == "WAIT"
