"""The submit_sm bodies of a message: one per part, made cheaply for the hot path.

A text of up to 160 characters, all in both latin-1 and GSM's basic table, is one
GSM segment made here with one `bytes.translate` and one join (the common case);
anything else goes through the codec (`encode_text`: alphabet, segments, UDH or
SAR or message_payload). The octets are the same either way (tests/binds/test_smpp_send.py
checks them against the codec and `pdu.encode_short_message`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from ..base import OutboundMessage
from . import pdu
from .codec import Encoding, LongMode, encode_text
from .pdu import SubmitEncoder

__all__ = ["SOURCES_CACHED", "SubmitBodies", "source_address"]

SOURCES_CACHED = 256  # body heads kept, one per source (a profile has a few numbers)


def _gsm_from_latin1() -> bytes:
    """A bytes.translate table from latin-1 octets to GSM 03.38 septets for the latin-1
    characters in GSM's basic table (one septet each); 0x80 (no septet) for the others.
    Taken from the codec itself, so a text of only these (up to 160) is encoded here
    exactly as `encode_text` would, without its per-character work."""
    table = bytearray(b"\x80" * 256)
    for code in range(256):
        encoded = encode_text(chr(code))
        septets = encoded.segments[0].short_message
        if encoded.alphabet == "gsm" and len(septets) == 1:
            table[code] = septets[0]
    return bytes(table)


_GSM_TABLE = _gsm_from_latin1()

# source_addr_ton / source_addr_npi per kind of sender (SMPP 3.4, 5.2.5 and 5.2.6).
TON_INTERNATIONAL, TON_NETWORK_SPECIFIC, TON_ALPHANUMERIC = 1, 3, 5
NPI_UNKNOWN, NPI_ISDN = 0, 1


def source_address(source: str) -> tuple[str, int, int]:
    """A sender as submit_sm carries it: (address, TON, NPI). An E.164 long code or
    toll-free number: its digits, TON 1 (international) NPI 1 (E.164); a short code
    (digits without '+'): TON 3 (network specific) NPI 0; anything else is an
    alphanumeric sender ID: TON 5 NPI 0, at most 11 characters."""
    if source.startswith("+") and source[1:].isdigit():
        return source[1:], TON_INTERNATIONAL, NPI_ISDN
    if source.isdigit():
        return source, TON_NETWORK_SPECIFIC, NPI_UNKNOWN
    return source[:11], TON_ALPHANUMERIC, NPI_UNKNOWN


_NOT_GSM = 0x80


class SubmitBodies:
    """Makes the submit_sm bodies of one bind's messages (`of`)."""

    def __init__(
        self,
        *,
        service_type: str,
        dest_ton: int,
        dest_npi: int,
        registered_delivery: int,
        source_ton: int | None,
        source_npi: int | None,
        encoding: Encoding,
        sender_addresses: Mapping[str, tuple[int, int]] | None = None,
        gsm_data_coding: int,
        long_mode: LongMode,
    ) -> None:
        self._encoder = SubmitEncoder(
            service_type=service_type,
            dest_ton=dest_ton,
            dest_npi=dest_npi,
            registered_delivery=registered_delivery,
        )
        self._source_ton = source_ton
        self._source_npi = source_npi
        self._sender_addresses = dict(sender_addresses or {})
        self._encoding: Encoding = encoding
        self._gsm_data_coding = gsm_data_coding
        self._long_mode: LongMode = long_mode
        # The concatenation reference of the last message that may be long (one each).
        self.reference = random.randrange(65536)
        self._heads: dict[str, bytes] = {}  # by source: see SubmitEncoder.head
        self._gsm_fast = encoding in ("auto", "gsm")
        # The middle of a one-part GSM body, by text length (the fast path in `of`).
        self._gsm_middles = [
            self._encoder.middle(0, gsm_data_coding, length) for length in range(161)
        ]

    def of(self, message: OutboundMessage) -> list[bytes]:
        """The submit_sm body of every part of `message`. ValueError (EncodeError,
        PduError, an address outside latin-1) when it cannot be encoded."""
        source = message.source
        head = self._heads.get(source)
        if head is None:
            head = self._head(source)
        destination = message.destination.lstrip("+").encode("latin-1")
        text = message.text
        if self._gsm_fast and len(text) <= 160:
            try:
                septets = text.encode("latin-1").translate(_GSM_TABLE)
            except UnicodeEncodeError:
                pass
            else:
                if _NOT_GSM not in septets:
                    # One GSM segment, as encode_text makes it (see _gsm_from_latin1).
                    middle = self._gsm_middles[len(septets)]
                    return [b"".join((head, destination, middle, septets))]
        self.reference = (self.reference + 1) % 65536  # one per message that may be long
        encoded = encode_text(
            text,
            encoding=self._encoding,
            gsm_data_coding=self._gsm_data_coding,
            long_mode=self._long_mode,
            reference=self.reference,
        )
        bodies = []
        for segment in encoded.segments:
            tlvs = b""
            if segment.message_payload is not None:
                tlvs += pdu.tlv(pdu.TAG_MESSAGE_PAYLOAD, segment.message_payload)
            if segment.sar is not None:
                reference, total, seq = segment.sar
                tlvs += pdu.tlv(pdu.TAG_SAR_MSG_REF_NUM, pdu.tlv_int(reference, 2))
                tlvs += pdu.tlv(pdu.TAG_SAR_TOTAL_SEGMENTS, pdu.tlv_int(total, 1))
                tlvs += pdu.tlv(pdu.TAG_SAR_SEGMENT_SEQNUM, pdu.tlv_int(seq, 1))
            bodies.append(
                self._encoder.body(
                    head,
                    destination,
                    pdu.ESM_UDHI if segment.udhi else 0,
                    encoded.data_coding,
                    segment.short_message,
                    tlvs,
                )
            )
        return bodies

    def _head(self, source: str) -> bytes:
        """The start of a body from `source`: addressed as its `sender_addresses` entry
        says, else as the bind's `source_ton`/`source_npi` say, else by its kind (E.164
        numbers international, short codes network-specific, names alphanumeric)."""
        address, ton, npi = source_address(source)
        ton = self._source_ton if self._source_ton is not None else ton
        npi = self._source_npi if self._source_npi is not None else npi
        ton, npi = self._sender_addresses.get(source, (ton, npi))
        head = self._encoder.head(ton, npi, address)
        if len(self._heads) >= SOURCES_CACHED:
            self._heads.clear()
        self._heads[source] = head
        return head
