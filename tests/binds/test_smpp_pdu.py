"""PDU framing and bodies, and the aiosmpplib 0.7.4 defects `binds.smpp.pdu` works around."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from aiosmpplib.protocol import DeliverSm, SmppMessage
from aiosmpplib.state import SAR_MSG_REF_NUM, PduHeader
from hypothesis import given
from hypothesis import strategies as st

from binds.smpp import pdu
from binds.smpp.pdu import (
    FrameDecoder,
    FramingError,
    Pdu,
    PduError,
    SequenceNumbers,
    ShortMessage,
    decode_short_message,
    encode_short_message,
    status_name,
)

UDH16 = bytes([0x06, 0x08, 0x04, 0x12, 0x34, 0x03, 0x01])  # reference 0x1234, part 1 of 3


def deliver_sm_with_udh16() -> bytes:
    body = encode_short_message(
        ShortMessage(
            source="447911123456",
            destination="16501112345",
            source_ton=1,
            source_npi=1,
            dest_ton=1,
            dest_npi=1,
            esm_class=pdu.ESM_UDHI,
            short_message=UDH16 + b"hello",
        )
    )
    return Pdu(pdu.DELIVER_SM, 0, 9, body).encode()


def test_aiosmpplib_defect_header_rejects_vendor_status() -> None:
    header = struct.pack("!IIII", 16, pdu.SUBMIT_SM | pdu.RESPONSE, 0x401, 1)
    with pytest.raises(ValueError):
        SmppMessage.parse_header(header)
    (frame,) = FrameDecoder().feed(header)
    assert frame.status == 0x401 and status_name(frame.status) == "vendor_0x0401"


def test_aiosmpplib_defect_header_rejects_unknown_command_id() -> None:
    header = struct.pack("!IIII", 16, 0x00000777, 0, 5)
    with pytest.raises(ValueError):
        SmppMessage.parse_header(header)
    (frame,) = FrameDecoder().feed(header)
    assert frame.command_id == 0x777 and frame.sequence == 5


def test_aiosmpplib_defect_16_bit_concatenation_reference_misread() -> None:
    raw = deliver_sm_with_udh16()
    header = PduHeader(
        pdu_length=len(raw),
        smpp_command=SmppMessage.parse_header(raw[:16]).smpp_command,
        command_status=SmppMessage.parse_header(raw[:16]).command_status,
        sequence_num=9,
    )
    theirs = DeliverSm.from_pdu(raw, header)
    reference = next(p.value for p in theirs.optional_params or [] if p.tag == SAR_MSG_REF_NUM)
    assert reference != 0x1234  # read as 4 bytes, swallowing the part counters
    (frame,) = FrameDecoder().feed(raw)
    ours = decode_short_message(frame.body)
    assert ours.short_message == UDH16 + b"hello"  # codec.split_udh reads 0x1234 from this


def test_short_message_round_trip_with_tlvs() -> None:
    message = ShortMessage(
        source="ACME",
        source_ton=5,
        destination="447911123456",
        dest_ton=1,
        dest_npi=1,
        esm_class=0x40,
        registered_delivery=1,
        data_coding=8,
        short_message=b"\x05\x00\x03\x01\x02\x01" + "é".encode("utf-16-be"),
        tlvs={pdu.TAG_SAR_MSG_REF_NUM: b"\x00\x07", pdu.TAG_RECEIPTED_MESSAGE_ID: b"ab12\0"},
    )
    assert decode_short_message(encode_short_message(message)) == message
    assert message.tlv_int(pdu.TAG_SAR_MSG_REF_NUM) == 7
    assert message.tlv_text(pdu.TAG_RECEIPTED_MESSAGE_ID) == "ab12"
    assert message.is_receipt


def test_truncated_body_names_the_field() -> None:
    body = encode_short_message(ShortMessage(source="1", destination="2", short_message=b"abc"))
    with pytest.raises(PduError, match="short_message: sm_length 3 runs past"):
        decode_short_message(body[:-2])
    with pytest.raises(PduError, match="source_addr: missing NUL"):
        decode_short_message(b"\0\x01\x01" + b"1" * 80)


def test_framing_across_chunks_and_oversize() -> None:
    frames = [Pdu(pdu.ENQUIRE_LINK, 0, n).encode() for n in (1, 2, 3)]
    stream = b"".join(frames)
    decoder = FrameDecoder()
    got = [f.sequence for i in range(len(stream)) for f in decoder.feed(stream[i : i + 1])]
    assert got == [1, 2, 3]
    with pytest.raises(FramingError, match="command_length 100000"):
        list(FrameDecoder(max_size=65536).feed(struct.pack("!IIII", 100000, 4, 0, 1)))
    with pytest.raises(FramingError, match="command_length 8"):
        list(FrameDecoder().feed(struct.pack("!IIII", 8, 4, 0, 1)))


def test_sequence_numbers_wrap_to_one() -> None:
    numbers = SequenceNumbers(start=0x7FFFFFFE)
    assert [numbers.next() for _ in range(3)] == [0x7FFFFFFE, 0x7FFFFFFF, 1]


def test_bind_pdu_has_version_3_4() -> None:
    raw = pdu.bind_pdu("transmitter", 3, system_id="sys", password="pw", system_type="t")
    (frame,) = FrameDecoder().feed(raw)
    assert frame.command_id == pdu.BIND_TRANSMITTER and frame.sequence == 3
    assert frame.body == b"sys\0pw\0t\0\x34\0\0\0"


@given(st.binary(max_size=300))
def test_decoding_random_bodies_never_crashes_unexpectedly(body: bytes) -> None:
    try:
        decode_short_message(body)
    except PduError:
        pass


def _read(decode: Callable[[bytes], ShortMessage], body: bytes) -> ShortMessage | str:
    try:
        return decode(body)
    except PduError as exc:
        return f"PduError: {exc}"


def _text(longest: int) -> st.SearchStrategy[str]:
    """A C-string field's value, at times longer than SMPP allows (the reading refuses it)."""
    sized = st.integers(0, longest).flatmap(lambda n: st.binary(min_size=n, max_size=n))
    return sized.map(lambda b: b.replace(b"\0", b"x").decode("latin-1"))


_OCTETS = ("source_ton", "source_npi", "dest_ton", "dest_npi", "esm_class", "protocol_id",
           "priority", "registered_delivery", "replace_if_present", "data_coding",
           "sm_default_msg_id")  # fmt: skip


@given(
    st.builds(
        ShortMessage,
        source=_text(70),
        destination=_text(70),
        service_type=_text(8),
        schedule_delivery_time=_text(19),
        validity_period=_text(19),
        short_message=st.binary(max_size=254),
        tlvs=st.dictionaries(st.integers(0, 0xFFFF), st.binary(max_size=8), max_size=3),
        **{name: st.integers(0, 255) for name in _OCTETS},
    ),
    st.integers(0, 40),
    st.binary(max_size=6),
)
def test_the_quick_reading_is_the_checked_one(message: ShortMessage, cut: int, junk: bytes) -> None:
    """Well-formed, with fields too long, cut short or with junk after it: the same
    message or the same error (the field named) as reading field by field."""
    body = encode_short_message(message)
    for variant in (body, body[: len(body) - cut], body + junk, body[:cut] + junk):
        assert _read(decode_short_message, variant) == _read(pdu._decode_checked, variant)
    if isinstance(_read(pdu._decode_checked, body), ShortMessage):
        assert decode_short_message(body) == message


@given(st.binary(max_size=120))
def test_the_quick_reading_of_random_bodies_is_the_checked_one(body: bytes) -> None:
    assert _read(decode_short_message, body) == _read(pdu._decode_checked, body)


def test_status_names() -> None:
    assert status_name(0x58) == "ESME_RTHROTTLED"
    assert status_name(0x14) == "ESME_RMSGQFUL"
    assert status_name(0x12345) == "unknown_0x00012345"
