"""Text on the air: choosing an alphabet, splitting long messages, reading inbound text.

GSM 03.38 comes from aiosmpplib's codec (this is the one module that uses it);
extension characters (``€ [ ] { } ^ ~ \\ |`` and form feed) cost two septets and
an escape pair is never split across parts, nor is a UTF-16 surrogate pair.
GSM text travels unpacked, one septet per octet, as SMPP carries it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Literal

from aiosmpplib.codec import GSM7BitCodec

__all__ = [
    "Concat",
    "EncodeError",
    "Encoded",
    "Encoding",
    "LongMode",
    "Segment",
    "count_segments",
    "decode_text",
    "encode_text",
    "split_udh",
]

Encoding = Literal["auto", "gsm", "ucs2", "latin1"]
LongMode = Literal["udh8", "udh16", "payload", "sar"]

_GSM = GSM7BitCodec()
ESCAPE = 0x1B
MAX_PARTS = 255

# (single message limit, per-part limit with an 8-bit UDH, with a 16-bit UDH), in
# the alphabet's units: septets, UTF-16 code units, octets.
_LIMITS = {"gsm": (160, 153, 152), "ucs2": (70, 67, 66), "latin1": (140, 134, 133)}
_CODING = {"ucs2": 8, "latin1": 3}


class EncodeError(ValueError):
    """The text cannot be sent as asked (a character outside a forced alphabet, too long)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One submit_sm's worth of text."""

    short_message: bytes
    message_payload: bytes | None = None
    udhi: bool = False
    sar: tuple[int, int, int] | None = None  # (reference, total, sequence)


@dataclass(frozen=True, slots=True)
class Encoded:
    data_coding: int
    alphabet: str
    segments: tuple[Segment, ...]
    units: int


@dataclass(frozen=True, slots=True)
class Concat:
    """Concatenation information read from a UDH."""

    reference: int
    total: int
    seq: int
    ref_bits: int


def _alphabet(text: str, encoding: Encoding) -> str:
    if encoding == "auto":
        try:
            _GSM.encode(text)
        except UnicodeEncodeError:
            return "ucs2"
        return "gsm"
    return encoding


def _units(text: str, alphabet: str) -> list[bytes]:
    """The text as indivisible units: a septet or escape pair, a code unit or pair, an octet."""
    out: list[bytes] = []
    for char in text:
        try:
            if alphabet == "gsm":
                out.append(_GSM.encode(char)[0])
            elif alphabet == "ucs2":
                out.append(char.encode("utf-16-be"))
            else:
                out.append(char.encode("latin-1"))
        except UnicodeEncodeError:
            raise EncodeError(f"{char!r} cannot be sent in the {alphabet} alphabet") from None
    return out


def _width(unit: bytes, alphabet: str) -> int:
    return len(unit) // 2 if alphabet == "ucs2" else len(unit)


def _split(units: list[bytes], alphabet: str, size: int) -> list[bytes]:
    parts: list[bytes] = []
    current, used = bytearray(), 0
    for unit in units:
        width = _width(unit, alphabet)
        if used + width > size:
            parts.append(bytes(current))
            current, used = bytearray(), 0
        current += unit
        used += width
    parts.append(bytes(current))
    return parts


def encode_text(
    text: str,
    *,
    encoding: Encoding = "auto",
    gsm_data_coding: int = 0,
    long_mode: LongMode = "udh8",
    reference: int = 0,
) -> Encoded:
    """Encode `text` and cut it into the submit_sm segments the profile asks for."""
    alphabet = _alphabet(text, encoding)
    units = _units(text, alphabet)
    total_units = sum(_width(u, alphabet) for u in units)
    single, per8, per16 = _LIMITS[alphabet]
    coding = gsm_data_coding if alphabet == "gsm" else _CODING[alphabet]
    whole = b"".join(units)
    if total_units <= single:
        return Encoded(coding, alphabet, (Segment(whole),), total_units)
    if long_mode == "payload":
        return Encoded(coding, alphabet, (Segment(b"", message_payload=whole),), total_units)
    chunks = _split(units, alphabet, per16 if long_mode == "udh16" else per8)
    if len(chunks) > MAX_PARTS:
        raise EncodeError(f"text needs {len(chunks)} parts; at most {MAX_PARTS} are possible")
    total = len(chunks)
    segments: list[Segment] = []
    for seq, chunk in enumerate(chunks, 1):
        if long_mode == "sar":
            segments.append(Segment(chunk, sar=(reference % 65536, total, seq)))
        elif long_mode == "udh16":
            ref = reference % 65536
            udh = bytes((6, 8, 4, ref >> 8, ref & 0xFF, total, seq))
            segments.append(Segment(udh + chunk, udhi=True))
        else:
            udh = bytes((5, 0, 3, reference % 256, total, seq))
            segments.append(Segment(udh + chunk, udhi=True))
    return Encoded(coding, alphabet, tuple(segments), total_units)


def count_segments(text: str, *, encoding: Encoding = "auto", long_mode: LongMode = "udh8") -> int:
    """How many submit_sm PDUs `text` needs (what a carrier bills)."""
    encoded = encode_text(text, encoding=encoding, long_mode=long_mode)
    if long_mode == "payload" and encoded.segments[0].message_payload is not None:
        return len(encode_text(text, encoding=encoding, long_mode="udh8").segments)
    return len(encoded.segments)


def decode_text(data: bytes, data_coding: int) -> tuple[str, bool]:
    """Inbound text: (text, False), or (base64 of the octets, True) for binary or
    unknown codings. Never raises: a carrier's odd octets must not lose a message."""
    coding = data_coding & 0x0F if data_coding & 0xF0 == 0xF0 else data_coding
    try:
        if data_coding & 0xF0 == 0xF0:  # message class coding group: bit 2 = 8-bit data
            if data_coding & 0x04:
                raise ValueError("8-bit data")
            return _GSM.decode(data, "replace")[0], False
        if coding in (0, 1):
            return _GSM.decode(data, "replace")[0], False
        if coding == 3:
            return data.decode("latin-1"), False
        if coding == 8:
            return data.decode("utf-16-be", errors="replace"), False
    except (ValueError, UnicodeDecodeError):
        pass
    return base64.b64encode(data).decode("ascii"), True


def split_udh(short_message: bytes) -> tuple[Concat | None, bytes]:
    """Read a user data header: concatenation info (IE 0x00 or 0x08) and the text after it."""
    if not short_message:
        return None, short_message
    length = short_message[0]
    if length + 1 > len(short_message):
        return None, short_message
    header, rest = short_message[1 : length + 1], short_message[length + 1 :]
    concat: Concat | None = None
    index = 0
    while index + 2 <= len(header):
        ie, size = header[index], header[index + 1]
        value = header[index + 2 : index + 2 + size]
        if len(value) < size:
            return None, short_message
        if ie == 0x00 and size == 3:
            concat = Concat(value[0], value[1], value[2], 8)
        elif ie == 0x08 and size == 4:
            concat = Concat((value[0] << 8) | value[1], value[2], value[3], 16)
        index += 2 + size
    return concat, rest
