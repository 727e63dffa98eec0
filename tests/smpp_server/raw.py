"""A raw asyncio SMPP client for the server's tests: any bytes, any PDU, any order."""

from __future__ import annotations

import asyncio
import itertools
import ssl
import struct

from binds.smpp import pdu
from binds.smpp.pdu import HEADER, Pdu, ShortMessage, encode_short_message

BIND_TRANSMITTER, BIND_RECEIVER, BIND_TRANSCEIVER = 0x02, 0x01, 0x09
MODES = {
    "transmitter": BIND_TRANSMITTER,
    "receiver": BIND_RECEIVER,
    "transceiver": BIND_TRANSCEIVER,
}


def bind_body(
    system_id: str, password: str, *, system_type: str = "", version: int = 0x34
) -> bytes:
    return b"".join(
        (
            system_id.encode("latin-1"),
            b"\0",
            password.encode("latin-1"),
            b"\0",
            system_type.encode(),
            b"\0",
            bytes((version, 0, 0)),
            b"\0",
        )
    )


def submit_body(
    to: str,
    octets: bytes,
    *,
    source: str = "",
    source_ton: int = 0,
    dest_ton: int = 1,
    dest_npi: int = 1,
    data_coding: int = 0,
    esm_class: int = 0,
    registered_delivery: int = 1,
    tlvs: dict[int, bytes] | None = None,
    validity_period: str = "",
    schedule_delivery_time: str = "",
) -> bytes:
    message = ShortMessage(
        source=source,
        destination=to.lstrip("+"),
        source_ton=source_ton,
        dest_ton=dest_ton,
        dest_npi=dest_npi,
        esm_class=esm_class,
        registered_delivery=registered_delivery,
        data_coding=data_coding,
        short_message=octets,
        tlvs=dict(tlvs or {}),
        validity_period=validity_period,
        schedule_delivery_time=schedule_delivery_time,
    )
    return encode_short_message(message)


def data_sm_body(to: str, payload: bytes, *, data_coding: int = 0) -> bytes:
    return b"".join(
        (
            b"\0",
            bytes((0, 0)),
            b"\0",
            bytes((1, 1)),
            to.lstrip("+").encode(),
            b"\0",
            bytes((0, 1, data_coding)),
            struct.pack("!HH", pdu.TAG_MESSAGE_PAYLOAD, len(payload)),
            payload,
        )
    )


class RawClient:
    """One TCP (or TLS) connection speaking PDUs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._sequence = itertools.count(1)
        self.delivered: list[Pdu] = []  # deliver_sm that `call` answered

    @classmethod
    async def connect(cls, port: int, *, tls: ssl.SSLContext | None = None) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls, limit=1 << 20)
        return cls(reader, writer)

    def next_sequence(self) -> int:
        return next(self._sequence)

    def send(self, command_id: int, body: bytes = b"", *, sequence: int | None = None) -> int:
        sequence = self.next_sequence() if sequence is None else sequence
        self.writer.write(Pdu(command_id, 0, sequence, body).encode())
        return sequence

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def read(self, timeout: float = 10) -> Pdu | None:  # noqa: ASYNC109
        """The next PDU; None at EOF."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(HEADER.size), timeout)
        except asyncio.IncompleteReadError:
            return None
        length, command_id, status, sequence = HEADER.unpack(head)
        body = await asyncio.wait_for(self.reader.readexactly(length - HEADER.size), timeout)
        return Pdu(command_id, status, sequence, body)

    async def request(self, command_id: int, body: bytes = b"") -> Pdu:
        """Send one request and read until its response (answering enquire_link)."""
        sequence = self.send(command_id, body)
        while True:
            answer = await self.read()
            assert answer is not None, "connection closed before the response"
            if answer.command_id == pdu.ENQUIRE_LINK:
                self.send(pdu.ENQUIRE_LINK | pdu.RESPONSE, sequence=answer.sequence)
                continue
            if answer.sequence == sequence:
                return answer

    async def call(self, command_id: int, body: bytes = b"", timeout: float = 10) -> Pdu:  # noqa: ASYNC109
        """Send one request and read until its response: a response PDU (generic_nack
        included) with its sequence number. Requests the server sends meanwhile are
        answered (enquire_link; deliver_sm with ESME_ROK, kept in `delivered`), so a
        server request that happens to carry the same sequence number is not taken
        for the answer."""
        sequence = self.send(command_id, body)
        while True:
            answer = await self.read(timeout)
            assert answer is not None, "connection closed before the response"
            if answer.command_id == pdu.ENQUIRE_LINK:
                self.send(pdu.ENQUIRE_LINK | pdu.RESPONSE, sequence=answer.sequence)
            elif answer.command_id == pdu.DELIVER_SM:
                self.delivered.append(answer)
                self.send(pdu.DELIVER_SM | pdu.RESPONSE, b"\0", sequence=answer.sequence)
            elif answer.command_id & pdu.RESPONSE and answer.sequence == sequence:
                return answer

    async def bind(self, system_id: str, password: str, mode: str = "transceiver") -> Pdu:
        return await self.request(MODES[mode], bind_body(system_id, password))

    async def closed(self, timeout: float = 10) -> bool:  # noqa: ASYNC109
        """Whether the server closes the connection (reading what comes first)."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        except (ConnectionError, TimeoutError):
            return False
        return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


def message_id(answer: Pdu) -> str:
    return answer.body.rstrip(b"\0").decode()


async def bound(
    port: int, system_id: str = "acme", password: str = "secret1", mode: str = "transceiver"
) -> RawClient:
    client = await RawClient.connect(port)
    answer = await client.bind(system_id, password, mode)
    assert answer.status == pdu.ESME_ROK, pdu.status_name(answer.status)
    return client
