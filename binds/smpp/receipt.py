"""Delivery receipts (SMPP 3.4 Appendix B), read tolerantly.

``id:IIIIIIIIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm
stat:DDDDDDD err:E text:...`` is only a convention, and carriers vary it: keys in
any case and order, extra spaces, ``submit_date``, dates with seconds, fields
missing, an ``err`` that is not a number. This parser accepts all of that and never
raises; aiosmpplib 0.7.4's ``DeliverSm.parse_receipt`` raises on 12-digit dates and
non-numeric ``err`` and loses fields after a double space (see the regression tests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

__all__ = [
    "IdFormat",
    "Receipt",
    "message_id_candidates",
    "normalise_message_id",
    "parse_receipt",
    "receipt_fields",
    "receipt_status",
]

# A key is a known name not glued to a preceding letter or digit ("msgid:" is no key).
_FIELD: Final = re.compile(
    r"(?i)(?<![a-z0-9_])(id|sub|dlvrd?|submit[\s_]*date|done[\s_]*date|stat|err|text)\s*:\s*"
)
# The usual spellings of keys, normalised without a regex ("dlvr" is a common variant).
_KEYS: Final = {"submit date": "submit date", "done date": "done date", "dlvr": "dlvrd"}
_DIGITS: Final = re.compile(r"[0-9]+")
_SPACE: Final = re.compile(r"[\s_]+")

_DELIVERED: Final = frozenset({"DELIVRD", "DELIVERED"})
# Intermediate states: the message is not final yet. BUFFRED is what several SMSCs
# send while retrying; treating it as a failure would end the message too early.
_PENDING: Final = frozenset({"", "ACCEPTD", "ENROUTE", "SCHEDULED", "BUFFRED", "BUFFERED"})


@dataclass(frozen=True, slots=True)
class Receipt:
    """One delivery receipt. Text fields are "" when the receipt leaves them out."""

    message_id: str
    stat: str = ""  # upper-cased
    err: str = ""  # as written: "000", "0x0B", "ABC"
    sub: str = ""
    dlvrd: str = ""
    # The dates as written; read on demand (routing needs only id, stat and err).
    submit_date_text: str = ""
    done_date_text: str = ""
    text: str = ""

    @property
    def submit_date(self) -> datetime | None:
        """Naive, as the SMSC wrote it (normally UTC); None if unreadable."""
        return _date(self.submit_date_text)

    @property
    def done_date(self) -> datetime | None:
        return _date(self.done_date_text)

    @property
    def status(self) -> Literal["delivered", "undelivered", "pending"]:
        """What `stat` means (`receipt_status`)."""
        return receipt_status(self.stat)


def receipt_status(stat: str) -> Literal["delivered", "undelivered", "pending"]:
    """A receipt's upper-cased stat: DELIVRD: delivered; ACCEPTD, ENROUTE, SCHEDULED,
    BUFFRED or no stat: pending; anything else (EXPIRED, DELETED, UNDELIV, REJECTD,
    UNKNOWN, ...): undelivered."""
    if stat in _DELIVERED:
        return "delivered"
    if stat in _PENDING:
        return "pending"
    return "undelivered"


def _date(value: str) -> datetime | None:
    """YYMMDDhhmm, YYMMDDhhmmss or YYYYMMDDhhmmss; None for anything else."""
    match = _DIGITS.match(value)
    digits = match.group() if match else ""
    if len(digits) == 14:
        digits = digits[2:]  # a four-digit year: keep the two we read below
    if len(digits) not in (10, 12):
        return None
    fields = [int(digits[i : i + 2]) for i in range(0, len(digits), 2)]
    year, month, day, hour, minute = fields[:5]
    second = fields[5] if len(fields) == 6 else 0
    try:
        return datetime(2000 + year, month, day, hour, minute, second)
    except ValueError:  # month 13, minute 61, ...
        return None


def _token(value: str) -> str:
    """The first word of a field (what follows belongs to no known key)."""
    words = value.split()
    return words[0].strip("\0") if words else ""


# SMPP 3.4 Appendix B's layout, exactly, with values free of ':' (so no key can hide
# in one): read with one match. Anything else goes to the tolerant reader below;
# tests compare the two.
_STANDARD: Final = re.compile(
    r"id:([^\s:]+) sub:([^\s:]*) dlvrd?:([^\s:]*) submit date:([^\s:]*) "
    r"done date:([^\s:]*) stat:([^\s:]*) err:([^\s:]*)(?: [Tt]ext:\s*(.*))?",
    re.S,
)


def parse_receipt(text: str) -> Receipt | None:
    """The receipt in `text`, or None when it names no message id. Never raises."""
    match = _STANDARD.fullmatch(text)
    if match is not None:
        message_id, sub, dlvrd, submit, done, stat, err, body = match.groups()
        message_id = message_id.strip("\0")
        if message_id:
            return Receipt(
                message_id=message_id,
                stat=stat.strip("\0").upper(),
                err=err.strip("\0"),
                sub=sub.strip("\0"),
                dlvrd=dlvrd.strip("\0"),
                submit_date_text=submit,
                done_date_text=done,
                text=(body or "").strip("\0").rstrip(),
            )
    return _parse_tolerantly(text)


def receipt_fields(text: str) -> tuple[str, str, str] | None:
    """(message id, stat, err) of the receipt in `text`, as `parse_receipt` reads them,
    or None when it names no message id; what a report records, read without the rest
    (the path every receipt takes). Never raises."""
    match = _STANDARD.fullmatch(text)
    if match is not None:
        message_id = match.group(1).strip("\0")
        if message_id:
            return message_id, match.group(6).strip("\0").upper(), match.group(7).strip("\0")
    receipt = _parse_tolerantly(text)
    return None if receipt is None else (receipt.message_id, receipt.stat, receipt.err)


def _parse_tolerantly(text: str) -> Receipt | None:
    starts: list[tuple[str, int, int]] = []  # (key, key start, value start)
    seen: set[str] = set()
    for match in _FIELD.finditer(text):
        name = match.group(1).lower()
        key = _KEYS.get(name) or _SPACE.sub(" ", name)
        # The first occurrence wins. "text" is last by convention, so a key inside
        # it that we have already read is part of the text (a message saying
        # "stat: ok"); a key not seen yet is a field a carrier put after the text.
        if key in seen:
            continue
        seen.add(key)
        starts.append((key, match.start(), match.end()))
    fields: dict[str, str] = {}
    for index, (key, _, value_start) in enumerate(starts):
        end = starts[index + 1][1] if index + 1 < len(starts) else len(text)
        fields[key] = text[value_start:end]
    message_id = _token(fields.get("id", ""))
    if not message_id:
        return None
    return Receipt(
        message_id=message_id,
        stat=_token(fields.get("stat", "")).upper(),
        err=_token(fields.get("err", "")),
        sub=_token(fields.get("sub", "")),
        dlvrd=_token(fields.get("dlvrd", "")),
        submit_date_text=fields.get("submit date", ""),
        done_date_text=fields.get("done date", ""),
        text=fields.get("text", "").strip("\0").rstrip(),
    )


IdFormat = Literal["auto", "as-is", "hex", "decimal", "hex-resp", "hex-receipt"]

_HEX_LETTERS: Final = frozenset("abcdefABCDEF")
_HEX: Final = "0123456789abcdefABCDEF"


def _number(text: str, base: int) -> int | None:
    """`text` as a non-negative number in `base` ("0x" allowed in hex), else None."""
    if base == 16 and text[:2].lower() == "0x":
        text = text[2:]
    allowed = _HEX if base == 16 else "0123456789"
    if not text or text.strip(allowed):  # strip leaves what is not `allowed`
        return None  # int() would also take "+1", "1_0" and non-ASCII digits
    return int(text, base)


def normalise_message_id(
    value: str, style: IdFormat, side: Literal["resp", "receipt"] = "resp"
) -> str:
    """The form in which a submit_sm_resp id and a receipt id compare equal.

    Apply it to both ids with the profile's style (`side` says which id this is;
    only the ``hex-resp`` / ``hex-receipt`` styles look at it). Every style first
    strips whitespace and NULs from both ends; an id that is not a number in the
    base a style expects comes back stripped and lower-cased.

    * ``auto`` (the default): no base is assumed. A hex-looking id (digits and a-f,
      optionally ``0x``) comes out lower-cased without leading zeros (``"000A1B"`` ->
      ``"a1b"``, ``"0042"`` -> ``"42"``); anything else only stripped. The other
      base's reading is tried at lookup time (`message_id_candidates`).
    * ``as-is``: only that strip; case is kept.
    * ``hex``: both sides write hex: lower-case hex without leading zeros, ``0x``
      dropped (``"000A1B"`` -> ``"a1b"``; a decimal-looking ``"0010"`` -> ``"10"``).
    * ``decimal``: both sides should write decimal, but some carriers write one side
      in hex: an id containing a-f (or starting ``0x``) is read as hex, an all-digit
      id as decimal, and both come out as decimal without leading zeros
      (``"0A1B"`` -> ``"2587"``, ``"002587"`` -> ``"2587"``). An all-digit hex id
      cannot be told apart; use ``hex-resp`` / ``hex-receipt`` for such carriers.
    * ``hex-resp``: submit_sm_resp ids are hex, receipt ids decimal (Kannel's
      msg-id-type 1); ``hex-receipt``: the other way round (msg-id-type 2). Both
      come out as decimal without leading zeros.
    """
    text = value.strip().strip("\0").strip()
    if style == "as-is" or not text:
        return text
    if style == "auto":
        return _canonical(text)
    if style == "hex":
        number = _number(text, 16)
        return text.lower() if number is None else format(number, "x")
    if style == "decimal":
        hexadecimal = text[:2].lower() == "0x" or any(c in _HEX_LETTERS for c in text)
    else:
        hexadecimal = (style == "hex-resp") == (side == "resp")
    number = _number(text, 16 if hexadecimal else 10)
    return text.lower() if number is None else str(number)


def _canonical(text: str) -> str:
    """`auto`'s form: a hex-looking id lower-cased without ``0x`` and leading zeros
    (which base it is in stays open); any other id as it is."""
    digits = text[2:] if text[:2].lower() == "0x" else text
    if not digits or digits.strip(_HEX):  # strip leaves what is not a hex digit
        return text
    return digits.lstrip("0").lower() or "0"


def message_id_candidates(normalised: str, style: IdFormat) -> list[str]:
    """The ids, best first, under which the other side may have written `normalised`
    (an id already passed through `normalise_message_id` with the same `style`).

    Only ``auto`` has more than one: the id itself, then — when it is all digits —
    the same number in hex (resp in hex, receipt in decimal: the common mismatch),
    then — when it is hex-looking — the same number read as hex, in decimal (resp in
    decimal, receipt in hex). The relation is symmetric: if a receipt id's list holds
    a resp id, that resp id's list holds the receipt id, so an early report stored
    under its own id is found from the resp side too. An all-digit id that one side
    writes in hex and the other in decimal may match another message's id first (the
    exact form wins); such SMSCs need an explicit style.
    """
    if style != "auto" or not normalised:
        return [normalised]
    found = [normalised]
    if normalised.isascii() and normalised.isdecimal():
        found.append(format(int(normalised), "x"))
    if not normalised.strip(_HEX):
        found.append(str(int(normalised, 16)))
    return list(dict.fromkeys(found))
