"""Phone numbers: E.164 parsing through libphonenumber's rules; senders of every kind."""

from __future__ import annotations

import re
from functools import cache, lru_cache
from typing import Literal

import phonenumbers

# One '+', then (after optional spaces or an opening parenthesis) a digit, then only
# digits and the usual separators. libphonenumber alone is lenient: it strips extra
# leading '+' and '-', and reads "x5" or ";ext=5" as an extension, none of which an
# SMS can be sent to.
_SHAPE = re.compile(r"\+[\s(]*\d[\d\s().\-/]*")


# A number already in canonical form: '+', a country code, digits (at most 17 + 3).
_CANONICAL = re.compile(r"\+[1-9]\d{2,19}")


def normalise_e164(value: str) -> str:
    """Return `value` as canonical E.164 (``+14155552671``) or raise ValueError.

    Accepts spaces, dashes, dots, slashes and parentheses between digits, but the
    number must carry its country code (start with ``+``): a router cannot guess the
    region. Anything else (``++44...``, ``+-44...``, an extension) is refused.
    """
    if _CANONICAL.fullmatch(value):
        known = _canonical(value)
        if known is not None:
            if not known:
                raise ValueError(f"{value!r} is not a valid E.164 number")
            return value
    return _parse(value)


def _canonical(text: str) -> bool | None:
    """libphonenumber's verdict on a canonical-looking number without its parser (which
    costs ~30 us, the biggest cost of decoding a job): True (it would come back
    unchanged and possible), False (not possible), or None when only the parser can
    tell (no country code, a leading 0, a national prefix to strip). Exactly what
    `_parse` says; tests/policy/test_numbers.py compares the two across every country code."""
    digits = text[1:]
    for size in (1, 2, 3):
        if digits[:size] in _CODES:
            country = _country(digits[:size])
            national = digits[size:]
            break
    else:
        return None
    if not 2 <= len(national) <= 17 or national[0] == "0":
        return None
    prefix = country.national_prefix
    if prefix is not None and prefix.match(national):
        return None
    return country.possible(len(national))


class _Country:
    """What `_canonical` needs of one country calling code's metadata."""

    def __init__(self, code: int) -> None:
        region = phonenumbers.region_code_for_country_code(code)
        metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
        pattern = metadata.national_prefix_for_parsing if metadata is not None else None
        self.code = code
        self.national_prefix = re.compile(pattern) if pattern else None
        self._lengths: dict[int, bool] = {}

    def possible(self, length: int) -> bool:
        # libphonenumber's "possible" depends only on the national number's length.
        known = self._lengths.get(length)
        if known is None:
            number = phonenumbers.PhoneNumber(
                country_code=self.code, national_number=int("1" * length)
            )
            known = self._lengths[length] = bool(phonenumbers.is_possible_number(number))
        return known


# Country calling codes are prefix-free: at most one of a number's first 1-3 digits is.
_CODES = frozenset(
    str(code)
    for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE
    if phonenumbers.region_code_for_country_code(code) != "ZZ"
)


@cache
def _country(code: str) -> _Country:
    return _Country(int(code))  # metadata loads on first use, as the parser's does


@lru_cache(maxsize=16384)
def _parse(value: str) -> str:
    """`normalise_e164` through libphonenumber's parser."""
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


def country_of(number: str) -> str:
    """The country a canonical E.164 number belongs to, as rules compare them: the
    region (``US``, ``CA``, ``JM``...) for the North American plan, whose countries
    share +1 and differ by area code; the calling code (``44``) elsewhere."""
    if number.startswith("+1"):
        return _nanp_region(number[2:5], number)
    digits = number[1:]
    for size in (1, 2, 3):
        if digits[:size] in _CODES:
            return digits[:size]
    return digits[:3]


def area_code(number: str) -> str | None:
    """The NANP area code (NPA) of a +1 number, else None."""
    return number[2:5] if number.startswith("+1") else None


def is_toll_free(number: str) -> bool:
    """Whether libphonenumber's metadata says `number` (E.164) is toll-free; False for
    a short code or an alphanumeric sender."""
    return number.startswith("+") and _toll_free(number)


SenderKind = Literal["long_code", "toll_free", "short_code", "alphanumeric"]
SENDER_KINDS: tuple[SenderKind, ...] = ("long_code", "toll_free", "short_code", "alphanumeric")

_SHORT_CODE = re.compile(r"\d{3,8}")
# 1-11 letters, digits and inner spaces (GSM 03.40's alphanumeric address, as
# operators accept it), with at least one letter: all digits would be a number.
_ALPHANUMERIC = re.compile(r"(?=[A-Za-z0-9 ]*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9 ]{0,9}[A-Za-z0-9])?")
_SENDER_HELP = (
    "an E.164 number ('+' and country code), a short code (3-8 digits) or an "
    "alphanumeric sender ID (1-11 letters, digits or inner spaces, at least one letter)"
)


def normalise_sender(value: str) -> str:
    """A sender as it is stored and sent: E.164 numbers canonical (`normalise_e164`),
    short codes and alphanumeric IDs as given. ValueError names what is wrong."""
    if value.lstrip().startswith("+"):
        return normalise_e164(value)  # its error names what is wrong with the number
    if _SHORT_CODE.fullmatch(value) or _ALPHANUMERIC.fullmatch(value):
        return value
    if value.isdigit():
        raise ValueError(
            f"{value!r} is not a sender: a number must start with '+' and its country "
            "code; a short code has 3-8 digits"
        )
    raise ValueError(f"{value!r} is not a sender: {_SENDER_HELP}")


def sender_kind(sender: str) -> SenderKind:
    """The kind of a normalised sender (`normalise_sender`)."""
    if sender.startswith("+"):
        return "toll_free" if _toll_free(sender) else "long_code"
    if sender.isdigit():
        return "short_code"
    return "alphanumeric"


def region_key(region: str) -> str:
    """An ISO region (``US``, ``GB``) as `country_of` names countries: the region itself
    in the North American plan, else its calling code (``44``). ValueError if unknown."""
    region = region.upper()
    code = phonenumbers.country_code_for_region(region)
    if not code:
        raise ValueError(f"{region!r} is not a known ISO 3166 country code")
    return region if code == 1 else str(code)


@lru_cache(maxsize=4096)
def _toll_free(number: str) -> bool:
    parsed = phonenumbers.parse(number, None)
    return bool(phonenumbers.number_type(parsed) == phonenumbers.PhoneNumberType.TOLL_FREE)


_NPA_REGIONS: dict[str, str] = {}


def _nanp_region(npa: str, number: str) -> str:
    """The region of a NANP area code, learnt once per code. The number itself may be
    a test number libphonenumber calls invalid (+1 650 111 2345): then two ordinary
    numbers of the same area code decide."""
    region = _NPA_REGIONS.get(npa)
    if region is None:
        for candidate in (number, f"+1{npa}5550100", f"+1{npa}2345678"):
            try:
                found = phonenumbers.region_code_for_number(phonenumbers.parse(candidate, None))
            except phonenumbers.NumberParseException:
                found = None
            if found:
                region = found
                break
        else:
            return "US"  # an area code no region claims: the plan's main country
        _NPA_REGIONS[npa] = region
    return region
