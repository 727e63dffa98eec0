"""SMPP 3.4 PDUs: framing, headers and the bodies the router exchanges.

This is the one place that touches aiosmpplib's PDU classes, and it works around
its 0.7.4 defects (each has a regression test in tests/binds/test_smpp_pdu.py):

* ``SmppMessage.parse_header`` turns command ids and statuses into enums and so
  rejects unknown command ids and vendor status codes (0x400-0x4FF); headers are
  parsed here into plain integers.
* ``DeliverSm.from_pdu`` reads a 16-bit concatenation reference as 4 bytes and
  rejects unknown TON/NPI and data_coding values; short-message bodies
  (submit_sm, deliver_sm) are encoded and decoded here, keeping the text as
  bytes so `binds.smpp.codec` decides how to read it.

aiosmpplib still builds the bind requests and names the standard status codes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from aiosmpplib.protocol import BindTransceiver, BindTransmitter
from aiosmpplib.state import NPI, TON, SmppCommandStatus

from binds.base import BindError

__all__ = [
    "HEADER",
    "MAX_PDU_SIZE",
    "Frame",
    "FrameDecoder",
    "FramingError",
    "Pdu",
    "PduError",
    "SequenceNumbers",
    "ShortMessage",
    "SubmitEncoder",
    "bind_pdu",
    "decode_short_message",
    "encode_short_message",
    "read_c_string",
    "status_name",
    "submit_resp_id",
    "tlv",
]


class PduError(BindError, ValueError):
    """A PDU body that cannot be read; the message names the field."""


class FramingError(PduError):
    """The byte stream cannot be framed (bad command_length): the connection must go."""


HEADER = struct.Struct("!IIII")
MAX_PDU_SIZE = 64 * 1024
_HEADER_FROM = HEADER.unpack_from

# Command ids (SMPP 3.4 section 5.1.2.1).
GENERIC_NACK = 0x80000000
BIND_RECEIVER = 0x00000001
BIND_TRANSMITTER = 0x00000002
BIND_TRANSCEIVER = 0x00000009
SUBMIT_SM = 0x00000004
DELIVER_SM = 0x00000005
UNBIND = 0x00000006
ENQUIRE_LINK = 0x00000015
OUTBIND = 0x0000000B
DATA_SM = 0x00000103
RESPONSE = 0x80000000

# Command statuses the router treats specially.
ESME_ROK = 0x00000000
ESME_RINVMSGLEN = 0x00000001
ESME_RINVCMDLEN = 0x00000002
ESME_RINVCMDID = 0x00000003
ESME_RINVBNDSTS = 0x00000004
ESME_RALYBND = 0x00000005
ESME_RSYSERR = 0x00000008
ESME_RBINDFAIL = 0x0000000D
ESME_RINVPASWD = 0x0000000E
ESME_RINVSYSID = 0x0000000F
ESME_RMSGQFUL = 0x00000014
ESME_RTHROTTLED = 0x00000058
ESME_RX_T_APPN = 0x00000064

# Optional parameter tags.
TAG_RECEIPTED_MESSAGE_ID = 0x001E
TAG_SAR_MSG_REF_NUM = 0x020C
TAG_SAR_TOTAL_SEGMENTS = 0x020E
TAG_SAR_SEGMENT_SEQNUM = 0x020F
TAG_MESSAGE_PAYLOAD = 0x0424
TAG_MESSAGE_STATE = 0x0427
TAG_NETWORK_ERROR_CODE = 0x0423

ESM_UDHI = 0x40
ESM_RECEIPT = 0x04  # SMSC delivery receipt (message type bits 2-5)
ESM_TYPE_MASK = 0x3C

_STATUS_NAMES = {member.value: member.name for member in SmppCommandStatus}


def status_name(status: int) -> str:
    """Normalised name of a command status: ``ESME_RTHROTTLED``, ``vendor_0x0401``."""
    if status in _STATUS_NAMES:
        return str(_STATUS_NAMES[status])
    if 0x400 <= status <= 0x4FF:
        return f"vendor_0x{status:04X}"
    return f"unknown_0x{status:08X}"


@dataclass(frozen=True, slots=True)
class Pdu:
    """One PDU: the header as plain integers (any value) and the raw body."""

    command_id: int
    status: int
    sequence: int
    body: bytes = b""

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE)

    def encode(self) -> bytes:
        return (
            HEADER.pack(HEADER.size + len(self.body), self.command_id, self.status, self.sequence)
            + self.body
        )


# One frame as the session reads it: (command_id, command_status, sequence_number, body).
Frame = tuple[int, int, int, bytes]


class FrameDecoder:
    """Cuts a TCP byte stream into PDUs by ``command_length``.

    A length below the header size or above `max_size` cannot be resynchronised
    (there is no frame marker in SMPP), so it raises `FramingError` and the caller
    drops the connection.
    """

    def __init__(self, max_size: int = MAX_PDU_SIZE) -> None:
        self.max_size = max_size
        self._rest = b""  # the start of a frame whose end has not arrived yet
        # Set by `split` at a bad command_length: the frames before it were returned.
        self.broken: FramingError | None = None

    def feed(self, data: bytes) -> Iterator[Pdu]:
        frames = self.split(data)
        for command_id, status, sequence, body in frames:
            yield Pdu(command_id, status, sequence, body)
        if self.broken is not None:
            raise self.broken

    def split(self, data: bytes) -> list[Frame]:
        """The whole frames `data` completes, as tuples (no object per frame beyond its
        body); after a bad command_length, the frames before it and `broken` set."""
        if self.broken is not None:
            return []
        if self._rest:
            data = self._rest + data
        frames: list[Frame] = []
        size = len(data)
        offset = 0
        unpack = _HEADER_FROM
        limit = self.max_size
        while size - offset >= 16:
            length, command_id, status, sequence = unpack(data, offset)
            if length < 16 or length > limit:
                self.broken = FramingError(
                    f"command_length {length} outside {HEADER.size}..{self.max_size}"
                )
                break
            end = offset + length
            if end > size:
                break
            frames.append((command_id, status, sequence, data[offset + 16 : end]))
            offset = end
        self._rest = data[offset:] if offset < size else b""
        return frames


class SequenceNumbers:
    """Sequence numbers 1..0x7FFFFFFF, wrapping back to 1 (SMPP 3.4 section 3.2)."""

    LIMIT = 0x7FFFFFFF

    def __init__(self, start: int = 1) -> None:
        self._next = start if 1 <= start <= self.LIMIT else 1

    def next(self) -> int:
        value = self._next
        self._next = 1 if value >= self.LIMIT else value + 1
        return value


def bind_pdu(
    mode: str,
    sequence: int,
    *,
    system_id: str,
    password: str,
    system_type: str = "",
    addr_ton: int = 0,
    addr_npi: int = 0,
    address_range: str = "",
) -> bytes:
    """A bind_transmitter or bind_transceiver request, interface version 3.4."""
    kind = BindTransmitter if mode == "transmitter" else BindTransceiver
    message = kind(
        sequence_num=sequence,
        system_id=system_id,
        password=password,
        system_type=system_type,
        interface_version=0x34,
        addr_ton=TON(addr_ton),
        addr_npi=NPI(addr_npi),
        address_range=address_range,
    )
    return bytes(message.pdu())


def submit_resp_id(body: bytes) -> str:
    """The message_id of a submit_sm_resp body: up to 65 octets before the NUL; an SMSC
    that leaves out the NUL gets its body (less trailing NULs) taken as the id."""
    end = body.find(b"\0", 0, 66)
    if end < 0:
        return body.rstrip(b"\0").decode("latin-1")
    return body[:end].decode("latin-1")


def read_c_string(body: bytes, index: int, name: str, limit: int = 256) -> tuple[str, int]:
    """A NUL-terminated ASCII field at `index`; returns it and the index after it."""
    end = body.find(b"\0", index, index + limit + 1)
    if end < 0:
        raise PduError(f"{name}: missing NUL terminator")
    return body[index:end].decode("latin-1"), end + 1


@dataclass(slots=True)
class ShortMessage:
    """The body of a submit_sm or deliver_sm (same layout), text kept as bytes."""

    source: str = ""
    destination: str = ""
    source_ton: int = 0
    source_npi: int = 0
    dest_ton: int = 0
    dest_npi: int = 0
    service_type: str = ""
    esm_class: int = 0
    protocol_id: int = 0
    priority: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""
    tlvs: dict[int, bytes] = field(default_factory=dict)

    @property
    def is_receipt(self) -> bool:
        return bool(self.esm_class & ESM_RECEIPT) or TAG_RECEIPTED_MESSAGE_ID in self.tlvs

    @property
    def text_bytes(self) -> bytes:
        """short_message, or message_payload when short_message is empty."""
        return self.short_message or self.tlvs.get(TAG_MESSAGE_PAYLOAD, b"")

    def tlv_int(self, tag: int) -> int | None:
        value = self.tlvs.get(tag)
        return int.from_bytes(value, "big") if value else None

    def tlv_text(self, tag: int) -> str | None:
        value = self.tlvs.get(tag)
        return value.rstrip(b"\0").decode("latin-1") if value is not None else None


def encode_short_message(message: ShortMessage) -> bytes:
    """The body of a submit_sm / deliver_sm."""
    if len(message.short_message) > 254:
        raise PduError("short_message: longer than 254 octets; use message_payload")
    out = bytearray()

    def c_string(value: str) -> None:
        out.extend(value.encode("latin-1") + b"\0")

    c_string(message.service_type)
    out += bytes((message.source_ton, message.source_npi))
    c_string(message.source)
    out += bytes((message.dest_ton, message.dest_npi))
    c_string(message.destination)
    out += bytes((message.esm_class, message.protocol_id, message.priority))
    c_string(message.schedule_delivery_time)
    c_string(message.validity_period)
    out += bytes(
        (
            message.registered_delivery,
            message.replace_if_present,
            message.data_coding,
            message.sm_default_msg_id,
            len(message.short_message),
        )
    )
    out += message.short_message
    for tag, value in message.tlvs.items():
        out += struct.pack("!HH", tag, len(value)) + value
    return bytes(out)


# The destination_addr's NUL, esm_class, protocol_id, priority_flag,
# schedule_delivery_time and validity_period (both empty: one NUL each), registered_delivery,
# replace_if_present_flag, data_coding, sm_default_msg_id, sm_length (NULs as pad bytes).
_SUBMIT_MIDDLE = struct.Struct("!xBBBxxBBBBB")
_TON_NPI = struct.Struct("!BB")
_TLV_HEAD = struct.Struct("!HH")


class SubmitEncoder:
    """submit_sm bodies for one bind, cheaply: what every submit of the bind shares
    (service_type, destination TON/NPI, registered_delivery) is encoded once, and a body
    is one join of ready pieces: `head` (per source, worth caching), the destination,
    `middle`, the short message and the optional parameters. The octets are those of
    `encode_short_message` with empty schedule_delivery_time and validity_period (the
    router sets neither)."""

    def __init__(
        self, *, service_type: str, dest_ton: int, dest_npi: int, registered_delivery: int
    ) -> None:
        self._service = service_type.encode("latin-1") + b"\0"
        self._dest = _TON_NPI.pack(dest_ton, dest_npi)
        self._registered = registered_delivery

    def head(self, ton: int, npi: int, source: str) -> bytes:
        """service_type, the source address with its TON and NPI, the destination's TON and
        NPI: how every body for `source` starts."""
        return b"".join(
            (self._service, _TON_NPI.pack(ton, npi), source.encode("latin-1"), b"\0", self._dest)
        )

    def middle(self, esm_class: int, data_coding: int, length: int) -> bytes:
        """From the destination's NUL to sm_length, for a short message of `length` octets."""
        if length > 254:
            raise PduError("short_message: longer than 254 octets; use message_payload")
        return _SUBMIT_MIDDLE.pack(esm_class, 0, 0, self._registered, 0, data_coding, 0, length)

    def body(
        self,
        head: bytes,
        destination: bytes,
        esm_class: int,
        data_coding: int,
        short_message: bytes,
        tlvs: bytes = b"",
    ) -> bytes:
        """A whole body: `head` from `head`, the destination address encoded (latin-1),
        `tlvs` from `tlv`. PduError for a short_message over 254 octets."""
        middle = self.middle(esm_class, data_coding, len(short_message))
        return b"".join((head, destination, middle, short_message, tlvs))


def tlv(tag: int, value: bytes) -> bytes:
    """One optional parameter, encoded."""
    return _TLV_HEAD.pack(tag, len(value)) + value


def decode_short_message(body: bytes) -> ShortMessage:
    """Read a submit_sm / deliver_sm body; `PduError` names the field that is wrong."""
    try:
        return _decode_quickly(body)
    except (IndexError, ValueError):
        # Something is wrong with it: read it again field by field to say what.
        return _decode_checked(body)


def _decode_quickly(body: bytes) -> ShortMessage:
    """`decode_short_message` for a well-formed body, in one pass with no call per field
    (every receipt and every submit_sm to our server is read here); raises IndexError or
    ValueError where `_decode_checked` raises PduError (its TLVs' PduError as it is)."""
    find = body.find
    end = find(b"\0", 0, 7)  # the limits are `_decode_checked`'s, NUL included
    if end < 0:
        raise ValueError("service_type")
    service_type = body[:end].decode("latin-1")
    index = end + 3
    source_ton, source_npi = body[end + 1], body[end + 2]
    end = find(b"\0", index, index + 66)
    if end < 0:
        raise ValueError("source_addr")
    source = body[index:end].decode("latin-1")
    index = end + 3
    dest_ton, dest_npi = body[end + 1], body[end + 2]
    end = find(b"\0", index, index + 66)
    if end < 0:
        raise ValueError("destination_addr")
    destination = body[index:end].decode("latin-1")
    esm_class, protocol_id, priority = body[end + 1], body[end + 2], body[end + 3]
    index = end + 4
    end = find(b"\0", index, index + 18)
    if end < 0:
        raise ValueError("schedule_delivery_time")
    schedule = body[index:end].decode("latin-1")
    index = end + 1
    end = find(b"\0", index, index + 18)
    if end < 0:
        raise ValueError("validity_period")
    validity = body[index:end].decode("latin-1")
    registered, replace, data_coding, default_id, length = body[end + 1 : end + 6]
    index = end + 6 + length
    if index > len(body):
        raise ValueError("short_message")
    return ShortMessage(
        source,
        destination,
        source_ton,
        source_npi,
        dest_ton,
        dest_npi,
        service_type,
        esm_class,
        protocol_id,
        priority,
        schedule,
        validity,
        registered,
        replace,
        data_coding,
        default_id,
        body[end + 6 : index],
        read_tlvs(body, index) if index < len(body) else {},
    )


def _decode_checked(body: bytes) -> ShortMessage:
    """`decode_short_message` field by field, each checked: PduError names the first one
    that is wrong."""
    message = ShortMessage()
    message.service_type, index = read_c_string(body, 0, "service_type", 6)
    message.source_ton, message.source_npi = _octets(body, index, _AFTER_SERVICE_TYPE)
    message.source, index = read_c_string(body, index + 2, "source_addr", 65)
    message.dest_ton, message.dest_npi = _octets(body, index, _AFTER_SOURCE)
    message.destination, index = read_c_string(body, index + 2, "destination_addr", 65)
    message.esm_class, message.protocol_id, message.priority = _octets(
        body, index, _AFTER_DESTINATION
    )
    message.schedule_delivery_time, index = read_c_string(
        body, index + 3, "schedule_delivery_time", 17
    )
    message.validity_period, index = read_c_string(body, index, "validity_period", 17)
    (
        message.registered_delivery,
        message.replace_if_present,
        message.data_coding,
        message.sm_default_msg_id,
        length,
    ) = _octets(body, index, _AFTER_VALIDITY)
    index += 5
    if index + length > len(body):
        raise PduError(f"short_message: sm_length {length} runs past the body")
    message.short_message = body[index : index + length]
    message.tlvs = read_tlvs(body, index + length) if index + length < len(body) else {}
    return message


# The one-octet fields after each C-string of a submit_sm / deliver_sm body, by name.
_AFTER_SERVICE_TYPE: Final = ("source_addr_ton", "source_addr_npi")
_AFTER_SOURCE: Final = ("dest_addr_ton", "dest_addr_npi")
_AFTER_DESTINATION: Final = ("esm_class", "protocol_id", "priority_flag")
_AFTER_VALIDITY: Final = (
    "registered_delivery",
    "replace_if_present_flag",
    "data_coding",
    "sm_default_msg_id",
    "sm_length",
)


def _octets(body: bytes, index: int, names: tuple[str, ...]) -> bytes:
    """The one-octet fields `names` at `index` (read as ints when unpacked); PduError
    naming the first one the body ends before."""
    end = index + len(names)
    if end > len(body):
        raise PduError(f"{names[max(len(body) - index, 0)]}: body ends early")
    return body[index:end]


def read_tlvs(body: bytes, index: int) -> dict[int, bytes]:
    """The optional parameters (tag -> value) from `index` to the end of `body`;
    PduError naming the one that is cut short."""
    found: dict[int, bytes] = {}
    while index < len(body):
        if index + 4 > len(body):
            raise PduError(f"optional parameter at octet {index}: truncated header")
        tag, size = struct.unpack_from("!HH", body, index)
        index += 4
        if index + size > len(body):
            raise PduError(f"optional parameter 0x{tag:04X}: length {size} runs past the body")
        found[tag] = body[index : index + size]
        index += size
    return found


def tlv_int(value: int, size: int) -> bytes:
    """An integer TLV value of `size` octets."""
    return value.to_bytes(size, "big")
