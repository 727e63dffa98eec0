"""Session-layer behaviour against a scripted raw-socket peer (our PDU codec on the wire)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from binds.base import OutboundMessage, Retry
from binds.smpp import SmppBind, SmppSpec, pdu
from binds.smpp.pdu import FrameDecoder, Pdu

from ..conftest import wait_for

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[Pdu]], Awaitable[None]]


class Peer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.seen: list[Pdu] = []
        self.connections = 0
        self.port = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer, self.seen)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def read_pdu(reader: asyncio.StreamReader) -> Pdu:
    head = await reader.readexactly(16)
    length = struct.unpack("!I", head[:4])[0]
    body = await reader.readexactly(length - 16)
    return next(iter(FrameDecoder().feed(head + body)))


async def bind_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await read_pdu(reader)
    writer.write(Pdu(request.command_id | pdu.RESPONSE, 0, request.sequence, b"peer\0").encode())


@pytest.fixture
async def peer_factory() -> AsyncIterator[Callable[[Script], Awaitable[Peer]]]:
    peers: list[Peer] = []

    async def make(script: Script) -> Peer:
        peer = Peer(script)
        peer.server = await asyncio.start_server(peer._serve, "127.0.0.1", 0)
        peer.port = peer.server.sockets[0].getsockname()[1]
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        assert peer.server is not None
        peer.server.close()


def spec(port: int, **kw: object) -> SmppSpec:
    return SmppSpec(host="127.0.0.1", port=port, system_id="x", password="p",
                    response_timeout=0.5, reconnect_min=0.05, reconnect_max=0.1, **kw)  # type: ignore[arg-type]  # fmt: skip


async def test_peer_requests_are_answered_and_unknown_commands_nacked(
    peer_factory: Callable[[Script], Awaitable[Peer]],
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, seen: list[Pdu]) -> None:
        await bind_ok(r, w)
        w.write(Pdu(pdu.ENQUIRE_LINK, 0, 41).encode())
        w.write(Pdu(0x00000777, 0, 42).encode())
        seen.append(await read_pdu(r))
        seen.append(await read_pdu(r))
        await r.read()

    peer = await peer_factory(script)
    bind = SmppBind("t", spec(peer.port))
    await bind.start()
    try:
        await wait_for(lambda: len(peer.seen) == 2, 5, "two answers")
        by_sequence = {p.sequence: p for p in peer.seen}
        assert by_sequence[41].command_id == pdu.ENQUIRE_LINK | pdu.RESPONSE
        assert by_sequence[42].command_id == pdu.GENERIC_NACK
        assert by_sequence[42].status == pdu.ESME_RINVCMDID
    finally:
        await bind.close()


async def test_oversized_pdu_drops_the_connection_and_outstanding_submit_retries(
    peer_factory: Callable[[Script], Awaitable[Peer]],
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, seen: list[Pdu]) -> None:
        await bind_ok(r, w)
        if len(seen) == 0:
            seen.append(await read_pdu(r))  # a submit_sm: answered with garbage framing
            w.write(struct.pack("!IIII", 10_000_000, 0x80000004, 0, 1))
        await r.read()

    peer = await peer_factory(script)
    bind = SmppBind("t", spec(peer.port))
    await bind.start()
    try:
        outcome = await bind.submit(OutboundMessage("j", "+16501112345", "+447911123456", "hi"))
        assert isinstance(outcome, Retry) and outcome.code == "connection_lost"
        assert outcome.maybe_sent  # it was on the wire: the router counts the resend
        await wait_for(lambda: peer.connections >= 2, 5, "reconnected")
        await wait_for(lambda: bind.state == "bound", 5, "bound again")
    finally:
        await bind.close()


async def test_unanswered_submit_times_out_as_retry(
    peer_factory: Callable[[Script], Awaitable[Peer]],
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, seen: list[Pdu]) -> None:
        await bind_ok(r, w)
        await r.read()

    peer = await peer_factory(script)
    bind = SmppBind("t", spec(peer.port))
    await bind.start()
    try:
        outcome = await bind.submit(OutboundMessage("j", "ACME", "+447911123456", "hi"))
        assert isinstance(outcome, Retry) and outcome.code == "timeout" and outcome.maybe_sent
    finally:
        await bind.close()


def test_password_is_not_in_repr() -> None:
    assert "sekret" not in repr(SmppSpec(host="h", port=1, system_id="s", password="sekret"))


async def test_idle_session_sends_enquire_link_and_reconnects_when_unanswered(
    peer_factory: Callable[[Script], Awaitable[Peer]],
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, seen: list[Pdu]) -> None:
        await bind_ok(r, w)
        link = await read_pdu(r)
        seen.append(link)
        if len(seen) == 1:  # answer the first one only
            w.write(Pdu(pdu.ENQUIRE_LINK | pdu.RESPONSE, 0, link.sequence).encode())
            seen.append(await read_pdu(r))  # the next one, left unanswered
        await r.read()

    peer = await peer_factory(script)
    bind = SmppBind("t", spec(peer.port, enquire_link=0.2))
    await bind.start()
    try:
        await wait_for(lambda: peer.connections >= 2, 5, "reconnect after a silent peer")
        assert [p.command_id for p in peer.seen[:2]] == [pdu.ENQUIRE_LINK, pdu.ENQUIRE_LINK]
    finally:
        await bind.close()
