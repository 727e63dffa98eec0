"""`SmppBind(on_deliver_many=...)`: the deliver_sm of one read go to the handler in one
call, each answered with its own status only once the handler has returned; over real
sockets to the small scripted SMSC of test_smpp_send."""

from __future__ import annotations

import asyncio

from binds.base import Accepted
from binds.smpp import SmppBind, pdu
from binds.smpp.pdu import ShortMessage
from binds.smpp.session import MAX_DELIVERING

from ..conftest import wait_for
from .test_smpp_send import TinySmsc, message, spec, tiny  # noqa: F401  (the fixture)


def burst(smsc: TinySmsc, first: int, texts: list[str]) -> None:
    """deliver_sm PDUs with sequences from `first`, written in one chunk."""
    connection = smsc.protocols[0]
    assert connection.transport is not None
    frames = []
    for i, text in enumerate(texts):
        inbound = ShortMessage(source="447911123456", short_message=text.encode())
        body = pdu.encode_short_message(inbound)
        frames.append(pdu.Pdu(pdu.DELIVER_SM, 0, first + i, body).encode())
    connection.transport.write(b"".join(frames))


async def test_a_read_of_deliver_sm_is_one_call_answered_after_it_with_each_status(
    tiny: TinySmsc,  # noqa: F811
) -> None:
    calls: list[list[str]] = []
    gate = asyncio.Event()

    async def store_many(bind: str, messages: list[ShortMessage]) -> list[int]:
        assert bind == "t"
        calls.append([m.short_message.decode() for m in messages])
        await gate.wait()
        # A status of its own for each: the answers must not be shuffled.
        return [pdu.ESME_ROK if i % 3 else pdu.ESME_RX_T_APPN for i in range(len(messages))]

    bind = SmppBind("t", spec(tiny.port), on_deliver_many=store_many)
    await bind.start()
    try:
        assert await bind.wait_bound(5)
        texts = [f"in {i}" for i in range(40)]
        burst(tiny, 500, texts)
        await wait_for(lambda: sum(map(len, calls)) == 40, 5, "every deliver_sm handed on")
        assert len(calls) < 40 and [t for call in calls for t in call] == texts
        await asyncio.sleep(0.1)
        assert not tiny.deliver_answers  # nothing answered before the handler returned
        gate.set()
        await wait_for(lambda: len(tiny.deliver_answers) == 40, 5, "every answer")
        expected = [
            (500 + i, pdu.ESME_ROK if n % 3 else pdu.ESME_RX_T_APPN)
            for call in _offsets(calls)
            for n, i in enumerate(call)
        ]
        assert sorted(tiny.deliver_answers) == sorted(expected)
    finally:
        await bind.close()


def _offsets(calls: list[list[str]]) -> list[list[int]]:
    """The positions in the burst of each call's messages."""
    out, start = [], 0
    for call in calls:
        out.append(list(range(start, start + len(call))))
        start += len(call)
    return out


async def test_a_handler_that_raises_gets_every_deliver_sm_of_its_call_resent(
    tiny: TinySmsc,  # noqa: F811
) -> None:
    """Nothing of a failed call is answered OK, and an unreadable deliver_sm in the same
    read is refused on its own while the others still go to the handler."""
    seen: list[int] = []

    async def store_many(bind: str, messages: list[ShortMessage]) -> list[int]:
        seen.append(len(messages))
        raise RuntimeError("storage broke")

    bind = SmppBind("t", spec(tiny.port), on_deliver_many=store_many)
    await bind.start()
    try:
        assert await bind.wait_bound(5)
        connection = tiny.protocols[0]
        assert connection.transport is not None
        good = pdu.encode_short_message(ShortMessage(source="1", short_message=b"ok"))
        connection.transport.write(
            pdu.Pdu(pdu.DELIVER_SM, 0, 7, good).encode()
            + pdu.Pdu(pdu.DELIVER_SM, 0, 8, b"\0\1").encode()  # ends inside its fields
            + pdu.Pdu(pdu.DELIVER_SM, 0, 9, good).encode()
        )
        await wait_for(lambda: len(tiny.deliver_answers) == 3, 5, "three answers")
        assert sorted(tiny.deliver_answers) == [
            (7, pdu.ESME_RX_T_APPN),
            (8, pdu.ESME_RINVMSGLEN),
            (9, pdu.ESME_RX_T_APPN),
        ]
        assert sum(seen) == 2
        assert isinstance(await bind.submit(message(1)), Accepted)  # the session goes on
    finally:
        await bind.close()


async def test_beyond_the_limit_reading_waits_for_a_call_to_return(
    tiny: TinySmsc,  # noqa: F811
) -> None:
    """At most MAX_DELIVERING deliver_sm are being stored at once, in calls or not."""
    total = MAX_DELIVERING + 36
    gate = asyncio.Event()
    held = 0
    most = 0

    async def store_many(bind: str, messages: list[ShortMessage]) -> list[int]:
        nonlocal held, most
        held += len(messages)
        most = max(most, held)
        await gate.wait()
        held -= len(messages)
        return [pdu.ESME_ROK] * len(messages)

    bind = SmppBind("t", spec(tiny.port), on_deliver_many=store_many)
    await bind.start()
    try:
        assert await bind.wait_bound(5)
        for i in range(total):
            tiny.protocols[0].deliver(1000 + i, f"in {i}")
        await wait_for(lambda: held == MAX_DELIVERING, 5, "a full set being stored")
        await asyncio.sleep(0.2)
        assert held == MAX_DELIVERING and not tiny.deliver_answers  # the rest wait unread
        gate.set()
        await wait_for(lambda: len(tiny.deliver_answers) == total, 5, "every answer")
        assert sorted(tiny.deliver_answers) == [(1000 + i, 0) for i in range(total)]
        assert most == MAX_DELIVERING
    finally:
        await bind.close()
