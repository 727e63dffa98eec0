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

Kannel's dlr-url: a message sent through Kannel's sendsms (`router.api.sendsms`) with
``dlr-mask`` and ``dlr-url`` carries the dlr-url as its status_callback_url, marked
``#kannel-dlr-mask=<mask>`` at the end (a fragment: never part of a request). Such a
url is not POSTed JSON: each status change the mask asks for is a GET of the url with
Kannel's escape codes filled in (`kannel_get_url`), as Kannel's smsbox fetches it:
``%d`` the report type (1 delivered, 2 not delivered, 8 accepted by the SMSC, 16
refused before or by the SMSC), ``%A`` the report text, ``%p``/``%P`` the receiver and
the sender, ``%T`` the time, ``%I`` the message id, and the others Kannel defines. A
change the mask does not ask for is acknowledged without a request. The same retries
and dead letters apply.

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
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Final
from urllib.parse import quote, quote_plus, urlsplit

import aiohttp
import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from yarl import URL

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

# Kannel's delivery report types (gw/dlr.h), the bits of a dlr-mask.
DLR_SUCCESS: Final = 1  # delivered to the phone
DLR_FAIL: Final = 2  # not delivered to the phone
DLR_BUFFERED: Final = 4  # queued on the SMSC (intermediate; the router reports none)
DLR_SMSC_SUCCESS: Final = 8  # accepted by the SMSC
DLR_SMSC_FAIL: Final = 16  # refused by the SMSC (or before it: rules, expiry)
KANNEL_MARK: Final = "#kannel-dlr-mask="
# Every escape code Kannel's urltrans_fill_escape_codes knows; another letter after a
# '%' is left as it is.
_KANNEL_CODES = frozenset("aAbBcCdDefFiIkmMnoOpPqQrRsStTuvV#")
_META_PARAM = re.compile(r"([^#]*)#([^#]*)#")
# What may stay as it is in a request target: RFC 3986's reserved and unreserved
# characters, and '%' (the url's own escapes and ours are already in place).
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~-._"

Attempt = Callable[[aiohttp.ClientSession], Awaitable[str]]


def body_of(fields: dict[str, str]) -> dict[str, Any]:
    """The JSON posted for one status change (the url itself is not part of it). A
    click's clicked URL is the stream's ``link`` field (``url`` on the callbacks stream
    is where to post) and the body's ``url``. An MMS's event (one with ``media``, a
    JSON list) has ``media`` as a list and ``num_media``."""
    body: dict[str, Any] = {k: v for k, v in fields.items() if k != "url"}
    if "link" in body and fields.get("status") == "click":
        body["url"] = body.pop("link")
    if "meta" in body:
        with contextlib.suppress(ValueError):
            body["meta"] = json.loads(body["meta"])
    if "media" in body:
        # An MMS's event: its URLs as a list and how many (an SMS's body has neither;
        # `mms`, on `sending`, says whether it went as an MMS or as links, and passes
        # through as it is).
        with contextlib.suppress(ValueError):
            media = json.loads(body["media"])
            if isinstance(media, list):
                body["media"] = media
                body["num_media"] = len(media)
    if "at" in body:
        with contextlib.suppress(ValueError):
            body["at"] = float(body["at"])
    return body


def kannel_encode(value: str) -> str:
    """A value URL-encoded as Kannel's octstr_url_encode does it: letters, digits and
    ``-_.!~*'()`` as they are, a space as ``+``, every other byte (UTF-8) ``%XX``."""
    return quote_plus(value, safe="-_.!~*'()")


def kannel_plus(number: str) -> str:
    """``%q``/``%Q``: a number encoded, a leading ``00`` written ``+`` (``%2B``)."""
    if number.startswith("00"):
        return "%2B" + kannel_encode(number[2:])
    return kannel_encode(number)


def kannel_url(pattern: str, mask: int) -> str:
    """The status_callback_url that makes the poster fetch `pattern` Kannel's way for
    the changes `mask` asks for."""
    return f"{pattern}{KANNEL_MARK}{mask}"


def kannel_target(url: str) -> tuple[str, int] | None:
    """(the dlr-url pattern, the mask) of a `kannel_url`, or None for a plain url."""
    pattern, mark, mask = url.rpartition(KANNEL_MARK)
    if not mark or not mask.isdigit():
        return None
    return pattern, int(mask)


def fill_escapes(
    pattern: str, values: Mapping[str, str], *, final: bool = True, text: str = ""
) -> str:
    """Kannel's escape codes in `pattern` (gw/urltrans.c urltrans_fill_escape_codes).

    `values`: code letter -> its replacement, already URL-encoded. `final`: codes
    without a value are filled from `text` (the report: ``%a %A %b %k %s %S %r %e``)
    or left empty (a code Kannel knows) or as they are (a letter it does not), and
    ``%%`` is ``%``. Not `final` (filling at submission what is known then): only the
    codes in `values` are filled, the rest stay for the final fill, and a '%' in a
    value is written ``%%`` so the final fill gives it back unchanged."""
    out: list[str] = []
    words = text.split()
    nextarg = 1
    pos, size = 0, len(pattern)
    while pos < size:
        char = pattern[pos]
        if char != "%" or pos + 1 >= size:
            out.append(char)
            pos += 1
            continue
        code = pattern[pos + 1]
        pos += 2
        if code == "%":
            out.append("%" if final else "%%")
        elif code in values:
            out.append(values[code] if final else values[code].replace("%", "%%"))
        elif not final or code not in _KANNEL_CODES:
            out.append("%" + code)
        elif code == "a":
            out.append("+".join(kannel_encode(w) for w in words))
        elif code in "Ab":
            out.append(kannel_encode(text))
        elif code == "k":
            out.append(kannel_encode(words[0]) if words else "")
        elif code in "sS":
            if nextarg < len(words):
                word = words[nextarg]
                out.append(kannel_encode(word) if code == "s" else word.replace("*", "~"))
                nextarg += 1
        elif code == "r":
            out.append("+".join(kannel_encode(w) for w in words[nextarg:]))
        elif code == "e":
            out.append(text.encode().hex().upper())
        elif code == "#":
            # %#group#param#: a meta-data value; the router carries none.
            found = _META_PARAM.match(pattern, pos)
            if found is not None:
                pos = found.end()
        # Any other code Kannel knows has no value here: it is left empty.
    return "".join(out)


def kannel_type(fields: Mapping[str, str], mask: int) -> int | None:
    """The Kannel report type (`DLR_*`) of one status change, or None when it is none
    or `mask` does not ask for it. As Kannel: a refusal is reported as 16 (SMSC
    reject) to a mask with 16 or 2; a final status from a delivery report (it has
    ``stat``) is 1 when delivered, else 2."""
    status = fields.get("status", "")
    if status == "sent":
        found = DLR_SMSC_SUCCESS
    elif status == "delivered":
        found = DLR_SUCCESS
    elif status == "undelivered" or (status in _REFUSED and "stat" in fields):
        found = DLR_FAIL
    elif status in _REFUSED:
        return DLR_SMSC_FAIL if mask & (DLR_SMSC_FAIL | DLR_FAIL) else None
    else:
        return None
    return found if mask & found else None


_REFUSED = frozenset({"failed", "rejected", "expired"})


def kannel_report_text(fields: Mapping[str, str], dlr_type: int) -> str:
    """``%A``: what Kannel's report carries. ``ACK/`` when the SMSC took it,
    ``NACK/<error code>/<note>`` when it (or the router) refused it, and for a
    delivery report the SMPP receipt text rebuilt from what the router kept (id, stat,
    err; both dates are the report's time, the submit date not being kept)."""
    if dlr_type == DLR_SMSC_SUCCESS:
        return "ACK/"
    if dlr_type == DLR_SMSC_FAIL:
        reason = "/".join(v for v in (fields.get("error_code"), fields.get("note")) if v)
        return "NACK/" + reason
    delivered = dlr_type == DLR_SUCCESS
    stat = fields.get("stat") or ("DELIVRD" if delivered else "UNDELIV")
    err = fields.get("err") or "000"
    at = _seconds(fields.get("at"))
    date = time.strftime("%y%m%d%H%M", time.gmtime(at))
    return (
        f"id:{fields.get('provider_message_id', '')} sub:001 dlvrd:{'001' if delivered else '000'}"
        f" submit date:{date} done date:{date} stat:{stat} err:{err} text:"
    )


def _seconds(value: str | None) -> float:
    try:
        return float(value or 0)
    except ValueError:
        return 0.0


def kannel_get_url(pattern: str, mask: int, fields: Mapping[str, str]) -> str | None:
    """The url to GET for one status change of a message sent with this dlr-url
    pattern and mask, or None when the mask does not ask for the change. What the
    door filled in at submission (the numbers as given, the id) is in `pattern`
    already; the rest comes from the change (`fields`, as the ledger wrote them)."""
    dlr_type = kannel_type(fields, mask)
    if dlr_type is None:
        return None
    at = _seconds(fields.get("at"))
    to, sender = fields.get("to", ""), fields.get("from", "")
    values = {
        "d": str(dlr_type),
        "T": str(int(at)),
        "t": time.strftime("%Y-%m-%d+%H:%M:%S", time.gmtime(at)),
        "F": kannel_encode(fields.get("provider_message_id", "")),
        "i": kannel_encode(fields.get("profile", "")),
        "I": kannel_encode(fields.get("id", "")),
        "p": kannel_encode(to),
        "q": kannel_plus(to),
        "P": kannel_encode(sender),
        "Q": kannel_plus(sender),
        # A report's own message has no coding, class or indicator (-1, "undefined").
        "c": "-1",
        "m": "-1",
        "M": "-1",
        "C": "UTF-8",
    }
    text = kannel_report_text(fields, dlr_type)
    return quote(fill_escapes(pattern, values, text=text), safe=_URL_SAFE)


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
            attempt_once = self._attempt(profile, entry_id, url, fields)
            if attempt_once is None:
                # A Kannel dlr-url whose mask does not ask for this change: done.
                await self._done(entry, None, fields, stopping)
                return
            host = self._hosts.setdefault(urlsplit(url).netloc, asyncio.Semaphore(PER_HOST))
            async with host, self._slots:
                for attempt in range(ATTEMPTS):
                    if stopping.is_set() and attempt:
                        return  # stays pending: tried again after the restart
                    reason = await attempt_once(session)
                    if not reason:
                        self.posted += 1
                        await self._done(entry, None, fields, stopping)
                        return
                    await asyncio.sleep(backoff(attempt + 1, self.base_delay, 60.0))
        log.warning("status callback given up", id=fields.get("id"), reason=reason)
        await self._done(entry, reason, fields, stopping)

    def _attempt(
        self, profile: str, entry_id: str, url: str, fields: dict[str, str]
    ) -> Attempt | None:
        """One try at handing the change over: a signed JSON POST, or for a Kannel
        dlr-url a GET of the filled url (None: its mask does not ask for this change)."""
        key = self.signing.get(profile)
        webhook_id = f"status-{profile}-{entry_id}"
        kannel = kannel_target(url)
        if kannel is not None:
            target = kannel_get_url(*kannel, fields)
            if target is None:
                return None

            async def get(session: aiohttp.ClientSession) -> str:
                sent = signing.sign(key, webhook_id, int(time.time()), b"") if key else {}
                return await self._get(session, target, sent)

            return get
        body = signing.encode(body_of(fields))

        async def post(session: aiohttp.ClientSession) -> str:
            sent = signing.headers(key, webhook_id, int(time.time()), body)
            return await self._post(session, url, body, sent)

        return post

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

    async def _get(self, session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> str:
        """`_post` for a Kannel dlr-url: a GET of the url exactly as filled in."""
        try:
            target = URL(url, encoded=True)
            async with session.get(target, headers=headers) as response:
                if 200 <= response.status < 300:
                    return ""
                return f"http {response.status}"
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
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
