"""Inbound messages: store durably (reassembling long ones), then post to callback_url.

`Inbound.handle` runs before the deliver_sm_resp goes back, so an acknowledged
message is always in Redis: a single part goes straight onto ``sms:{P}:in``; a
part of a concatenated message goes into a hash per (source, reference) and the
Lua script that adds the last part also moves the whole message onto the stream,
in one step. Parts still missing after `reassembly_timeout` are delivered flagged
``incomplete``. `CallbackPoster` then POSTs each message as JSON to the profile's
``callback_url`` until it answers 2xx, across restarts (a consumer group on the
stream keeps what was not acknowledged).

Keywords (STOP, START, HELP... see `router.engine.keywords`): a single-part keyword changes
the opt-out set and enqueues its reply in the same MULTI as the XADD of the message;
a concatenated one, when the poster renders the whole message. Either way the post
carries ``"opt_out": "stop" | "start" | "help"``.

Every stored message is also published on the event stream (``sms:{P}:events``, type
``inbound``) by the same step that puts it on ``sms:{P}:in``, so event subscribers
(``GET /v1/events``) see inbound messages next to status changes. Posts of a profile
with a ``webhook_secret`` are signed (`router.signing`), ``webhook-id`` = the body's id.

An MMS arrives only through a provider's webhook (`Inbound.handle_text` with media):
its media, ``[{"url": ..., "content_type": ...}]``, are kept in the stored message's
head, so the post, the event and the websocket all carry them; every rendered body
has ``num_media`` (0 for an SMS) and, when there is any, ``media``.

Inbound routes (``[[inbound_routes]]``, `router.config.InboundRoute`) send a message
elsewhere than the profile's ``callback_url``: the poster picks the URL of the first
route with a ``callback_url`` that matches the rendered message (same body, same
signature, same retries, in the same order as the rest of the profile's messages); a
route naming only an ``account`` is the SMPP server's (`router.smpp_server.receipts`).
A keyword (``opt_out`` set) is never routed: it goes to the profile's ``callback_url``
as before.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from binds.smpp.codec import decode_text, split_udh
from binds.smpp.pdu import (
    ESM_UDHI,
    ESME_ROK,
    TAG_SAR_MSG_REF_NUM,
    TAG_SAR_SEGMENT_SEQNUM,
    TAG_SAR_TOTAL_SEGMENTS,
    ShortMessage,
)
from router import signing
from router.config import InboundRoute, first_callback
from router.engine.keywords import KeywordHit, Keywords
from router.store import keys, roundtrip, scripts
from router.store.batching import Batcher
from router.store.connections import as_text
from router.store.outages import REDIS_ERRORS, Pause, RedisOutages, backoff

log = structlog.get_logger("router.inbound")
GROUP = "callbacks"
UCS2_CODING = 8  # data_coding of messages stored from decoded text (`handle_text`)
# One medium of an inbound MMS: its URL and content type (None: the provider gave none).
MediaItem = tuple[str, str | None]

# The store scripts (lua/inbound_*.lua), each after the `publish` function they share:
# one whole message, a part of a long one, the parts of one that stopped coming.
_PUBLISH = scripts.source("inbound_publish")
_STORE_ONE = _PUBLISH + scripts.source("inbound_one")
_ADD_PART = _PUBLISH + scripts.source("inbound_part")
_FLUSH = _PUBLISH + scripts.source("inbound_flush")


# One store: the inbound stream, and either the fields of a whole message or a part's
# (keys, args) for _ADD_PART; and the keyword a whole message is, if any.
_Store = tuple[str, dict[str, str], tuple[list[str], list[Any]] | None, KeywordHit | None]


class Inbound:
    """Stores the inbound messages of one profile; stores that arrive while one is in
    flight go to Redis together (`Batcher`)."""

    def __init__(
        self,
        redis: Redis,
        profile: str,
        *,
        forward: bool,
        reassembly_timeout: float,
        keywords: Keywords | None = None,
        events_maxlen: int = 1_000_000,
    ) -> None:
        self._redis = redis
        self.profile = profile
        self.events_maxlen = events_maxlen
        self.forward = forward
        self.timeout = reassembly_timeout
        self.keywords = keywords
        self._add = redis.register_script(_ADD_PART)
        self._flush = redis.register_script(_FLUSH)
        self._one = redis.register_script(_STORE_ONE)
        self._stores: Batcher[_Store, None] = Batcher(self._store)

    async def handle(self, message: ShortMessage) -> int:
        """Store one deliver_sm (not a receipt); returns the deliver_sm_resp status."""
        if not self.forward:
            log.info(
                "inbound message not forwarded: profile direction is outbound",
                profile=self.profile,
                source=message.source,
            )
            return ESME_ROK
        data = message.text_bytes
        # The reference names its kind too: an 8-bit 7 and a 16-bit 7 are different messages.
        concat: tuple[str, int, int] | None = None
        if message.esm_class & ESM_UDHI:
            info, data = split_udh(data)
            if info is not None:
                concat = (f"u{info.ref_bits}-{info.reference}", info.total, info.seq)
        elif TAG_SAR_MSG_REF_NUM in message.tlvs:
            concat = (
                f"sar-{message.tlv_int(TAG_SAR_MSG_REF_NUM) or 0}",
                message.tlv_int(TAG_SAR_TOTAL_SEGMENTS) or 1,
                message.tlv_int(TAG_SAR_SEGMENT_SEQNUM) or 1,
            )
        source = _e164(message.source, message.source_ton)
        destination = _e164(message.destination, message.dest_ton)
        received_at = round(time.time(), 3)
        head = {
            "from": source,
            "to": destination,
            "data_coding": message.data_coding,
            "received_at": received_at,
        }
        if concat is None or concat[1] <= 1:
            await self._store_whole(head, data)
            return ESME_ROK
        part = base64.b64encode(data).decode()
        stream = keys.inbound(self.profile)
        reference, total, seq = concat
        if not 1 <= seq <= total:
            log.warning(
                "inbound part out of range stored alone", profile=self.profile, seq=seq, total=total
            )
            seq = total
        parts_key = keys.inbound_parts(self.profile, source, reference)
        args = [
            seq,
            json.dumps(part),
            total,
            time.time() + self.timeout,
            int(self.timeout * 4) + 60,
            json.dumps(head),
            self.events_maxlen,
            self.profile,
        ]
        await self._stores.submit(
            (
                stream,
                {},
                (
                    [
                        parts_key,
                        keys.inbound_partial(self.profile),
                        stream,
                        keys.events(self.profile),
                    ],
                    args,
                ),
                None,
            )
        )
        return ESME_ROK

    async def handle_text(
        self, source: str, destination: str, text: str, media: Sequence[MediaItem] = ()
    ) -> None:
        """Store one inbound message that arrived already decoded (a provider's webhook,
        e.g. Twilio's), with the same keyword handling and callback posting as a
        deliver_sm. `media`: an MMS's (url, content type or None) pairs, checked by the
        webhook (router/api/providers.py); its text may then be empty. Returns once it
        is in Redis."""
        if not self.forward:
            log.info(
                "inbound message not forwarded: profile direction is outbound",
                profile=self.profile,
                source=source,
            )
            return
        head: dict[str, Any] = {
            "from": source,
            "to": destination,
            # UCS2 (UTF-16BE) holds any text, emoji included, and decodes as SMPP's would.
            "data_coding": UCS2_CODING,
            "received_at": round(time.time(), 3),
        }
        if media:
            # In the head: the stream entry, the event and the post all carry it as is.
            head["media"] = [{"url": url, "content_type": kind} for url, kind in media]
        await self._store_whole(head, text.encode("utf-16-be"))

    async def _store_whole(self, head: dict[str, Any], data: bytes) -> None:
        """Store a message that is complete in itself, its keyword applied with it."""
        fields = {
            "message": json.dumps(head),
            "parts": json.dumps([base64.b64encode(data).decode()]),
            "incomplete": "0",
        }
        hit = None
        if self.keywords is not None:
            text, binary = decode_text(data, int(head["data_coding"]))
            if not binary:
                hit = self.keywords.match(
                    str(head["from"]), str(head["to"]), float(head["received_at"]), text
                )
            if hit is not None:
                fields["opt_out"] = hit.kind
        await self._stores.submit((keys.inbound(self.profile), fields, None, hit))

    async def _store(self, batch: list[_Store]) -> list[None]:
        """Every store that arrived meanwhile, in one MULTI (one round trip, one slot):
        a keyword's opt-out change and reply are written with its message. (Should Redis
        have lost its scripts, the commands that found none run in a second MULTI.)"""
        commands: list[roundtrip.Command] = []
        scripts = [self._one, self._add]
        for stream, fields, part, hit in batch:
            if part is None:
                one: list[Any] = [self.events_maxlen, self.profile, fields["message"]]
                one += [fields["parts"], fields["incomplete"], fields.get("opt_out", "")]
                commands.append(
                    roundtrip.evalsha(self._one, [stream, keys.events(self.profile)], one)
                )
            else:
                commands.append(roundtrip.evalsha(self._add, *part))
            if hit is not None and self.keywords is not None:
                commands += self.keywords.commands(hit)
                scripts += self.keywords.scripts
        await roundtrip.execute(self._redis, commands, scripts, transaction=True)
        for _stream, _fields, _part, hit in batch:
            if hit is not None and self.keywords is not None:
                self.keywords.applied(hit)
        return [None] * len(batch)

    async def flush_expired(self) -> int:
        """Deliver (flagged incomplete) the long messages whose parts stopped coming."""
        due = await self._redis.zrangebyscore(keys.inbound_partial(self.profile), 0, time.time())
        flushed = 0
        events = keys.events(self.profile)
        for raw_key in due:
            key = as_text(raw_key)
            done = await self._flush(
                keys=[key, keys.inbound_partial(self.profile), keys.inbound(self.profile), events],
                args=[self.events_maxlen, self.profile],
            )
            flushed += int(done)
        return flushed


def _e164(address: str, ton: int) -> str:
    if ton == 1 and address.isdigit():
        return "+" + address
    return address


def render(entry_id: str, profile: str, fields: dict[str, str]) -> dict[str, Any]:
    """The JSON body posted to callback_url for one stored inbound message."""
    head = json.loads(fields["message"])
    parts = [base64.b64decode(p) for p in json.loads(fields["parts"])]
    coding = int(head.get("data_coding", 0))
    text, binary = decode_text(b"".join(parts), coding)
    media = list(head.get("media") or [])
    return {
        "id": f"in-{entry_id}",
        "profile": profile,
        "from": head.get("from", ""),
        "to": head.get("to", ""),
        "text": text,
        "binary": binary,
        "data_coding": coding,
        "parts": len(parts),
        "incomplete": fields.get("incomplete") == "1",
        "received_at": head.get("received_at"),
        # An MMS (a provider webhook's): always how many media, the list when any.
        "num_media": len(media),
        **({"media": media} if media else {}),
        **({"opt_out": fields["opt_out"]} if fields.get("opt_out") else {}),
    }


class CallbackPoster:
    """Posts a profile's inbound messages to its callback_url (or the first matching
    inbound route's) until each is taken."""

    def __init__(
        self,
        redis: Redis,
        profile: str,
        url: str,
        *,
        consumer: str,
        inbound: Inbound | None,
        timeout: float = 10.0,
        outages: RedisOutages | None = None,
        webhook_key: bytes | None = None,
        routes: Sequence[InboundRoute] = (),
    ) -> None:
        self._redis = redis
        self.profile = profile
        self.url = url
        self.routes = tuple(routes)
        self.webhook_key = webhook_key
        self.consumer = consumer
        self._inbound = inbound
        self.timeout = timeout
        self.outages = outages or RedisOutages()
        self.posted = 0

    async def run(self, stopping: asyncio.Event) -> None:
        stream = keys.inbound(self.profile)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        pause = Pause(self.outages)
        ready = False
        async with aiohttp.ClientSession(timeout=timeout) as session:
            failures = 0
            start = "0"  # our own pending entries first (a restart), then new ones
            while not stopping.is_set():
                try:
                    if not ready:
                        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
                            await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
                        ready = True
                    if self._inbound is not None:
                        await self._inbound.flush_expired()
                    reply: Any = await self._redis.xreadgroup(
                        GROUP,
                        self.consumer,
                        {stream: start},
                        count=50,
                        block=None if start == "0" else 500,
                    )
                    rows = reply[0][1] if reply else []
                    if start == "0" and not rows:
                        start = ">"
                        continue
                    for entry_id, raw in rows:
                        fields = {as_text(k): as_text(v) for k, v in (raw or {}).items()}
                        if not fields:
                            await self._ack(stream, as_text(entry_id))
                            continue
                        body = render(as_text(entry_id), self.profile, fields)
                        await self._keyword(body)
                        if await self._post(session, body, *self.destination(body)):
                            await self._ack(stream, as_text(entry_id))
                            failures = 0
                        else:
                            failures += 1
                            start = "0"  # keep order: retry from our pending entries
                            delay = backoff(failures + 1, 0.5, 60.0)
                            try:
                                await asyncio.wait_for(stopping.wait(), delay)
                            except TimeoutError:
                                pass
                            break
                except REDIS_ERRORS as exc:
                    # A message posted but not acknowledged is posted again (at least once).
                    start = "0"
                    await pause.after_error(
                        f"posting {self.profile}'s inbound messages", exc, stopping
                    )
                    continue
                pause.reset()

    async def _keyword(self, body: dict[str, Any]) -> None:
        """Apply a keyword that arrived in parts (a single part's was applied when it
        was stored); applying it again when the post is retried changes nothing."""
        keywords = self._inbound.keywords if self._inbound is not None else None
        if (
            keywords is None
            or "opt_out" in body
            or body["parts"] <= 1
            or body["incomplete"]
            or body["binary"]
        ):
            return
        hit = keywords.match(
            str(body["from"]), str(body["to"]), float(body["received_at"] or 0), body["text"]
        )
        if hit is None:
            return
        await roundtrip.execute(
            self._redis, keywords.commands(hit), keywords.scripts, transaction=True
        )
        keywords.applied(hit)
        body["opt_out"] = hit.kind

    def destination(self, body: dict[str, Any]) -> tuple[str, int | None]:
        """Where `body` is posted: the URL and index of the first inbound route that
        matches it, else the profile's callback_url (and None). Keywords are never
        routed: the profile's application handles its opt-outs as before."""
        if "opt_out" in body:
            return self.url, None
        text = None if body["binary"] else str(body["text"])
        source, destination = str(body["from"]), str(body["to"])
        # Routes that name only an account do not change where a message is posted.
        routed = first_callback(self.routes, source, destination, text, self.profile)
        return routed if routed is not None else (self.url, None)

    async def _post(
        self, session: aiohttp.ClientSession, body: dict[str, Any], url: str, route: int | None
    ) -> bool:
        data = signing.encode(body)
        sent = signing.headers(self.webhook_key, str(body["id"]), int(time.time()), data)
        # Only a routed post names its route: the profile's own log lines stay as they were.
        where = {} if route is None else {"route": route}
        try:
            async with session.post(url, data=data, headers=sent) as response:
                if 200 <= response.status < 300:
                    self.posted += 1
                    log.info("inbound posted", profile=self.profile, id=body["id"], **where)
                    return True
                log.warning(
                    "callback refused",
                    profile=self.profile,
                    id=body["id"],
                    status=response.status,
                    **where,
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning(
                "callback unreachable",
                profile=self.profile,
                id=body["id"],
                error=type(exc).__name__,
                **where,
            )
        return False

    async def _ack(self, stream: str, entry_id: str) -> None:
        await roundtrip.execute(
            self._redis,
            [("XACK", stream, GROUP, entry_id), ("XDEL", stream, entry_id)],
            transaction=True,
        )
