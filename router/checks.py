"""Checks of a decoded job against its profile, before anything is recorded or sent.

Each check returns a reason (``job.FIELD: ...``) or None; the worker turns a reason
into a rejection (dead letter + ``rejected``). They run on the event loop for every
job, so each is cheap and bounded whatever the producer sent.
"""

from __future__ import annotations

from binds.smpp.codec import EncodeError, Encoding, LongMode, count_segments

from .config import Profile

# The most characters one SMS part carries in any alphabet (a single GSM message).
# A text longer than max_segments times this cannot fit, whatever its characters.
_MOST_CHARS_PER_PART = 160
# The fewest units one part of a long message carries (UCS2 with a 16-bit reference).
_FEWEST_UNITS_PER_PART = 66


def text_problem(text: str, profile: Profile) -> str | None:
    """Why `text` cannot be sent through `profile`, or None: too many parts, or (for
    an SMPP profile with a forced alphabet) a character the alphabet lacks."""
    limit = profile.max_segments
    # Cheap bound first: counting is O(len(text)), and a 1 MB text must not cost the
    # loop more than this comparison.
    if len(text) > limit * _MOST_CHARS_PER_PART:
        return (
            f"job.text: {len(text)} characters, more than max_segments = {limit} "
            f"can carry (at most {limit * _MOST_CHARS_PER_PART})"
        )
    encoding: Encoding = "auto"
    if profile.smpp is not None:
        encoding = profile.smpp.encoding
    # Every character is at most 2 units (a GSM escape pair, a UTF-16 surrogate pair)
    # and a part holds at least 66 units: a text within that bound fits without
    # counting, in the automatic alphabet, once it holds no lone surrogate (which
    # UTF-16 cannot carry; str.encode finds one in C).
    if encoding == "auto" and -(-2 * len(text) // _FEWEST_UNITS_PER_PART) <= limit:
        try:
            text.encode("utf-16-be")
        except UnicodeEncodeError:
            pass
        else:
            return None
    long_mode: LongMode = "udh8"  # HTTP providers: the GSM/UCS2 rule, 160/153 and 70/67
    if profile.smpp is not None:
        mode = profile.smpp.long_messages
        # message_payload is one PDU, but the SMSC still cuts (and bills) it in parts.
        long_mode = "udh8" if mode == "payload" else mode
    try:
        parts = count_segments(text, encoding=encoding, long_mode=long_mode)
    except EncodeError as exc:
        return f"job.text: {exc}"
    if parts > limit:
        return f"job.text: {parts} segments, more than max_segments = {limit}"
    return None
