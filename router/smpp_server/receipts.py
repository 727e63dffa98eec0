"""Delivery receipts back to SMPP clients: a relay and a sender, on every instance
that runs the SMPP server.

Relay (`ReceiptRelay`): reads each profile's event stream ``sms:{P}:events`` through
the consumer group ``smpp-receipts`` (created at the stream's end, ``$``: a message
submitted before the first instance with the SMPP server started needs no receipt,
and a new instance must not replay the streams' history). A final status
(delivered, undelivered, failed, rejected, expired) of a message that an account
submitted asking for a receipt (``meta.smpp_registered_delivery``: ``& 3 == 1`` any
final status, ``== 2`` failures only) becomes an entry of the account's stream
``sms:{acct:NAME}:dlr`` (trimmed to `receipt_retention` by MINID as it is written);
then the event is acked. An ``inbound`` event that an inbound route gives to an
account (``[[inbound_routes]] account``, the first matching route naming one) becomes
an entry of kind ``mo`` of the same stream (`router.smpp_server.inbound`): one stream
per account keeps its receipts and inbound messages in the order they came, under one
retention. The records of a batch's candidates are read in one pipelined round trip.
At least once: an event is acked only after what it made is written; an instance's
unacked events are claimed after `CLAIM_IDLE` seconds by any instance's relay. An
event that cannot be read is logged and acked.

Sender (`ReceiptSender`): for each account with a receiver or transceiver session
bound on this instance, reads the account's stream through the group ``smpp`` (from
its start: every entry is wanted; consumer = the instance name) and sends each
receipt as a deliver_sm (esm_class 0x04, SMPP 3.4 appendix B text,
receipted_message_id and message_state; destination_addr = the sender the message
went from, the record's ``from``), and each inbound message as a plain deliver_sm
(`inbound_body`), to the account's sessions in turn, each within the account's
`window`. An entry is acked only on deliver_sm_resp ESME_ROK;
otherwise (no session, an error, the session lost) it stays pending and is claimed
again (XAUTOCLAIM) once idle `CLAIM_IDLE` seconds, by whichever instance has a
session of the account: a client that unbinds and binds again later, on any
instance, gets the receipts it missed (within `receipt_retention`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from binds.smpp import pdu
from router.config import Settings
from router.smpp_server.inbound import KIND as INBOUND_KIND
from router.smpp_server.inbound import deliver_body, inbound_body, inbound_entry
from router.smpp_server.intake import REGISTERED_DELIVERY
from router.store import keys
from router.store.outages import REDIS_ERRORS, Pause, RedisOutages

__all__ = [
    "EVENTS_GROUP",
    "RECEIPTS_GROUP",
    "ReceiptRelay",
    "ReceiptSender",
    "deliver_sm_body",
    "receipt_key",
    "receipt_text",
    "wanted",
]

log = structlog.get_logger("router.smpp_server")

EVENTS_GROUP: Final = "smpp-receipts"  # on every profile's event stream
RECEIPTS_GROUP: Final = "smpp"  # on every account's receipt stream
CLAIM_IDLE: Final = 30.0  # seconds an unacked entry waits before another claims it
BATCH: Final = 200
BLOCK_MS: Final = 1000
RESP_TIMEOUT: Final = 30.0  # seconds a deliver_sm waits for its response
FINAL: Final = frozenset({"delivered", "undelivered", "failed", "rejected", "expired"})
# status -> (stat, message_state) of SMPP 3.4 appendix B / section 5.2.28
STATES: Final = {
    "delivered": ("DELIVRD", 2),
    "undelivered": ("UNDELIV", 5),
    "failed": ("UNDELIV", 5),
    "expired": ("EXPIRED", 3),
    "rejected": ("REJECTD", 8),
}
_FINAL_RAW: Final = frozenset(status.encode() for status in FINAL)  # as the stream has them
_RECORD_FIELDS: Final = ("account", "meta", "created_at", "text", "from", "to")


def receipt_key(account: str) -> str:
    """The account's receipts and inbound messages waiting for its SMPP sessions (hash
    tag per account)."""
    return f"sms:{{acct:{account}}}:dlr"


def wanted(registered_delivery: int, status: str) -> bool:
    """Whether a final `status` gets a receipt under SMPP's registered_delivery."""
    asked = registered_delivery & 3
    return asked == 1 or (asked == 2 and status != "delivered")


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _seconds(value: str, default: float) -> float:
    try:
        return float(value)
    except ValueError:
        return default


def _smpp_date(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%y%m%d%H%M")


def _err(value: str) -> str:
    digits = "".join(c for c in value if c.isdigit())
    return digits[-3:].zfill(3) if digits else "000"


def receipt_text(entry: dict[str, str]) -> str:
    """SMPP 3.4 appendix B receipt text of a receipt entry."""
    status = entry["status"]
    stat, _state = STATES[status]
    now = time.time()
    submit = _smpp_date(_seconds(entry.get("submit", ""), now))
    done = _smpp_date(_seconds(entry.get("done", ""), now))
    dlvrd = "001" if status == "delivered" else "000"
    return (
        f"id:{entry['id']} sub:001 dlvrd:{dlvrd} submit date:{submit} done date:{done} "
        f"stat:{stat} err:{entry.get('err') or '000'} text:{entry.get('text', '')[:20]}"
    )


def deliver_sm_body(entry: dict[str, str]) -> bytes:
    """The deliver_sm body of an entry of an account's stream: an inbound message's
    (`inbound_body`), or a receipt's: from the message's `to`, to its `from` (the
    record's: the sender it went from)."""
    if entry.get("kind") == INBOUND_KIND:
        return inbound_body(entry)
    _stat, state = STATES[entry["status"]]
    text = receipt_text(entry).encode("ascii", "replace")[:254]
    return deliver_body(
        entry.get("to", ""),
        entry.get("from", ""),
        esm_class=pdu.ESM_RECEIPT,
        short_message=text,
        tlvs={
            pdu.TAG_RECEIPTED_MESSAGE_ID: entry["id"].encode("ascii", "replace")[:64] + b"\0",
            pdu.TAG_MESSAGE_STATE: bytes((state,)),
        },
    )


async def _ensure_group(redis: Redis, stream: str, group: str, start: str) -> None:
    try:
        await redis.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class ReceiptRelay:
    """Turns final statuses of messages that asked for a receipt into entries of the
    submitting account's receipt stream (see the module's docstring)."""

    def __init__(
        self,
        redis: Redis,
        settings: Callable[[], Settings],
        outages: RedisOutages,
        consumer: str,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._outages = outages
        self._consumer = consumer
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self.relayed = 0  # receipts written
        self.inbound_relayed = 0  # inbound messages written

    def start(self) -> None:
        """One loop per profile (their streams live in different Cluster slots)."""
        self.configure()

    def configure(self) -> None:
        """Follow the configured profiles (a reload may add or remove some)."""
        if self._stopping.is_set():
            return
        profiles = set(self._settings().profiles)
        for name in list(self._tasks):
            if name not in profiles:
                self._tasks.pop(name).cancel()
        for name in profiles - set(self._tasks):
            self._tasks[name] = asyncio.get_running_loop().create_task(
                self._run(name), name=f"smpp-receipts:{name}"
            )

    async def stop(self) -> None:
        """Stop reading (what was read and not acked is claimed again later)."""
        self._stopping.set()
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, profile: str) -> None:
        stream = keys.events(profile)
        pause = Pause(self._outages)
        ready = False
        claimed_at = 0.0
        cursor = "0-0"  # paging through the pending entries; back at 0-0: pass done
        while not self._stopping.is_set():
            try:
                if not ready:
                    await _ensure_group(self._redis, stream, EVENTS_GROUP, "$")
                    ready = True
                entries: list[Any] = []
                if cursor != "0-0" or time.monotonic() - claimed_at >= CLAIM_IDLE / 2:
                    claimed_at = time.monotonic()
                    claimed: Any = await self._redis.xautoclaim(
                        stream,
                        EVENTS_GROUP,
                        self._consumer,
                        int(CLAIM_IDLE * 1000),
                        start_id=cursor,
                        count=BATCH,
                    )
                    cursor, entries = _text(claimed[0]), claimed[1]
                if not entries:
                    read: Any = await self._redis.xreadgroup(
                        EVENTS_GROUP, self._consumer, {stream: ">"}, count=BATCH, block=BLOCK_MS
                    )
                    entries = read[0][1] if read else []
                if entries:
                    await self._relay(stream, entries)
                pause.reset()
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    ready = False  # the stream was deleted: the group goes with it
                await pause.after_error("relaying smpp receipts", exc, self._stopping)
            except REDIS_ERRORS as exc:
                await pause.after_error("relaying smpp receipts", exc, self._stopping)
            except Exception:
                # A bug: the batch stays pending (claimed again after CLAIM_IDLE); the
                # relay and the daemon go on.
                log.exception("smpp receipts not relayed", profile=profile)
                await asyncio.sleep(1.0)

    async def _relay(self, stream: str, entries: list[Any]) -> None:
        """One batch: candidates' records in one round trip, receipts written, acked."""
        ids: list[Any] = []
        candidates: list[tuple[dict[str, str], int | None]] = []
        writes: list[tuple[str, dict[str, str]]] = []
        routes = self._settings().inbound_routes
        to_accounts = any(route.account is not None for route in routes)
        for entry_id, raw in entries:
            ids.append(entry_id)
            if not raw:
                continue  # deleted while pending
            try:
                kind, status = raw.get(b"type"), raw.get(b"status")
                if kind != b"inbound" and status not in _FINAL_RAW:
                    # Neither a final status nor an inbound message (queued, sending, sent:
                    # most of the stream): skipped without decoding the entry.
                    continue
                event = {_text(k): _text(v) for k, v in raw.items()}
                if kind == b"inbound":
                    if to_accounts:
                        routed = inbound_entry(event, routes)
                        if routed is not None:
                            writes.append(routed)
                    continue
                asked: int | None = None
                if "meta" in event:
                    meta = json.loads(event["meta"])
                    asked = int(meta.get(REGISTERED_DELIVERY, 0)) if isinstance(meta, dict) else 0
                    if not wanted(asked, event["status"]):
                        continue
                candidates.append((event, asked))
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                log.warning(
                    "unreadable event; skipped",
                    stream=stream,
                    entry=_text(entry_id),
                    error=str(exc),
                )
        if candidates:
            profile = candidates[0][0].get("profile", "")
            async with self._redis.pipeline(transaction=False) as pipe:
                for event, _ in candidates:
                    pipe.hmget(
                        keys.record(event.get("profile", profile), event["id"]), _RECORD_FIELDS
                    )
                records = await pipe.execute()
            for (event, asked), values in zip(candidates, records, strict=True):
                try:
                    receipt = self._receipt(
                        event, asked, dict(zip(_RECORD_FIELDS, map(_text, values), strict=True))
                    )
                except (ValueError, TypeError, AttributeError, KeyError) as exc:
                    log.warning("receipt not made; skipped", job=event.get("id"), error=str(exc))
                    continue
                if receipt is not None:
                    writes.append(receipt)
        if writes:
            accounts = self._settings().accounts
            now_ms = int(time.time() * 1000)
            async with self._redis.pipeline(transaction=False) as pipe:
                for account, fields in writes:
                    config = accounts.get(account)
                    retention = config.receipt_retention if config is not None else 3 * 86_400.0
                    pipe.xadd(
                        receipt_key(account),
                        fields,  # type: ignore[arg-type]
                        minid=f"{now_ms - int(retention * 1000)}-0",
                        approximate=True,
                    )
                await pipe.execute()
            inbound = sum(1 for _, fields in writes if fields.get("kind") == INBOUND_KIND)
            self.relayed += len(writes) - inbound
            self.inbound_relayed += inbound
        await self._redis.xack(stream, EVENTS_GROUP, *ids)

    def _receipt(
        self, event: dict[str, str], asked: int | None, record: dict[str, str]
    ) -> tuple[str, dict[str, str]] | None:
        account = record["account"]
        if not account:
            return None  # not submitted by an account (or the record is gone)
        if asked is None:  # the event did not carry the meta: the record's says
            meta = json.loads(record["meta"]) if record["meta"] else {}
            asked = int(meta.get(REGISTERED_DELIVERY, 0)) if isinstance(meta, dict) else 0
            if not wanted(asked, event["status"]):
                return None
        status = event["status"]
        err = event.get("err", "")
        return account, {
            "id": event["id"],
            "status": status,
            # The SMSC's err when a report said; none (failed at submit, rejected or
            # expired here): 000.
            "err": _err(err) if err else "000",
            "submit": record["created_at"] or event.get("at", ""),
            "done": event.get("at", ""),
            "text": record["text"][:20],
            "to": record["to"] or event.get("to", ""),
            "from": record["from"] or event.get("from", ""),
            "profile": event.get("profile", ""),
        }


class ReceiptSender:
    """Sends each account's receipts to its receiver/transceiver sessions bound on
    this instance (see the module's docstring)."""

    def __init__(
        self,
        redis: Redis,
        sessions: Callable[[str], list[Any]],
        accounts: Callable[[], list[str]],
        window: Callable[[str], int],
        outages: RedisOutages,
        consumer: str,
    ) -> None:
        """`sessions(account)`: its sessions that take deliver_sm now (each has
        `deliver(body) -> Future[int]` and `deliveries`, those unanswered);
        `accounts()`: the accounts with such sessions; `window(account)`."""
        self._redis = redis
        self._sessions = sessions
        self._accounts = accounts
        self._window = window
        self._outages = outages
        self._consumer = consumer
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._watch: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._room = asyncio.Event()
        self.sent = 0  # receipts answered OK
        self.inbound_sent = 0  # inbound messages answered OK
        self._turn = 0

    def start(self) -> None:
        """Watch for accounts with receiving sessions."""
        self._watch = asyncio.get_running_loop().create_task(self._supervise())

    def wake(self) -> None:
        """A session bound or a deliver_sm was answered: look again now."""
        self._room.set()

    async def stop(self) -> None:
        """Stop sending (unanswered receipts stay pending, claimed again later)."""
        self._stopping.set()
        self._room.set()
        tasks = [t for t in (self._watch, *self._tasks.values()) if t is not None]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _supervise(self) -> None:
        while not self._stopping.is_set():
            for account in self._accounts():
                task = self._tasks.get(account)
                if task is None or task.done():
                    self._tasks[account] = asyncio.get_running_loop().create_task(
                        self._run(account), name=f"smpp-receipts-to:{account}"
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.2)

    async def _run(self, account: str) -> None:
        """While the account has a receiving session here: read, send (acks are
        written by `_Acks` as the answers come)."""
        stream = receipt_key(account)
        pause = Pause(self._outages)
        acks = _Acks(self._redis, stream, Pause(self._outages), self._stopping)
        ready = False
        claimed_at = 0.0
        cursor = "0-0"  # paging through the pending entries; back at 0-0: pass done
        try:
            while not self._stopping.is_set():
                sessions = self._sessions(account)
                if not sessions:
                    return
                try:
                    if not ready:
                        await _ensure_group(self._redis, stream, RECEIPTS_GROUP, "0")
                        ready = True
                    window = self._window(account)
                    room = sum(max(0, window - len(s.deliveries)) for s in sessions)
                    if room <= 0:
                        self._room.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._room.wait(), 0.5)
                        continue
                    entries: list[Any] = []
                    if cursor != "0-0" or time.monotonic() - claimed_at >= CLAIM_IDLE / 3:
                        claimed_at = time.monotonic()
                        claimed: Any = await self._redis.xautoclaim(
                            stream,
                            RECEIPTS_GROUP,
                            self._consumer,
                            int(CLAIM_IDLE * 1000),
                            start_id=cursor,
                            count=room,
                        )
                        cursor = _text(claimed[0])
                        entries = [e for e in claimed[1] if e[0] not in acks.inflight]
                    if not entries:
                        read: Any = await self._redis.xreadgroup(
                            RECEIPTS_GROUP,
                            self._consumer,
                            {stream: ">"},
                            count=room,
                            # Short while receipts are out: a new session is seen soon.
                            block=200 if acks.inflight else BLOCK_MS,
                        )
                        entries = read[0][1] if read else []
                    pause.reset()
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):
                        ready = False
                    await pause.after_error("sending smpp receipts", exc, self._stopping)
                    continue
                except REDIS_ERRORS as exc:
                    await pause.after_error("sending smpp receipts", exc, self._stopping)
                    continue
                self._send(account, entries, sessions, window, acks)
        except Exception:
            # A bug: what was read stays pending (claimed again after CLAIM_IDLE); the
            # supervisor starts the account's loop again.
            log.exception("smpp receipts not sent", account=account)
            await asyncio.sleep(1.0)
        finally:
            await acks.close()

    def _send(
        self, account: str, entries: list[Any], sessions: list[Any], window: int, acks: _Acks
    ) -> None:
        for entry_id, raw in entries:
            if not raw:
                acks.add(entry_id)  # trimmed while pending
                continue
            try:
                entry = {_text(k): _text(v) for k, v in raw.items()}
                body = deliver_sm_body(entry)
            except (KeyError, ValueError, TypeError) as exc:
                log.warning(
                    "unreadable entry; dropped",
                    account=account,
                    entry=_text(entry_id),
                    error=str(exc),
                )
                acks.add(entry_id)
                continue
            session = self._pick(sessions, window)
            if session is None:
                return  # no room left: the rest stays pending and is claimed later
            acks.inflight.add(entry_id)
            inbound = entry.get("kind") == INBOUND_KIND
            session.deliver(body).add_done_callback(
                lambda f, e=entry_id, i=inbound: self._answered(f, e, acks, i)
            )

    def _pick(self, sessions: list[Any], window: int) -> Any:
        """The next session in turn with room in its window."""
        for i in range(len(sessions)):
            session = sessions[(self._turn + i) % len(sessions)]
            if len(session.deliveries) < window and not session.unbinding:
                self._turn = (self._turn + i + 1) % len(sessions)
                return session
        return None

    def _answered(
        self, future: asyncio.Future[int], entry_id: Any, acks: _Acks, inbound: bool
    ) -> None:
        acks.inflight.discard(entry_id)
        self._room.set()
        if not future.cancelled() and future.result() == pdu.ESME_ROK:
            if inbound:
                self.inbound_sent += 1
            else:
                self.sent += 1
            acks.add(entry_id)


class _Acks:
    """One account stream's acks, written as the answers come (one XACK for those
    that came meanwhile), waiting out Redis outages."""

    def __init__(self, redis: Redis, stream: str, pause: Pause, stopping: asyncio.Event) -> None:
        self._redis = redis
        self._stream = stream
        self._pause = pause
        self._stopping = stopping
        self._ids: list[Any] = []
        self._task: asyncio.Task[None] | None = None
        self.inflight: set[Any] = set()  # entry ids sent and not answered

    def add(self, entry_id: Any) -> None:
        self._ids.append(entry_id)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._ids:
            ids, self._ids = self._ids, []
            try:
                await self._redis.xack(self._stream, RECEIPTS_GROUP, *ids)
                self._pause.reset()
            except REDIS_ERRORS as exc:
                self._ids[:0] = ids
                if self._stopping.is_set():
                    return  # left pending: delivered again later (at least once)
                await self._pause.after_error("acking smpp receipts", exc, self._stopping)

    async def close(self) -> None:
        """Wait for the acks being written."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
