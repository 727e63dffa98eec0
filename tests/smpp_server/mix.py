"""Mixed messages as client applications send them, cut into submit_sm parts by
PyPI's smpplib (`smpplib.gsm.make_parts`, not our codec): GSM and UCS2, short and long,
long ones with an 8-bit UDH or with SAR optional parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import smpplib.consts
import smpplib.gsm

KINDS = ("gsm", "ucs2", "gsm_udh", "ucs2_udh", "gsm_sar")


@dataclass
class Message:
    kind: str
    to: str
    text: str
    parts: list[dict[str, Any]]  # submit_sm fields, short_message as bytes


def _text(kind: str, index: int) -> str:
    if kind == "gsm":
        return f"Hello {index} @£$ ok"
    if kind == "ucs2":
        return f"Привет {index} ✓"
    if kind == "ucs2_udh":
        return f"Длинное сообщение {index} 😀 " * 6
    return f"Long GSM message {index} with € and {{braces}} [ok] " * 5


def message(index: int) -> Message:
    """The `index`th message: kinds in turn, each to its own number (smpplib picks
    8-bit references at random; distinct destinations keep long messages apart)."""
    kind = KINDS[index % len(KINDS)]
    text = _text(kind, index)
    to = f"+4479111{index % 100_000:05d}"
    sar = kind.endswith("sar")
    chunks, coding, esm_class = smpplib.gsm.make_parts(text, use_udhi=not sar)
    parts = []
    for seq, chunk in enumerate(chunks, 1):
        fields: dict[str, Any] = {
            "source_addr_ton": 0,
            "source_addr": "",
            "dest_addr_ton": 1,
            "dest_addr_npi": 1,
            "destination_addr": to.lstrip("+"),
            "short_message": chunk,
            "data_coding": coding,
            "esm_class": esm_class,
            "registered_delivery": 1,
        }
        if sar and len(chunks) > 1:
            fields.update(
                sar_msg_ref_num=index % 65536,
                sar_total_segments=len(chunks),
                sar_segment_seqnum=seq,
            )
        parts.append(fields)
    assert kind in ("gsm", "ucs2") or len(parts) > 1, kind
    return Message(kind, to, text, parts)


def node_part(fields: dict[str, Any]) -> dict[str, Any]:
    """A part as tests/peers/client.js takes it."""
    part = {k: v for k, v in fields.items() if not k.startswith("sar_")}
    part["short_message"] = fields["short_message"].hex()
    if "sar_msg_ref_num" in fields:
        part["sar"] = [
            fields["sar_msg_ref_num"],
            fields["sar_total_segments"],
            fields["sar_segment_seqnum"],
        ]
    return part


assert smpplib.consts.SMPP_ENCODING_ISO10646 == 8
