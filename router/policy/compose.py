"""Compose: the text a job sends, from its own `text` or a template, in its language.

Templates use ``{name}`` placeholders only, filled from the job's `vars`, then its
`meta`; ``{{`` and ``}}`` are literal braces. Nothing else is read or run: no
attribute or index access, no conversion, no format spec, so a template from an
operator or a variable from a producer can never reach past the values given.
`smart_encode` swaps Unicode look-alikes for GSM 03.38 characters so a message
that only differs by curly quotes or long dashes stays 7-bit.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from binds.smpp.codec import is_gsm
from router.errors import RouterError

__all__ = ["TemplateError", "pick_text", "placeholders", "render", "smart_encode"]

_FORMATTER = string.Formatter()


class TemplateError(RouterError, ValueError):
    """A template that cannot be used, or a job whose variables do not fill it;
    `variable` names the placeholder at fault when there is one."""

    def __init__(self, message: str, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


@lru_cache(maxsize=4096)
def _parse(text: str) -> tuple[tuple[str, str | None], ...]:
    """The template as (literal, placeholder or None) pieces; TemplateError if unsafe."""
    pieces: list[tuple[str, str | None]] = []
    try:
        parsed = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise TemplateError(f"{exc} (write {{{{ and }}}} for literal braces)") from None
    for literal, field, spec, conversion in parsed:
        if field is None:
            pieces.append((literal, None))
            continue
        if not field.isidentifier() or spec or conversion:
            shown = "{" + field + (f"!{conversion}" if conversion else "")
            shown += (f":{spec}" if spec else "") + "}"
            raise TemplateError(f"{shown} is not allowed: only {{name}} placeholders")
        pieces.append((literal, field))
    return tuple(pieces)


def placeholders(text: str) -> list[str]:
    """The names a template text uses, in order; TemplateError if it is unsafe."""
    return [field for _, field in _parse(text) if field is not None]


def pick_text(texts: Mapping[str, str], default_lang: str, lang: str | None) -> str:
    """The text for `lang`: the exact tag, then its shorter forms (``pt-BR`` → ``pt``),
    then the template's default language. Tags compare case-insensitively."""
    if lang:
        folded = {key.lower(): value for key, value in texts.items()}
        parts = lang.lower().split("-")
        while parts:
            found = folded.get("-".join(parts))
            if found is not None:
                return found
            parts.pop()
    return texts[default_lang]


def render(text: str, variables: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """Fill a template's placeholders from `variables`, then `meta`; a missing or
    non-scalar value raises TemplateError naming it."""
    out: list[str] = []
    for literal, field in _parse(text):
        out.append(literal)
        if field is None:
            continue
        if field in variables:
            value = variables[field]
        elif field in meta:
            value = meta[field]
        else:
            raise TemplateError(f"missing variable {field!r}", field)
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif value is None:
            value = ""
        elif not isinstance(value, str | int | float):
            raise TemplateError(f"variable {field!r} must be text or a number", field)
        out.append(str(value))
    return "".join(out)


# Look-alikes a phone or a word processor puts in, and their GSM 03.38 stand-ins (the
# set Twilio's Smart Encoding documents: quotes, dashes, spaces, ellipsis...).
_LOOK_ALIKES = {
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u2035\u02bc\u02bb\uff07", "'"),
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u2036\u00ab\u00bb\uff02", '"'),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2043\ufe63\uff0d", "-"),
    **dict.fromkeys(
        "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
        "\u200a\u202f\u205f\u3000",
        " ",
    ),
    **dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff\u00ad", ""),
    "\u2026": "...",
    "\u2039": "<",
    "\u203a": ">",
    "\u2022": "-",
    "\u02c6": "^",
    "\u02dc": "~",
    "\u2044": "/",
    "\uff0c": ",",
    "\uff0e": ".",
    "\uff1a": ":",
    "\uff1b": ";",
    "\uff01": "!",
    "\uff1f": "?",
    "\u2024": ".",
}
_TABLE = str.maketrans(_LOOK_ALIKES)


def smart_encode(text: str) -> str:
    """`text` with look-alikes replaced when that makes it GSM 03.38, else unchanged
    (a text that needs UCS2 anyway keeps the characters its author typed)."""
    if text.isascii():
        return text
    swapped = text.translate(_TABLE)
    return swapped if swapped != text and is_gsm(swapped) else text
