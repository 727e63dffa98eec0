"""Encoding, segmenting and receipts: properties over random text, plus the edge cases."""

from __future__ import annotations

from datetime import datetime

import pytest
from aiosmpplib.protocol import DeliverSm
from hypothesis import given
from hypothesis import strategies as st

from binds.smpp.codec import (
    EncodeError,
    count_segments,
    decode_text,
    encode_text,
    split_udh,
)
from binds.smpp.receipt import normalise_message_id, parse_receipt

GSM_CHARS = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCXYZÄÖÑÜ§¿abcxyzäöñüà€[]{}^~\\|"
LIMITS = {"gsm": 153, "ucs2": 67}


def join(text: str, long_mode: str = "udh8") -> tuple[str, list[int]]:
    encoded = encode_text(text, long_mode=long_mode)  # type: ignore[arg-type]
    body = b""
    sizes = []
    for segment in encoded.segments:
        data = segment.message_payload or segment.short_message
        if segment.udhi:
            concat, data = split_udh(data)
            assert concat is not None and concat.total == len(encoded.segments)
        body += data
        sizes.append(len(data) // (2 if encoded.alphabet == "ucs2" else 1))
    return decode_text(body, encoded.data_coding)[0], sizes


@given(st.text(alphabet=GSM_CHARS, max_size=600))
def test_gsm_round_trip_and_limits(text: str) -> None:
    back, sizes = join(text)
    assert back == text
    if len(sizes) > 1:
        assert max(sizes) <= 153
    assert encode_text(text).alphabet == "gsm"
    assert count_segments(text) == len(sizes)


@given(st.text(max_size=400).filter(lambda t: "\0" not in t))
def test_any_text_round_trips_without_splitting_pairs(text: str) -> None:
    back, sizes = join(text)
    assert back == text
    for mode, per in (("udh16", None), ("sar", None)):
        encoded = encode_text(text, long_mode=mode)  # type: ignore[arg-type]
        assert all(len(s.short_message) <= 140 for s in encoded.segments), per


def test_limits_and_escapes() -> None:
    assert len(encode_text("a" * 160).segments) == 1
    assert len(encode_text("a" * 161).segments) == 2
    assert len(encode_text("€" * 80).segments) == 1  # 160 septets
    parts = encode_text("ab" + "€" * 80).segments  # 162 septets: escape pair must not split
    assert [len(p.short_message) - 6 for p in parts] == [152, 10]
    assert all(p.short_message[-1] != 0x1B for p in parts)
    assert len(encode_text("я" * 70).segments) == 1
    assert len(encode_text("я" * 71).segments) == 2
    emoji = encode_text("ab" + "😊" * 40).segments  # 82 code units, pairs kept whole
    assert [len(p.short_message) - 6 for p in emoji] == [66 * 2, 16 * 2]


def test_modes() -> None:
    text = "x" * 200
    udh16 = encode_text(text, long_mode="udh16", reference=0x1234).segments
    assert udh16[0].short_message[:7] == bytes((6, 8, 4, 0x12, 0x34, 2, 1))
    sar = encode_text(text, long_mode="sar", reference=7).segments
    assert [s.sar for s in sar] == [(7, 2, 1), (7, 2, 2)] and not sar[0].udhi
    payload = encode_text(text, long_mode="payload").segments
    assert len(payload) == 1 and payload[0].message_payload == b"x" * 200
    assert encode_text("hi", gsm_data_coding=1).data_coding == 1
    assert encode_text("hé", encoding="latin1").data_coding == 3
    assert encode_text("hi", encoding="ucs2").data_coding == 8
    with pytest.raises(EncodeError):
        encode_text("я", encoding="gsm")


@given(st.binary(max_size=200))
def test_split_udh_and_decode_never_raise(data: bytes) -> None:
    split_udh(data)
    for coding in (0, 1, 2, 3, 4, 8, 0xF0, 0xF4, 0x99):
        decode_text(data, coding)


def test_binary_is_base64() -> None:
    assert decode_text(b"\x01\xff", 4) == ("Af8=", True)
    assert decode_text(b"\x01\xff", 0xF6) == ("Af8=", True)


@given(st.text(max_size=300))
def test_receipt_parser_never_raises(text: str) -> None:
    parse_receipt(text)


def test_receipt_variants() -> None:
    r = parse_receipt(
        "ID:0a1b SUB:001 dlvrd:001 Submit_Date:231123101059 done date:2311231011 "
        "STAT:undeliv ERR:0x0B text:héllo"
    )
    assert r is not None and r.message_id == "0a1b" and r.stat == "UNDELIV"
    assert r.err == "0x0B" and r.status == "undelivered" and r.text == "héllo"
    assert r.submit_date == datetime(2023, 11, 23, 10, 10, 59)
    assert r.done_date == datetime(2023, 11, 23, 10, 11)
    minimal = parse_receipt("id:77 stat:DELIVRD")
    assert minimal is not None and minimal.status == "delivered" and minimal.err == ""
    assert parse_receipt("stat:DELIVRD") is None
    assert parse_receipt("id:5 stat:ENROUTE") is not None
    assert parse_receipt("id:5 stat:ENROUTE").status == "pending"  # type: ignore[union-attr]


def test_message_id_normalisation() -> None:
    assert normalise_message_id(" 000A\0", "hex", "resp") == "10"
    assert normalise_message_id("000A", "hex-resp", "resp") == normalise_message_id(
        "0010", "hex-resp", "receipt"
    )
    assert normalise_message_id("0010", "decimal", "receipt") == "10"
    assert normalise_message_id("AbC", "as-is", "resp") == "AbC"
    assert normalise_message_id("zz", "hex", "resp") == "zz"


def _their_receipt(text: str) -> DeliverSm:
    return DeliverSm(short_message=text, esm_class=0x04)


def test_aiosmpplib_defect_receipt_12_digit_dates_and_text_err() -> None:
    text = "id:1 sub:001 dlvrd:001 submit date:231123101059 done date:231123101159 stat:DELIVRD err:ABC"
    with pytest.raises(Exception):  # noqa: B017 - any failure shows the defect
        _their_receipt(text).parse_receipt()
    ours = parse_receipt(text)
    assert ours is not None and ours.err == "ABC" and ours.status == "delivered"
