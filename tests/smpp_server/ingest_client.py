"""A raw asyncio SMPP client that submits as fast as a window allows, in a process of
its own (so the figure is the server's, not the client's CPU).

python -m tests.smpp_server.ingest_client PORT COUNT WINDOW SYSTEM_ID PASSWORD
Prints {"ok": N, "refused": N, "seconds": S, "client_cpu_s": S}.

Like the peer kit's smpp_blast.py: once bound, a protocol reads the responses of each
chunk the server writes and fills the window again in one write, so the client costs a
few microseconds a submit and the rate is the server's. The submits are made before
the clock starts.
"""

from __future__ import annotations

import asyncio
import json
import resource
import struct
import sys
import time

from binds.smpp import pdu

from .raw import MODES, bind_body, submit_body

HEADER = struct.Struct(">IIII")
SUBMIT_SM_RESP = pdu.SUBMIT_SM | pdu.RESPONSE
BIND_TRANSMITTER_RESP = MODES["transmitter"] | pdu.RESPONSE
ENQUIRE_LINK_RESP = pdu.ENQUIRE_LINK | pdu.RESPONSE


class Submitter(asyncio.Protocol):
    """One transmitter session keeping `window` submits unanswered until all are."""

    def __init__(self, submits: list[bytes], window: int) -> None:
        loop = asyncio.get_running_loop()
        self.submits, self.window = submits, window
        self.next = 0  # index of the next submit to write
        self.unanswered = 0
        self.ok = self.refused = 0
        self.buffer = bytearray()
        self.bound: asyncio.Future[int] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.bound, self.done):
            if not future.done():
                future.set_exception(ConnectionError(f"closed: {exc}"))

    def fill(self) -> None:
        """Write submits until the window is full, in one write."""
        room = min(self.window - self.unanswered, len(self.submits) - self.next)
        if room > 0:
            chunk = self.submits[self.next : self.next + room]
            self.next += room
            self.unanswered += room
            assert self.transport is not None
            self.transport.write(b"".join(chunk))
        elif self.unanswered == 0 and not self.done.done():
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        at = 0
        while len(buffer) - at >= HEADER.size:
            length, command_id, status, sequence = HEADER.unpack_from(buffer, at)
            if len(buffer) - at < length:
                break
            at += length
            if command_id == SUBMIT_SM_RESP:
                self.unanswered -= 1
                if status == pdu.ESME_ROK:
                    self.ok += 1
                else:
                    self.refused += 1
            elif command_id == pdu.ENQUIRE_LINK:
                assert self.transport is not None
                self.transport.write(HEADER.pack(HEADER.size, ENQUIRE_LINK_RESP, 0, sequence))
            elif command_id == BIND_TRANSMITTER_RESP and not self.bound.done():
                self.bound.set_result(status)
        del buffer[:at]
        if self.bound.done():
            self.fill()


def framed(body: bytes, command_id: int, sequence: int) -> bytes:
    return HEADER.pack(HEADER.size + len(body), command_id, 0, sequence) + body


async def submit(port: int, count: int, window: int, system_id: str, password: str) -> None:
    submits = [
        framed(submit_body(f"+4479111{n % 100_000:05d}", b"ingest %d" % n), pdu.SUBMIT_SM, n + 2)
        for n in range(count)
    ]
    loop = asyncio.get_running_loop()
    transport, session = await loop.create_connection(
        lambda: Submitter(submits, window), "127.0.0.1", port
    )
    transport.write(framed(bind_body(system_id, password), MODES["transmitter"], 1))
    status = await session.bound
    assert status == 0, pdu.status_name(status)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    session.fill()
    await session.done
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    transport.write(HEADER.pack(HEADER.size, pdu.UNBIND, 0, count + 2))
    await asyncio.sleep(0.05)
    transport.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = {"ok": session.ok, "refused": session.refused, "seconds": seconds}
    print(json.dumps({**report, "client_cpu_s": round(cpu, 3)}))


if __name__ == "__main__":
    port, count, window = (int(a) for a in sys.argv[1:4])
    asyncio.run(submit(port, count, window, sys.argv[4], sys.argv[5]))
