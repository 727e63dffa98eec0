"""Delivery receipts (SMPP 3.4 Appendix B), read tolerantly.

``id:IIIIIIIIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm
stat:DDDDDDD err:E text:...`` — carriers vary it: keys in any case and order,
12-digit dates with seconds, fields missing, ``err`` that is not a number. This
parser never raises. (aiosmpplib 0.7.4's ``DeliverSm.parse_receipt`` fails on
12-digit dates and non-numeric ``err``.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

__all__ = ["IdFormat", "Receipt", "normalise_message_id", "parse_receipt"]

_FIELD = re.compile(r"(?i)\b(id|sub|dlvrd|submit[ _]date|done[ _]date|stat|err|text)\s*:\s*")
_DELIVERED = {"DELIVRD", "DELIVERED"}
_PENDING = {"", "ACCEPTD", "ENROUTE", "SCHEDULED", "BUFFRED", "BUFFERED"}


@dataclass(frozen=True, slots=True)
class Receipt:
    message_id: str
    stat: str = ""
    err: str = ""
    sub: str = ""
    dlvrd: str = ""
    submit_date: datetime | None = None
    done_date: datetime | None = None
    text: str = ""

    @property
    def status(self) -> Literal["delivered", "undelivered", "pending"]:
        """What the receipt means for the message."""
        if self.stat in _DELIVERED:
            return "delivered"
        if self.stat in _PENDING:
            return "pending"
        return "undelivered"


def _date(value: str) -> datetime | None:
    digits = value.strip()[:12]
    try:
        if len(digits) == 12:
            return datetime.strptime(digits, "%y%m%d%H%M%S")
        if len(digits) >= 10:
            return datetime.strptime(digits[:10], "%y%m%d%H%M")
    except ValueError:
        return None
    return None


def parse_receipt(text: str) -> Receipt | None:
    """The receipt in `text`, or None when it has no message id. Never raises."""
    try:
        matches = list(_FIELD.finditer(text))
        fields: dict[str, str] = {}
        for i, match in enumerate(matches):
            key = match.group(1).lower().replace("_", " ")
            end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
            value = text[match.end() : end]
            fields.setdefault(key, value if key == "text" else value.strip())
        message_id = fields.get("id", "").split(" ")[0].strip("\0 ")
        if not message_id:
            return None
        return Receipt(
            message_id=message_id,
            stat=fields.get("stat", "").split(" ")[0].upper(),
            err=fields.get("err", "").split(" ")[0],
            sub=fields.get("sub", ""),
            dlvrd=fields.get("dlvrd", ""),
            submit_date=_date(fields.get("submit date", "")),
            done_date=_date(fields.get("done date", "")),
            text=fields.get("text", ""),
        )
    except Exception:
        return None


IdFormat = Literal["as-is", "hex", "decimal", "hex-resp", "hex-receipt"]


def normalise_message_id(value: str, style: IdFormat, side: Literal["resp", "receipt"]) -> str:
    """The form in which a submit_sm_resp id and a receipt id compare equal.

    Carriers disagree on how they write the same id (Kannel's ``msg-id-type``):
    ``as-is`` trims spaces and NULs only; ``hex`` / ``decimal`` say both sides
    write the number in that base; ``hex-resp`` = submit_sm_resp in hex, receipts
    in decimal; ``hex-receipt`` = the other way. Numbers come out in decimal
    without leading zeros, so ``000A`` (hex) and ``10`` compare equal. An id that is
    not a number in its base is returned trimmed and lower-cased.
    """
    text = value.strip().strip("\0").strip()
    if style == "as-is" or not text:
        return text
    hexadecimal = (
        style == "hex"
        or (style == "hex-resp" and side == "resp")
        or (style == "hex-receipt" and side == "receipt")
    )
    try:
        return str(int(text, 16 if hexadecimal else 10))
    except ValueError:
        return text.lower()
