"""Inbound messages to SMPP clients: an inbound message that an inbound route gives to
an account (``[[inbound_routes]] account``) goes to that account's receiver and
transceiver sessions as a deliver_sm, the way its delivery receipts do.

`inbound_entry` turns an ``inbound`` event of a profile's event stream (it carries the
stored message whole: ``message``, the JSON head with from, to, data_coding and
received_at, and ``parts``, the JSON list of its parts' octets in base64) into an entry
of the account's stream ``sms:{acct:NAME}:dlr`` (kind ``mo``), or None when no route
names an account. `inbound_body` is the deliver_sm body of such an entry:
esm_class 0, source_addr = the handset, destination_addr = our number (international
TON 1 / NPI 1 when written with '+'), the text in the SMPP default alphabet
(data_coding 0, one septet per octet) when GSM 03.38 holds it, else UCS2
(data_coding 8); a text longer than one short_message goes whole in the
message_payload TLV (one PDU, nothing to reassemble). A binary message keeps its
octets and data_coding.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any, Final

from binds.smpp.codec import decode_text, encode_text
from binds.smpp.pdu import TAG_MESSAGE_PAYLOAD, ShortMessage, encode_short_message
from router.config import InboundRoute, first_account

__all__ = ["KIND", "address", "deliver_body", "inbound_body", "inbound_entry"]

KIND: Final = "mo"  # the `kind` field of an inbound message's entry (receipts have none)
BINARY_CODING: Final = 4  # 8-bit data: a binary message whose head names no coding
_SHORT_MESSAGE_MAX: Final = 254  # octets; more go in message_payload


def address(number: str) -> tuple[str, int, int]:
    """(addr, ton, npi) of an E.164 number (international, ISDN), a short code or
    other digits (unknown TON, ISDN), an alphanumeric sender (TON 5), or nothing."""
    if number.startswith("+") and number[1:].isdigit():
        return number[1:], 1, 1
    if number.isdigit():
        return number, 0, 1
    if not number:
        return "", 0, 0
    return number, 5, 0


def deliver_body(source: str, destination: str, **fields: Any) -> bytes:
    """A deliver_sm body from `source` to `destination` (numbers as the records keep
    them, addressed by `address`) with the other `fields` of a `ShortMessage`."""
    src, src_ton, src_npi = address(source)
    dst, dst_ton, dst_npi = address(destination)
    message = ShortMessage(
        source=src[:20],
        destination=dst[:20],
        source_ton=src_ton,
        source_npi=src_npi,
        dest_ton=dst_ton,
        dest_npi=dst_npi,
        **fields,
    )
    return encode_short_message(message)


def inbound_entry(
    event: dict[str, str], routes: Sequence[InboundRoute]
) -> tuple[str, dict[str, str]] | None:
    """(account, stream entry) for an ``inbound`` event that a route gives to an
    account, None when none does. Raises ValueError (or KeyError, TypeError) for an
    event that cannot be read."""
    head = json.loads(event["message"])
    parts = [base64.b64decode(p, validate=True) for p in json.loads(event.get("parts") or "[]")]
    if not isinstance(head, dict):
        raise ValueError("message is not a JSON object")
    coding = int(head.get("data_coding") or 0)
    text, binary = decode_text(b"".join(parts), coding)
    source, destination = str(head.get("from") or ""), str(head.get("to") or "")
    profile = event.get("profile", "")
    routed = first_account(routes, source, destination, None if binary else text, profile)
    if routed is None:
        return None
    account, index = routed
    fields = {
        "kind": KIND,
        "id": event.get("id", ""),
        "from": source,
        "to": destination,
        "text": text,  # base64 of the octets when binary
        "binary": "1" if binary else "0",
        "data_coding": str(coding),
        "profile": profile,
        "route": str(index),
        "received_at": str(head.get("received_at") or ""),
        "incomplete": event.get("incomplete", "0"),
    }
    if event.get("opt_out"):
        fields["opt_out"] = event["opt_out"]
    return account, fields


def inbound_body(entry: dict[str, str]) -> bytes:
    """The deliver_sm body of an inbound message's entry (see the module's docstring).
    Raises ValueError for an entry that cannot be sent."""
    tlvs: dict[int, bytes] = {}
    if entry.get("binary") == "1":
        try:
            data = base64.b64decode(entry.get("text", ""), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"binary text is not base64: {exc}") from None
        coding = int(entry.get("data_coding") or BINARY_CODING)
        if len(data) > _SHORT_MESSAGE_MAX:
            data, tlvs[TAG_MESSAGE_PAYLOAD] = b"", data
    else:
        # GSM 03.38 when it holds the text (data_coding 0), else UCS2 (8); payload mode
        # puts a long text whole in message_payload.
        encoded = encode_text(entry.get("text", ""), long_mode="payload")
        segment = encoded.segments[0]
        coding, data = encoded.data_coding, segment.short_message
        if segment.message_payload is not None:
            tlvs[TAG_MESSAGE_PAYLOAD] = segment.message_payload
    return deliver_body(
        entry.get("from", ""),
        entry.get("to", ""),
        esm_class=0,
        data_coding=coding,
        short_message=data,
        tlvs=tlvs,
    )
