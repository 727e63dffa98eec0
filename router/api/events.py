"""``GET /v1/events``: status changes, inbound messages and link clicks, live, over a
websocket.

The source is each profile's event stream (``sms:{P}:events``): the ledger adds every
status change, `router.engine.inbound` every stored inbound message; a subscriber gets them
merged. Protocol (docs/events.md, "The event websocket"):

1. Connect with ``Authorization: Bearer <token>`` (scope ``read``); no or a wrong
   token is answered 401/403 before the upgrade.
2. Send one subscribe message, within `SUBSCRIBE_WITHIN` seconds, every key optional:
   ``{"profile": "demo" | [...], "status": ["delivered", "inbound", ...],
   "ids": ["job-1", ...], "account": "acme" | [...], "from": "$" | "0" | "<event id>"
   | {"<profile>": "<event id>", ...}, "heartbeat": 15}``. ``from`` "$" (the default)
   is only what happens from now on; an event id starts every profile's stream right
   after it; a position (the last event id of each profile, as heartbeats give it)
   resumes each stream right after its own (nothing in between is missed while the
   stream still holds it; a profile the position does not name starts from its first
   event).
3. The server answers ``{"type": "subscribed", "from": ..., "position": {...}}``, then
   sends each matching event as JSON: ``{"type": "status" | "inbound" | "click",
   "event_id": ...}`` plus the event's fields (``profile`` among them; a click's
   ``url`` is the clicked link's original URL, ``status`` is ``click``); and ``{"type":
   "heartbeat", "last_event_id": ..., "position": {...}}`` after `heartbeat` seconds
   without a message (websocket pings run too).

The ``account`` filter passes the messages those accounts submitted: a `queued` event
carries ``account``, later status changes do not, so their records say (one pipelined
read per batch of events, remembered per subscriber); an inbound message passes only
when its event names the account. A caller that is an account without the ``admin``
scope gets only its own messages' events, whatever it asks (asking for another
account's closes with 4403).

Memory stays bounded whatever the client does: events are read from Redis a batch at
a time and only as fast as the client takes them. A client whose socket takes nothing
for `SEND_STALL` seconds, or that falls so far behind that the stream has dropped
events it has not seen, is closed with code 4008 and a reason. A bad subscribe
message closes with 4400 naming the field; none in time, 4408. A close reason fits a
close frame (123 bytes of UTF-8): reasons are short, and a value quoted in one (a key,
a status, a profile) is shortened at a word boundary with an ellipsis (`fit`).
During a Redis outage
the socket stays open (heartbeats go on) and reading resumes after the last event
sent once Redis answers.

One `EventHub` per application watches the streams with one blocking read per
profile and wakes the subscribers, which then read from their own positions without
blocking: idle subscribers hold no Redis connection. Events of one profile come in
their order; events of different profiles are merged by id, batch by batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog
from aiohttp import WSMsgType, web
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from router.api.common import CONTEXT, ApiError, caller_of, scoped
from router.engine.callbacks import body_of
from router.engine.inbound import render
from router.policy.accounts import Caller
from router.store import keys
from router.store.connections import as_text
from router.store.ledger import STATUSES
from router.store.outages import REDIS_ERRORS, Pause, RedisOutages

log = structlog.get_logger("router.api_events")

SUBSCRIBE_WITHIN = 10.0  # seconds to send the subscribe message
HEARTBEAT = 15.0  # default seconds of quiet before a heartbeat message
PING = 20.0  # websocket ping interval (aiohttp closes the socket if no pong comes)
SEND_STALL = 10.0  # seconds one send may wait for the client before it is dropped
BATCH = 500  # events read from Redis at a time per subscriber
POLL = 1.0  # an idle subscriber looks at the stream at least this often
MAX_IDS = 10_000
MAX_ACCOUNTS = 1000
KNOWN_ACCOUNTS = 50_000  # job id -> account remembered per subscriber (then forgotten)
KINDS = frozenset({*STATUSES, "inbound", "click"})
_EVENT_ID = re.compile(r"^\d+(-\d+)?$")

BAD_SUBSCRIPTION = 4400
FORBIDDEN = 4403
NO_SUBSCRIPTION = 4408
TOO_SLOW = 4008
# RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code.
MAX_REASON = 123
QUOTED = 40  # bytes of a client's or a profile's value quoted in a close reason
ELLIPSIS = "\u2026"


def fit(text: str, limit: int = MAX_REASON) -> str:
    """`text` if it takes at most `limit` bytes of UTF-8, else its first words that
    fit followed by an ellipsis (one word longer than the limit is cut between two
    characters), within `limit` bytes all told."""
    if len(text.encode()) <= limit:
        return text
    room = limit - len(ELLIPSIS.encode())
    head = text.encode()[:room].decode(errors="ignore")  # ends on a whole character
    if not text[len(head)].isspace():
        # The cut is inside a word: keep the words before it, if any.
        space = max((i for i, c in enumerate(head) if c.isspace()), default=0)
        head = head[:space] or head
    return head.rstrip(" \t\n,;:") + ELLIPSIS


def _quoted(value: str) -> str:
    """A client's value for a close reason: shortened to `QUOTED` bytes, quoted."""
    return repr(fit(value, QUOTED))


@dataclass(frozen=True)
class Subscription:
    """What one client asked for; empty filters match everything."""

    profiles: frozenset[str] = frozenset()
    statuses: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    start: str | dict[str, str] = "$"
    heartbeat: float = HEARTBEAT
    accounts: frozenset[str] = frozenset()

    def matches(self, event: dict[str, Any], account: str | None = None) -> bool:
        """Whether `event` (as sent) passes every filter; `account`: the account its
        record names, when the event does not."""
        kind = "inbound" if event["type"] == "inbound" else event.get("status", "")
        return (
            (not self.profiles or event.get("profile") in self.profiles)
            and (not self.statuses or kind in self.statuses)
            and (not self.ids or event.get("id") in self.ids)
            and (not self.accounts or (event.get("account") or account) in self.accounts)
        )


def _strings(data: dict[str, Any], name: str, limit: int) -> frozenset[str]:
    value = data.get(name)
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{name}: must be a string or a list of non-empty strings")
    if len(value) > limit:
        raise ValueError(f"{name}: at most {limit} values")
    return frozenset(value)


def parse_subscription(data: Any) -> Subscription:
    """The subscription a client's message asks for; ValueError names what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("subscribe: must be a JSON object")
    names = {"type", "profile", "status", "ids", "account", "from", "heartbeat"}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{fit(unknown[0], QUOTED)}: unknown key")
    if data.get("type", "subscribe") != "subscribe":
        raise ValueError('type: must be "subscribe"')
    statuses = _strings(data, "status", len(KINDS))
    wrong = sorted(statuses - KINDS)
    if wrong:
        raise ValueError(
            f'status: unknown {_quoted(wrong[0])} (a message status, "inbound" or "click")'
        )
    start = data.get("from", "$")
    if isinstance(start, dict):
        for profile, at in start.items():
            if not isinstance(at, str) or not _EVENT_ID.match(at):
                raise ValueError(
                    f'from.{fit(profile, QUOTED)}: must be an event id like "1700000000000-0"'
                )
    elif not isinstance(start, str) or not (start == "$" or _EVENT_ID.match(start)):
        raise ValueError(
            'from: must be "$", an event id like "1700000000000-0", or a position '
            '{"<profile>": "<event id>", ...}'
        )
    heartbeat = data.get("heartbeat", HEARTBEAT)
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float):
        raise ValueError("heartbeat: must be a number of seconds")
    if not 1 <= heartbeat <= 300:
        raise ValueError("heartbeat: must be between 1 and 300 seconds")
    return Subscription(
        profiles=_strings(data, "profile", 1000),
        statuses=statuses,
        ids=_strings(data, "ids", MAX_IDS),
        start=start,
        heartbeat=float(heartbeat),
        accounts=_strings(data, "account", MAX_ACCOUNTS),
    )


def restricted(sub: Subscription, caller: Caller | None) -> Subscription:
    """`sub` as `caller` may have it: an account without the ``admin`` scope gets only
    its own messages (asking for another account's is refused: _Closed 4403)."""
    if caller is None or "admin" in caller.account.scopes:
        return sub
    others = sorted(sub.accounts - {caller.name})
    if others:
        raise _Closed(
            FORBIDDEN,
            f"account: {_quoted(caller.name)} may read only its own messages, "
            f"not {_quoted(others[0])}'s",
        )
    return replace(sub, accounts=frozenset({caller.name}))


def event_json(event_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """The JSON sent for one entry of the event stream."""
    if fields.get("type") == "inbound":
        entry = fields.get("id", "").removeprefix("in-")
        return {"type": "inbound", "event_id": event_id, **render(entry, fields["profile"], fields)}
    kind = "click" if fields.get("status") == "click" else "status"
    return {"type": kind, "event_id": event_id, **body_of(fields)}


def _order(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


async def latest_ids(redis: Redis, profiles: Sequence[str]) -> dict[str, str]:
    """Each profile's newest event id ("0-0" when it has none), in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for profile in profiles:
            pipe.xrevrange(keys.events(profile), count=1)
        replies: list[Any] = await pipe.execute()
    return {
        p: as_text(rows[0][0]) if rows else "0-0" for p, rows in zip(profiles, replies, strict=True)
    }


async def first_kept(redis: Redis, profile: str) -> tuple[int, int]:
    """The oldest event id the profile's stream still holds once it has dropped some
    (it is trimmed from its head to `queue.events_maxlen`), else (0, 0). Readers
    positioned before it may have missed events (exactly: unless their last event was
    the last dropped)."""
    try:
        info: Any = await redis.xinfo_stream(keys.events(profile))
    except ResponseError:  # no stream yet: nothing was dropped
        return (0, 0)
    first = info.get("first-entry")
    if not first or int(info.get("entries-added", 0)) <= int(info.get("length", 0)):
        return (0, 0)
    return _order(as_text(first[0]))


class EventHub:
    """Watches every profile's event stream (one blocking read each: a read cannot span
    Redis Cluster slots) for the whole application; each new batch wakes every
    subscriber (`wait`)."""

    def __init__(
        self, redis: Redis, outages: RedisOutages, profiles: Callable[[], Collection[str]]
    ) -> None:
        self._redis = redis
        self.outages = outages
        self.profiles = profiles  # the profiles configured now (a reload changes them)
        self.generation = 0
        self.stopping = asyncio.Event()
        self._next: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def _notify(self) -> None:
        self.generation += 1
        if self._next is not None and not self._next.done():
            self._next.set_result(None)
        self._next = None

    async def wait(self, seen: int, timeout: float) -> None:  # noqa: ASYNC109
        """Return when a stream moved since generation `seen`, or after `timeout`."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        if self.generation != seen or self.stopping.is_set():
            return
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._next), timeout)

    async def _run(self) -> None:
        """One watcher per configured profile, following reloads."""
        watchers: dict[str, asyncio.Task[None]] = {}
        try:
            while not self.stopping.is_set():
                wanted = set(self.profiles())
                for name in wanted - watchers.keys():
                    watchers[name] = asyncio.create_task(self._watch(name))
                for name in watchers.keys() - wanted:
                    watchers.pop(name).cancel()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), POLL)
        finally:
            for task in watchers.values():
                task.cancel()
            await asyncio.gather(*watchers.values(), return_exceptions=True)

    async def _watch(self, profile: str) -> None:
        pause = Pause(self.outages)
        key = keys.events(profile)
        last: str | None = None
        while not self.stopping.is_set():
            try:
                if last is None:
                    last = (await latest_ids(self._redis, [profile]))[profile]
                reply: Any = await self._redis.xread({key: last}, count=1, block=1000)
                if reply:
                    # Jump to the newest: the subscribers read the events themselves.
                    newest = (await latest_ids(self._redis, [profile]))[profile]
                    last = max(as_text(reply[0][1][-1][0]), newest, key=_order)
                    self._notify()
            except REDIS_ERRORS as exc:
                self._notify()  # the subscribers find out and wait it out themselves
                await pause.after_error("watching the event streams", exc, self.stopping)
                continue
            pause.reset()

    async def stop(self) -> None:
        """Stop watching and wake every subscriber (they see `stopping` and close)."""
        self.stopping.set()
        self._notify()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


HUB: web.AppKey[EventHub] = web.AppKey("event_hub", EventHub)
SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("event_sockets", set)


class _Closed(Exception):
    """The subscriber ends: close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Subscriber:
    """Sends one client the events it subscribed to, from its own position: the last
    event id it was sent of each profile."""

    def __init__(self, ws: web.WebSocketResponse, redis: Redis, hub: EventHub) -> None:
        self.ws = ws
        self.redis = redis
        self.hub = hub
        self.last = "0-0"  # the id of the last event sent (any profile)
        self.position: dict[str, str] = {}  # profile -> last event id sent or skipped
        self.floor: dict[str, tuple[int, int]] = {}  # first kept event when subscribing
        self.start_at = "0-0"  # where profiles the subscription did not name start
        self.sent_at = time.monotonic()
        # (profile, job id) -> the account its record names ('' none), for `account`.
        self.accounts: dict[tuple[str, str], str] = {}

    async def send(self, message: dict[str, Any]) -> None:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=str)
        try:
            # The send waits while the client's socket is full: reading from Redis
            # waits with it, so a slow client costs no memory, only position.
            await asyncio.wait_for(self.ws.send_str(text), SEND_STALL)
        except TimeoutError:
            raise _Closed(TOO_SLOW, f"too slow: nothing taken for {SEND_STALL:g} s") from None
        except ConnectionError:
            raise _Closed(1006, "gone") from None
        self.sent_at = time.monotonic()

    def _profiles(self, sub: Subscription) -> list[str]:
        return sorted(sub.profiles or self.hub.profiles())

    async def _join(self, profiles: Sequence[str], start: str | dict[str, str]) -> list[str]:
        """Position the new profiles; returns the profiles with a gap (their stream has
        dropped events after the position)."""
        if start == "$":
            self.position.update(await latest_ids(self.redis, profiles))
        else:
            for profile in profiles:
                at = start.get(profile, "0") if isinstance(start, dict) else start
                self.position[profile] = at if "-" in at else f"{at}-0"
        gaps = []
        for profile in profiles:
            self.floor[profile] = await first_kept(self.redis, profile)
            if self.floor[profile] > _order(self.position[profile]):
                gaps.append(profile)
        return gaps

    async def start(self, sub: Subscription) -> None:
        """Resolve where to start ("$" -> the newest events) and confirm the
        subscription."""
        pause = Pause(self.hub.outages)
        while True:
            try:
                gaps = await self._join(self._profiles(sub), sub.start)
                break
            except REDIS_ERRORS as exc:
                await self._pause(pause, exc)
        if isinstance(sub.start, str):
            self.last = max(self.position.values(), key=_order, default="0-0")
        started = sub.start if isinstance(sub.start, str) else "position"
        await self.send({"type": "subscribed", "from": self.last if started == "$" else started,
                         "position": dict(self.position)})  # fmt: skip
        for profile in gaps:
            await self.send({"type": "gap", "after": self.position[profile], "profile": profile})

    async def _pause(self, pause: Pause, exc: BaseException) -> None:
        await pause.after_error("reading the event stream for a websocket", exc, self.hub.stopping)
        self._check_open()
        await self.heartbeat_if_quiet(HEARTBEAT)

    def _check_open(self) -> None:
        if self.ws.closed:
            raise _Closed(1000, "")
        if self.hub.stopping.is_set():
            raise _Closed(1001, "server shutting down")

    async def heartbeat_if_quiet(self, every: float) -> None:
        if time.monotonic() - self.sent_at >= every:
            await self.send(
                {"type": "heartbeat", "last_event_id": self.last, "position": dict(self.position)}
            )

    async def _check_behind(self, profile: str) -> None:
        """Close if the stream dropped events this client has not seen yet (beyond the
        gap it was told about when it subscribed)."""
        kept = await first_kept(self.redis, profile)
        if kept > _order(self.position[profile]) and kept > self.floor.get(profile, (0, 0)):
            raise _Closed(
                TOO_SLOW,
                f"too slow: events of {fit(profile, QUOTED)} after {self.position[profile]} "
                "were dropped",
            )

    async def _read(self, profiles: Sequence[str]) -> list[tuple[str, Any, Any]]:
        """The next events of every profile (a batch each, one round trip), merged in
        id order: (profile, event id, fields)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for profile in profiles:
                pipe.xread({keys.events(profile): self.position[profile]}, count=BATCH)
            replies: list[Any] = await pipe.execute()
        rows = []
        for profile, reply in zip(profiles, replies, strict=True):
            got = reply[0][1] if reply else []
            if len(got) == BATCH:
                await self._check_behind(profile)
            rows += [(profile, raw_id, raw) for raw_id, raw in got]
        rows.sort(key=lambda r: (_order(as_text(r[1])), r[0]))
        return rows

    async def _accounts_of(self, rows: Sequence[tuple[str, Any, Any]]) -> None:
        """Learn the account of each status event's message that neither its event
        nor `accounts` tells, from the records (one round trip)."""
        wanted: list[tuple[str, str]] = []
        for profile, _raw_id, raw in rows:
            if b"account" in raw or raw.get(b"type") == b"inbound":
                continue
            pair = (profile, as_text(raw.get(b"id", b"")))
            if pair[1] and pair not in self.accounts:
                wanted.append(pair)
        wanted = list(dict.fromkeys(wanted))
        if not wanted:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for profile, job_id in wanted:
                pipe.hget(keys.record(profile, job_id), "account")
            found: list[Any] = await pipe.execute()
        if len(self.accounts) + len(wanted) > KNOWN_ACCOUNTS:
            self.accounts.clear()  # bounded: what is forgotten is read again if needed
        for pair, account in zip(wanted, found, strict=True):
            self.accounts[pair] = as_text(account) if account is not None else ""

    async def pump(self, sub: Subscription) -> None:
        """Send matching events until the client goes or the server stops."""
        pause = Pause(self.hub.outages)
        while True:
            self._check_open()
            await self.heartbeat_if_quiet(sub.heartbeat)
            seen = self.hub.generation
            try:
                profiles = self._profiles(sub)
                new = [p for p in profiles if p not in self.position]
                if new:  # a reload added profiles: their events from the start
                    await self._join(new, "0")
                rows = await self._read(profiles)
                if sub.accounts:
                    await self._accounts_of(rows)
            except REDIS_ERRORS as exc:
                await self._pause(pause, exc)
                continue
            pause.reset()
            if not rows:
                quiet = sub.heartbeat - (time.monotonic() - self.sent_at)
                await self.hub.wait(seen, max(0.05, min(POLL, quiet)))
                continue
            for profile, raw_id, raw in rows:
                event = event_json(
                    as_text(raw_id), {as_text(k): as_text(v) for k, v in raw.items()}
                )
                account = self.accounts.get((profile, str(event.get("id", "")))) or None
                if sub.matches(event, account):
                    await self.send(event)
                self.last = event["event_id"]
                self.position[profile] = event["event_id"]


async def _first_message(ws: web.WebSocketResponse) -> Subscription:
    try:
        msg = await ws.receive(timeout=SUBSCRIBE_WITHIN)
    except TimeoutError:
        raise _Closed(
            NO_SUBSCRIPTION, f"no subscribe message within {SUBSCRIBE_WITHIN:g} s"
        ) from None
    if msg.type != WSMsgType.TEXT:
        raise _Closed(BAD_SUBSCRIPTION, "subscribe: expected a JSON text message")
    try:
        return parse_subscription(json.loads(msg.data))
    except ValueError as exc:
        raise _Closed(BAD_SUBSCRIPTION, str(exc)) from None


async def _drain_client(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) what the client sends after subscribing: aiohttp handles
    close frames and pongs only while someone reads."""
    async for _msg in ws:
        pass


@scoped("read")
async def events(request: web.Request) -> web.StreamResponse:
    """GET /v1/events: the websocket (see the module docstring for the protocol)."""
    if not is_upgrade(request):
        raise ApiError(400, "GET /v1/events: a websocket upgrade is required")
    return await serve(request, caller_of(request))


def is_upgrade(request: web.Request) -> bool:
    """Whether `request` asks for a websocket this endpoint can accept."""
    return web.WebSocketResponse().can_prepare(request).ok


async def serve(
    request: web.Request,
    caller: Caller | None,
    *,
    watch: Callable[[web.WebSocketResponse], Coroutine[Any, Any, None]] | None = None,
) -> web.WebSocketResponse:
    """Serve the event websocket (the module docstring's protocol) on `request`, for
    a caller already authenticated with the ``read`` scope: `caller` is the account
    it is (restricted to its own messages unless ``admin``), None for a key. Used by
    ``GET /v1/events`` (bearer token) and the web console's live events (its session).
    `watch`, when given, runs beside the socket for as long as it is open (the console
    closes it there once its session ends)."""
    ws = web.WebSocketResponse(heartbeat=PING, max_msg_size=1_048_576)
    await ws.prepare(request)
    watcher: asyncio.Task[None] | None = None
    if watch is not None:
        watcher = asyncio.create_task(watch(ws))
    app = request.app
    hub = app[HUB]
    subscriber = _Subscriber(ws, app[CONTEXT].redis, hub)
    app[SOCKETS].add(ws)
    reader: asyncio.Task[None] | None = None
    code, reason = 1000, ""
    try:
        sub = restricted(await _first_message(ws), caller)
        reader = asyncio.create_task(_drain_client(ws))
        await subscriber.start(sub)
        await subscriber.pump(sub)
    except _Closed as closed:
        code, reason = closed.code, closed.reason
    finally:
        app[SOCKETS].discard(ws)
        if code == TOO_SLOW:
            log.info("event subscriber dropped", reason=reason, last=subscriber.last)
        if not ws.closed:
            with contextlib.suppress(TimeoutError, ConnectionError):
                # Each reason is made to fit; `fit` again in case one ever is not.
                message = fit(reason).encode()
                await asyncio.wait_for(ws.close(code=code, message=message), 5)
        for task in (reader, watcher):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    return ws


async def _on_startup(app: web.Application) -> None:
    context = app[CONTEXT]
    app[HUB] = EventHub(context.redis, RedisOutages(), lambda: context.settings.profiles)


async def _on_shutdown(app: web.Application) -> None:
    # Subscribers see `stopping` at their next step and close with 1001.
    await app[HUB].stop()


def add_routes(app: web.Application) -> None:
    """Register GET /v1/events and the hub's start and stop."""
    app[SOCKETS] = set()
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/v1/events", events)
