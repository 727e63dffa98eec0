"""Status callbacks: POST each status change of a message to its status_callback_url.

The ledger puts the change on ``sms:callbacks`` in the same atomic step that records
it (only for messages with a ``status_callback_url``, the job's or its profile's).
`StatusPoster` reads that stream in the consumer group ``posters``, so several
instances share the work and a restart resumes where it stopped. Each change is
tried a few times with back-off; one that still is not taken goes to
``sms:callbacks:dlq`` with the reason, never silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Any

import aiohttp
import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from . import keys
from .connections import as_text

log = structlog.get_logger("router.callbacks")
GROUP = "posters"
ATTEMPTS = 6  # about 30 s of trying with the back-off below
CONCURRENCY = 32


def body_of(fields: dict[str, str]) -> dict[str, Any]:
    """The JSON posted for one status change (the url itself is not part of it)."""
    body: dict[str, Any] = {k: v for k, v in fields.items() if k != "url"}
    if "meta" in body:
        with contextlib.suppress(ValueError):
            body["meta"] = json.loads(body["meta"])
    if "at" in body:
        with contextlib.suppress(ValueError):
            body["at"] = float(body["at"])
    return body


class StatusPoster:
    """Posts status changes to the applications that asked for them."""

    def __init__(self, redis: Redis, *, consumer: str, base_delay: float = 0.5) -> None:
        self._redis = redis
        self.consumer = consumer
        self.base_delay = base_delay
        self.posted = 0
        self._slots = asyncio.Semaphore(CONCURRENCY)

    async def run(self, stopping: asyncio.Event) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
            await self._redis.xgroup_create(keys.CALLBACKS, GROUP, id="0", mkstream=True)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            start = "0"  # this consumer's unfinished entries first (a restart)
            while not stopping.is_set():
                reply: Any = await self._redis.xreadgroup(
                    GROUP,
                    self.consumer,
                    {keys.CALLBACKS: start},
                    count=100,
                    block=None if start == "0" else 500,
                )
                rows = reply[0][1] if reply else []
                if start == "0" and not rows:
                    start = ">"
                    continue
                tasks = [
                    asyncio.create_task(self._deliver(session, as_text(entry_id), raw or {}))
                    for entry_id, raw in rows
                ]
                if tasks:
                    await asyncio.gather(*tasks)

    async def _deliver(
        self, session: aiohttp.ClientSession, entry_id: str, raw: dict[Any, Any]
    ) -> None:
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        url = fields.get("url", "")
        reason = "entry without a url"
        if url:
            body = body_of(fields)
            async with self._slots:
                for attempt in range(ATTEMPTS):
                    reason = await self._post(session, url, body)
                    if not reason:
                        self.posted += 1
                        await self._done(entry_id, None, fields)
                        return
                    delay = self.base_delay * 2**attempt * random.uniform(0.5, 1.0)
                    await asyncio.sleep(delay)
        log.warning("status callback given up", id=fields.get("id"), reason=reason)
        await self._done(entry_id, reason, fields)

    async def _post(self, session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
        """'' when the application took it, else why not."""
        try:
            async with session.post(url, json=body) as response:
                if 200 <= response.status < 300:
                    return ""
                return f"http {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return type(exc).__name__  # never str(exc): it can carry the url and its token

    async def _done(self, entry_id: str, reason: str | None, fields: dict[str, str]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            if reason is not None:
                letter: dict[Any, Any] = {**fields, "reason": reason}
                pipe.xadd(keys.CALLBACK_DEAD_LETTERS, letter)
            pipe.xack(keys.CALLBACKS, GROUP, entry_id)
            pipe.xdel(keys.CALLBACKS, entry_id)
            await pipe.execute()
