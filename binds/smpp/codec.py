"""Text on the air: choosing an alphabet, splitting long messages, reading inbound text.

This is the one module that touches aiosmpplib's codecs (``GSM7BitCodec``, registered
by aiosmpplib under the name ``gsm0338``, and ``UCS2Codec``, ``ucs2``); we use their
tables but do our own splitting, because aiosmpplib 0.7.4's splitters count
characters instead of septets and its SAR path crashes (see the regression tests).

Rules kept here:

* ``auto`` picks GSM 03.38 when every character is in the basic or extension table,
  else UCS2 (UTF-16-BE: characters outside the BMP take two code units).
* Extension characters (``€ [ ] { } ^ ~ \\ |`` and form feed) cost two septets
  (ESC + char); an escape pair is never split across parts, nor is a surrogate pair.
* GSM text travels unpacked, one septet per octet, as SMPP carries it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Final, Literal

from aiosmpplib.codec import (
    GSM_BASIC_ENCODE_MAP,
    GSM_EXTENDED_ENCODE_MAP,
    GSM7BitCodec,
    UCS2Codec,
)

from binds.base import BindError

__all__ = [
    "MAX_PARTS",
    "Alphabet",
    "Concat",
    "EncodeError",
    "Encoded",
    "Encoding",
    "LongMode",
    "Segment",
    "count_segments",
    "decode_text",
    "encode_text",
    "is_gsm",
    "split_udh",
]

Encoding = Literal["auto", "gsm", "ucs2", "latin1"]
LongMode = Literal["udh8", "udh16", "payload", "sar"]
Alphabet = Literal["gsm", "ucs2", "latin1"]

_GSM: Final = GSM7BitCodec()
_UCS2: Final = UCS2Codec()

MAX_PARTS: Final = 255  # the concatenation IEs and SAR TLVs carry the total in one octet
MAX_PAYLOAD: Final = 0xFFFF  # message_payload's TLV length is 16 bits

# (single message, per part with an 8-bit UDH or SAR, per part with a 16-bit UDH), in the
# alphabet's units: septets, UTF-16 code units, octets. SAR parts are sized like udh8
# because the SMSC adds a 6-octet UDH to each part before it goes on the air.
_LIMITS: Final[dict[Alphabet, tuple[int, int, int]]] = {
    "gsm": (160, 153, 152),
    "ucs2": (70, 67, 66),
    "latin1": (140, 134, 133),
}
_CODING: Final[dict[Alphabet, int]] = {"ucs2": 8, "latin1": 3}


class EncodeError(BindError, ValueError):
    """The text cannot be sent as asked (a character outside a forced alphabet, too long)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One submit_sm's worth of text.

    ``short_message`` includes the UDH when ``udhi`` is set (esm_class needs 0x40);
    in payload mode it is ``b""`` and the text is in ``message_payload``; in SAR mode
    ``sar`` is (sar_msg_ref_num, sar_total_segments, sar_segment_seqnum).
    """

    short_message: bytes
    message_payload: bytes | None = None
    udhi: bool = False
    sar: tuple[int, int, int] | None = None


@dataclass(frozen=True, slots=True)
class Encoded:
    """A text ready for submit_sm: its data_coding, alphabet and segments.

    ``units`` is the length of the whole text in the alphabet's units: septets
    (escape pairs count 2), UTF-16 code units, or octets.
    """

    data_coding: int
    alphabet: Alphabet
    segments: tuple[Segment, ...]
    units: int


@dataclass(frozen=True, slots=True)
class Concat:
    """Concatenation information read from a UDH (IE 0x00: 8-bit ref, IE 0x08: 16-bit)."""

    reference: int
    total: int
    seq: int
    ref_bits: int


def is_gsm(text: str) -> bool:
    """Whether every character of `text` is in GSM 03.38 (basic or extension table)."""
    return bool(_GSM.is_gsm_text(text))


def _alphabet(text: str, encoding: Encoding) -> Alphabet:
    if encoding != "auto":
        return encoding
    return "gsm" if _GSM.is_gsm_text(text) else "ucs2"


def _units(text: str, alphabet: Alphabet) -> list[bytes]:
    """The text as indivisible pieces: a septet or escape pair, a code unit or
    surrogate pair, an octet. Splitting only between pieces keeps pairs whole."""
    out: list[bytes] = []
    for position, char in enumerate(text):
        try:
            if alphabet == "gsm":
                out.append(_GSM.encode(char)[0])
            elif alphabet == "ucs2":
                out.append(_UCS2.encode(char)[0])
            else:
                out.append(char.encode("latin-1"))
        except UnicodeEncodeError:
            raise EncodeError(
                f"{char!r} at position {position} cannot be sent in the {alphabet} alphabet"
            ) from None
    return out


def _width(unit: bytes, alphabet: Alphabet) -> int:
    return len(unit) // 2 if alphabet == "ucs2" else len(unit)


def _split(units: list[bytes], alphabet: Alphabet, size: int) -> list[bytes]:
    """Greedy: fill each part as far as the next whole piece fits."""
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


def _plan(
    text: str, encoding: Encoding, long_mode: LongMode
) -> tuple[Alphabet, int, bytes, list[bytes] | None]:
    """(alphabet, units, whole encoded text, parts or None when it fits in one)."""
    alphabet = _alphabet(text, encoding)
    units = _units(text, alphabet)
    total_units = sum(_width(unit, alphabet) for unit in units)
    whole = b"".join(units)
    single, per8, per16 = _LIMITS[alphabet]
    if total_units <= single:
        return alphabet, total_units, whole, None
    if long_mode == "payload":
        return alphabet, total_units, whole, [whole]
    return (
        alphabet,
        total_units,
        whole,
        _split(units, alphabet, per16 if long_mode == "udh16" else per8),
    )


def encode_text(
    text: str,
    *,
    encoding: Encoding = "auto",
    gsm_data_coding: int = 0,
    long_mode: LongMode = "udh8",
    reference: int = 0,
) -> Encoded:
    """Encode `text` and cut it into the submit_sm segments `long_mode` asks for.

    A text that fits in one message is always one plain segment. `reference` is the
    concatenation reference, taken modulo 256 (udh8) or 65536 (udh16, sar).
    Raises EncodeError for a character outside a forced alphabet or a text needing
    more than 255 parts (or, in payload mode, more than 65535 octets).
    """
    short = _short(text, encoding, gsm_data_coding)
    if short is not None:
        return short
    alphabet, total_units, whole, parts = _plan(text, encoding, long_mode)
    coding = gsm_data_coding if alphabet == "gsm" else _CODING[alphabet]
    if parts is None:
        return Encoded(coding, alphabet, (Segment(whole),), total_units)
    if long_mode == "payload":
        if len(whole) > MAX_PAYLOAD:
            raise EncodeError(f"text is {len(whole)} octets; message_payload holds {MAX_PAYLOAD}")
        return Encoded(coding, alphabet, (Segment(b"", message_payload=whole),), total_units)
    total = len(parts)
    if total > MAX_PARTS:
        raise EncodeError(f"text needs {total} parts; at most {MAX_PARTS} are possible")
    segments: list[Segment] = []
    for seq, chunk in enumerate(parts, 1):
        if long_mode == "sar":
            segments.append(Segment(chunk, sar=(reference % 65536, total, seq)))
        elif long_mode == "udh16":
            ref = reference % 65536
            udh = bytes((6, 0x08, 4, ref >> 8, ref & 0xFF, total, seq))
            segments.append(Segment(udh + chunk, udhi=True))
        else:
            udh = bytes((5, 0x00, 3, reference % 256, total, seq))
            segments.append(Segment(udh + chunk, udhi=True))
    return Encoded(coding, alphabet, tuple(segments), total_units)


class _NotGsm(Exception):
    pass


class _GsmTable(dict[int, str]):
    """str.translate table: a character to its septet(s) as latin-1 code points;
    any character outside GSM 03.38 raises (translate would keep it as it is)."""

    def __missing__(self, key: int) -> str:
        raise _NotGsm


_GSM_TABLE: Final = _GsmTable(
    {ord(c): chr(v) for c, v in GSM_BASIC_ENCODE_MAP.items()}
    | {ord(c): "\x1b" + chr(v) for c, v in GSM_EXTENDED_ENCODE_MAP.items()}
)


# Septets whose GSM 03.38 character is the ASCII character of the same code.
_GSM_AS_ASCII: Final = bytes(v for c, v in GSM_BASIC_ENCODE_MAP.items() if ord(c) == v)


def _short(text: str, encoding: Encoding, gsm_data_coding: int) -> Encoded | None:
    """A text that fits in one message, encoded in C (str.translate, str.encode) rather
    than character by character; None when `_plan` must look (long, other alphabets,
    a character the alphabet lacks). Gives what `_plan` would: tests compare them."""
    if encoding in ("auto", "gsm"):
        try:
            septets = text.translate(_GSM_TABLE).encode("latin-1")
        except _NotGsm:
            septets = None
        if septets is not None:
            if len(septets) > _LIMITS["gsm"][0]:
                return None
            return Encoded(gsm_data_coding, "gsm", (Segment(septets),), len(septets))
        if encoding == "gsm":
            return None
    if encoding in ("auto", "ucs2"):
        try:
            units = text.encode("utf-16-be")
        except UnicodeEncodeError:
            return None
        if len(units) // 2 > _LIMITS["ucs2"][0]:
            return None
        return Encoded(_CODING["ucs2"], "ucs2", (Segment(units),), len(units) // 2)
    return None


def count_segments(text: str, *, encoding: Encoding = "auto", long_mode: LongMode = "udh8") -> int:
    """How many submit_sm PDUs `text` needs: ``len(encode_text(...).segments)``.

    Payload mode sends one PDU, so it counts 1 (the SMSC still bills per part: ask
    with ``long_mode="udh8"`` for that). Unlike encode_text this does not refuse
    more than 255 parts, so a caller can say how far over the limit a text is.
    Raises EncodeError for a character outside a forced alphabet.

    Cheaper than encoding (the router calls it for every job, on the event loop): it
    works on piece widths only and takes the arithmetic path when no piece is
    double-width. Still O(len(text)): bound the length before calling it.
    """
    alphabet = _alphabet(text, encoding)
    widths = _widths(text, alphabet)
    single, per8, per16 = _LIMITS[alphabet]
    total = sum(widths)
    if total <= single or long_mode == "payload":
        return 1
    size = per16 if long_mode == "udh16" else per8
    if total == len(widths):  # every piece one unit wide: nothing to keep whole
        return -(-total // size)
    parts, used = 1, 0
    for width in widths:  # the same greedy cut as _split
        if used + width > size:
            parts, used = parts + 1, 0
        used += width
    return parts


def _widths(text: str, alphabet: Alphabet) -> list[int]:
    """Each character's width in the alphabet's units, as `_units` would encode it."""
    if alphabet == "gsm":
        basic, extended = GSM_BASIC_ENCODE_MAP, GSM_EXTENDED_ENCODE_MAP
        widths = [1 if c in basic else 2 if c in extended else 0 for c in text]
    elif alphabet == "ucs2":
        widths = [0 if 0xD800 <= ord(c) <= 0xDFFF else 2 if ord(c) > 0xFFFF else 1 for c in text]
    else:
        widths = [1 if ord(c) < 256 else 0 for c in text]
    if 0 in widths:
        position = widths.index(0)
        raise EncodeError(
            f"{text[position]!r} at position {position} cannot be sent in the {alphabet} alphabet"
        )
    return widths


def _inbound_alphabet(data_coding: int) -> str | None:
    """The Python codec for an inbound data_coding, or None for binary / unknown."""
    if data_coding in (0, 1):
        # 1 is IA5 in the spec, but carriers that use it (and our gsm_data_coding = 1)
        # mean GSM 03.38; the two agree on letters and digits.
        return "gsm"
    if data_coding < 0x10:
        return {3: "latin-1", 6: "iso8859_5", 7: "iso8859_8", 8: "ucs2"}.get(data_coding)
    group = data_coding >> 4
    if group < 0x8:
        # GSM 03.38 general data coding groups 00xx / 01xx: bit 5 = compressed,
        # bits 3-2 = alphabet (0x10 and 0x18 are flash SMS in GSM / UCS2).
        if data_coding & 0x20:
            return None
        return {0: "gsm", 2: "ucs2"}.get((data_coding >> 2) & 0x03)
    if group in (0xC, 0xD):  # message waiting indication, GSM alphabet
        return "gsm"
    if group == 0xE:  # message waiting indication, UCS2
        return "ucs2"
    if group == 0xF:  # message class group: bit 2 set = 8-bit data
        return None if data_coding & 0x04 else "gsm"
    return None


def decode_text(data: bytes, data_coding: int) -> tuple[str, bool]:
    """Inbound text: (text, False), or (base64 of the octets, True) for binary or
    unknown codings. Never raises: a carrier's odd octets must not lose a message,
    so undecodable GSM or UCS2 octets become replacement characters."""
    alphabet = _inbound_alphabet(data_coding)
    try:
        if alphabet == "gsm":
            if not data.translate(None, _GSM_AS_ASCII):
                # Only septets that mean their ASCII character (receipts, most texts).
                return data.decode("ascii"), False
            return str(_GSM.decode(data, "replace")[0]), False
        if alphabet == "ucs2":
            return str(_UCS2.decode(data, "replace")[0]), False
        if alphabet is not None:
            # Strict: octets that are not in the stated charset mean it is not that text.
            return data.decode(alphabet), False
    except (ValueError, TypeError):
        pass
    return base64.b64encode(data).decode("ascii"), True


def split_udh(short_message: bytes) -> tuple[Concat | None, bytes]:
    """Read a user data header (esm_class has UDHI): concatenation info and the rest.

    IE 0x00 (8-bit reference) and IE 0x08 (16-bit, big-endian) give a Concat; other
    IEs are skipped. A concat IE with total 0, seq 0 or seq > total is ignored, as
    3GPP TS 23.040 says, but the header is still removed. A header that runs past
    the data or ends mid-IE is malformed: (None, short_message). Never raises.
    """
    if not short_message:
        return None, short_message
    length = short_message[0]
    if length + 1 > len(short_message):
        return None, short_message
    header, rest = short_message[1 : length + 1], short_message[length + 1 :]
    concat: Concat | None = None
    index = 0
    while index < len(header):
        if index + 2 > len(header):
            return None, short_message
        ie, size = header[index], header[index + 1]
        value = header[index + 2 : index + 2 + size]
        if len(value) < size:
            return None, short_message
        found: Concat | None = None
        if ie == 0x00 and size == 3:
            found = Concat(value[0], value[1], value[2], 8)
        elif ie == 0x08 and size == 4:
            found = Concat((value[0] << 8) | value[1], value[2], value[3], 16)
        if found is not None and 0 < found.seq <= found.total:
            concat = found
        index += 2 + size
    return concat, rest
