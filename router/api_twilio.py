"""Twilio-compatible submission: applications that speak Twilio's Messages API send
through the router unchanged (only the base URL and credentials differ).

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` takes Twilio's form fields
and enqueues one job through `Client` (the same validation as the Redis wire format);
``GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json`` answers the record.
Both answer Twilio's Message resource JSON, and errors in Twilio's error shape
(``code``, ``message``, ``more_info``, ``status``) with Twilio's error codes, so the
official SDKs raise their usual exceptions.

Authentication is HTTP Basic with ``[api.twilio]`` ``account_sid`` and ``auth_token``,
compared in constant time. Mapping (see the README, "Twilio-compatible API"):
``From`` picks the profile owning that number, ``MessagingServiceSid`` names a
profile; the message sid is the job id, ``SM`` + 32 hex digits.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import structlog
from aiohttp import web

from binds.smpp.codec import count_segments

from .api import CONTEXT, Handler, json_response
from .config import TwilioApi
from .jobs import JobError
from .outages import REDIS_ERRORS

__all__ = ["STATUS_MAP", "TwilioError", "add_routes", "message_resource", "new_sid"]

log = structlog.get_logger("router.api_twilio")

API_VERSION = "2010-04-01"
BASE = f"/{API_VERSION}/Accounts/{{account_sid}}/Messages"
MAX_BODY = 1600  # Twilio's limit on Body (error 21617)
MAX_VALIDITY = 36_000  # seconds; Twilio's ValidityPeriod range is 1..36,000 (error 21624)

# Our statuses as Twilio's. `rejected` (our rules said no) and `expired` (the validity
# period ran out) are both `failed` for Twilio, told apart by error_code.
STATUS_MAP = {
    "queued": "queued",
    "scheduled": "scheduled",
    "sending": "sending",
    "sent": "sent",
    "delivered": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "rejected": "failed",
    "expired": "failed",
}
# Our error codes with a Twilio counterpart; any other error is 30008 (Unknown error),
# its message naming our code and reason.
_ERROR_CODES = {"opted_out": 21610, "expired": 30036}
_UNKNOWN_ERROR = 30008
# Twilio's generic codes, equal to the HTTP status: anything without a specific code.
_BAD_REQUEST = 400
_UNAVAILABLE = 503


class TwilioError(Exception):
    """An answer in Twilio's error shape: HTTP `status`, Twilio error `code`, message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        body = {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }
        response = json_response(body, self.status)
        if self.status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
        return response


def new_sid() -> str:
    """A fresh message sid in Twilio's form: ``SM`` + 32 hex digits (the job id)."""
    return "SM" + uuid.uuid4().hex


def add_routes(app: web.Application) -> None:
    """Register the Twilio-compatible Messages endpoints on `app`."""
    app.router.add_post(f"{BASE}.json", _twilio(create_message))
    app.router.add_get(f"{BASE}/{{sid:[^/]+}}.json", _twilio(fetch_message))


def _twilio(handler: Handler) -> Handler:
    """Authenticate, and turn every failure into Twilio's error shape (the shared
    middleware would answer ``{"error": ...}``, which Twilio's SDKs cannot read)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            _authenticate(request)
            return await handler(request)
        except TwilioError as exc:
            return exc.response()
        except web.HTTPRequestEntityTooLarge:
            limit = request.app[CONTEXT].settings.api.max_body
            return TwilioError(
                413, _BAD_REQUEST, f"body: larger than api.max_body = {limit}"
            ).response()
        except REDIS_ERRORS:
            log.warning("twilio api: redis unavailable", path=request.path)
            return TwilioError(
                503, _UNAVAILABLE, "Service unavailable: redis, try again"
            ).response()

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def _credentials(request: web.Request) -> TwilioApi:
    twilio = request.app[CONTEXT].settings.api.twilio
    if twilio is None:
        raise TwilioError(404, 20404, "The Twilio-compatible API is off (no [api.twilio])")
    return twilio


def _authenticate(request: web.Request) -> None:
    """HTTP Basic with the account sid and auth token, both compared in constant time;
    the path's AccountSid must be that account (Twilio: 20003 for either)."""
    twilio = _credentials(request)
    kind, _, encoded = request.headers.get("Authorization", "").partition(" ")
    user = password = b""
    if kind.lower() == "basic":
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            user = password = b""
    # Both comparisons always run, so timing does not tell which one failed.
    good_user = hmac.compare_digest(user, twilio.account_sid.encode())
    good_password = hmac.compare_digest(password, twilio.auth_token.get_secret_value().encode())
    if not (good_user and good_password):
        raise TwilioError(401, 20003, "Authenticate")
    if request.match_info["account_sid"] != twilio.account_sid:
        # Twilio answers 20003 for credentials used on another account's path.
        raise TwilioError(401, 20003, "Authenticate: the AccountSid in the path is not yours")


async def create_message(request: web.Request) -> web.Response:
    """Send one message: Twilio's form fields in, Twilio's Message resource out (201)."""
    context = request.app[CONTEXT]
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    job, messaging_service = _job_from_form(fields, request)
    try:
        sid = await context.client.send(**job)
    except JobError as exc:
        raise _job_error(exc) from None
    record = await context.ledger.get(sid, profile=job.get("profile")) or {
        "id": sid,
        "status": "queued",
    }
    twilio = _credentials(request)
    resource = message_resource(
        record, twilio.account_sid, body=job["text"], messaging_service_sid=messaging_service
    )
    # SendAt passed the job's validation above, so it parses.
    if "send_at" in job and datetime.fromisoformat(job["send_at"]).timestamp() > time.time():
        resource["status"] = "scheduled"  # as Twilio answers a scheduled message at once
    log.debug("twilio api: enqueued", id=sid, profile=job.get("profile"))
    return json_response(resource, 201)


async def fetch_message(request: web.Request) -> web.Response:
    """One message's resource, from its record."""
    context = request.app[CONTEXT]
    sid = request.match_info["sid"]
    profiles = list(context.settings.profiles)
    record = await context.ledger.get(sid, profiles=profiles) if sid.startswith("SM") else None
    if record is None:
        raise TwilioError(404, 20404, f"The requested resource {request.path} was not found")
    meta = record.get("meta") or {}
    service = str(meta.get("twilio_messaging_service_sid") or "") if isinstance(meta, dict) else ""
    twilio = _credentials(request)
    return json_response(
        message_resource(record, twilio.account_sid, messaging_service_sid=service)
    )


def _job_from_form(form: Mapping[str, str], request: web.Request) -> tuple[dict[str, Any], str]:
    """The `Client.send` arguments for Twilio's form fields, and the messaging service
    sid ('' when none), or TwilioError with Twilio's code for the first problem."""
    settings = request.app[CONTEXT].settings
    to = form.get("To", "").strip()
    if not to:
        raise TwilioError(400, 21604, "A 'To' phone number is required.")
    body = form.get("Body", "")
    if form.get("MediaUrl") or form.get("ContentSid"):
        raise TwilioError(400, 21619, "Only a text Body can be sent here (no MediaUrl/ContentSid)")
    if not body:
        raise TwilioError(400, 21602, "Message body is required.")
    if len(body) > MAX_BODY:
        raise TwilioError(
            400, 21617, f"The concatenated message body exceeds the {MAX_BODY} character limit."
        )
    sender = form.get("From", "").strip()
    service = form.get("MessagingServiceSid", "").strip()
    if service:
        # A messaging service is a profile: its name is the sid (see the README).
        if service not in settings.profiles:
            raise TwilioError(
                400, 21701, f"The Messaging Service {service} does not exist (no such profile)"
            )
        profile = service
    elif sender:
        found = settings.profile_of_number(sender)
        if found is None:
            raise TwilioError(
                400,
                21606,
                f"The 'From' phone number provided ({sender}) is not a number of any profile",
            )
        profile = found
    else:
        raise TwilioError(
            400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required to send a message"
        )
    job: dict[str, Any] = {"to": to, "text": body, "profile": profile, "id": new_sid()}
    if sender:
        job["sender"] = sender
    if service:
        job["meta"] = {"twilio_messaging_service_sid": service}
    if form.get("StatusCallback"):
        job["status_callback_url"] = form["StatusCallback"]
    if form.get("ValidityPeriod"):
        job["expires_at"] = time.time() + _validity(form["ValidityPeriod"])
    schedule = form.get("ScheduleType", "")
    if schedule and schedule != "fixed":
        raise TwilioError(400, 35126, f"ScheduleType {schedule!r} is not supported; use 'fixed'")
    if form.get("SendAt"):
        job["send_at"] = form["SendAt"]  # ISO 8601; checked with the job
    elif schedule:
        raise TwilioError(
            400, 35111, "SendAt timestamp is missing; it is required when ScheduleType is 'fixed'"
        )
    return job, service


def _validity(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if not 1 <= seconds <= MAX_VALIDITY:
        raise TwilioError(
            400,
            21624,
            f"Invalid validity period value {value!r}: 1 to {MAX_VALIDITY} seconds",
        )
    return seconds


# Job fields as Twilio's error codes for a JobError naming them.
_FIELD_ERRORS = {
    "to": (21211, "To"),
    "from": (21606, "From"),
    "text": (21602, "Body"),
    "status_callback_url": (21609, "StatusCallback"),
    "send_at": (35114, "SendAt"),
    "expires_at": (21624, "ValidityPeriod"),
}


def _job_error(exc: JobError) -> TwilioError:
    """The job validation's verdict in Twilio's terms, naming Twilio's field."""
    code, name = _FIELD_ERRORS.get(exc.field, (_BAD_REQUEST, exc.field or "request"))
    text = str(exc)
    # "job 0: job.to: not a valid ..." -> "To: not a valid ..."
    detail = text.split(f"job.{exc.field}: ", 1)[-1] if exc.field else text
    return TwilioError(400, code, f"{name}: {detail}")


def _rfc2822(seconds: float | None) -> str | None:
    """Twilio's date format, e.g. ``Thu, 24 Aug 2023 05:01:45 +0000``."""
    if seconds is None:
        return None
    return format_datetime(datetime.fromtimestamp(seconds, UTC).replace(microsecond=0))


def _error(record: Mapping[str, Any]) -> tuple[int | None, str | None]:
    status = str(record.get("status", ""))
    ours = record.get("error_code") or ("expired" if status == "expired" else "")
    if STATUS_MAP.get(status) not in ("failed", "undelivered") or not ours:
        return None, None
    reason = record.get("error") or record.get("error_raw") or ""
    if not reason and status == "expired":
        reason = next(
            (h["note"] for h in record.get("history", []) if h["status"] == "expired"), ""
        )
    code = _ERROR_CODES.get(str(ours), _UNKNOWN_ERROR)
    return code, f"{ours}: {reason}" if reason else str(ours)


def message_resource(
    record: Mapping[str, Any],
    account_sid: str,
    *,
    body: str | None = None,
    messaging_service_sid: str = "",
) -> dict[str, Any]:
    """A record (router/ledger.py `get`) as Twilio's Message resource JSON."""
    sid = str(record["id"])
    text = body if body is not None else str(record.get("text", ""))
    segments = record.get("segments")
    if segments is None:
        try:
            segments = count_segments(text) if text else 0
        except ValueError:
            segments = 0
    sent_at = next((h["at"] for h in record.get("history", []) if h["status"] == "sent"), None)
    error_code, error_message = _error(record)
    return {
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "body": text,
        "date_created": _rfc2822(record.get("created_at")),
        "date_sent": _rfc2822(sent_at),
        "date_updated": _rfc2822(record.get("updated_at")),
        "direction": "outbound-api",
        "error_code": error_code,
        "error_message": error_message,
        "from": record.get("from"),
        "messaging_service_sid": messaging_service_sid or None,
        "num_media": "0",
        "num_segments": str(segments),
        "price": None,
        "price_unit": None,
        "sid": sid,
        "status": STATUS_MAP.get(str(record.get("status")), "queued"),
        "subresource_uris": {
            "media": f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}/Media.json"
        },
        "to": record.get("to"),
        "uri": f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}.json",
    }
