"""What the server reads and writes beyond `binds.smpp.pdu`: frames with the sequence
number of a frame whose command_length is wrong (its generic_nack names it), bind
bodies, and response bodies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from binds.smpp import pdu
from binds.smpp.pdu import HEADER, FrameDecoder, PduError, read_c_string, tlv

__all__ = ["BIND_MODES", "Bind", "ServerFrames", "bind_resp_body", "message_id_body", "read_bind"]

BIND_MODES: Final = {
    pdu.BIND_TRANSMITTER: "transmitter",
    pdu.BIND_RECEIVER: "receiver",
    pdu.BIND_TRANSCEIVER: "transceiver",
}
SYSTEM_ID: Final = "sms-router"  # the system_id our bind responses carry
TAG_SC_INTERFACE_VERSION: Final = 0x0210
INTERFACE_34: Final = 0x34


class ServerFrames(FrameDecoder):
    """`FrameDecoder`, telling the sequence number of the frame whose command_length
    broke the stream (0 when its header did not arrive whole)."""

    @property
    def broken_sequence(self) -> int:
        rest = self._rest  # the broken frame's header starts what was not framed
        if self.broken is None or len(rest) < HEADER.size:
            return 0
        return int.from_bytes(rest[12:16], "big")


@dataclass(frozen=True, slots=True)
class Bind:
    """A bind request's body."""

    system_id: str
    password: str = field(repr=False)
    system_type: str
    interface_version: int


def read_bind(body: bytes) -> Bind:
    """A bind_transmitter / _receiver / _transceiver body. PduError naming the field:
    ``system_id: missing NUL terminator`` when it is longer than SMPP allows (15
    characters; 8 for the password), ``... body ends early`` when it is cut short."""
    system_id, index = read_c_string(body, 0, "system_id", 15)
    password, index = read_c_string(body, index, "password", 8)
    system_type, index = read_c_string(body, index, "system_type", 12)
    if index + 3 > len(body):
        raise PduError("interface_version: body ends early")
    version = body[index]
    read_c_string(body, index + 3, "address_range", 40)
    return Bind(system_id, password, system_type, version)


def bind_resp_body(interface_version: int) -> bytes:
    """A bind response's body: our system_id, and sc_interface_version for a client
    that speaks 3.4 (SMPP 3.4 section 4.1.2: not sent to a 3.3 client)."""
    body = SYSTEM_ID.encode("ascii") + b"\0"
    if interface_version >= INTERFACE_34:
        body += tlv(TAG_SC_INTERFACE_VERSION, bytes((INTERFACE_34,)))
    return body


def message_id_body(message_id: str) -> bytes:
    """A submit_sm_resp / data_sm_resp body."""
    return message_id.encode("ascii") + b"\0"
