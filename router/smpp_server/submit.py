"""submit_sm and data_sm bodies read into a `Part`: one message, or one part of a long
one, with its addresses as a job takes them and its text still as octets.

A long message's part carries its concatenation: from a user data header (esm_class
UDHI, IE 0x00 8-bit or 0x08 16-bit reference) or from the SAR optional parameters.
The text is decoded (`text_of`) once the whole message is there, so a GSM escape or
a UCS2 character cut between two parts comes out whole.

A body that cannot be read at all raises `Malformed` (answered generic_nack
ESME_RINVCMDLEN); a field that is wrong raises `Refused` with the status that names
it (ESME_RINVSRCADR, ESME_RINVDSTADR, ESME_RINVSCHED, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from binds.smpp import pdu
from binds.smpp.codec import Concat, decode_text, split_udh
from binds.smpp.pdu import (
    PduError,
    ShortMessage,
    decode_short_message,
    read_c_string,
    read_tlvs,
)
from router.errors import RouterError
from router.smpp_server import addresses
from router.smpp_server.statuses import (
    ESME_RINVDSTADR,
    ESME_RINVESMCLASS,
    ESME_RINVEXPIRY,
    ESME_RINVOPTPARAMVAL,
    ESME_RINVOPTPARSTREAM,
    ESME_RINVPARLEN,
    ESME_RINVSCHED,
    ESME_RINVSERTYP,
    ESME_RINVSRCADR,
    ESME_RMISSINGOPTPARAM,
    ESME_ROPTPARNOTALLWD,
    ESME_RSUBMITFAIL,
    Refused,
)
from router.smpp_server.times import parse_time

__all__ = ["Malformed", "Part", "read_data_sm", "read_submit_sm", "text_of"]

# A C-string field too long for its PDU field (no NUL within its limit): the status
# that names the field.
_FIELD_STATUS: Final = {
    "service_type": ESME_RINVSERTYP,
    "source_addr": ESME_RINVSRCADR,
    "destination_addr": ESME_RINVDSTADR,
    "schedule_delivery_time": ESME_RINVSCHED,
    "validity_period": ESME_RINVEXPIRY,
}
UCS2: Final = 8


class Malformed(RouterError):
    """A body that cannot be read (it ends inside a field)."""


@dataclass(slots=True)
class Part:
    """One submit_sm or data_sm, read."""

    destination: str  # E.164 with '+' (the job decoder checks it is a number)
    sender: str | None  # a job's `from`; None: the profile picks
    source_addr: str  # as sent (long messages' parts are matched by it)
    octets: bytes  # the text's octets, user data header removed
    data_coding: int
    registered_delivery: int
    send_at: float | None = None
    expires_at: float | None = None
    concat: Concat | None = None  # a part of a long message (total > 1)
    sar: bool = False  # the concatenation came from SAR optional parameters


def read_submit_sm(body: bytes, now: float) -> Part:
    """A submit_sm body; Malformed or Refused when it cannot be taken."""
    try:
        message = decode_short_message(body)
    except PduError as exc:
        raise _unreadable(exc) from None
    if message.short_message and pdu.TAG_MESSAGE_PAYLOAD in message.tlvs:
        raise Refused(ESME_ROPTPARNOTALLWD, "message_payload given with a non-empty short_message")
    return _part(message, now)


def read_data_sm(body: bytes, now: float) -> Part:
    """A data_sm body (its text in message_payload); Malformed or Refused."""
    message = ShortMessage()
    index = 0
    try:
        message.service_type, index = read_c_string(body, index, "service_type", 6)
        message.source_ton, message.source_npi = _octets(body, index, 2, "source_addr_ton")
        message.source, index = read_c_string(body, index + 2, "source_addr", 65)
        message.dest_ton, message.dest_npi = _octets(body, index, 2, "dest_addr_ton")
        message.destination, index = read_c_string(body, index + 2, "destination_addr", 65)
        esm, registered, coding = _octets(body, index, 3, "esm_class")
        message.esm_class, message.registered_delivery, message.data_coding = (
            esm,
            registered,
            coding,
        )
        message.tlvs = read_tlvs(body, index + 3)
    except PduError as exc:
        raise _unreadable(exc) from None
    if pdu.TAG_MESSAGE_PAYLOAD not in message.tlvs:
        raise Refused(ESME_RMISSINGOPTPARAM, "data_sm without message_payload")
    return _part(message, now)


def text_of(octets: bytes, data_coding: int) -> str:
    """A message's text from its octets (every part's, joined); Refused when they are
    not text of that coding."""
    if data_coding == UCS2 and len(octets) % 2:
        raise Refused(pdu.ESME_RINVMSGLEN, f"UCS2 text of {len(octets)} octets (odd)")
    text, binary = decode_text(octets, data_coding)
    if binary:  # read_* refused binary codings: not reached
        raise Refused(ESME_RSUBMITFAIL, f"data_coding 0x{data_coding:02X} is not text")
    return text


def _unreadable(exc: PduError) -> Exception:
    reason = str(exc)
    field = reason.partition(":")[0]
    if reason.endswith("missing NUL terminator") and field in _FIELD_STATUS:
        return Refused(_FIELD_STATUS[field], f"{field}: longer than SMPP 3.4 allows")
    if reason.startswith("optional parameter"):
        return Refused(ESME_RINVOPTPARSTREAM, reason)
    return Malformed(reason)


def _octets(body: bytes, index: int, count: int, name: str) -> tuple[int, ...]:
    if index + count > len(body):
        raise PduError(f"{name}: body ends early")
    return tuple(body[index : index + count])


def _part(message: ShortMessage, now: float) -> Part:
    if decode_text(b"", message.data_coding)[1]:
        raise Refused(
            ESME_RSUBMITFAIL,
            f"data_coding 0x{message.data_coding:02X} is binary or unknown: only text is "
            "taken (0 GSM 03.38, 1 IA5, 3 latin-1, 8 UCS2)",
        )
    part = Part(
        destination=addresses.destination(message.destination, message.dest_ton, message.dest_npi),
        sender=addresses.source(message.source, message.source_ton, message.source_npi),
        source_addr=message.source,
        octets=message.text_bytes,
        data_coding=message.data_coding,
        registered_delivery=message.registered_delivery,
    )
    try:
        part.send_at = parse_time(message.schedule_delivery_time, now)
    except ValueError as exc:
        raise Refused(ESME_RINVSCHED, f"schedule_delivery_time: {exc}") from None
    try:
        part.expires_at = parse_time(message.validity_period, now)
    except ValueError as exc:
        raise Refused(ESME_RINVEXPIRY, f"validity_period: {exc}") from None
    if message.esm_class & pdu.ESM_UDHI and part.octets:
        concat, rest = split_udh(part.octets)
        if rest is part.octets:
            raise Refused(
                ESME_RINVESMCLASS,
                "esm_class says the text starts with a user data header, and it does not",
            )
        part.octets = rest
        if concat is not None and concat.total > 1:
            part.concat = concat
    elif pdu.TAG_SAR_MSG_REF_NUM in message.tlvs or pdu.TAG_SAR_TOTAL_SEGMENTS in message.tlvs:
        part.concat = _sar(message.tlvs)
        part.sar = part.concat is not None
    return part


def _sar(tlvs: dict[int, bytes]) -> Concat | None:
    """The SAR parameters as a Concat (None for a "long" message of one part)."""
    values = [
        tlvs.get(tag)
        for tag in (pdu.TAG_SAR_MSG_REF_NUM, pdu.TAG_SAR_TOTAL_SEGMENTS, pdu.TAG_SAR_SEGMENT_SEQNUM)
    ]
    reference, total, seq = values
    if reference is None or total is None or seq is None:
        raise Refused(
            ESME_RMISSINGOPTPARAM,
            "sar_msg_ref_num, sar_total_segments and sar_segment_seqnum go together",
        )
    if (len(reference), len(total), len(seq)) != (2, 1, 1):
        raise Refused(ESME_RINVPARLEN, "SAR parameters: sizes must be 2, 1 and 1 octets")
    concat = Concat(int.from_bytes(reference, "big"), total[0], seq[0], 16)
    if not 1 <= concat.seq <= concat.total:
        raise Refused(
            ESME_RINVOPTPARAMVAL,
            f"sar_segment_seqnum {concat.seq} outside 1..sar_total_segments {concat.total}",
        )
    return concat if concat.total > 1 else None
