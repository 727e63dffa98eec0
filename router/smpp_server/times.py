"""SMPP 3.4 time fields (section 7.1.1): schedule_delivery_time and validity_period.

``YYMMDDhhmmsstnnp``: absolute when `p` is ``+`` or ``-`` (the time is `nn` quarter
hours ahead of or behind UTC; `t` tenths of a second), relative to now when `p` is
``R`` (``YYMMDDhhmmss`` is a duration; a year counts 365 days and a month 30, as the
spec leaves them open). Empty means "not set".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

__all__ = ["parse_time"]

_DAY = 86_400


def parse_time(value: str, now: float) -> float | None:
    """Unix seconds for an SMPP time field, None when it is empty; ValueError saying
    what is wrong otherwise."""
    if not value:
        return None
    if len(value) != 16 or not value[:15].isdigit() or value[15] not in "+-R":
        raise ValueError(f"{value!r} is not an SMPP time (YYMMDDhhmmsstnnp)")
    yy, mo, dd, hh, mi, ss = (int(value[i : i + 2]) for i in range(0, 12, 2))
    if value[15] == "R":
        if mi > 59 or ss > 59 or hh > 23:
            raise ValueError(f"{value!r}: relative hours, minutes or seconds out of range")
        return now + (yy * 365 + mo * 30 + dd) * _DAY + hh * 3600 + mi * 60 + ss
    tenths, quarters = int(value[12]), int(value[13:15])
    if quarters > 48:
        raise ValueError(f"{value!r}: UTC offset of {quarters} quarter hours is out of range")
    offset = timedelta(minutes=15 * quarters)
    zone = timezone(offset if value[15] == "+" else -offset)
    try:
        moment = datetime(2000 + yy, mo, dd, hh, mi, ss, tenths * 100_000, tzinfo=zone)
    except ValueError:
        raise ValueError(f"{value!r} is not a date and time") from None
    return moment.astimezone(UTC).timestamp()
