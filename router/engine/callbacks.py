"""Status callbacks: POST each status change of a message to its status_callback_url.

The ledger puts the change on the profile's ``sms:{P}:callbacks`` in the same atomic
step that records it (only for messages with a ``status_callback_url``, the job's or
its profile's). `StatusPoster` reads each profile's stream in the consumer group
``posters``, so several instances share the work and a restart resumes where it
stopped. Each change is tried a few times with back-off; one that still is not taken
goes to ``sms:{P}:callbacks:dlq`` with the reason, never silently dropped.

A profile with a ``webhook_secret`` gets its posts signed (`router.signing`); the
``webhook-id`` is ``status-<profile>-<entry id>``, the same on every retry and after a
restart.

Posts run independently of each other and of the reading: at most `PER_HOST` at a
time to one destination host and `CONCURRENCY` in all, so one application that
hangs slows only its own callbacks. On shutdown, posts still running when the grace
ends are cancelled; their entries stay pending and are posted after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from router import signing
from router.store import keys, roundtrip
from router.store.connections import as_text
from router.store.outages import REDIS_ERRORS, Pause, RedisOutages, backoff

log = structlog.get_logger("router.callbacks")
GROUP = "posters"
ATTEMPTS = 6  # about 30 s of trying with the back-off below
CONCURRENCY = 32  # posts in flight in all
PER_HOST = 8  # posts in flight to one destination host
BACKLOG = 5000  # entries read and not yet done; reading waits beyond this


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

    def __init__(
        self,
        redis: Redis,
        *,
        consumer: str,
        base_delay: float = 0.5,
        timeout: float = 10.0,
        grace: float = 10.0,
        outages: RedisOutages | None = None,
        signing: Mapping[str, bytes] | None = None,
        profiles: Collection[str] = (),
    ) -> None:
        """`signing`: profile name -> webhook key; other profiles' posts go unsigned.
        `profiles`: whose streams are read (`serve` changes them while running)."""
        self._redis = redis
        self.profiles = frozenset(profiles)
        self._changed = asyncio.Event()
        self.consumer = consumer
        self.signing = dict(signing or {})
        self.base_delay = base_delay
        self.timeout = timeout
        self.grace = grace
        self.outages = outages or RedisOutages()
        self.posted = 0
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._room = asyncio.Event()

    def serve(self, profiles: Collection[str]) -> None:
        """Read these profiles' streams from now on (a reload added or removed some; a
        removed profile's entries wait for its return)."""
        self.profiles = frozenset(profiles)
        self._changed.set()

    async def run(self, stopping: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        readers: dict[str, asyncio.Task[None]] = {}
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                # One reader per profile: each stream is in its profile's slot, and one
                # read cannot span slots on Redis Cluster.
                while not stopping.is_set():
                    for name in self.profiles - readers.keys():
                        readers[name] = asyncio.create_task(self._read(session, name, stopping))
                    for name in readers.keys() - self.profiles:
                        readers.pop(name).cancel()
                    self._changed.clear()
                    await self._until_change(stopping, readers.values())
            finally:
                for task in readers.values():
                    task.cancel()
                await asyncio.gather(*readers.values(), return_exceptions=True)
                await self._wind_down()

    async def _until_change(
        self, stopping: asyncio.Event, readers: Collection[asyncio.Task[None]]
    ) -> None:
        """Until the profiles change, the daemon stops or a reader ends; a reader that
        failed is a bug, raised (it stops the daemon)."""
        waits = [
            asyncio.ensure_future(self._changed.wait()),
            asyncio.ensure_future(stopping.wait()),
        ]
        try:
            await asyncio.wait([*waits, *readers], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        for task in readers:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _read(
        self, session: aiohttp.ClientSession, profile: str, stopping: asyncio.Event
    ) -> None:
        stream = keys.callbacks(profile)
        pause = Pause(self.outages)
        ready = False
        start = "0"  # this consumer's unfinished entries first (a restart), then new ones
        while not stopping.is_set():
            while len(self._tasks) >= BACKLOG and not stopping.is_set():
                self._room.clear()
                await _first(self._room.wait(), stopping.wait())
            try:
                if not ready:
                    with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
                        await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
                    ready = True
                reply: Any = await self._redis.xreadgroup(
                    GROUP,
                    self.consumer,
                    {stream: start},
                    count=100,
                    block=None if start != ">" else 500,
                )
            except REDIS_ERRORS as exc:
                await pause.after_error("reading status callbacks", exc, stopping)
                continue
            pause.reset()
            rows = reply[0][1] if reply else []
            if start != ">":
                # Paging through our own pending entries, until there are no more.
                start = as_text(rows[-1][0]) if rows else ">"
            for raw_id, raw in rows:
                entry = (profile, as_text(raw_id))
                if entry in self._tasks:
                    continue
                task = asyncio.create_task(self._deliver(session, entry, raw or {}, stopping))
                self._tasks[entry] = task
                task.add_done_callback(functools.partial(self._forget, entry))

    def _forget(self, entry: tuple[str, str], _task: asyncio.Task[None]) -> None:
        self._tasks.pop(entry, None)
        self._room.set()

    async def _wind_down(self) -> None:
        """Posts in flight get the grace; the rest are cancelled and stay pending."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=self.grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.info("status callbacks left pending for the next start", count=len(pending))

    async def _deliver(
        self,
        session: aiohttp.ClientSession,
        entry: tuple[str, str],
        raw: dict[Any, Any],
        stopping: asyncio.Event,
    ) -> None:
        profile, entry_id = entry
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        url = fields.get("url", "")
        reason = "entry without a url"
        if url:
            body = signing.encode(body_of(fields))
            key = self.signing.get(profile)
            host = self._hosts.setdefault(urlsplit(url).netloc, asyncio.Semaphore(PER_HOST))
            async with host, self._slots:
                for attempt in range(ATTEMPTS):
                    if stopping.is_set() and attempt:
                        return  # stays pending: tried again after the restart
                    sent = signing.headers(
                        key, f"status-{profile}-{entry_id}", int(time.time()), body
                    )
                    reason = await self._post(session, url, body, sent)
                    if not reason:
                        self.posted += 1
                        await self._done(entry, None, fields, stopping)
                        return
                    await asyncio.sleep(backoff(attempt + 1, self.base_delay, 60.0))
        log.warning("status callback given up", id=fields.get("id"), reason=reason)
        await self._done(entry, reason, fields, stopping)

    async def _post(
        self, session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
    ) -> str:
        """'' when the application took it, else why not."""
        try:
            async with session.post(url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    return ""
                return f"http {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return type(exc).__name__  # never str(exc): it can carry the url and its token

    async def _done(
        self,
        entry: tuple[str, str],
        reason: str | None,
        fields: dict[str, str],
        stopping: asyncio.Event,
    ) -> None:
        """Acknowledge (and dead-letter if refused), waiting out a Redis outage; if the
        daemon stops first the entry stays pending and is posted again after the restart."""
        profile, entry_id = entry
        stream = keys.callbacks(profile)
        pause = Pause(self.outages)
        while True:
            try:
                commands: list[roundtrip.Command] = []
                if reason is not None:
                    letter = [x for kv in {**fields, "reason": reason}.items() for x in kv]
                    commands.append(("XADD", keys.callback_dead_letters(profile), "*", *letter))
                commands += [("XACK", stream, GROUP, entry_id), ("XDEL", stream, entry_id)]
                await roundtrip.execute(self._redis, commands, transaction=True)
            except REDIS_ERRORS as exc:
                if stopping.is_set():
                    return
                await pause.after_error("acknowledging status callbacks", exc, stopping)
                continue
            pause.reset()
            return


async def _first(*waits: Any) -> None:
    """Wait until the first of some coroutines returns; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
