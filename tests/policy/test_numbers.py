"""E.164 numbers: the canonical-form shortcut agrees with libphonenumber's parser."""

from __future__ import annotations

import random

import phonenumbers
import pytest

from router.numbers import _canonical, _parse, normalise_e164


def parsed(value: str) -> str | None:
    try:
        return _parse(value)
    except ValueError:
        return None


def test_shortcut_agrees_with_the_parser_for_every_country_code() -> None:
    """Every country code, every national length 1-17, leading digits 0-9: where the
    shortcut answers, it answers what the parser does (a number it would change, such
    as a national prefix to strip, goes to the parser)."""
    rng = random.Random(7)
    answered = 0
    for code in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE):
        for length in range(1, 18):
            for first in "0123456789":
                tail = "".join(rng.choice("0123456789") for _ in range(length - 1))
                number = f"+{code}{first}{tail}"[: 1 + len(str(code)) + length]
                verdict = _canonical(number) if len(number) > 3 else None
                if verdict is None:
                    continue
                answered += 1
                expected = parsed(number)
                assert (number if verdict else None) == expected, number
    assert answered > 20_000  # the shortcut covers the common shapes


@pytest.mark.parametrize(
    ("number", "result"),
    [
        ("+491510012345", "+491510012345"),
        ("+4407911123456", "+447911123456"),  # national prefix stripped: parser's job
        ("+14155552671", "+14155552671"),
        ("+390669812345", "+390669812345"),  # Italian leading zero kept
        ("+1415", None),  # too short for +1
        ("+999123456", None),  # no such country code
        ("+44 7911 123456", "+447911123456"),
    ],
)
def test_normalise_e164_examples(number: str, result: str | None) -> None:
    if result is None:
        with pytest.raises(ValueError, match=r"not a valid E\.164"):
            normalise_e164(number)
    else:
        assert normalise_e164(number) == result
