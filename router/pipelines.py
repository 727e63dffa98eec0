"""Pipelines and MULTIs that work the same on one Redis and on Redis Cluster.

redis-py 8.1's cluster pipeline refuses some methods outright (``evalsha``, ``mget``)
and, in a MULTI, fails on the replies of typed methods (``smembers``, ``xack``...: it
hands their callbacks an unexpected ``keys`` argument); a single server's pipeline
holding `Script` objects asks ``SCRIPT EXISTS`` first, a round trip of its own. Here a
pipeline is a list of plain commands (`evalsha` builds the command of a script);
`execute` sends them in one round trip and, when Redis has not got a script (a
restarted or new master, a flushed cache), loads the scripts and runs again only the
commands that failed for that, so nothing runs twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

Command = tuple[Any, ...]


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
    A command's error is raised (the first one), after every command ran."""
    replies: list[Any] = [None] * len(commands)
    todo = list(range(len(commands)))
    for attempt in range(2):
        async with redis.pipeline(transaction=transaction) as pipe:
            for i in todo:
                pipe.execute_command(*commands[i])
            got = await pipe.execute(raise_on_error=False)
        again = []
        for i, reply in zip(todo, got, strict=True):
            if isinstance(reply, NoScriptError) and attempt == 0:
                again.append(i)
            else:
                replies[i] = reply
        if not again:
            break
        for script in scripts:
            await redis.script_load(script.script)  # on every master of a cluster
        todo = again
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies
