"""Encoding, segmenting and inbound decoding: properties over random text, the edge
cases, and the aiosmpplib 0.7.4 splitting defects that binds.smpp.codec works around."""

from __future__ import annotations

import itertools
from typing import get_args

import pytest
from aiosmpplib import utils as aiosmpp_utils
from aiosmpplib.broker import SimpleBroker
from aiosmpplib.esme import ESME
from aiosmpplib.protocol import SmppMessage, SubmitSm
from aiosmpplib.state import PhoneNumber
from hypothesis import example, given, settings
from hypothesis import strategies as st

from binds.smpp.codec import (
    _GSM,
    Concat,
    Encoded,
    EncodeError,
    Encoding,
    LongMode,
    Segment,
    _plan,
    _short,
    count_segments,
    decode_text,
    encode_text,
    split_udh,
)

BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
EXTENSION = "\f^{}\\[~]|€"
MODES: tuple[LongMode, ...] = get_args(LongMode)
# (single, per part udh8/sar, per part udh16) in the alphabet's units
LIMITS = {"gsm": (160, 153, 152), "ucs2": (70, 67, 66), "latin1": (140, 134, 133)}

gsm_text = st.text(alphabet=BASIC + EXTENSION, max_size=700)
bmp_text = st.text(alphabet=st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]))
astral_text = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0x10000),
        st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]),
    ),
    max_size=300,
)
any_text = st.one_of(gsm_text, bmp_text, astral_text)


def bodies(encoded: Encoded) -> list[bytes]:
    """Each segment's text octets, UDH removed and checked against its position."""
    out = []
    total = len(encoded.segments)
    for seq, segment in enumerate(encoded.segments, 1):
        if segment.message_payload is not None:
            assert segment.short_message == b"" and total == 1
            out.append(segment.message_payload)
        elif segment.udhi:
            concat, body = split_udh(segment.short_message)
            assert concat is not None and (concat.total, concat.seq) == (total, seq)
            out.append(body)
        else:
            out.append(segment.short_message)
    return out


def width(body: bytes, alphabet: str) -> int:
    return len(body) // 2 if alphabet == "ucs2" else len(body)


def check(text: str, mode: LongMode) -> None:
    encoded = encode_text(text, long_mode=mode, reference=513)
    parts = bodies(encoded)
    # Each part decodes on its own: no escape pair or surrogate pair was cut.
    assert "".join(decode_text(p, encoded.data_coding)[0] for p in parts) == text
    assert count_segments(text, long_mode=mode) == len(encoded.segments)
    single, per8, per16 = LIMITS[encoded.alphabet]
    if len(parts) == 1:
        segment = encoded.segments[0]
        fits = encoded.units <= single
        assert fits == (segment.message_payload is None)
        # One segment is either a plain short message or, in payload mode, the payload.
        assert not segment.udhi and segment.sar is None
        assert fits or mode == "payload"
        return
    limit = per16 if mode == "udh16" else per8
    for body in parts:
        assert 0 < width(body, encoded.alphabet) <= limit
        if encoded.alphabet == "gsm":
            assert body[-1] != 0x1B  # an ESC always travels with its character
        elif encoded.alphabet == "ucs2":
            assert not 0xD8 <= body[-2] <= 0xDB  # no high surrogate left alone
    # Greedy: a part is only closed when the next character would not fit.
    for body, following in itertools.pairwise(parts):
        first = 2 if (encoded.alphabet == "gsm" and following[0] == 0x1B) else 1
        if encoded.alphabet == "ucs2" and 0xD8 <= following[0] <= 0xDB:
            first = 2
        assert width(body, encoded.alphabet) + first > limit
    assert sum(width(p, encoded.alphabet) for p in parts) == encoded.units


@settings(max_examples=300)
@given(gsm_text, st.sampled_from(MODES))
def test_gsm_text_round_trips_within_limits(text: str, mode: LongMode) -> None:
    assert encode_text(text).alphabet == "gsm"
    check(text, mode)


@settings(max_examples=300)
@given(st.one_of(bmp_text, astral_text), st.sampled_from(MODES))
@example("0000000" + "\U00010000" * 19 + "\U0001ad95" + "\U0001d596" * 12, "payload")
def test_any_text_round_trips_without_splitting_pairs(text: str, mode: LongMode) -> None:
    check(text, mode)


@given(any_text)
def test_auto_picks_gsm_exactly_when_every_character_is_gsm(text: str) -> None:
    encoded = encode_text(text)
    in_gsm = all(c in BASIC + EXTENSION for c in text)
    assert (encoded.alphabet, encoded.data_coding) == (("gsm", 0) if in_gsm else ("ucs2", 8))
    expected = (
        sum(2 if c in EXTENSION else 1 for c in text)
        if in_gsm
        else len(text.encode("utf-16-be")) // 2
    )
    assert encoded.units == expected


@given(st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=400), st.sampled_from(MODES))
def test_latin1_round_trips(text: str, mode: LongMode) -> None:
    encoded = encode_text(text, encoding="latin1", long_mode=mode)
    assert encoded.data_coding == 3 and encoded.units == len(text)
    assert "".join(decode_text(p, 3)[0] for p in bodies(encoded)) == text


def test_single_message_limits() -> None:
    for text, parts in [
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # 160 septets
        ("€" * 80 + "a", 2),
        ("я" * 70, 1),
        ("я" * 71, 2),
        ("я" * 134, 2),
        ("я" * 135, 3),
        ("😊" * 35, 1),  # 70 code units
        ("😊" * 35 + "a", 2),
    ]:
        assert len(encode_text(text).segments) == parts, text[:3]
        assert count_segments(text) == parts
    assert len(encode_text("é" * 140, encoding="latin1").segments) == 1
    assert len(encode_text("é" * 141, encoding="latin1").segments) == 2
    assert [
        len(s.short_message) - 6 for s in encode_text("é" * 300, encoding="latin1").segments
    ] == [
        134,
        134,
        32,
    ]
    assert [
        len(s.short_message) - 7 for s in encode_text("a" * 305, long_mode="udh16").segments
    ] == [
        152,
        152,
        1,
    ]
    assert [
        len(s.short_message) // 2 - 3 for s in encode_text("я" * 133, long_mode="udh16").segments
    ] == [
        66,
        66,
        1,
    ]


def test_escape_pair_and_surrogate_pair_stay_whole() -> None:
    parts = encode_text("ab" + "€" * 80).segments  # 162 septets; septet 153 would be an ESC
    assert [len(p.short_message) - 6 for p in parts] == [152, 10]
    assert parts[0].short_message[-2:] == b"\x1b\x65"
    emoji = encode_text("ab" + "😊" * 40).segments  # 82 code units
    assert [len(p.short_message) - 6 for p in emoji] == [66 * 2, 16 * 2]


def test_udh_bytes_and_reference_modulo() -> None:
    text = "x" * 200
    udh8 = encode_text(text, reference=300).segments
    assert [s.short_message[:6] for s in udh8] == [bytes((5, 0, 3, 44, 2, n)) for n in (1, 2)]
    assert all(s.udhi and s.sar is None and s.message_payload is None for s in udh8)
    udh16 = encode_text(text, long_mode="udh16", reference=0x1234 + 65536).segments
    assert udh16[1].short_message[:7] == bytes((6, 8, 4, 0x12, 0x34, 2, 2))
    assert split_udh(udh16[1].short_message)[0] == Concat(0x1234, 2, 2, 16)


def test_sar_and_payload_modes() -> None:
    text = "x" * 200
    sar = encode_text(text, long_mode="sar", reference=70000).segments
    assert [s.sar for s in sar] == [(4464, 2, 1), (4464, 2, 2)]
    assert [s.short_message for s in sar] == [b"x" * 153, b"x" * 47]  # no UDH in the body
    assert not any(s.udhi for s in sar)
    payload = encode_text(text, long_mode="payload").segments
    assert payload == encode_text(text, long_mode="payload").segments
    assert len(payload) == 1 and payload[0].short_message == b""
    assert payload[0].message_payload == b"x" * 200 and not payload[0].udhi
    assert count_segments(text, long_mode="payload") == 1
    for mode in MODES:  # a text that fits is a plain single segment in every mode
        (single,) = encode_text("hi", long_mode=mode).segments
        assert (single.short_message, single.message_payload, single.udhi, single.sar) == (
            b"hi",
            None,
            False,
            None,
        )


def test_data_codings_and_encode_errors() -> None:
    assert encode_text("hi", gsm_data_coding=1).data_coding == 1
    assert encode_text("hé", encoding="latin1").data_coding == 3
    assert encode_text("hi", encoding="ucs2").data_coding == 8
    assert encode_text("[x]", encoding="gsm").segments[0].short_message == b"\x1b\x3cx\x1b\x3e"
    with pytest.raises(EncodeError):
        encode_text("я", encoding="gsm")
    with pytest.raises(EncodeError):
        encode_text("€", encoding="latin1")
    with pytest.raises(EncodeError):
        count_segments("я", encoding="latin1")
    assert len(encode_text("a" * 153 * 255).segments) == 255
    with pytest.raises(EncodeError):
        encode_text("a" * (153 * 255 + 1))
    assert count_segments("a" * (153 * 255 + 1)) == 256  # says how far over, no raise
    assert len(encode_text("a" * 153 * 256, long_mode="payload").segments) == 1


@given(st.binary(max_size=300), st.integers(0, 255))
def test_decode_text_never_raises(data: bytes, coding: int) -> None:
    text, binary = decode_text(data, coding)
    assert isinstance(text, str) and isinstance(binary, bool)


def test_decode_text_codings() -> None:
    assert decode_text(b"\x00\x1b\x65", 0) == ("@€", False)
    assert decode_text(b"\x00\x1b\x65", 0xF1) == ("@€", False)
    assert decode_text(b"h\xe9", 3) == ("hé", False)
    assert decode_text("😊".encode("utf-16-be"), 8) == ("😊", False)
    assert decode_text(b"\x00A", 0x18) == ("A", False)  # UCS2 flash SMS
    assert decode_text(b"A", 0x10) == ("A", False)  # GSM flash SMS
    assert decode_text(b"\xd0", 6) == ("\u0430", False)  # ISO-8859-5 Cyrillic a
    for coding in (2, 4, 0xF5, 0xF6, 0x14, 0x30, 0x9F, 5):
        assert decode_text(b"\x01\xff", coding) == ("Af8=", True), coding
    assert decode_text(b"\xff", 7) == ("/w==", True)  # not ISO-8859-8 after all


@given(st.binary(max_size=300))
def test_split_udh_never_raises(data: bytes) -> None:
    concat, rest = split_udh(data)
    assert rest == data or rest == data[data[0] + 1 :]
    if concat is not None:
        assert 1 <= concat.seq <= concat.total and concat.ref_bits in (8, 16)


def test_split_udh_reads_concat_ies() -> None:
    assert split_udh(bytes((6, 8, 4, 0x12, 0x34, 3, 2)) + b"hi") == (Concat(4660, 3, 2, 16), b"hi")
    assert split_udh(bytes((5, 0, 3, 0xAB, 2, 1)) + b"hi") == (Concat(0xAB, 2, 1, 8), b"hi")
    # A 16-bit port addressing IE (0x05) before the concat IE is skipped.
    with_ports = bytes((11, 0x05, 4, 0x0B, 0x84, 0x23, 0xF0, 0x00, 3, 7, 2, 2)) + b"x"
    assert split_udh(with_ports) == (Concat(7, 2, 2, 8), b"x")
    assert split_udh(bytes((5, 0, 3, 1, 2, 0)) + b"x") == (None, b"x")  # seq 0: IE ignored
    assert split_udh(bytes((5, 0, 3, 1, 2, 3)) + b"x") == (None, b"x")  # seq > total
    malformed = [bytes((9, 0, 3, 1)), bytes((3, 0, 3, 1)), bytes((1, 0)), b""]
    for data in malformed:
        assert split_udh(data) == (None, data)


# --- aiosmpplib 0.7.4 defects this module works around ---------------------------------


async def test_aiosmpplib_defect_sar_split_unbound_local_error() -> None:
    """ESME._dequeue_messages, asked to split a long message with SAR TLVs (no UDHI,
    auto_message_payload=False), reads `encoding` that only the UDHI branch assigns."""
    broker = SimpleBroker()
    sent: list[SmppMessage] = []
    esme = ESME("127.0.0.1", 2775, "sys", "pw", broker=broker, testing=True)
    esme._session_state = esme.bind_mode.session_state  # as if bound

    async def capture(message: SmppMessage) -> None:
        sent.append(message)

    esme._send_data = capture
    message = SubmitSm(
        short_message="a" * 300,
        source=PhoneNumber("1000"),
        destination=PhoneNumber("447911123456"),
        log_id="x",
        auto_message_payload=False,
    )
    await broker.enqueue(message)
    with pytest.raises(UnboundLocalError, match="encoding"):
        await esme._dequeue_messages()
    assert sent == []
    ours = encode_text("a" * 300, long_mode="sar", reference=9).segments
    assert [(len(s.short_message), s.sar) for s in ours] == [(153, (9, 2, 1)), (147, (9, 2, 2))]


def test_aiosmpplib_defect_split_counts_characters_not_septets() -> None:
    """split_sms_udh measures GSM text in characters, so extension characters (two
    septets each) overflow a part: 150 'a' + 3 '€' = 156 septets in a 153-septet part,
    and 100 '€' (200 septets) is deemed to fit one 160-septet message."""
    parts = aiosmpp_utils.split_sms_udh("a" * 150 + "€" * 20, "gsm0338", 1)
    assert [len(p) - 6 for p in parts] == [156, 34]
    (single,) = aiosmpp_utils.split_sms_udh("€" * 100, "gsm0338", 1)
    # One part: a length octet (100, the character count) then all 200 septets.
    assert single[0] == 100 and len(single) == 201
    assert [len(s.short_message) - 6 for s in encode_text("a" * 150 + "€" * 20).segments] == [
        152,
        38,
    ]
    assert len(encode_text("€" * 100).segments) == 2


def test_aiosmpplib_defect_split_sms_uses_254_octet_limit() -> None:
    """split_sms (the SAR splitter) treats 254 octets, the short_message field size, as
    one SMS and prepends a length octet, so 200 septets come back as one 201-octet part."""
    (part,) = aiosmpp_utils.split_sms("a" * 200, "gsm0338")
    assert part == b"\xc8" + b"a" * 200
    assert count_segments("a" * 200, long_mode="sar") == 2


def _planned(text: str, encoding: Encoding, coding: int) -> Encoded | None:
    """What encode_text gave before its one-message shortcut: `_plan` for any text."""
    try:
        alphabet, units, whole, parts = _plan(text, encoding, "udh8")
    except EncodeError:
        return None
    if parts is not None:
        return None
    data_coding = coding if alphabet == "gsm" else {"ucs2": 8, "latin1": 3}[alphabet]
    return Encoded(data_coding, alphabet, (Segment(whole),), units)


@settings(max_examples=500)
@given(
    st.one_of(gsm_text.map(lambda t: t[:170]), any_text, bmp_text, astral_text),
    st.sampled_from(["auto", "gsm", "ucs2"]),
)
@example("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./:;<=>?¡ÄÖÑÜ§¿äöñüà", "auto")
@example("^{}\\[~]|€\x0c", "gsm")
@example("\ud800", "ucs2")
def test_one_message_shortcut_gives_what_the_planner_gives(text: str, encoding: Encoding) -> None:
    """The str.translate/str.encode shortcut for one-message texts agrees with the
    character-by-character planner wherever it answers, and answers for ordinary text."""
    shortcut = _short(text, encoding, 0)
    if shortcut is not None:
        assert shortcut == _planned(text, encoding, 0)
    else:
        planned = _planned(text, encoding, 0)
        assert planned is None or planned.units > (160 if planned.alphabet == "gsm" else 70)


@given(st.binary(max_size=200))
@example(b"id:1 sub:001 dlvrd:001 submit date:2311231200 done date:2311231201 stat:DELIVRD err:000")
@example(b"\x00\x02\x11\x1b\x65 @$_")
def test_gsm_decoding_shortcut_agrees_with_the_septet_decoder(data: bytes) -> None:
    """Octets that are all ASCII-identical septets take a shortcut; the answer is the
    septet decoder's either way."""
    assert decode_text(data, 0) == (str(_GSM.decode(data, "replace")[0]), False)
