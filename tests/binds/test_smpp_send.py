"""`SmppBind.send`: one outcome per message, by callback, with no task, future or timer
per message; over real sockets to our SMSC simulator or a small scripted SMSC here."""

from __future__ import annotations

import asyncio
import gc
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from binds.base import Accepted, Failed, OutboundMessage, Outcome, Retry
from binds.flow import AdaptiveRate
from binds.smpp import SmppBind, SmppSpec, pdu
from binds.smpp.codec import encode_text
from binds.smpp.pdu import FrameDecoder, ShortMessage
from binds.smpp.session import MAX_DELIVERING
from sims.smscsim import SimConfig, SmscSimulator

from ..conftest import free_port, wait_for

LONG = "two parts " * 20  # 200 GSM characters: 2 segments


def spec(port: int, **kw: object) -> SmppSpec:
    settings: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "system_id": "smppclient1",
        "password": "password",
        "response_timeout": 0.5,
        "reconnect_min": 0.05,
        "reconnect_max": 0.1,
        **kw,
    }
    return SmppSpec(**settings)  # type: ignore[arg-type]


def message(i: int, text: str = "") -> OutboundMessage:
    return OutboundMessage(f"m{i}", "+16501112345", "+447911123456", text or f"message {i}")


class Outcomes:
    """Collects outcomes by message id and counts every call."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.by_id: dict[str, Outcome] = {}

    def done_for(self, message_id: str) -> Callable[[Outcome], None]:
        def done(outcome: Outcome) -> None:
            self.calls[message_id] += 1
            self.by_id[message_id] = outcome

        return done

    def kinds(self) -> Counter[str]:
        return Counter(
            type(o).__name__ if isinstance(o, Accepted) else f"{type(o).__name__} {o.code}"
            for o in self.by_id.values()
        )


# -- a small scripted SMSC: asyncio.Protocol, no task per PDU -------------------------------

# What the SMSC does with the n-th submit_sm it gets (0-based) and its body: a status to
# answer with, or None to leave it unanswered.
Answer = Callable[[int, ShortMessage], int | None]


@dataclass
class TinySmsc:
    """Binds anyone; answers submit_sm after `delay` s as `answer` says; counts what it
    sees, including the most submit_sm outstanding at once on one connection."""

    answer: Answer = lambda n, m: pdu.ESME_ROK
    delay: float = 0.0
    port: int = 0
    submits: list[ShortMessage] = field(default_factory=list)
    outstanding: int = 0
    max_outstanding: int = 0
    connections: list[asyncio.Transport] = field(default_factory=list)
    protocols: list[_TinyConnection] = field(default_factory=list)
    deliver_answers: list[tuple[int, int]] = field(default_factory=list)  # (sequence, status)
    server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _TinyConnection(self), "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for transport in self.connections:
            transport.close()


class _TinyConnection(asyncio.Protocol):
    def __init__(self, smsc: TinySmsc) -> None:
        self.smsc = smsc
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.outstanding = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.smsc.connections.append(transport)
        self.smsc.protocols.append(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        for command_id, status, sequence, body in self.decoder.split(data):
            if command_id in (pdu.BIND_TRANSCEIVER, pdu.BIND_TRANSMITTER, pdu.ENQUIRE_LINK):
                reply = b"tiny\0" if command_id != pdu.ENQUIRE_LINK else b""
                self.write(command_id | pdu.RESPONSE, 0, sequence, reply)
            elif command_id == pdu.UNBIND:
                self.write(command_id | pdu.RESPONSE, 0, sequence, b"")
                self.transport.close()
            elif command_id == pdu.SUBMIT_SM:
                self.submit(sequence, pdu.decode_short_message(body))
            elif command_id == pdu.DELIVER_SM | pdu.RESPONSE:
                self.smsc.deliver_answers.append((sequence, status))

    def deliver(self, sequence: int, text: str) -> None:
        inbound = ShortMessage(source="447911123456", destination="16501112345",
                               short_message=text.encode())  # fmt: skip
        self.write(pdu.DELIVER_SM, 0, sequence, pdu.encode_short_message(inbound))

    def submit(self, sequence: int, message: ShortMessage) -> None:
        smsc = self.smsc
        index = len(smsc.submits)
        smsc.submits.append(message)
        self.outstanding += 1
        smsc.max_outstanding = max(smsc.max_outstanding, self.outstanding)
        status = smsc.answer(index, message)
        if status is None:
            self.outstanding -= 1  # never answered: not outstanding for the SMSC's count
            return
        body = f"id{index}\0".encode() if status == 0 else b""
        if smsc.delay:
            asyncio.get_running_loop().call_later(smsc.delay, self.respond, sequence, status, body)
        else:
            self.respond(sequence, status, body)

    def respond(self, sequence: int, status: int, body: bytes) -> None:
        self.outstanding -= 1
        self.write(pdu.SUBMIT_SM | pdu.RESPONSE, status, sequence, body)

    def write(self, command_id: int, status: int, sequence: int, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(pdu.Pdu(command_id, status, sequence, body).encode())


@pytest.fixture
async def tiny() -> AsyncIterator[TinySmsc]:
    smsc = TinySmsc()
    await smsc.start()
    yield smsc
    smsc.close()


@pytest.fixture
async def bind_on() -> AsyncIterator[Callable[[SmppSpec], SmppBind]]:
    binds: list[SmppBind] = []

    def make(settings: SmppSpec) -> SmppBind:
        binds.append(SmppBind("t", settings))
        return binds[-1]

    yield make
    for bind in binds:
        await bind.close()


# -- the tests ----------------------------------------------------------------------------


async def test_every_message_gets_one_outcome_under_mixed_faults(
    smsc: SmscSimulator, bind_on: Callable[[SmppSpec], SmppBind]
) -> None:
    """2,000 messages (one in ten long) through throttling, unanswered submits and a
    disconnect: each `done` is called exactly once, and the window is never exceeded."""
    smsc.config.throttle_ratio = 0.1
    smsc.config.drop_response_ratio = 0.02
    smsc.config.disconnect_every = 1200
    smsc.config.receipts = False
    bind = bind_on(spec(smsc.port, window=20, response_timeout=0.3))  # type: ignore[attr-defined]
    await bind.start()
    assert await bind.wait_bound(5)
    outcomes = Outcomes()
    for i in range(2000):
        bind.send(message(i, LONG if i % 10 == 0 else ""), outcomes.done_for(f"m{i}"))
    assert bind.in_flight == 2000
    await wait_for(lambda: len(outcomes.by_id) == 2000, 60, "2,000 outcomes")
    await asyncio.sleep(1.0)  # a second call for any message would come by now
    assert set(outcomes.calls.values()) == {1}, Counter(outcomes.calls.values())
    assert bind.in_flight == 0
    kinds = outcomes.kinds()
    stats = smsc.stats()
    # The faults happened (the test tested something) and each has its outcome.
    assert stats["throttled"] > 0 and stats["dropped"] > 0 and stats["disconnects"] > 0, stats
    assert kinds["Retry timeout"] > 0 and kinds["Retry connection_lost"] > 0, kinds
    assert kinds["Accepted"] > 1800, kinds
    assert set(kinds) <= {"Accepted", "Retry timeout", "Retry connection_lost", "Failed partial"}
    long_ones = [outcomes.by_id[f"m{i}"] for i in range(0, 2000, 10)]
    assert any(isinstance(o, Accepted) and len(o.part_ids) == 2 for o in long_ones)
    # Throttled submits were sent again, never handed back.
    assert not [
        o for o in outcomes.by_id.values() if isinstance(o, Retry) and "THROTTLED" in o.code
    ]
    assert 1 <= stats["max_outstanding"] <= 20
    assert bind.peak_outstanding == 20  # filled, never more


def live(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


async def test_a_burst_of_sends_costs_no_task_future_or_timer_per_message(
    tiny: TinySmsc, bind_on: Callable[[SmppSpec], SmppBind]
) -> None:
    # Answered at once (a delay here would cost the SMSC a timer per submit): the window
    # stays full while thousands are queued.
    bind = bind_on(spec(tiny.port, window=50))
    await bind.start()
    assert await bind.wait_bound(5)
    await asyncio.sleep(0.1)
    base_tasks = len(asyncio.all_tasks())
    base_futures, base_timers = live(asyncio.Future), live(asyncio.TimerHandle)
    samples: list[tuple[int, int, int]] = []

    def sample() -> None:
        samples.append(
            (
                len(asyncio.all_tasks()) - base_tasks,
                live(asyncio.Future) - base_futures,
                live(asyncio.TimerHandle) - base_timers,
            )
        )

    outcomes: list[Outcome] = []

    def done(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if len(outcomes) in (500, 2500, 4500):
            sample()

    for i in range(5000):
        bind.send(message(i), done)
    sample()
    await asyncio.sleep(0)
    sample()
    await wait_for(lambda: len(outcomes) == 5000, 60, "5,000 outcomes")
    assert set(outcomes) == {Accepted(f"id{i}", "ESME_ROK", 1, (f"id{i}",)) for i in range(5000)}
    assert len(samples) == 5
    # A few for the loop's own wake-ups and the bind's one sweep and one pump; not 5,000.
    for tasks, futures, timers in samples:
        assert tasks <= 2 and futures <= 5 and timers <= 5, samples
    assert len(tiny.submits) == 5000 and bind.peak_outstanding == 50


async def test_sync_mode_keeps_one_submit_outstanding_with_long_messages_and_throttling(
    tiny: TinySmsc, bind_on: Callable[[SmppSpec], SmppBind]
) -> None:
    tiny.delay = 0.003  # a second submit sent before the answer would be seen outstanding
    tiny.answer = lambda n, m: pdu.ESME_RTHROTTLED if n % 7 == 3 else pdu.ESME_ROK
    bind = bind_on(spec(tiny.port, window=10, sync=True))
    await bind.start()
    outcomes = Outcomes()
    texts = [LONG if i % 3 == 0 else "" for i in range(60)]
    for i, text in enumerate(texts):
        bind.send(message(i, text), outcomes.done_for(f"m{i}"))
    await wait_for(lambda: len(outcomes.by_id) == 60, 60, "60 outcomes")
    assert all(isinstance(o, Accepted) for o in outcomes.by_id.values()), outcomes.kinds()
    assert [len(outcomes.by_id[f"m{i}"].part_ids) for i in range(0, 60, 3)] == [2] * 20  # type: ignore[union-attr]
    assert tiny.max_outstanding == 1 and bind.peak_outstanding == 1
    assert len(tiny.submits) > 60 + 20  # the parts, and the throttled ones sent again


async def test_a_cancelled_submit_does_not_break_the_bind(
    tiny: TinySmsc, bind_on: Callable[[SmppSpec], SmppBind]
) -> None:
    tiny.answer = lambda n, m: None if n == 0 else pdu.ESME_ROK  # the first stays unanswered
    bind = bind_on(spec(tiny.port, window=1, response_timeout=0.3))
    await bind.start()
    assert await bind.wait_bound(5)
    first = asyncio.create_task(bind.submit(message(0)))
    queued = asyncio.create_task(bind.submit(message(1)))  # waits for the window
    await wait_for(lambda: len(tiny.submits) == 1, 5, "first written")
    first.cancel()
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    with pytest.raises(asyncio.CancelledError):
        await queued
    outcome = await bind.submit(message(2))
    assert isinstance(outcome, Accepted) and outcome.provider_message_id == "id1"
    assert bind.in_flight == 0
    assert len(tiny.submits) == 2  # the cancelled one never waited for was never written


async def test_messages_wait_for_a_session_then_go_or_come_back_not_bound(
    bind_on: Callable[[SmppSpec], SmppBind],
) -> None:
    port = free_port()  # nothing listens yet
    bind = bind_on(spec(port, window=5, response_timeout=1.0))
    await bind.start()
    early = Outcomes()
    began = time.monotonic()
    for i in range(3):
        bind.send(message(i), early.done_for(f"m{i}"))
    await wait_for(lambda: len(early.by_id) == 3, 5, "not bound")
    waited = time.monotonic() - began
    assert 1.0 <= waited < 2.5, waited
    for outcome in early.by_id.values():
        assert isinstance(outcome, Retry) and outcome.code == "not_bound"
        assert not outcome.attempted and not outcome.maybe_sent
    later = Outcomes()
    for i in range(3):
        bind.send(message(10 + i), later.done_for(f"m{i}"))
    smsc = TinySmsc()
    await smsc.start(port)  # the SMSC comes back within the response time-out
    try:
        await wait_for(lambda: len(later.by_id) == 3, 5, "sent once bound")
        assert all(isinstance(o, Accepted) for o in later.by_id.values()), later.kinds()
    finally:
        smsc.close()


async def test_queued_messages_stay_for_the_next_session_after_a_disconnect(
    tiny: TinySmsc, bind_on: Callable[[SmppSpec], SmppBind]
) -> None:
    tiny.delay = 1.0  # the first two are still unanswered when the connection goes
    bind = bind_on(spec(tiny.port, window=2, response_timeout=3.0))
    await bind.start()
    assert await bind.wait_bound(5)
    outcomes = Outcomes()
    for i in range(10):
        bind.send(message(i), outcomes.done_for(f"m{i}"))
    await wait_for(lambda: len(tiny.submits) == 2, 5, "the window written")
    for transport in tiny.connections:
        transport.close()  # two outstanding, eight queued
    await wait_for(lambda: len(outcomes.by_id) == 10, 10, "ten outcomes")
    for i in (0, 1):
        lost = outcomes.by_id[f"m{i}"]
        assert isinstance(lost, Retry) and lost.code == "connection_lost" and lost.maybe_sent
    assert all(isinstance(outcomes.by_id[f"m{i}"], Accepted) for i in range(2, 10))
    # The eight went once each, on the new session.
    assert [m.short_message for m in tiny.submits] == [f"message {i}".encode() for i in range(10)]


async def test_a_later_part_unanswered_is_sent_again_not_the_whole_message(
    tiny: TinySmsc, bind_on: Callable[[SmppSpec], SmppBind]
) -> None:
    tiny.answer = lambda n, m: None if n == 1 else pdu.ESME_ROK  # part 2's first try is lost
    bind = bind_on(spec(tiny.port, window=5, response_timeout=0.3))
    await bind.start()
    outcome = await asyncio.wait_for(bind.submit(message(0, LONG)), 10)
    assert isinstance(outcome, Accepted), outcome
    assert outcome.part_ids == ("id0", "id2") and outcome.segments == 2
    assert len(tiny.submits) == 3


async def test_a_later_part_refused_for_good_fails_the_message_as_partial(
    tiny: TinySmsc, bind_on: Callable[[SmppSpec], SmppBind]
) -> None:
    tiny.answer = lambda n, m: pdu.ESME_RSYSERR if n == 1 else pdu.ESME_ROK
    bind = bind_on(spec(tiny.port))
    await bind.start()
    outcome = await asyncio.wait_for(bind.submit(message(0, LONG)), 10)
    assert isinstance(outcome, Failed) and outcome.code == "partial" and outcome.raw == "id0"
    assert outcome.reason == "part 2 of 2 not accepted (SMSC answered ESME_RSYSERR); parts 1-1 were"


async def test_close_gives_everything_held_an_outcome(
    tiny: TinySmsc, bind_on: Callable[[SmppSpec], SmppBind]
) -> None:
    tiny.answer = lambda n, m: None  # nothing is ever answered
    bind = bind_on(spec(tiny.port, window=2, response_timeout=30))
    await bind.start()
    assert await bind.wait_bound(5)
    outcomes = Outcomes()
    for i in range(5):
        bind.send(message(i), outcomes.done_for(f"m{i}"))
    await wait_for(lambda: len(tiny.submits) == 2, 5, "the window written")
    await asyncio.wait_for(bind.close(), 5)
    assert len(outcomes.by_id) == 5 and set(outcomes.calls.values()) == {1}
    written = [outcomes.by_id[f"m{i}"] for i in (0, 1)]
    queued = [outcomes.by_id[f"m{i}"] for i in (2, 3, 4)]
    assert all(isinstance(o, Retry) and o.maybe_sent and o.attempted for o in written)
    assert all(isinstance(o, Retry) and not o.maybe_sent and not o.attempted for o in queued)
    after = Outcomes()
    bind.send(message(9), after.done_for("m9"))  # closed: at once, not after a time-out
    assert isinstance(after.by_id["m9"], Retry) and after.by_id["m9"].code == "not_bound"


@pytest.mark.parametrize(("lost", "reconnects"), [((0, 1, 2), True), ((0, 25, 50), False)])
async def test_three_time_outs_in_a_row_reconnect_but_not_apart(
    tiny: TinySmsc,
    bind_on: Callable[[SmppSpec], SmppBind],
    lost: tuple[int, ...],
    reconnects: bool,
) -> None:
    """Three submits unanswered one after the other: the session is taken for dead.
    Three with answers to others in between (paced at 100/s, each times out 0.3 s
    later, after answers that came meanwhile): it is alive, it stays."""
    tiny.answer = lambda n, m: None if n in lost else pdu.ESME_ROK
    bind = bind_on(spec(tiny.port, window=10, tps=100, response_timeout=0.3))
    await bind.start()
    assert await bind.wait_bound(5)
    outcomes = Outcomes()
    for i in range(60):
        bind.send(message(i), outcomes.done_for(f"m{i}"))
    await wait_for(lambda: len(outcomes.by_id) == 60, 20, "60 outcomes")
    kinds = outcomes.kinds()
    assert kinds["Retry timeout"] == 3, kinds
    # Reconnecting loses what is outstanding at that moment (answered at once here: little).
    assert set(kinds) <= {"Accepted", "Retry timeout", "Retry connection_lost"}, kinds
    assert (len(tiny.connections) > 1) is reconnects


async def test_a_paced_session_keeps_to_its_rate(
    tiny: TinySmsc, bind_on: Callable[[SmppSpec], SmppBind]
) -> None:
    bind = bind_on(spec(tiny.port, window=10, tps=100))
    await bind.start()
    assert await bind.wait_bound(5)
    outcomes = Outcomes()
    began = time.monotonic()
    for i in range(60):
        bind.send(message(i), outcomes.done_for(f"m{i}"))
    await wait_for(lambda: len(outcomes.by_id) == 60, 10, "60 outcomes")
    took = time.monotonic() - began
    # A bucket of 10 (a tenth of a second's worth), then 100/s: 50 more need 0.5 s.
    assert 0.45 <= took < 2.0, took
    assert all(isinstance(o, Accepted) for o in outcomes.by_id.values())


async def test_deliver_sm_beyond_the_limit_at_once_waits_for_a_handler(tiny: TinySmsc) -> None:
    """Inbound messages are answered only once stored; at most MAX_DELIVERING are being
    stored at once and reading waits beyond that (the SMSC's window does the rest)."""
    limit = MAX_DELIVERING
    total = limit + 36
    gate = asyncio.Event()
    running: list[str] = []
    most = 0

    async def store(bind: str, message: ShortMessage) -> int:
        nonlocal most
        running.append(message.short_message.decode())
        most = max(most, len(running))
        await gate.wait()
        running.remove(message.short_message.decode())
        return pdu.ESME_ROK

    bind = SmppBind("t", spec(tiny.port), on_deliver=store)
    await bind.start()
    try:
        assert await bind.wait_bound(5)
        for i in range(total):
            tiny.protocols[0].deliver(1000 + i, f"in {i}")
        await wait_for(lambda: len(running) == limit, 5, "a full set of handlers")
        await asyncio.sleep(0.2)
        assert len(running) == limit and not tiny.deliver_answers  # the rest wait unread
        outcome = asyncio.create_task(bind.submit(message(0)))  # its answer queues behind
        await asyncio.sleep(0.2)
        assert not outcome.done()
        gate.set()
        await wait_for(lambda: len(tiny.deliver_answers) == total, 5, "every answer")
        assert sorted(tiny.deliver_answers) == [(1000 + i, 0) for i in range(total)]
        assert most == limit
        assert isinstance(await asyncio.wait_for(outcome, 5), Accepted)
    finally:
        await bind.close()


async def test_take_paces_without_waiting() -> None:
    rate = AdaptiveRate(50)
    waits = [rate.take() for _ in range(7)]
    assert waits[:5] == [0.0] * 5  # the bucket: a tenth of a second's worth
    assert 0.0 < waits[6] <= waits[5] <= 1 / 50  # the wait shrinks as time passes
    await asyncio.sleep(waits[5] + 0.002)
    assert rate.take() == 0.0
    assert AdaptiveRate(0).take() == 0.0


def test_frames_split_across_chunks_and_the_good_ones_before_a_bad_length_come_out() -> None:
    good = [
        pdu.Pdu(pdu.SUBMIT_SM | pdu.RESPONSE, 0, n, f"id{n}\0".encode()).encode() for n in (1, 2)
    ]
    stream = b"".join(good)
    decoder = FrameDecoder()
    assert decoder.split(stream[:18]) == []  # the first frame is 20 octets
    assert decoder.split(stream[18:]) == [
        (pdu.SUBMIT_SM | pdu.RESPONSE, 0, 1, b"id1\0"),
        (pdu.SUBMIT_SM | pdu.RESPONSE, 0, 2, b"id2\0"),
    ]
    bad = struct.pack("!IIII", 8, pdu.ENQUIRE_LINK, 0, 3)
    frames = decoder.split(good[0] + bad + good[1])
    assert [f[2] for f in frames] == [1] and decoder.broken is not None
    assert decoder.split(good[1]) == []  # nothing more from a stream that cannot be framed
    feeding = FrameDecoder().feed(good[0] + bad)
    assert next(feeding).sequence == 1
    with pytest.raises(pdu.FramingError, match="command_length 8"):
        next(feeding)
    assert pdu.submit_resp_id(b"abc\0") == "abc" and pdu.submit_resp_id(b"abc") == "abc"


def reference_bodies(bind: SmppBind, message: OutboundMessage, reference: int) -> list[bytes]:
    """What the session sent before its fast paths: encode_text + encode_short_message."""
    settings = bind.spec
    encoded = encode_text(
        message.text,
        encoding=settings.encoding,
        gsm_data_coding=settings.gsm_data_coding,
        long_mode=settings.long_mode,
        reference=reference,
    )
    bodies = []
    for segment in encoded.segments:
        tlvs: dict[int, bytes] = {}
        if segment.message_payload is not None:
            tlvs[pdu.TAG_MESSAGE_PAYLOAD] = segment.message_payload
        if segment.sar is not None:
            ref, total, seq = segment.sar
            tlvs[pdu.TAG_SAR_MSG_REF_NUM] = pdu.tlv_int(ref, 2)
            tlvs[pdu.TAG_SAR_TOTAL_SEGMENTS] = pdu.tlv_int(total, 1)
            tlvs[pdu.TAG_SAR_SEGMENT_SEQNUM] = pdu.tlv_int(seq, 1)
        numeric = message.source.lstrip("+").isdigit()
        body = pdu.encode_short_message(
            ShortMessage(
                service_type=settings.service_type,
                source=message.source.lstrip("+") if numeric else message.source[:11],
                source_ton=1 if numeric else 5,
                source_npi=1 if numeric else 0,
                destination=message.destination.lstrip("+"),
                dest_ton=settings.dest_ton,
                dest_npi=settings.dest_npi,
                esm_class=pdu.ESM_UDHI if segment.udhi else 0,
                registered_delivery=settings.registered_delivery,
                data_coding=encoded.data_coding,
                short_message=segment.short_message,
                tlvs=tlvs,
            )
        )
        bodies.append(body)
    return bodies


TEXTS = st.text(
    st.sampled_from("aZ09 _@$£éÄ€[]{}^~|\\\n\rΔΩ¿§`ç€Жё✓😀") | st.characters(), max_size=400
)


@given(
    text=TEXTS,
    source=st.sampled_from(["+16501112345", "ACME", "Company Name Ltd"]),
    encoding=st.sampled_from(["auto", "gsm", "ucs2", "latin1"]),
    long_mode=st.sampled_from(["udh8", "udh16", "payload", "sar"]),
    gsm_data_coding=st.sampled_from([0, 1]),
)
def test_submit_bodies_are_what_the_codec_and_encode_short_message_make(
    text: str, source: str, encoding: str, long_mode: str, gsm_data_coding: int
) -> None:
    bind = SmppBind(
        "t",
        spec(
            1,
            encoding=encoding,
            long_mode=long_mode,
            gsm_data_coding=gsm_data_coding,
            service_type="CMT",
            registered_delivery=1,
        ),
    )
    outgoing = OutboundMessage("m", source, "+447911123456", text)
    reference = (bind._submit_bodies.reference + 1) % 65536
    try:
        expected: list[bytes] | str = reference_bodies(bind, outgoing, reference)
    except ValueError as exc:
        expected = str(exc)
    try:
        got: list[bytes] | str = bind._bodies(outgoing)
    except ValueError as exc:
        got = str(exc)
    assert got == expected


def test_disconnects_under_uvloop_raise_nothing_and_lose_nothing() -> None:
    """uvloop raises on a write to a closing transport where asyncio only warns: a
    response or a pump that ran just after the SMSC dropped the connection raised out
    of its callback and left the bind idle for good (found by bench/smpp.py's
    disconnect run). The daemon runs on uvloop, so this runs there too."""
    uvloop = pytest.importorskip("uvloop")
    errors: list[str] = []

    async def run() -> tuple[int, Counter[str]]:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: errors.append(str(context.get("exception") or context))
        )
        smsc = SmscSimulator(SimConfig(seed=3, receipt_delay=0.0, disconnect_every=150))
        smsc_port = await smsc.start()
        delivered: list[str] = []

        async def on_deliver(_bind: str, _message: ShortMessage) -> int:
            delivered.append("r")
            return pdu.ESME_ROK

        bind = SmppBind("uv", spec(smsc_port, window=20), on_deliver=on_deliver)
        await bind.start()
        outcomes = Outcomes()
        try:
            total = 1500
            for i in range(total):
                bind.send(message(i), outcomes.done_for(f"m{i}"))
            await wait_for(lambda: len(outcomes.by_id) == total, 60, "an outcome for each")
        finally:
            await bind.close()
            await smsc.close()
        return total, outcomes.calls

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        total, calls = runner.run(run())
    assert len(calls) == total and max(calls.values()) == 1
    assert not errors, errors[:3]
