"""Our SMPP 3.4 ESME session: one TCP connection, bound, with a send window.

aiosmpplib's own ESME is not used (no send window; it mis-correlates responses
under load). Every request gets a sequence number and a response is matched to
it by that number, whatever order responses come in. `SmppBind` keeps one
session up (connect, bind, enquire_link, reconnect with back-off) and implements
`binds.base.Bind`: `send` turns a message into its submit_sm segments and calls
back once with one outcome; `submit` awaits the same.

submit_sm is the hot path and costs no task, future or timer per message: a
message is a `Job` in a FIFO queue; a pump writes the queue's head while the window
and the rate allow (one write for all it can send, one timer for the head when the
rate says wait); responses are read in chunks and matched by sequence number; one
periodic sweep per bind times out unanswered submits and messages waiting too long
for a bound session. Where each message is (queued, outstanding, held) is kept by
`binds.smpp.window.SubmitWindow`, which does no I/O; here are the I/O and the timers.
The rare PDUs (bind, unbind, enquire_link) keep a future each.

Throttling: ESME_RTHROTTLED and ESME_RMSGQFUL answers are held and sent again here
(they use up none of the message's attempts). How fast to send is `Pacing`'s to say
(`binds.smpp.pacing`): a rate controller paces the session to what the SMSC accepts;
an SMSC whose queue stays full is probed instead, one submit at a time, so that it is
not flooded.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, cast

import structlog

from ..base import Accepted, Crashed, Done, Failed, OutboundMessage, Outcome, Retry
from . import pdu
from .bodies import SubmitBodies
from .codec import Encoding, LongMode
from .pacing import Pacing
from .pdu import (
    HEADER,
    FrameDecoder,
    FramingError,
    Pdu,
    PduError,
    SequenceNumbers,
    ShortMessage,
    submit_resp_id,
)
from .window import Job, SubmitWindow

__all__ = ["DeliverHandler", "DeliverManyHandler", "SmppBind", "SmppSpec"]

log = structlog.get_logger("binds.smpp")

DeliverHandler = Callable[[str, ShortMessage], Awaitable[int]]
# The deliver_sm of one read, at once: a deliver_sm_resp status for each, in order.
DeliverManyHandler = Callable[[str, list[ShortMessage]], Awaitable[Sequence[int]]]
RETRY_STATUSES = frozenset({pdu.ESME_RTHROTTLED, pdu.ESME_RMSGQFUL})
MAX_DELIVERING = 512  # deliver_sm being stored at once; beyond, reading waits (back-pressure)
SUBMIT_SM_RESP = pdu.SUBMIT_SM | pdu.RESPONSE
DELIVER_SM_RESP = pdu.DELIVER_SM | pdu.RESPONSE


def _accepted_maker() -> Callable[[str], Accepted]:
    """Accepted(message_id, "ESME_ROK", 1, (message_id,)) for a one-part message, at half
    the cost: a frozen dataclass's __init__ sets each field through object.__setattr__,
    which is dear on the hot path; this sets its slots directly. Used only while Accepted
    has exactly these fields and no __post_init__ (checked here), else the plain call."""
    names = ("provider_message_id", "raw", "segments", "part_ids")
    if tuple(f.name for f in fields(Accepted)) != names or hasattr(Accepted, "__post_init__"):
        return lambda message_id: Accepted(message_id, "ESME_ROK", 1, (message_id,))
    new = object.__new__
    set_id, set_raw, set_segments, set_parts = (vars(Accepted)[n].__set__ for n in names)

    def accepted(message_id: str) -> Accepted:
        outcome = new(Accepted)
        set_id(outcome, message_id)
        set_raw(outcome, "ESME_ROK")
        set_segments(outcome, 1)
        set_parts(outcome, (message_id,))
        return outcome

    return accepted


_accepted_one = _accepted_maker()


@dataclass(frozen=True, kw_only=True)
class SmppSpec:
    """Where to bind and how to send (see docs/configuration.md, ``[profiles.NAME.smpp]``)."""

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
    # Sender -> (TON, NPI) for senders addressed otherwise than by their kind (a
    # short code an SMSC wants as TON 0, say); wins over source_ton/source_npi.
    sender_addresses: Mapping[str, tuple[int, int]] = field(default_factory=dict)
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
    # None: by mode. A transceiver asks for a receipt for every final outcome (1); a
    # transmitter asks for none (0): receipts come back as deliver_sm, which a
    # transmitter session cannot receive, so asking would only leave every message
    # waiting for a report that never comes.
    registered_delivery: int | None = None
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


def _call_done(done: Done, outcome: Outcome, logger: Any) -> None:
    # A caller's callback that raises must not take the session (or the other messages
    # of the chunk being read) with it.
    try:
        done(outcome)
    except Exception:
        logger.exception("outcome callback failed")


def _not_connected() -> Retry:
    # What a message never written gets when it cannot be (closing): the SMSC never saw it.
    return Retry(
        "connection lost before submit_sm_resp: not connected",
        code="connection_lost",
        maybe_sent=False,
        attempted=False,
    )


def receipts_by_default(mode: str) -> int:
    """The ``registered_delivery`` a bind of `mode` asks for unless told: 1 (a receipt
    for every final outcome) on a transceiver, 0 on a transmitter — receipts come back
    as deliver_sm, which a transmitter session cannot receive, so asking there would
    leave every message waiting for a report that never comes."""
    return 1 if mode == "transceiver" else 0


class SmppBind:
    """One SMPP session kept bound, usable as a `Bind`."""

    def __init__(
        self,
        name: str,
        spec: SmppSpec,
        on_deliver: DeliverHandler | None = None,
        *,
        on_deliver_many: DeliverManyHandler | None = None,
    ) -> None:
        """`on_deliver` stores one deliver_sm (a task each); `on_deliver_many`, when
        given, is used instead: the deliver_sm of one read in one call (one task per
        read), which is what a burst of receipts wants."""
        self.name = name
        self.spec = spec
        self._on_deliver = on_deliver
        self._on_deliver_many = on_deliver_many
        self._log = log.bind(bind=name)
        # Where every message taken is: queued, written, held (state only; see window.py).
        self._window = SubmitWindow(1 if spec.sync else spec.window)
        # How fast to send: paced to what the SMSC accepts; the window stays as configured.
        self._pacing = Pacing(spec.tps, floor=spec.throttle_floor, log=self._log)
        self._sequence = SequenceNumbers()
        self._submit_bodies = SubmitBodies(
            service_type=spec.service_type,
            dest_ton=spec.dest_ton,
            dest_npi=spec.dest_npi,
            registered_delivery=self.registered_delivery,
            source_ton=spec.source_ton,
            source_npi=spec.source_npi,
            sender_addresses=spec.sender_addresses,
            encoding=spec.encoding,
            gsm_data_coding=spec.gsm_data_coding,
            long_mode=spec.long_mode,
        )
        self._bodies = self._submit_bodies.of  # bound once: called for every message
        # bind, unbind, enquire_link: a future each (submit_sm: the window, and the timers
        # below: the first held message's, the queue head's when the rate says wait, and
        # the periodic sweep's).
        self._pending: dict[int, asyncio.Future[Pdu]] = {}
        self._held_timer: asyncio.TimerHandle | None = None
        self._rate_timer: asyncio.TimerHandle | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_every = min(1.0, spec.response_timeout / 4)
        self._hold_for = spec.throttle_hold
        self._pump_soon = False
        # The loop, once known: asyncio.get_running_loop() makes a getpid() system call on
        # Python 3.11, too dear for every message.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._replies: list[bytes] = []  # responses waiting for this loop turn's write
        self._wire: _Wire | None = None
        self._bound = asyncio.Event()
        self._unbound_at = 0.0  # loop time the session was last lost
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._children: set[asyncio.Task[None]] = set()
        self._delivering = 0  # deliver_sm being stored (at most MAX_DELIVERING)
        # deliver_sm of the read being acted on, for `on_deliver_many` (one call for them).
        self._arrived: list[pdu.Frame] = []
        self._last_received = 0.0
        self.state = "disconnected"
        self.last_error: str | None = None
        self.throttles = 0  # submits the SMSC answered "throttled" or "queue full" (metrics)
        self._logged: tuple[str, str | None] = ("", None)

    # -- Bind interface -------------------------------------------------------

    @property
    def window(self) -> int:
        return self._window.limit

    @property
    def in_flight(self) -> int:
        """Messages taken by `send` whose outcome is not out yet."""
        return self._window.messages

    @property
    def ready(self) -> bool:
        return self._bound.is_set()

    @property
    def rate(self) -> float:
        """The submit rate the session paces itself to now; 0 = unlimited."""
        return self._pacing.rate.rate

    @property
    def registered_delivery(self) -> int:
        """What submit_sm asks for: `spec.registered_delivery`, else the bind mode's
        default (`receipts_by_default`)."""
        asked = self.spec.registered_delivery
        if asked is not None:
            return asked
        return receipts_by_default(self.spec.mode)

    @property
    def queue_probes(self) -> int:
        """Times the session started probing a full SMSC queue."""
        return self._pacing.probe.probes

    @property
    def peak_outstanding(self) -> int:
        """Most submit_sm ever outstanding at once on this bind."""
        return self._window.peak

    def adjust(self, *, window: int, tps: float, sync: bool) -> None:
        """Take a new window, rate ceiling and processing mode without dropping the
        session (a configuration reload). A smaller window lets what is outstanding
        finish; a new rate ceiling starts a fresh rate measurement."""
        self.spec = replace(self.spec, window=window, tps=tps, sync=sync)
        self._window.limit = 1 if sync else window
        self._pacing.retune(tps)
        self._pump_later()

    async def start(self) -> None:
        """Start connecting in the background; messages sent meanwhile wait for the bind."""
        if self._task is None:
            if self.spec.mode == "transmitter" and self.registered_delivery & 0b11:
                self._log.warning(
                    "registered_delivery asks for receipts a transmitter session cannot "
                    "receive; messages will wait for reports that never come: bind as a "
                    "transceiver to get them, or set registered_delivery = 0",
                    registered_delivery=self.registered_delivery,
                )
            self._loop = asyncio.get_running_loop()
            self._unbound_at = self._loop.time()
            self._task = asyncio.create_task(self._keep_bound(), name=f"smpp {self.name}")

    async def wait_bound(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._bound.wait(), within)
        return self._bound.is_set()

    async def submit(self, message: OutboundMessage) -> Outcome:
        """`send`, awaited. Cancelled, the part being written still gets its answer (and
        is dropped); nothing more of the message is written."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def done(outcome: Outcome | Crashed) -> None:
            if future.done():
                return
            if isinstance(outcome, Crashed):
                future.set_exception(outcome.error)
            else:
                future.set_result(outcome)

        job = self._queue_message(message, done)
        try:
            return await future
        except asyncio.CancelledError:
            if job is not None:
                job.cancelled = True
            raise

    def send(self, message: OutboundMessage, done: Done) -> None:
        """Queue `message`; `done` gets its outcome once (see `binds.base.Bind.send`)."""
        self._queue_message(message, done)

    async def close(self) -> None:
        """Unbind (briefly waiting for unbind_resp), close the socket, stop reconnecting;
        every message still here gets its outcome."""
        self._closing = True
        if self._bound.is_set():
            with contextlib.suppress(Exception):
                await self._request(pdu.UNBIND, b"", min(2.0, self.spec.response_timeout))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._lose_connection("closed")
        for child in list(self._children):
            child.cancel()
        for timer in (self._held_timer, self._rate_timer, self._sweeper):
            if timer is not None:
                timer.cancel()
        self._held_timer = self._rate_timer = self._sweeper = None
        for job in self._window.drain():
            self._part_failed(job, _not_connected())  # never written, or refused: not taken
        self.state = "closed"

    # -- sending ----------------------------------------------------------------

    def _queue_message(self, message: OutboundMessage, done: Done) -> Job | None:
        """Encode `message` and queue it; None when its outcome is already out."""
        if self._closing:
            _call_done(done, self._not_bound(), self._log)
            return None
        try:
            bodies = self._bodies(message)
        except ValueError as exc:  # EncodeError, PduError, an address outside latin-1
            _call_done(done, Failed(str(exc), code="encoding"), self._log)
            return None
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        hold = self._hold_for
        if message.expires_at is not None:
            hold = min(hold, message.expires_at - time.time())
        window = self._window
        job = Job(message, done, bodies, now + hold, now)
        window.messages += 1
        window.queue.append(job)
        if (
            not self._pump_soon
            and len(window.outstanding) < window.limit
            and self._rate_timer is None
        ):
            # One pump for all messages handed over in this turn of the loop: one write.
            # (A full window or a rate timer pumps by itself when it can take more, and so
            # does reading answers, when the message comes from an outcome's callback.)
            self._pump_soon = True
            loop.call_soon(self._pump_later)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_every, self._sweep)
        return job

    def _pump_later(self) -> None:
        self._pump_soon = False
        self._pump()

    def _pump(self) -> None:
        """Write queued submits while the window has room and the rate allows: one write."""
        window = self._window
        queue = window.queue
        transport = self._transport
        if not queue or transport is None or self._rate_timer is not None:
            return
        if transport.is_closing():
            return  # the connection is going; what is queued waits for the next one
        outstanding = window.outstanding
        room = window.limit - len(outstanding)
        if room <= 0 or self._closing or not self._bound.is_set():
            return
        pacing = self._pacing
        rate = pacing.rate
        limited = rate.limited
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time()
        probe = pacing.probe
        if probe.limit:
            # The SMSC's queue was full: probes only, after the pause (the rate's timer
            # serves, so that one timer pumps either way).
            if now < probe.not_before:
                self._rate_timer = loop.call_at(probe.not_before, self._rate_ready)
                return
            room = min(room, probe.limit - len(outstanding))
            if room <= 0:
                return
        if not limited:
            rate.take(now)  # the controller watches for idle spells
        next_sequence = self._sequence.next
        pack = HEADER.pack
        take = queue.popleft
        chunks: list[bytes] = []
        add = chunks.append
        while queue and room:
            job = take()
            if job.cancelled:
                self._give_outcome(job, _not_connected())
                continue
            if limited:
                wait = rate.take(now)
                if wait > 0.0:
                    queue.appendleft(job)  # still the head
                    self._rate_timer = loop.call_later(wait, self._rate_ready)
                    break
            sequence = next_sequence()
            body = job.bodies[job.index]
            add(pack(16 + len(body), pdu.SUBMIT_SM, 0, sequence))
            add(body)
            job.sent_at = now
            outstanding[sequence] = job
            room -= 1
        if chunks:
            transport.write(b"".join(chunks))
            if len(outstanding) > window.peak:
                window.peak = len(outstanding)

    def _rate_ready(self) -> None:
        self._rate_timer = None
        self._pump()

    def _rate_changed(self) -> None:
        """A new rate: the head's timer was set for the old one; the next pump asks again."""
        if self._rate_timer is not None:
            self._rate_timer.cancel()
            self._rate_timer = None

    def _submit_answered(self, job: Job, command_id: int, status: int, body: bytes) -> None:
        """The response to `job`'s current part (anything but the common plain OK)."""
        now = asyncio.get_running_loop().time()
        self._window.answered(now)
        if status == pdu.ESME_ROK and command_id != pdu.GENERIC_NACK:
            if self._pacing.accepted(1, now, self._window.limit):
                self._rate_changed()
            ids = self._window.part_accepted(job, submit_resp_id(body), now)
            if ids is not None:
                self._give_outcome(
                    job,
                    Accepted(ids[0], raw="ESME_ROK", segments=len(ids), part_ids=tuple(ids)),
                )
            return
        name = pdu.status_name(status)
        raw = f"0x{status:08X}"
        action = self.spec.vendor_status.get(status)
        if status in RETRY_STATUSES or action == "retry":
            self.throttles += 1
            pacing = self._pacing
            queue_full = status == pdu.ESME_RMSGQFUL
            if pacing.refused(name, queue_full=queue_full, now=now, window=self._window.limit):
                self._rate_changed()
            # Held here rather than handed back to the router: the SMSC never took it, so
            # it must not use up the message's attempts, and the rate controller (or the
            # probe) slows the session to what the SMSC accepts.
            pause = pacing.pause(now)
            if self._closing or now + pause > job.deadline:
                self._part_failed(
                    job,
                    Retry(
                        f"SMSC answered {name} for {now - job.began:.0f}s",
                        code=name,
                        raw=raw,
                        attempted=False,
                    ),
                )
            else:
                self._hold(job, now + pause, new_try=False)
            return
        self._part_failed(job, Failed(f"SMSC answered {name}", code=name, raw=raw))

    def _part_failed(self, job: Job, outcome: Retry | Failed) -> None:
        """A part not taken: the message's outcome, or (a later part) another try."""
        if job.index == 0 or job.cancelled:
            self._give_outcome(job, outcome)
            return
        if isinstance(outcome, Retry) and not self._closing:
            # A later part lost to a time-out or a dropped connection: the SMSC has the
            # earlier ones, so try again here (once the session is back) rather than hand
            # the whole message back to be sent twice.
            due = self._window.retry_part(job, asyncio.get_running_loop().time())
            if due is not None:
                self._hold(job, due, new_try=True)
                return
        self._give_outcome(job, self._window.partial(job, outcome.reason))

    def _give_outcome(self, job: Job, outcome: Outcome) -> None:
        self._window.messages -= 1
        _call_done(job.done, outcome, self._log)

    def _not_bound(self) -> Retry:
        # Not sent at all: the router holds it for a bind without counting an attempt.
        return Retry(
            f"session not bound: {self.state}",
            code="not_bound",
            raw=self.last_error or "",
            attempted=False,
        )

    def _hold(self, job: Job, due: float, *, new_try: bool) -> None:
        """Put `job` aside until `due` (loop time), then back in the queue."""
        if self._window.hold(job, due, new_try=new_try):
            if self._held_timer is not None:
                self._held_timer.cancel()
            self._held_timer = asyncio.get_running_loop().call_at(due, self._release_held)

    def _release_held(self) -> None:
        self._held_timer = None
        loop = asyncio.get_running_loop()
        for job in self._window.release(loop.time()):
            self._give_outcome(job, _not_connected())  # cancelled while held
        due = self._window.next_release
        if due is not None:
            self._held_timer = loop.call_at(due, self._release_held)
        self._pump()

    def give_back_waiting(self) -> int:
        """Without a bound session: hand back now, as never sent (`Retry`, not an
        attempt), every message waiting here for one, rather than after
        `response_timeout` (the router moves them to another connector). Later parts
        of a long message already partly sent stay until their deadline. Returns how
        many messages were handed back."""
        if self._bound.is_set() or not self._window.queue:
            return 0
        now = asyncio.get_running_loop().time()
        given = 0
        for job in self._window.expire_waiting(now, 0.0, self._unbound_at):
            if job.index == 0:
                self._give_outcome(job, self._not_bound())
                given += 1
            else:
                self._part_failed(job, _not_connected())
        return given

    def _sweep(self) -> None:
        """Every `_sweep_every` s while messages are here: time out unanswered submits,
        and messages that waited too long for a bound session."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        timeout = self.spec.response_timeout
        window = self._window
        late, reconnect = window.expire(now, timeout)
        for number, job in enumerate(late, 1):
            if reconnect and number == len(late):
                self._log.warning("three responses timed out in a row; reconnecting")
                self._lose_connection("response timeouts")
            self._part_failed(
                job,
                Retry(f"no submit_sm_resp within {timeout:g}s", code="timeout", maybe_sent=True),
            )
        if window.queue and not self._bound.is_set():
            for job in window.expire_waiting(now, timeout, self._unbound_at):
                if job.index == 0:
                    self._give_outcome(job, self._not_bound())
                else:
                    self._part_failed(job, _not_connected())
        if late:
            self._pump()
        if window.messages > 0 and self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_every, self._sweep)

    # -- the connection -----------------------------------------------------------

    async def _request(self, command_id: int, body: bytes, limit: float) -> Pdu:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise _Lost("not connected", sent=False)
        sequence = self._sequence.next()
        future: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
        self._pending[sequence] = future
        try:
            transport.write(Pdu(command_id, 0, sequence, body).encode())
            return await asyncio.wait_for(future, limit)
        finally:
            self._pending.pop(sequence, None)

    def _queue_reply(self, command_id: int, status: int, sequence: int, body: bytes = b"") -> None:
        """A response (deliver_sm_resp, enquire_link_resp, ...): written with the others
        made in the same loop turn, one write for a burst of receipts."""
        if self._transport is None:
            return
        self._replies.append(Pdu(command_id, status, sequence, body).encode())
        if len(self._replies) == 1:
            (self._loop or asyncio.get_running_loop()).call_soon(self._write_replies)

    def _write_replies(self) -> None:
        replies, self._replies = self._replies, []
        transport = self._transport
        # uvloop raises on a write to a closing transport (asyncio's only warns); the
        # SMSC resends what it does not see answered.
        if replies and transport is not None and not transport.is_closing():
            transport.write(b"".join(replies))

    def _lose_connection(self, why: str) -> None:
        """Close the connection; every request still waiting gets `_Lost`, every submit
        written and unanswered its outcome (a later part another try). Messages queued
        and never written stay queued for the next session."""
        if self._bound.is_set():
            # Messages waiting for a session get the time-out from here on (not from each
            # failed attempt after it, or they might wait for ever).
            self._unbound_at = asyncio.get_running_loop().time()
        self._bound.clear()
        self._write_replies()  # an unbind_resp goes out before the socket closes
        transport, self._transport, self._wire = self._transport, None, None
        if transport is not None:
            transport.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(_Lost(why))
        self._pending.clear()
        if self._rate_timer is not None:
            self._rate_timer.cancel()
            self._rate_timer = None
        for job in self._window.lose_outstanding():
            self._part_failed(
                job,
                Retry(
                    f"connection lost before submit_sm_resp: {why}",
                    code="connection_lost",
                    maybe_sent=True,
                ),
            )

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
                await self._run_session()
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
                self._lose_connection("session ended")
            if self._closing:
                return
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))

    async def _run_session(self) -> None:
        self._set_state("connecting", self.last_error)
        loop = asyncio.get_running_loop()
        decoder = FrameDecoder(self.spec.max_pdu_size)
        transport, wire = await asyncio.wait_for(
            loop.create_connection(lambda: _Wire(self, decoder), self.spec.host, self.spec.port),
            self.spec.connect_timeout,
        )
        self._transport, self._wire = transport, wire
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
            future: asyncio.Future[Pdu] = loop.create_future()
            self._pending[sequence] = future
            transport.write(bind)
            done, _ = await asyncio.wait(
                {cast(asyncio.Future[Any], future), wire.closed},
                timeout=self.spec.response_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if future not in done:
                raise _Lost("no bind response") if wire.closed in done else TimeoutError("bind")
            response = future.result()
            if response.status != pdu.ESME_ROK:
                name = pdu.status_name(response.status)
                self._set_state("bind_failed", f"bind rejected: {name}")
                raise _BindRejected(name)
            self._window.timeouts = 0
            self._last_received = loop.time()
            self._set_state("bound", None, mode=self.spec.mode)
            self._bound.set()
            self._pump()  # what waited for a session goes now
            keeper = asyncio.create_task(self._enquire_links())
            try:
                await wire.closed  # None at the peer's EOF; the error that ended it otherwise
            finally:
                keeper.cancel()
        finally:
            if wire.closed.done() and not wire.closed.cancelled():
                wire.closed.exception()  # seen (raised above, or superseded by another error)

    def _frames_read(self, wire: _Wire, frames: list[pdu.Frame], start: int, now: float) -> None:
        """Act on `frames` from `start` (a chunk just read, or the rest of one that waited
        for deliver_sm handlers); then write what the answers made room for, and what the
        outcomes' callbacks sent meanwhile (in the same write, not a pump of their own)."""
        scheduled, self._pump_soon = self._pump_soon, True
        try:
            accepted = self._handle_frames(wire, frames, start, now)
        finally:
            self._pump_soon = scheduled
            if self._arrived:
                self._store_arrived()
        if accepted:
            self._count_accepted(accepted, now)
        self._pump()

    def _handle_frames(self, wire: _Wire, frames: list[pdu.Frame], start: int, now: float) -> int:
        """`_frames_read`'s loop; the count of one-part messages accepted whose answers the
        rate controller is still to hear of."""
        submit_sm_resp = SUBMIT_SM_RESP
        accepted_one = _accepted_one
        accepted = 0
        window = self._window
        answer = window.outstanding.pop  # taken again after anything that may `_lose_connection`
        for index, frame in enumerate(frames[start:] if start else frames, start):
            command_id, status, sequence, body = frame
            if command_id == submit_sm_resp:
                job = answer(sequence, None)
                if job is not None:
                    if status == 0 and len(job.bodies) == 1:
                        # The common case, inline: a one-part message accepted.
                        accepted += 1
                        end = body.find(b"\0", 0, 66)
                        message_id = (
                            body[:end].decode("latin-1") if end >= 0 else submit_resp_id(body)
                        )
                        window.messages -= 1
                        try:
                            job.done(accepted_one(message_id))
                        except Exception:
                            self._log.exception("outcome callback failed")
                    else:
                        if accepted:
                            self._count_accepted(accepted, now)
                            accepted = 0
                        self._submit_answered(job, command_id, status, body)
                        answer = window.outstanding.pop
                    continue
            elif command_id == pdu.DELIVER_SM:
                if self._delivering >= MAX_DELIVERING:
                    # Back-pressure: read nothing more until a handler is done.
                    wire.stall(frames, index)
                    return accepted
                self._delivering += 1  # one less when its handler is done
                if self._on_deliver_many is not None:
                    self._arrived.append(frame)
                    continue
            self._handle_pdu(frame)
            answer = window.outstanding.pop  # a peer's unbind swaps it
        wire.check()
        return accepted

    def _count_accepted(self, count: int, now: float) -> None:
        """`count` one-part submits accepted at `now`: the window (time-outs in a row)
        and the pacing hear of them once, not once per message."""
        self._window.answered(now)
        if self._pacing.accepted(count, now, self._window.limit):
            self._rate_changed()

    def _handle_pdu(self, frame: pdu.Frame) -> None:
        """Any PDU but the common one-part submit_sm_resp OK (`_handle_frames` inlines
        that): other responses, enquire_link, unbind, deliver_sm, and the unknown."""
        command_id, status, sequence, body = frame
        if command_id & pdu.RESPONSE:
            job = self._window.outstanding.pop(sequence, None)
            if job is not None:
                self._submit_answered(job, command_id, status, body)
                return
            future = self._pending.get(sequence)
            if future is not None and not future.done():
                future.set_result(Pdu(command_id, status, sequence, body))
            elif command_id == pdu.GENERIC_NACK:
                self._log.warning("generic_nack", status=pdu.status_name(status), sequence=sequence)
            else:
                self._log.info(
                    "response to no pending request",
                    sequence=sequence,
                    command_id=f"0x{command_id:08X}",
                )
            return
        if command_id == pdu.ENQUIRE_LINK:
            self._queue_reply(pdu.ENQUIRE_LINK | pdu.RESPONSE, 0, sequence)
        elif command_id == pdu.UNBIND:
            self._queue_reply(pdu.UNBIND | pdu.RESPONSE, 0, sequence)
            self._log.info("peer unbound")
            self._lose_connection("peer unbound")
        elif command_id == pdu.DELIVER_SM:
            task = asyncio.create_task(
                self._handle_deliver_sm(Pdu(command_id, status, sequence, body))
            )
            self._children.add(task)
            task.add_done_callback(self._children.discard)
        else:
            self._queue_reply(pdu.GENERIC_NACK, pdu.ESME_RINVCMDID, sequence)

    async def _handle_deliver_sm(self, frame: Pdu) -> None:
        """Answer a deliver_sm only once the router has stored what it carries."""
        try:
            await self._store_deliver_sm(frame)
        finally:
            self._delivered(1)

    def _delivered(self, count: int) -> None:
        """`count` deliver_sm answered: a read stalled for them goes on."""
        self._delivering -= count
        wire = self._wire
        if wire is not None and wire.stalled is not None:
            frames, start = wire.stalled
            wire.resume()
            self._frames_read(wire, frames, start, asyncio.get_running_loop().time())

    def _store_arrived(self) -> None:
        """The deliver_sm of a read, in one task (see `on_deliver_many`)."""
        arrived, self._arrived = self._arrived, []
        task = asyncio.create_task(self._store_deliver_many(arrived))
        self._children.add(task)
        task.add_done_callback(self._children.discard)

    async def _store_deliver_many(self, frames: list[pdu.Frame]) -> None:
        """Answer each deliver_sm only once the router has stored what it carries; the
        answers go out together (`_queue_reply`: one write per loop turn)."""
        try:
            messages: list[ShortMessage] = []
            sequences: list[int] = []
            for _, _, sequence, body in frames:
                try:
                    messages.append(pdu.decode_short_message(body))
                    sequences.append(sequence)
                except PduError as exc:
                    self._log.warning("unreadable deliver_sm", reason=str(exc))
                    self._queue_reply(DELIVER_SM_RESP, pdu.ESME_RINVMSGLEN, sequence, b"\0")
            if not messages:
                return
            assert self._on_deliver_many is not None
            statuses: Sequence[int]
            try:
                statuses = await self._on_deliver_many(self.name, messages)
                if len(statuses) != len(messages):
                    raise ValueError(f"{len(statuses)} statuses for {len(messages)} deliver_sm")
            except Exception:
                self._log.exception(
                    "deliver_sm not stored; asking the SMSC to resend", count=len(messages)
                )
                statuses = [pdu.ESME_RX_T_APPN] * len(messages)
            for sequence, status in zip(sequences, statuses, strict=True):
                self._queue_reply(DELIVER_SM_RESP, status, sequence, b"\0")
        finally:
            self._delivered(len(frames))

    async def _store_deliver_sm(self, frame: Pdu) -> None:
        try:
            message = pdu.decode_short_message(frame.body)
        except PduError as exc:
            self._log.warning("unreadable deliver_sm", reason=str(exc))
            self._queue_reply(
                pdu.DELIVER_SM | pdu.RESPONSE, pdu.ESME_RINVMSGLEN, frame.sequence, b"\0"
            )
            return
        status = pdu.ESME_ROK
        if self._on_deliver is not None:
            try:
                status = await self._on_deliver(self.name, message)
            except Exception:
                self._log.exception("deliver_sm not stored; asking the SMSC to resend")
                status = pdu.ESME_RX_T_APPN
        self._queue_reply(pdu.DELIVER_SM | pdu.RESPONSE, status, frame.sequence, b"\0")

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
                self._lose_connection("enquire_link unanswered")
                return


class _Wire(asyncio.Protocol):
    """One connection of a session: each chunk read is cut into frames and handed to the
    bind at once (no reader task, no buffer copies); `closed` ends with the connection."""

    def __init__(self, bind: SmppBind, decoder: FrameDecoder) -> None:
        self._bind = bind
        self._decoder = decoder
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Frames read but not acted on while deliver_sm handlers are all busy: (frames, from).
        self.stalled: tuple[list[pdu.Frame], int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        bind = self._bind
        now = bind._last_received = (bind._loop or asyncio.get_running_loop()).time()
        bind._frames_read(self, self._decoder.split(data), 0, now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            if exc is None:
                self.closed.set_result(None)
            else:
                self.closed.set_exception(exc)

    def stall(self, frames: list[pdu.Frame], start: int) -> None:
        self.stalled = (frames, start)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume(self) -> None:
        self.stalled = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def check(self) -> None:
        """After a chunk's frames: a bad command_length ends the connection."""
        broken = self._decoder.broken
        if broken is not None and not self.closed.done():
            self.closed.set_exception(broken)
            if self._transport is not None:
                self._transport.abort()
