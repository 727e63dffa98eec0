"""Our SMPP 3.4 ESME session: one TCP connection, bound, with a send window.

aiosmpplib's own ESME is not used (no send window; it mis-correlates responses
under load). Here every request gets a sequence number and a future; a response
resolves the future with the same number, whatever order responses come in.
`SmppBind` keeps one session up (connect, bind, enquire_link, reconnect with
back-off) and implements `binds.base.Bind`: `submit` turns a message into its
submit_sm segments and returns one outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import structlog

from ..base import Accepted, Done, Failed, OutboundMessage, Outcome, Retry, TaskSends
from ..flow import AdaptiveRate, Window
from . import pdu
from .codec import EncodeError, Encoding, LongMode, Segment, encode_text
from .pdu import FrameDecoder, FramingError, Pdu, PduError, SequenceNumbers, ShortMessage

__all__ = ["DeliverHandler", "SmppBind", "SmppSpec"]

log = structlog.get_logger("binds.smpp")

DeliverHandler = Callable[[str, ShortMessage], Awaitable[int]]
RETRY_STATUSES = frozenset({pdu.ESME_RTHROTTLED, pdu.ESME_RMSGQFUL})
MAX_DELIVERING = 64  # deliver_sm being stored at once; beyond, reading waits (back-pressure)
# Retries of a later part lost to a time-out or a dropped connection (throttled parts
# wait like any throttled submit): earlier parts already reached the SMSC.
PART_RETRIES = 3


@dataclass(frozen=True, kw_only=True)
class SmppSpec:
    """Where to bind and how to send (see the README's ``[profiles.P.smpp]``)."""

    host: str
    port: int
    system_id: str
    password: str = field(repr=False)
    system_type: str = ""
    mode: Literal["transmitter", "transceiver"] = "transceiver"
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""
    source_ton: int | None = None
    source_npi: int | None = None
    dest_ton: int = 1
    dest_npi: int = 1
    window: int = 10
    sync: bool = False
    tps: float = 0.0
    enquire_link: float = 30.0
    response_timeout: float = 10.0
    connect_timeout: float = 10.0
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    bind_retry: float = 60.0
    max_pdu_size: int = pdu.MAX_PDU_SIZE
    registered_delivery: int = 1
    service_type: str = ""
    encoding: Encoding = "auto"
    gsm_data_coding: int = 0
    long_mode: LongMode = "udh8"
    vendor_status: Mapping[int, Literal["retry", "fail"]] = field(default_factory=dict)
    throttle_floor: float = 1.0
    throttle_hold: float = 120.0


class _Lost(Exception):
    """The connection went away while a request waited for its response."""

    def __init__(self, why: str, *, sent: bool = True) -> None:
        super().__init__(why)
        self.sent = sent  # False: the request never left (no connection to write to)


class _BindRejected(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Throttled:
    """The SMSC refused a submit for now (throttled, queue full, a vendor "retry" code)."""

    name: str
    raw: str


class SmppBind:
    """One SMPP session kept bound, usable as a `Bind`."""

    def __init__(self, name: str, spec: SmppSpec, on_deliver: DeliverHandler | None = None) -> None:
        self.name = name
        self.spec = spec
        self._on_deliver = on_deliver
        self._limit = 1 if spec.sync else spec.window
        self._window = Window(self._limit)
        # Paces submits at the rate the SMSC accepts; the window stays as configured.
        self._rate = AdaptiveRate(spec.tps, floor=spec.throttle_floor)
        self._sequence = SequenceNumbers()
        self._reference = random.randrange(65536)
        self._pending: dict[int, asyncio.Future[Pdu]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._bound = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._children: set[asyncio.Task[None]] = set()
        self._delivering = asyncio.Semaphore(MAX_DELIVERING)
        self._sends = TaskSends()
        self._messages = 0
        self._timeouts = 0
        self._last_received = 0.0
        self.state = "disconnected"
        self.last_error: str | None = None
        self._logged: tuple[str, str | None] = ("", None)
        self._log = log.bind(bind=name)

    # -- Bind interface -------------------------------------------------------

    @property
    def window(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._messages

    @property
    def ready(self) -> bool:
        return self._bound.is_set()

    @property
    def rate(self) -> float:
        """The submit rate the session paces itself to now; 0 = unlimited."""
        return self._rate.rate

    @property
    def peak_outstanding(self) -> int:
        """Most submit_sm ever outstanding at once on this bind."""
        return self._window.peak

    async def start(self) -> None:
        """Start connecting in the background; `submit` waits for the bind."""
        if self._task is None:
            self._task = asyncio.create_task(self._keep_bound(), name=f"smpp {self.name}")

    async def wait_bound(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._bound.wait(), within)
        return self._bound.is_set()

    async def submit(self, message: OutboundMessage) -> Outcome:
        if not self._bound.is_set() and not await self.wait_bound(self.spec.response_timeout):
            # Not sent at all: the router holds it for a bind without counting an attempt.
            return Retry(
                f"session not bound: {self.state}",
                code="not_bound",
                raw=self.last_error or "",
                attempted=False,
            )
        try:
            self._reference = (self._reference + 1) % 65536
            encoded = encode_text(
                message.text,
                encoding=self.spec.encoding,
                gsm_data_coding=self.spec.gsm_data_coding,
                long_mode=self.spec.long_mode,
                reference=self._reference,
            )
        except EncodeError as exc:
            return Failed(str(exc), code="encoding")
        self._messages += 1
        try:
            return await self._submit_parts(message, encoded.data_coding, encoded.segments)
        finally:
            self._messages -= 1

    def send(self, message: OutboundMessage, done: Done) -> None:
        """Interim: `submit` in a task (the windowed send path replaces it)."""
        self._sends.send(self.submit, message, done)

    async def close(self) -> None:
        """Unbind (briefly waiting for unbind_resp), close the socket, stop reconnecting."""
        self._closing = True
        if self._bound.is_set():
            with contextlib.suppress(Exception):
                await self._request(pdu.UNBIND, b"", min(2.0, self.spec.response_timeout))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._drop("closed")
        for child in list(self._children):
            child.cancel()
        self.state = "closed"

    # -- sending ----------------------------------------------------------------

    async def _submit_parts(
        self, message: OutboundMessage, coding: int, segments: tuple[Segment, ...]
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        hold = self.spec.throttle_hold
        if message.expires_at is not None:
            hold = min(hold, message.expires_at - time.time())
        deadline = loop.time() + hold
        ids: list[str] = []
        for index, segment in enumerate(segments):
            body = self._body(message, coding, segment)
            outcome = await self._submit_held(body, deadline)
            tries = 0
            while index > 0 and isinstance(outcome, Retry) and tries < PART_RETRIES:
                # A later part lost to a time-out or a dropped connection: the SMSC has
                # the earlier ones, so try again here (after the session is back)
                # rather than hand the whole message back to be sent twice.
                tries += 1
                await asyncio.sleep(0.5 * 2**tries)
                await self.wait_bound(max(0.0, deadline - loop.time()))
                outcome = await self._submit_held(body, deadline)
            if isinstance(outcome, str):
                ids.append(outcome)
                continue
            if index == 0:
                return outcome
            return Failed(
                f"part {index + 1} of {len(segments)} not accepted ({outcome.reason}); "
                f"parts 1-{index} were",
                code="partial",
                raw=" ".join(ids),
            )
        return Accepted(ids[0], raw="ESME_ROK", segments=len(segments), part_ids=tuple(ids))

    def _body(self, message: OutboundMessage, coding: int, segment: Segment) -> bytes:
        source = message.source
        numeric = source.lstrip("+").isdigit()
        ton = self.spec.source_ton if self.spec.source_ton is not None else (1 if numeric else 5)
        npi = self.spec.source_npi if self.spec.source_npi is not None else (1 if numeric else 0)
        tlvs: dict[int, bytes] = {}
        if segment.message_payload is not None:
            tlvs[pdu.TAG_MESSAGE_PAYLOAD] = segment.message_payload
        if segment.sar is not None:
            reference, total, seq = segment.sar
            tlvs[pdu.TAG_SAR_MSG_REF_NUM] = pdu.tlv_int(reference, 2)
            tlvs[pdu.TAG_SAR_TOTAL_SEGMENTS] = pdu.tlv_int(total, 1)
            tlvs[pdu.TAG_SAR_SEGMENT_SEQNUM] = pdu.tlv_int(seq, 1)
        return pdu.encode_short_message(
            ShortMessage(
                service_type=self.spec.service_type,
                source=source.lstrip("+") if numeric else source[:11],
                source_ton=ton,
                source_npi=npi,
                destination=message.destination.lstrip("+"),
                dest_ton=self.spec.dest_ton,
                dest_npi=self.spec.dest_npi,
                esm_class=pdu.ESM_UDHI if segment.udhi else 0,
                registered_delivery=self.spec.registered_delivery,
                data_coding=coding,
                short_message=segment.short_message,
                tlvs=tlvs,
            )
        )

    async def _submit_held(self, body: bytes, deadline: float) -> str | Retry | Failed:
        """One submit_sm, sent again while the SMSC throttles it, until `deadline`.

        Throttled submits stay here rather than go back to the router: the SMSC
        never took them, so they must not use up the message's attempts, and the
        rate controller already slows the session to what the SMSC accepts.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:
            outcome = await self._submit_one(body)
            if not isinstance(outcome, _Throttled):
                return outcome
            pause = self._rate.pause() * random.uniform(0.5, 1.5)
            if self._closing or loop.time() + pause > deadline:
                return Retry(
                    f"SMSC answered {outcome.name} for {loop.time() - began:.0f}s",
                    code=outcome.name,
                    raw=outcome.raw,
                    attempted=False,
                )
            await asyncio.sleep(pause)

    async def _submit_one(self, body: bytes) -> str | Retry | Failed | _Throttled:
        """One submit_sm: the SMSC's message id, or why not."""
        async with self._window.slot():
            await self._rate.acquire()
            try:
                response = await self._request(pdu.SUBMIT_SM, body, self.spec.response_timeout)
            except TimeoutError:
                self._timeouts += 1
                if self._timeouts >= 3:
                    self._log.warning("three responses timed out in a row; reconnecting")
                    self._drop("response timeouts")
                return Retry(
                    f"no submit_sm_resp within {self.spec.response_timeout:g}s",
                    code="timeout",
                    maybe_sent=True,
                )
            except _Lost as exc:
                return Retry(
                    f"connection lost before submit_sm_resp: {exc}",
                    code="connection_lost",
                    maybe_sent=exc.sent,
                    attempted=exc.sent,
                )
        self._timeouts = 0
        status = response.status
        if status == pdu.ESME_ROK and response.command_id != pdu.GENERIC_NACK:
            self._rate.accepted()
            try:
                message_id, _ = pdu.read_c_string(response.body, 0, "message_id", 65)
            except PduError:
                message_id = response.body.rstrip(b"\0").decode("latin-1")
            return message_id
        name = pdu.status_name(status)
        raw = f"0x{status:08X}"
        action = self.spec.vendor_status.get(status)
        if status in RETRY_STATUSES or action == "retry":
            before = self._rate.rate
            self._rate.throttled()
            self._log_rate(before, name)
            return _Throttled(name, raw)
        return Failed(f"SMSC answered {name}", code=name, raw=raw)

    def _log_rate(self, before: float, why: str) -> None:
        after = self._rate.rate
        if after == before:
            return
        if after and (not before or after < before):
            self._log.warning("slowing down", reason=why, rate=round(after, 1))
        else:
            self._log.info("speeding up again", rate=round(after, 1) or "unlimited")

    # -- the connection -----------------------------------------------------------

    async def _request(self, command_id: int, body: bytes, limit: float) -> Pdu:
        writer = self._writer
        if writer is None:
            raise _Lost("not connected", sent=False)
        sequence = self._sequence.next()
        future: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
        self._pending[sequence] = future
        try:
            writer.write(Pdu(command_id, 0, sequence, body).encode())
            return await asyncio.wait_for(future, limit)
        finally:
            self._pending.pop(sequence, None)

    def _send(self, command_id: int, status: int, sequence: int, body: bytes = b"") -> None:
        if self._writer is not None:
            self._writer.write(Pdu(command_id, status, sequence, body).encode())

    def _drop(self, why: str) -> None:
        """Close the connection; every request still waiting gets `_Lost`."""
        self._bound.clear()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(_Lost(why))
        self._pending.clear()

    def _set_state(self, state: str, error: str | None = None, **details: object) -> None:
        self.state, self.last_error = state, error
        if state in ("connecting", "binding"):
            return  # steps of an attempt; its result is what gets logged
        # Once per change: a session that keeps failing the same way logs it once.
        if (state, error) != self._logged:
            self._logged = (state, error)
            level = self._log.warning if error else self._log.info
            level("session " + state, error=error, **details)

    async def _keep_bound(self) -> None:
        backoff = self.spec.reconnect_min
        while not self._closing:
            pause = backoff
            try:
                await self._session()
                backoff = pause = self.spec.reconnect_min
                if not self._closing:
                    self._set_state("disconnected", "connection closed by peer")
            except _BindRejected:
                pause = self.spec.bind_retry  # a wrong password does not fix itself quickly
            except (OSError, TimeoutError, FramingError, _Lost) as exc:
                if self._bound.is_set() or self.state == "bound":
                    backoff = pause = self.spec.reconnect_min
                self._set_state("disconnected", f"{type(exc).__name__}: {exc}")
                backoff = min(self.spec.reconnect_max, backoff * 2)
            finally:
                self._drop("session ended")
            if self._closing:
                return
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))

    async def _session(self) -> None:
        self._set_state("connecting", self.last_error)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.spec.host, self.spec.port), self.spec.connect_timeout
        )
        self._writer = writer
        decoder = FrameDecoder(self.spec.max_pdu_size)
        reading = asyncio.create_task(self._read(reader, decoder))
        try:
            self._set_state("binding", self.last_error)
            sequence = self._sequence.next()
            bind = pdu.bind_pdu(
                self.spec.mode,
                sequence,
                system_id=self.spec.system_id,
                password=self.spec.password,
                system_type=self.spec.system_type,
                addr_ton=self.spec.addr_ton,
                addr_npi=self.spec.addr_npi,
                address_range=self.spec.address_range,
            )
            future: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
            self._pending[sequence] = future
            writer.write(bind)
            done, _ = await asyncio.wait(
                {cast(asyncio.Future[Any], future), reading},
                timeout=self.spec.response_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if future not in done:
                raise _Lost("no bind response") if reading in done else TimeoutError("bind")
            response = future.result()
            if response.status != pdu.ESME_ROK:
                name = pdu.status_name(response.status)
                self._set_state("bind_failed", f"bind rejected: {name}")
                raise _BindRejected(name)
            self._timeouts = 0
            self._last_received = asyncio.get_running_loop().time()
            self._set_state("bound", None, mode=self.spec.mode)
            self._bound.set()
            keeper = asyncio.create_task(self._enquire_links())
            try:
                await reading
            finally:
                keeper.cancel()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading

    async def _read(self, reader: asyncio.StreamReader, decoder: FrameDecoder) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(65536)
            if not data:
                return
            self._last_received = loop.time()
            for frame in decoder.feed(data):
                if frame.command_id == pdu.DELIVER_SM:
                    await self._delivering.acquire()  # released when the handler is done
                self._dispatch(frame)

    def _dispatch(self, frame: Pdu) -> None:
        if frame.is_response:
            future = self._pending.get(frame.sequence)
            if future is not None and not future.done():
                future.set_result(frame)
            elif frame.command_id == pdu.GENERIC_NACK:
                self._log.warning(
                    "generic_nack", status=pdu.status_name(frame.status), sequence=frame.sequence
                )
            else:
                self._log.info(
                    "response to no pending request",
                    sequence=frame.sequence,
                    command_id=f"0x{frame.command_id:08X}",
                )
            return
        if frame.command_id == pdu.ENQUIRE_LINK:
            self._send(pdu.ENQUIRE_LINK | pdu.RESPONSE, 0, frame.sequence)
        elif frame.command_id == pdu.UNBIND:
            self._send(pdu.UNBIND | pdu.RESPONSE, 0, frame.sequence)
            self._log.info("peer unbound")
            self._drop("peer unbound")
        elif frame.command_id == pdu.DELIVER_SM:
            task = asyncio.create_task(self._deliver(frame))
            self._children.add(task)
            task.add_done_callback(self._children.discard)
        else:
            self._send(pdu.GENERIC_NACK, pdu.ESME_RINVCMDID, frame.sequence)

    async def _deliver(self, frame: Pdu) -> None:
        """Answer a deliver_sm only once the router has stored what it carries."""
        try:
            await self._deliver_one(frame)
        finally:
            self._delivering.release()

    async def _deliver_one(self, frame: Pdu) -> None:
        try:
            message = pdu.decode_short_message(frame.body)
        except PduError as exc:
            self._log.warning("unreadable deliver_sm", reason=str(exc))
            self._send(pdu.DELIVER_SM | pdu.RESPONSE, pdu.ESME_RINVMSGLEN, frame.sequence, b"\0")
            return
        status = pdu.ESME_ROK
        if self._on_deliver is not None:
            try:
                status = await self._on_deliver(self.name, message)
            except Exception:
                self._log.exception("deliver_sm not stored; asking the SMSC to resend")
                status = pdu.ESME_RX_T_APPN
        self._send(pdu.DELIVER_SM | pdu.RESPONSE, status, frame.sequence, b"\0")

    async def _enquire_links(self) -> None:
        loop = asyncio.get_running_loop()
        every = self.spec.enquire_link
        while True:
            idle = loop.time() - self._last_received
            if idle < every:
                await asyncio.sleep(every - idle)
                continue
            try:
                await self._request(pdu.ENQUIRE_LINK, b"", self.spec.response_timeout)
            except (TimeoutError, _Lost):
                self._log.warning("enquire_link unanswered; reconnecting")
                self._drop("enquire_link unanswered")
                return
