"""Phone numbers: E.164 parsing through libphonenumber's rules."""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

# One '+', then (after optional spaces or an opening parenthesis) a digit, then only
# digits and the usual separators. libphonenumber alone is lenient: it strips extra
# leading '+' and '-', and reads "x5" or ";ext=5" as an extension, none of which an
# SMS can be sent to.
_SHAPE = re.compile(r"\+[\s(]*\d[\d\s().\-/]*")


# Parsing costs tens of microseconds; many destinations and every sender repeat.
@lru_cache(maxsize=16384)
def normalise_e164(value: str) -> str:
    """Return `value` as canonical E.164 (``+14155552671``) or raise ValueError.

    Accepts spaces, dashes, dots, slashes and parentheses between digits, but the
    number must carry its country code (start with ``+``): a router cannot guess the
    region. Anything else (``++44...``, ``+-44...``, an extension) is refused.
    """
    text = value.strip()
    if not text.startswith("+"):
        raise ValueError(f"{value!r} is not a valid E.164 number (must start with '+')")
    if not _SHAPE.fullmatch(text):
        raise ValueError(f"{value!r} is not a valid E.164 number")
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        raise ValueError(f"{value!r} is not a valid E.164 number") from None
    # "Possible" (right length for its country) rather than "valid": carriers hand out
    # ranges before libphonenumber's metadata knows them, and the documented example
    # +1 650 111 2345 would otherwise be refused.
    country = parsed.country_code or 0
    known_country = phonenumbers.region_code_for_country_code(country) != "ZZ"
    if not known_country or not phonenumbers.is_possible_number(parsed):
        raise ValueError(f"{value!r} is not a valid E.164 number")
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))
