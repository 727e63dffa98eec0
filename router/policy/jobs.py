"""Jobs: the msgpack wire format producers put on the work streams.

A job travels as a msgpack map in field ``job`` of a stream entry. `decode_job`
turns those bytes into a `Job` or raises `JobError` naming the bad field, so the
worker can dead-letter it with a reason a producer understands.

Every part of a job is bounded here, before anything else touches it: a job comes
from any producer, and one oversized or deeply nested job must not stall or crash
the worker (a 1,000-level `meta` once made recording it raise RecursionError).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgpack

from router.errors import RouterError
from router.numbers import normalise_e164, normalise_sender
from router.policy.media import MediaFieldError, parse_media

# Fields a producer may send; anything else is refused so typos surface early.
KNOWN_FIELDS = frozenset(
    {
        "id",
        "to",
        "text",
        "template",
        "vars",
        "lang",
        "from",
        "profile",
        "use_case",
        "send_at",
        "expires_at",
        "status_callback_url",
        "meta",
        "account",
        "media",
    }
)
MAX_ID_LENGTH = 128
MAX_JOB_BYTES = 65_536  # the whole msgpack map, checked before unpacking
MAX_MAP_DEPTH = 8  # `meta` / `vars`: the map itself is level 1
MAX_MAP_BYTES = 8_192  # `meta` / `vars` as compact UTF-8 JSON (how records keep them)
MAX_URL_LENGTH = 2_048
# Characters of the other string fields. A number is at most 15 digits; 64 leaves
# room for spaces and dashes. Time strings: ISO 8601 with fractions and zone.
MAX_LENGTHS = {
    "to": 64,
    "from": 64,
    "profile": 64,
    "use_case": 64,
    "account": 64,
    "lang": 35,  # the longest BCP 47 tag anyone sends
    "template": 256,
    "send_at": 64,
    "expires_at": 64,
    "status_callback_url": MAX_URL_LENGTH,
}
# send_at / expires_at: from the epoch to the last second of year 9999, the range every
# date function handles. A value in milliseconds (1.7e12) falls outside and is refused
# rather than scheduled for the year 55,000.
MAX_TIME = 253_402_300_799.0  # 9999-12-31T23:59:59Z


class JobError(RouterError, ValueError):
    """A job that cannot be sent as it is; `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"job.{field}: {message}" if field else message)
        self.field = field


@dataclass(slots=True)
class Job:
    """One request to send one message."""

    id: str
    to: str
    text: str | None = None
    sender: str | None = None
    profile: str | None = None
    use_case: str | None = None
    send_at: float | None = None
    expires_at: float | None = None
    status_callback_url: str | None = None
    template: str | None = None
    vars: dict[str, Any] = field(default_factory=dict)
    lang: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # The account that submitted it (set by the door that authenticated the caller).
    account: str | None = None
    # An MMS: 1 to 10 http(s) URLs of its media (router/policy/media.py); () for an SMS.
    media: tuple[str, ...] = ()
    # Not on the wire: set by the planner when an MMS goes as an SMS whose text holds
    # its media links (``mms_fallback = "link"``): why it could not go as an MMS.
    fallback: str = ""

    @property
    def kind(self) -> str:
        """``mms`` for a job sent with its media, else ``sms`` (what routes' ``kind``
        matches)."""
        return "mms" if self.media and not self.fallback else "sms"

    def to_wire(self) -> dict[str, Any]:
        """The job as a wire map (only the fields that are set)."""
        # Field by field, in the wire map's order: this runs twice for every job a
        # door takes.
        wire: dict[str, Any] = {"id": self.id, "to": self.to}
        if self.text is not None:
            wire["text"] = self.text
        if self.sender is not None:
            wire["from"] = self.sender
        if self.profile is not None:
            wire["profile"] = self.profile
        if self.use_case is not None:
            wire["use_case"] = self.use_case
        if self.send_at is not None:
            wire["send_at"] = self.send_at
        if self.expires_at is not None:
            wire["expires_at"] = self.expires_at
        if self.status_callback_url is not None:
            wire["status_callback_url"] = self.status_callback_url
        if self.template is not None:
            wire["template"] = self.template
        if self.lang is not None:
            wire["lang"] = self.lang
        if self.account is not None:
            wire["account"] = self.account
        if self.vars:
            wire["vars"] = self.vars
        if self.meta:
            wire["meta"] = self.meta
        if self.media:
            wire["media"] = list(self.media)
        return wire


def new_job_id() -> str:
    """A fresh job id for producers that did not bring their own: a random (version 4)
    UUID's 32 hex digits, as ``uuid.uuid4().hex`` gives them, without the UUID object."""
    octets = bytearray(os.urandom(16))
    octets[6] = (octets[6] & 0x0F) | 0x40  # version 4
    octets[8] = (octets[8] & 0x3F) | 0x80  # RFC 4122 variant
    return octets.hex()


def encode_job(wire: dict[str, Any]) -> bytes:
    """Pack a wire map for the ``job`` field of a stream entry."""
    return msgpack.packb(wire, use_bin_type=True)  # type: ignore[no-any-return]


def decode_job(raw: bytes | None, *, default_id: str) -> Job:
    """Validate and decode one job; `default_id` is used when the producer gave none.

    Raises only `JobError`: anything unexpected while decoding becomes one naming the
    exception type, so a job can never crash or stall the worker that reads it.
    """
    try:
        return _decode(raw, default_id)
    except JobError:
        raise
    except Exception as exc:  # a bug or an input nobody foresaw: still the job's fault
        raise JobError("", f"job cannot be decoded ({type(exc).__name__})") from None


def _decode(raw: bytes | None, default_id: str) -> Job:
    if raw is None:
        raise JobError("", "stream entry has no 'job' field")
    if len(raw) > MAX_JOB_BYTES:
        raise JobError("", f"job: {len(raw)} bytes, more than the {MAX_JOB_BYTES} a job may take")
    try:
        data = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=False,
            # Never allocate more than the job's own size for any one object.
            max_str_len=MAX_JOB_BYTES,
            max_bin_len=MAX_JOB_BYTES,
            max_array_len=MAX_JOB_BYTES,
            max_map_len=MAX_JOB_BYTES,
            max_ext_len=MAX_JOB_BYTES,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise JobError("", f"not msgpack ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise JobError("", f"must be a msgpack map, got {type(data).__name__}")
    if not KNOWN_FIELDS.issuperset(data):
        unknown = sorted(str(k)[:64] for k in data if k not in KNOWN_FIELDS)
        raise JobError(unknown[0], "unknown field")

    job_id = _opt_str(data, "id") or default_id
    # split() cuts at exactly the characters isspace() names, in C.
    if len(job_id) > MAX_ID_LENGTH or job_id.split() != [job_id]:
        raise JobError("id", f"must be at most {MAX_ID_LENGTH} characters without spaces")
    to = _opt_str(data, "to")
    if not to:
        raise JobError("to", "required")
    text = _opt_str(data, "text")
    template = _opt_str(data, "template")
    # Neither is a job for the profile's default template (the worker checks there is one).
    if text is not None and template is not None:
        raise JobError("template", "give 'text' or 'template', not both")
    if text is not None and not text:
        raise JobError("text", "must not be empty")
    sender = _opt_str(data, "from")
    job = Job(
        id=job_id,
        to=_e164("to", to),
        text=text,
        sender=_sender(sender) if sender else None,
        profile=_opt_str(data, "profile"),
        use_case=_opt_str(data, "use_case"),
        send_at=_opt_time(data, "send_at"),
        expires_at=_opt_time(data, "expires_at"),
        status_callback_url=_opt_url(data, "status_callback_url"),
        template=template,
        vars=_opt_map(data, "vars"),
        lang=_opt_str(data, "lang"),
        meta=_opt_map(data, "meta"),
        account=_opt_str(data, "account"),
        media=_opt_media(data),
    )
    return job


def _opt_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if type(value) is str:  # the usual case, first
        limit = MAX_LENGTHS.get(name)
        if limit is not None and len(value) > limit:
            raise JobError(name, f"longer than {limit} characters")
        return value
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            raise JobError(name, "must be UTF-8 text") from None
    if not isinstance(value, str):
        raise JobError(name, f"must be a string, got {type(value).__name__}")
    limit = MAX_LENGTHS.get(name)
    if limit is not None and len(value) > limit:
        raise JobError(name, f"longer than {limit} characters")
    return value


def _e164(name: str, value: str) -> str:
    try:
        return normalise_e164(value)
    except ValueError as exc:
        raise JobError(name, str(exc)) from None


def _sender(value: str) -> str:
    try:
        return normalise_sender(value)
    except ValueError as exc:
        raise JobError("from", str(exc)) from None


def _opt_time(data: dict[str, Any], name: str) -> float | None:
    """Unix seconds (int or float) or an ISO 8601 string with a time zone, in range."""
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        raise JobError(name, "must be unix seconds or an ISO 8601 time")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise JobError(name, "must be unix seconds or an ISO 8601 time")
        seconds = float(value)
    else:
        text = _opt_str(data, name)
        assert text is not None
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise JobError(name, f"{text!r} is not unix seconds or an ISO 8601 time") from None
        if moment.tzinfo is None:
            raise JobError(name, f"{text!r} has no time zone (add Z or +00:00)")
        try:
            seconds = moment.timestamp()
        except (OverflowError, ValueError, OSError):
            raise JobError(name, "out of range (1970 to 9999-12-31T23:59:59Z)") from None
    if not 0 <= seconds <= MAX_TIME:
        raise JobError(name, "out of range (1970 to 9999-12-31T23:59:59Z)")
    return seconds


def _opt_url(data: dict[str, Any], name: str) -> str | None:
    value = _opt_str(data, name)
    if value is not None and not value.startswith(("http://", "https://")):
        raise JobError(name, "must be an http:// or https:// URL")
    return value


def _opt_media(data: dict[str, Any]) -> tuple[str, ...]:
    value = data.get("media")
    if value is None:
        return ()
    if isinstance(value, list):
        # msgpack producers may send the URLs as bytes.
        value = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in value]
    try:
        return parse_media(value)
    except MediaFieldError as exc:
        raise JobError(exc.field, exc.problem) from None


def _opt_map(data: dict[str, Any], name: str) -> dict[str, Any]:
    """A producer's free-form map (`meta`, `vars`), made JSON-safe and bounded.

    Records and events keep it as JSON, so keys become strings, binary values must be
    UTF-8 text and numbers finite; nesting and the encoded size are capped.
    """
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JobError(name, f"must be a map, got {type(value).__name__}")
    bound = _flat_size(value)
    if bound is not None and bound <= MAX_MAP_BYTES:
        # What _json_safe makes of such a map (a copy), small enough whatever its exact
        # encoding: the usual `meta` costs no encoding here.
        return dict(value)
    clean = _json_safe(value, name, 1)
    assert isinstance(clean, dict)
    try:
        encoded = _COMPACT_JSON.encode(clean)
    except ValueError:
        raise JobError(name, "numbers must be finite (no NaN or Infinity)") from None
    if len(encoded.encode()) > MAX_MAP_BYTES:
        raise JobError(name, f"larger than {MAX_MAP_BYTES} bytes encoded")
    return clean


def _flat_size(value: dict[Any, Any]) -> int | None:
    """An upper bound of `value`'s compact JSON encoding in bytes, when it is a flat map
    of ASCII string keys to ASCII strings, integers within 20 digits, finite floats,
    booleans or nulls (each is JSON already); None for any other map. An escaped
    character takes at most 6 bytes (``\\u001f``), a number at most 32."""
    size = 2
    for key, item in value.items():
        if type(key) is not str or not key.isascii():
            return None
        kind = type(item)
        if kind is str:
            if not item.isascii():
                return None
            size += 6 * len(item) + 2
        elif kind is int or kind is float:
            if not -_TWENTY_DIGITS < item < _TWENTY_DIGITS:
                return None  # also NaN (no comparison holds) and the infinities
            size += 32
        elif item is None or kind is bool:
            size += 5
        else:
            return None
        size += 6 * len(key) + 4  # its quotes, the colon, a comma
    return size


_TWENTY_DIGITS = 10**20
# How `_opt_map` measures a map (json.dumps with these options, its encoder made once).
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _json_safe(node: Any, name: str, depth: int) -> Any:
    """`node` with JSON types only. Recursion stops at MAX_MAP_DEPTH + 1 levels, so a
    hostile nesting is refused before Python's own recursion limit is near."""
    if isinstance(node, dict | list):
        if depth > MAX_MAP_DEPTH:
            raise JobError(name, f"nested deeper than {MAX_MAP_DEPTH} levels")
        if isinstance(node, list):
            return [_json_safe(v, name, depth + 1) for v in node]
        return {_json_key(k, name): _json_safe(v, name, depth + 1) for k, v in node.items()}
    if node is None or isinstance(node, str | bool | int | float):
        return node
    if isinstance(node, bytes):
        try:
            return node.decode()
        except UnicodeDecodeError:
            raise JobError(name, "binary values must be UTF-8 text") from None
    raise JobError(name, f"{type(node).__name__} is not a JSON value")


def _json_key(key: Any, name: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        try:
            return key.decode()
        except UnicodeDecodeError:
            raise JobError(name, "binary keys must be UTF-8 text") from None
    if key is None or isinstance(key, bool | int | float):
        return str(key)
    raise JobError(name, f"{type(key).__name__} is not a valid key")
