"""One client connection: bind, submits, enquire_link, unbind.

A session reads frames as they arrive (`ServerFrames`, no reader task), answers each
PDU (responses made in one loop turn go out in one write) and never lets one client's
input touch another's: an unreadable PDU is answered generic_nack, a command_length
that cannot be framed is answered generic_nack ESME_RINVCMDLEN and closes this
connection only, and any error handling a PDU is logged and answered ESME_RSYSERR.

States: open (only bind, enquire_link and unbind are taken; anything else is answered
ESME_RINVBNDSTS; not bound within `enquire_link` seconds: closed), bound as
transmitter, receiver or transceiver (a second bind: ESME_RALYBND), unbinding (we
asked the client to unbind: new submits are answered ESME_RINVBNDSTS), closed.

submit_sm / data_sm (transmitter and transceiver): read (`submit`), enqueued
(`intake`), answered with the job id once the job is in Redis. More than the
account's `window` unanswered at once: ESME_RTHROTTLED. Parts of long messages wait in
`reassembly` unless the account passes them as parts (`long_messages = "parts"`).

query_sm / cancel_sm (any bound mode): answered from the ledger about the account's
own messages (`queries`).

Receipts (receiver and transceiver): `deliver` sends a deliver_sm and hands back its
deliver_sm_resp's status (`receipts` acks the receipt only on ESME_ROK). A client's
unbind stops them; the connection closes once those already sent are answered.

Idle for `enquire_link` seconds, the server sends enquire_link; nothing heard for as
long again, the session is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any, Final, cast

import structlog

from binds.smpp import pdu
from binds.smpp.pdu import Frame, Pdu, PduError, SequenceNumbers
from router.policy.accounts import AccountError, Caller, by_password
from router.smpp_server.context import Context
from router.smpp_server.queries import CANCEL_SM, QUERY_SM, Queries
from router.smpp_server.statuses import Refused
from router.smpp_server.submit import Malformed, Part, read_data_sm, read_submit_sm, text_of
from router.smpp_server.wire import (
    BIND_MODES,
    ServerFrames,
    bind_resp_body,
    message_id_body,
    read_bind,
)

__all__ = ["Session"]

log = structlog.get_logger("router.smpp_server")

ENQUIRE_LINK_RESP: Final = pdu.ENQUIRE_LINK | pdu.RESPONSE
UNBIND_RESP: Final = pdu.UNBIND | pdu.RESPONSE
# Requests SMPP 3.4 defines that this server does not take (yet): generic_nack
# ESME_RINVCMDID once bound, ESME_RINVBNDSTS before.
REPLACE_SM, SUBMIT_MULTI, ALERT = 0x07, 0x21, 0x102
NOT_TAKEN: Final = frozenset({REPLACE_SM, SUBMIT_MULTI, ALERT, pdu.DELIVER_SM, pdu.OUTBIND})
# query_sm and cancel_sm (`queries`): any bound session, about its account's messages.
QUERIES: Final = frozenset({QUERY_SM, CANCEL_SM})
# Requests SMPP 3.4 defines no response PDU for: generic_nack in any state.
NO_RESPONSE: Final = frozenset({ALERT, pdu.OUTBIND})
SUBMITS: Final = frozenset({pdu.SUBMIT_SM, pdu.DATA_SM})
SENDING_MODES: Final = frozenset({"transmitter", "transceiver"})
UNBIND_WAIT: Final = 2.0  # seconds an unbind we send waits for its unbind_resp
DELIVER_SM_RESP: Final = pdu.DELIVER_SM | pdu.RESPONSE
RECEIVING_MODES: Final = frozenset({"receiver", "transceiver"})
DELIVER_WAIT: Final = 30.0  # seconds a deliver_sm we send waits for its deliver_sm_resp
NO_ANSWER: Final = -1  # a deliver_sm's result when the session closed or it timed out
# Answers waiting to be written past which a session reads no more until they are.
OUTPUT_LIMIT: Final = 256 * 1024

# A submit read and not enqueued yet: its part, text, job meta, and how it is answered.
Submitted = tuple[Part, str, dict[str, Any] | None, Callable[[int, str], None]]


class Session(asyncio.Protocol):
    """One client connection of the SMPP server."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._loop = asyncio.get_running_loop()
        self._decoder = ServerFrames()
        self._transport: asyncio.Transport | None = None
        self._replies: list[bytes] = []
        self._queued = 0  # octets in `_replies`
        self._writing_paused = False  # the transport's buffer is past its high-water mark
        self._reading_held = False  # reading paused while our answers wait to be written
        # Submits read from the data at hand, enqueued together once it is all read.
        self._read: list[Submitted] = []
        self._sequence = SequenceNumbers()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._opened = self._last_received = self._loop.time()
        self._enquired_at: float | None = None  # our enquire_link, while unanswered
        self._unbind_sequence: int | None = None
        self._unbound = self._loop.create_future()  # our unbind answered (or closed)
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.peer = ""
        self.mode: str | None = None  # once bound: transmitter, receiver or transceiver
        self.caller: Caller | None = None
        self.unbinding = False
        self.unanswered = 0  # submits read and not answered yet (the window)
        self.accepted = 0  # submits answered OK
        self.refused = 0  # submits answered with an error
        # deliver_sm sent and not answered, by sequence number: their command_status
        # once answered (NO_ANSWER when closed or not answered within DELIVER_WAIT).
        self.deliveries: dict[int, asyncio.Future[int]] = {}
        self._log: Any = log
        self._queries: Queries | None = None  # made at the first query_sm / cancel_sm

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._log = log.bind(peer=self.peer)
        self._context.sessions.add(self)
        self._tick()

    def data_received(self, data: bytes) -> None:
        self._last_received = self._loop.time()
        transport = self._transport
        try:
            for frame in self._decoder.split(data):
                if transport is None or transport.is_closing():
                    return  # closed by an earlier frame of this chunk (unbind, a refused bind)
                try:
                    self._handle(frame)
                except Exception:  # a bug: this PDU gets an error, the session goes on
                    self._log.exception("PDU not handled", command_id=f"0x{frame[0]:08X}")
                    if not frame[0] & pdu.RESPONSE:
                        self._reply(frame[0] | pdu.RESPONSE, pdu.ESME_RSYSERR, frame[2])
        finally:
            if self._read:
                # The submits of this read go to Redis in one call, answered together.
                read, self._read = self._read, []
                assert self.caller is not None  # submits are read once bound
                task = self._loop.create_task(self._enqueue(self.caller, read))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self._hold_reading()
        broken = self._decoder.broken
        if broken is not None and self._transport is not None:
            # No frame marker in SMPP: the stream cannot be read past a bad length.
            self._log.warning("closing: unreadable command_length", reason=str(broken))
            self._reply(pdu.GENERIC_NACK, pdu.ESME_RINVCMDLEN, self._decoder.broken_sequence)
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
        context = self._context
        context.sessions.discard(self)
        if self.caller is not None:
            bound = context.bound.get(self.caller.name)
            if bound is not None:
                bound.discard(self)
                if not bound:
                    del context.bound[self.caller.name]
            context.reassembly.forget(self)
            self._log.info(
                "client disconnected",
                account=self.caller.name,
                mode=self.mode,
                accepted=self.accepted,
                refused=self.refused,
                unanswered=self.unanswered,
            )
        deliveries, self.deliveries = self.deliveries, {}
        for waiting in deliveries.values():
            if not waiting.done():
                waiting.set_result(NO_ANSWER)
        if not self._unbound.done():
            self._unbound.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        # A client that sends without reading its answers: read no more until it does,
        # so what waits to be written stays bounded.
        self._writing_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = self._reading_held = False
        if self._transport is not None:
            self._transport.resume_reading()

    def _hold_reading(self) -> None:
        """Read no more while OUTPUT_LIMIT octets of answers wait to be written. The
        transport pauses us only when its buffer passes its high-water mark, which
        uvloop checks once per loop turn, after libuv may have delivered dozens of
        reads: without this, a client that never reads makes us queue megabytes."""
        transport = self._transport
        if transport is None or self._reading_held:
            return
        if self._queued + transport.get_write_buffer_size() > OUTPUT_LIMIT:
            self._reading_held = True
            transport.pause_reading()

    # -- requests -----------------------------------------------------------------

    def _handle(self, frame: Frame) -> None:
        command_id, status, sequence, body = frame
        if command_id & pdu.RESPONSE:
            self._response(command_id, status, sequence)
        elif command_id in SUBMITS:
            if self.mode in SENDING_MODES and not self.unbinding:
                self._submit(command_id, sequence, body)
            else:
                self._reply(command_id | pdu.RESPONSE, pdu.ESME_RINVBNDSTS, sequence)
        elif command_id == pdu.ENQUIRE_LINK:
            self._reply(ENQUIRE_LINK_RESP, pdu.ESME_ROK, sequence)
        elif command_id in BIND_MODES:
            self._bind(command_id, sequence, body)
        elif command_id == pdu.UNBIND:
            self._reply(UNBIND_RESP, pdu.ESME_ROK, sequence)
            self._log.info("client unbound", account=self.caller.name if self.caller else None)
            self.unbinding = True  # no more deliver_sm
            if self.deliveries:
                # Receipts already on the wire: take their answers before closing (a
                # client writing them to a closed socket sees a reset).
                task = self._loop.create_task(self._close_when_answered())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self._close()
        elif command_id in QUERIES:
            if self.mode is None:
                self._reply(command_id | pdu.RESPONSE, pdu.ESME_RINVBNDSTS, sequence)
            else:
                task = self._loop.create_task(self._query(command_id, sequence, body))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        elif command_id in NOT_TAKEN:
            if self.mode is None and command_id not in NO_RESPONSE:
                self._reply(command_id | pdu.RESPONSE, pdu.ESME_RINVBNDSTS, sequence)
            else:
                self._reply(pdu.GENERIC_NACK, pdu.ESME_RINVCMDID, sequence)
        else:
            self._log.info("unknown command_id", command_id=f"0x{command_id:08X}")
            self._reply(pdu.GENERIC_NACK, pdu.ESME_RINVCMDID, sequence)

    def _response(self, command_id: int, status: int, sequence: int) -> None:
        if command_id == DELIVER_SM_RESP or (
            command_id == pdu.GENERIC_NACK and sequence in self.deliveries
        ):
            waiting = self.deliveries.pop(sequence, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(status if command_id == DELIVER_SM_RESP else pdu.ESME_RINVCMDID)
        elif command_id == ENQUIRE_LINK_RESP:
            self._enquired_at = None
        elif command_id == UNBIND_RESP and sequence == self._unbind_sequence:
            if not self._unbound.done():
                self._unbound.set_result(None)
        elif command_id == pdu.GENERIC_NACK:
            self._log.warning("client answered generic_nack", sequence=sequence)

    def _bind(self, command_id: int, sequence: int, body: bytes) -> None:
        resp = command_id | pdu.RESPONSE
        if self.mode is not None:
            self._reply(resp, pdu.ESME_RALYBND, sequence)
            return
        mode = BIND_MODES[command_id]
        try:
            request = read_bind(body)
        except PduError as exc:
            reason = str(exc)
            status = pdu.ESME_RINVCMDLEN
            if reason.startswith("system_id: missing"):
                status = pdu.ESME_RINVSYSID
            elif reason.startswith("password: missing"):
                status = pdu.ESME_RINVPASWD
            self._refuse_bind(resp, sequence, status, f"unreadable bind: {reason}")
            return
        context = self._context
        try:
            caller = by_password(context.settings, request.system_id, request.password, smpp=True)
        except AccountError as exc:
            self._refuse_bind(resp, sequence, pdu.ESME_RBINDFAIL, str(exc), request.system_id)
            return
        if mode in SENDING_MODES and "send" not in caller.account.scopes:
            self._refuse_bind(
                resp,
                sequence,
                pdu.ESME_RBINDFAIL,
                f"account has no 'send' scope to bind as {mode}",
                caller.name,
            )
            return
        limit = caller.account.max_binds
        if context.binds_of(caller.name) >= limit:
            self._refuse_bind(
                resp,
                sequence,
                pdu.ESME_RBINDFAIL,
                f"account has its max_binds = {limit} sessions bound on this instance",
                caller.name,
            )
            return
        context.bound.setdefault(caller.name, set()).add(self)
        self.mode, self.caller = mode, caller
        self._log = self._log.bind(account=caller.name)
        self._reply(resp, pdu.ESME_ROK, sequence, bind_resp_body(request.interface_version))
        self._log.info(
            "client bound",
            mode=mode,
            system_type=request.system_type or None,
            interface_version=f"0x{request.interface_version:02X}",
        )

    def _refuse_bind(
        self, resp: int, sequence: int, status: int, reason: str, system_id: str | None = None
    ) -> None:
        self._log.warning(
            "bind refused; closing",
            system_id=system_id,
            status=pdu.status_name(status),
            reason=reason,
        )
        self._reply(resp, status, sequence)
        self._close()

    def _submit(self, command_id: int, sequence: int, body: bytes) -> None:
        resp = command_id | pdu.RESPONSE
        caller = self.caller
        assert caller is not None
        account = caller.account
        if self.unanswered >= account.window:
            self.refused += 1
            self._reply(resp, pdu.ESME_RTHROTTLED, sequence)
            return
        try:
            read = read_submit_sm if command_id == pdu.SUBMIT_SM else read_data_sm
            part = read(body, time.time())
        except Malformed as exc:
            self.refused += 1
            self._log.info("unreadable submit", reason=str(exc))
            self._reply(pdu.GENERIC_NACK, pdu.ESME_RINVCMDLEN, sequence)
            return
        except Refused as exc:
            self._refused(resp, sequence, exc)
            return
        self.unanswered += 1
        answer = functools.partial(self._answer, resp, sequence)
        meta: dict[str, Any] | None = None
        concat = part.concat
        if concat is not None:
            if account.long_messages == "reassemble":
                self._context.reassembly.add(self, caller, part, answer)
                return
            # Passed as parts: each its own job (the handset gets them apart).
            meta = {"smpp_part": f"{concat.seq}/{concat.total}", "smpp_ref": concat.reference}
        try:
            text = text_of(part.octets, part.data_coding)
        except Refused as exc:
            self.unanswered -= 1
            self._refused(resp, sequence, exc)
            return
        self._read.append((part, text, meta, answer))

    async def _enqueue(self, caller: Caller, read: list[Submitted]) -> None:
        """Enqueue the submits of one read together and answer each: OK with its job id
        once durable, or the status that refuses it."""
        try:
            outcomes = await self._context.intake.enqueue_many(
                caller, [(part, text, meta) for part, text, meta, _answer in read]
            )
        except Exception as exc:
            outcomes = [exc] * len(read)
        for (_part, _text, _meta, answer), outcome in zip(read, outcomes, strict=True):
            if isinstance(outcome, str):
                answer(pdu.ESME_ROK, outcome)
            elif isinstance(outcome, Refused):
                self._log.info(
                    "submit refused", status=pdu.status_name(outcome.status), reason=outcome.reason
                )
                answer(outcome.status, "")
            else:
                self._log.error("submit not enqueued", exc_info=outcome)
                answer(pdu.ESME_RSYSERR, "")

    def _answer(self, resp: int, sequence: int, status: int, message_id: str) -> None:
        """A submit's response: OK with its job id, or the error status."""
        self.unanswered -= 1
        if status == pdu.ESME_ROK:
            self.accepted += 1
            self._reply(resp, status, sequence, message_id_body(message_id))
        else:
            self.refused += 1
            self._reply(resp, status, sequence)

    def _refused(self, resp: int, sequence: int, exc: Refused) -> None:
        self.refused += 1
        self._log.info("submit refused", status=pdu.status_name(exc.status), reason=exc.reason)
        self._reply(resp, exc.status, sequence)

    async def _query(self, command_id: int, sequence: int, body: bytes) -> None:
        """Answer a query_sm or cancel_sm from the ledger."""
        resp = command_id | pdu.RESPONSE
        caller = self.caller
        assert caller is not None
        if self._queries is None:
            self._queries = Queries.of(self._context)
        try:
            if command_id == QUERY_SM:
                status, answer = await self._queries.query(caller, body)
            else:
                status, answer = await self._queries.cancel(caller, body), b""
        except PduError as exc:
            self._log.info("unreadable query", reason=str(exc))
            self._reply(pdu.GENERIC_NACK, pdu.ESME_RINVCMDLEN, sequence)
            return
        except Exception:
            self._log.exception("query not answered")
            status, answer = pdu.ESME_RSYSERR, b""
        self._reply(resp, status, sequence, answer)

    # -- receipts to the client ----------------------------------------------------

    @property
    def receiving(self) -> bool:
        """Bound as receiver or transceiver, open, not unbinding: takes deliver_sm."""
        return (
            self.mode in RECEIVING_MODES
            and not self.unbinding
            and self._transport is not None
            and not self._transport.is_closing()
        )

    def deliver(self, body: bytes) -> asyncio.Future[int]:
        """Send a deliver_sm with `body`; the future gets its deliver_sm_resp's
        command_status (NO_ANSWER when the session closes or DELIVER_WAIT passes)."""
        sequence = self._sequence.next()
        waiting: asyncio.Future[int] = self._loop.create_future()
        if not self.receiving:
            waiting.set_result(NO_ANSWER)
            return waiting
        self.deliveries[sequence] = waiting
        timer = self._loop.call_later(DELIVER_WAIT, self._no_answer, sequence)
        waiting.add_done_callback(lambda _: timer.cancel())
        self._reply(pdu.DELIVER_SM, 0, sequence, body)
        return waiting

    async def _close_when_answered(self) -> None:
        await asyncio.wait(set(self.deliveries.values()), timeout=UNBIND_WAIT)
        self._close()

    def _no_answer(self, sequence: int) -> None:
        waiting = self.deliveries.pop(sequence, None)
        if waiting is not None and not waiting.done():
            self._log.warning("deliver_sm unanswered", sequence=sequence, waited=DELIVER_WAIT)
            waiting.set_result(NO_ANSWER)

    # -- keeping the link ------------------------------------------------------------

    def _tick(self) -> None:
        """The session's one timer: bind deadline, idle enquire_link, dead link."""
        if self._transport is None:
            return
        every = self._context.settings.smpp_server.enquire_link
        now = self._loop.time()
        if self.mode is None and now - self._opened >= every:
            self._log.info("closing: not bound", within=every)
            self._close()
            return
        if self._enquired_at is not None and self._last_received > self._enquired_at:
            self._enquired_at = None  # heard from since: alive
        if self._enquired_at is not None:
            if now - self._enquired_at >= every:
                self._log.warning("closing: enquire_link unanswered", waited=every)
                self._close()
                return
        elif self.mode is not None and now - self._last_received >= every:
            self._enquired_at = now
            self._reply(pdu.ENQUIRE_LINK, 0, self._sequence.next())
        self._timer = self._loop.call_later(max(0.2, every / 4), self._tick)

    async def unbind(self, grace: float) -> None:
        """Stop taking submits, let those being enqueued be answered (up to `grace`
        seconds), ask the client to unbind, and close."""
        self.unbinding = True
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        if self._transport is not None and self.mode is not None:
            self._unbind_sequence = self._sequence.next()
            self._reply(pdu.UNBIND, 0, self._unbind_sequence)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._unbound), UNBIND_WAIT)
        self._close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), UNBIND_WAIT)
        if self._transport is not None:
            self._transport.abort()

    def close_now(self, why: str) -> None:
        """Close at once (the account was removed or its password changed)."""
        self._log.warning("closing", reason=why)
        self._close()

    # -- writing ------------------------------------------------------------------

    def _reply(self, command_id: int, status: int, sequence: int, body: bytes = b"") -> None:
        """Queue a PDU: the ones made in one loop turn go out in one write."""
        if self._transport is None:
            return
        encoded = Pdu(command_id, status, sequence, body).encode()
        self._replies.append(encoded)
        self._queued += len(encoded)
        if len(self._replies) == 1:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        replies, self._replies = self._replies, []
        self._queued = 0
        transport = self._transport
        if replies and transport is not None and not transport.is_closing():
            transport.write(b"".join(replies))
        if (
            self._reading_held
            and not self._writing_paused
            and transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() <= OUTPUT_LIMIT
        ):
            # Written, or below the transport's mark (else resume_writing comes later).
            self._reading_held = False
            transport.resume_reading()

    def _close(self) -> None:
        """Close after writing what is queued."""
        self._flush()
        if self._transport is not None:
            self._transport.close()
