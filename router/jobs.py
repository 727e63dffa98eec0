"""Jobs: the msgpack wire format producers put on the work streams.

A job travels as a msgpack map in field ``job`` of a stream entry. `decode_job`
turns those bytes into a `Job` or raises `JobError` naming the bad field, so the
worker can dead-letter it with a reason a producer understands.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgpack

from .numbers import normalise_e164

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
    }
)
MAX_ID_LENGTH = 128


class JobError(ValueError):
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

    def to_wire(self) -> dict[str, Any]:
        """The job as a wire map (only the fields that are set)."""
        wire: dict[str, Any] = {"id": self.id, "to": self.to}
        optional = {
            "text": self.text,
            "from": self.sender,
            "profile": self.profile,
            "use_case": self.use_case,
            "send_at": self.send_at,
            "expires_at": self.expires_at,
            "status_callback_url": self.status_callback_url,
            "template": self.template,
            "lang": self.lang,
        }
        wire.update({k: v for k, v in optional.items() if v is not None})
        if self.vars:
            wire["vars"] = self.vars
        if self.meta:
            wire["meta"] = self.meta
        return wire


def new_job_id() -> str:
    """A fresh job id for producers that did not bring their own."""
    return uuid.uuid4().hex


def encode_job(wire: dict[str, Any]) -> bytes:
    """Pack a wire map for the ``job`` field of a stream entry."""
    return msgpack.packb(wire, use_bin_type=True)  # type: ignore[no-any-return]


def decode_job(raw: bytes | None, *, default_id: str) -> Job:
    """Validate and decode one job; `default_id` is used when the producer gave none."""
    if raw is None:
        raise JobError("", "stream entry has no 'job' field")
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise JobError("", f"not msgpack ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise JobError("", f"must be a msgpack map, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in KNOWN_FIELDS)
    if unknown:
        raise JobError(unknown[0], "unknown field")

    job_id = _opt_str(data, "id") or default_id
    if len(job_id) > MAX_ID_LENGTH or any(c.isspace() for c in job_id):
        raise JobError("id", f"must be at most {MAX_ID_LENGTH} characters without spaces")
    to = _opt_str(data, "to")
    if not to:
        raise JobError("to", "required")
    text = _opt_str(data, "text")
    template = _opt_str(data, "template")
    if text is None and template is None:
        raise JobError("text", "required (or 'template')")
    if text is not None and not text:
        raise JobError("text", "must not be empty")
    sender = _opt_str(data, "from")
    job = Job(
        id=job_id,
        to=_e164("to", to),
        text=text,
        sender=_e164("from", sender) if sender else None,
        profile=_opt_str(data, "profile"),
        use_case=_opt_str(data, "use_case"),
        send_at=_opt_time(data, "send_at"),
        expires_at=_opt_time(data, "expires_at"),
        status_callback_url=_opt_url(data, "status_callback_url"),
        template=template,
        vars=_opt_map(data, "vars"),
        lang=_opt_str(data, "lang"),
        meta=_opt_map(data, "meta"),
    )
    return job


def _opt_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            raise JobError(name, "must be UTF-8 text") from None
    if not isinstance(value, str):
        raise JobError(name, f"must be a string, got {type(value).__name__}")
    return value


def _e164(name: str, value: str) -> str:
    try:
        return normalise_e164(value)
    except ValueError as exc:
        raise JobError(name, str(exc)) from None


def _opt_time(data: dict[str, Any], name: str) -> float | None:
    """Unix seconds (int or float) or an ISO 8601 string with a time zone."""
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        raise JobError(name, "must be unix seconds or an ISO 8601 time")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise JobError(name, "must be unix seconds or an ISO 8601 time")
        return float(value)
    text = _opt_str(data, name)
    assert text is not None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise JobError(name, f"{text!r} is not unix seconds or an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise JobError(name, f"{text!r} has no time zone (add Z or +00:00)")
    return moment.timestamp()


def _opt_url(data: dict[str, Any], name: str) -> str | None:
    value = _opt_str(data, name)
    if value is not None and not value.startswith(("http://", "https://")):
        raise JobError(name, "must be an http:// or https:// URL")
    return value


def _opt_map(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JobError(name, f"must be a map, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}
