"""Twilio-compatible submission: applications that speak Twilio's Messages API send
through the router unchanged (only the base URL and credentials differ).

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` takes Twilio's form fields
and enqueues one job through `Client` (the same validation as the Redis wire format);
``GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json`` answers the record, and
``GET .../Messages.json`` a page of the SMS log (`router.store.smslog`, every profile) with
Twilio's filters and paging links. ``MediaUrl`` (repeated, 1 to 10) makes the message
an MMS (Body is then optional); its resource counts them (``num_media``) and
``GET .../Messages/{Sid}/Media.json`` lists them as Media resources (``ME`` sids derived
from the message sid; ``.../Media/{MediaSid}`` redirects to the URL). They answer
Twilio's Message resource JSON, and every error under ``/2010-04-01/`` (an unknown
path: 404, another method: 405) is in Twilio's error shape (``code``, ``message``,
``more_info``, ``status``) with Twilio's error codes, so the official SDKs raise their
usual exceptions.

Authentication is HTTP Basic with ``[api.twilio]`` ``account_sid`` and ``auth_token``,
compared in constant time; or as an account (``[accounts.NAME]``): HTTP Basic with the
account's name and its `api_token` (as Twilio's SDKs send an API key's sid and secret:
``Client(name, api_token, account_sid)``), or its `api_token` as a bearer token. The
path's AccountSid is ``[api.twilio]``'s either way. An account sends as itself
(`router.client.Client` admits each job and takes it from the account's rate and daily
quota: over either, 429 with Twilio's 20429 and ``Retry-After``) and, without the
``admin`` scope, reads only its own messages. Mapping (docs/twilio-api.md):
``From`` picks the profile owning that number, ``MessagingServiceSid`` names a
profile; the message sid is the job id, ``SM`` + 32 hex digits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web

from binds.smpp.codec import count_segments
from router.api.common import (
    CALLER,
    CONTEXT,
    Handler,
    caller_of,
    json_response,
    own_account,
    retry_after,
)
from router.client import OverLimit
from router.config import Scope, TwilioApi
from router.errors import RouterError
from router.numbers import normalise_e164
from router.policy.accounts import SENDER_NOT_ALLOWED, AccountError, by_password, by_token
from router.policy.jobs import JobError
from router.store.outages import REDIS_ERRORS
from router.store.smslog import message_log, parse_position, position_above

__all__ = [
    "STATUS_MAP",
    "TwilioError",
    "add_routes",
    "media_resource",
    "media_sid",
    "message_resource",
    "new_sid",
]

log = structlog.get_logger("router.api_twilio")

API_VERSION = "2010-04-01"
BASE = f"/{API_VERSION}/Accounts/{{account_sid}}/Messages"
MAX_BODY = 1600  # Twilio's limit on Body (error 21617)
MAX_VALIDITY = 36_000  # seconds; Twilio's ValidityPeriod range is 1..36,000 (error 21624)
PAGE_SIZE = 50  # Twilio's default PageSize for a list
MAX_PAGE_SIZE = 1000  # Twilio's largest; a larger PageSize is served this many
# Events one list page may read: a narrow filter answers a short page with a
# next_page_uri instead of reading the whole event stream in one request.
LIST_SCAN = 20_000

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
_INVALID_PARAMETER = 20001
_NOT_FOUND = 20404
_METHOD_NOT_ALLOWED = 20004
_FORBIDDEN = 20403
_TOO_MANY_REQUESTS = 20429  # Twilio's rate limit (HTTP 429)
_INVALID_MEDIA = 21620  # Invalid media URL(s)
_TOO_MANY_MEDIA = 21623  # Number of media files exceeds allowed limit (10)


class TwilioError(RouterError):
    """An answer in Twilio's error shape: HTTP `status`, Twilio error `code`, message."""

    def __init__(
        self, status: int, code: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }
        response = json_response(body, self.status)
        response.headers.update(self.headers)
        if self.status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
        return response


def new_sid() -> str:
    """A fresh message sid in Twilio's form: ``SM`` + 32 hex digits (the job id)."""
    return "SM" + uuid.uuid4().hex


def add_routes(app: web.Application) -> None:
    """Register the Twilio-compatible Messages endpoints on `app`, and Twilio-shaped
    404 and 405 answers for everything else under ``/2010-04-01/``."""
    app.router.add_post(f"{BASE}.json", _twilio(create_message, "send"))
    app.router.add_get(f"{BASE}.json", _twilio(list_messages, "read"))
    app.router.add_route("*", f"{BASE}.json", _twilio(_method_not_allowed("GET, POST")))
    app.router.add_get(f"{BASE}/{{sid:[^/]+}}.json", _twilio(fetch_message, "read"))
    app.router.add_route("*", f"{BASE}/{{sid:[^/]+}}.json", _twilio(_method_not_allowed("GET")))
    # An MMS's Media subresource: the list, one item, and its content (a redirect).
    media = f"{BASE}/{{sid:[^/]+}}/Media"
    app.router.add_get(f"{media}.json", _twilio(list_media, "read"))
    app.router.add_route("*", f"{media}.json", _twilio(_method_not_allowed("GET")))
    app.router.add_get(f"{media}/{{media_sid:[^/]+}}.json", _twilio(fetch_media, "read"))
    app.router.add_get(f"{media}/{{media_sid:[^/.]+}}", _twilio(media_content, "read"))
    app.router.add_route("*", f"{media}/{{media_sid:[^/]+}}", _twilio(_method_not_allowed("GET")))
    # The paths above are more specific, so they match first; these catch the rest.
    app.router.add_route("*", f"/{API_VERSION}/{{tail:.*}}", _not_found)


def _method_not_allowed(allowed: str) -> Handler:
    async def method_not_allowed(request: web.Request) -> web.Response:
        """Another method on a resource we serve: Twilio's 405 (20004)."""
        response = TwilioError(
            405, _METHOD_NOT_ALLOWED, f"Method not allowed: {request.method} (allowed: {allowed})"
        ).response()
        response.headers["Allow"] = allowed
        return response

    return method_not_allowed


async def _not_found(request: web.Request) -> web.Response:
    """A path under /2010-04-01/ that we do not serve: Twilio's 404 (20404)."""
    return _missing(request).response()


def _missing(request: web.Request) -> TwilioError:
    return TwilioError(404, _NOT_FOUND, f"The requested resource {request.path} was not found")


def _twilio(handler: Handler, scope: Scope | None = None) -> Handler:
    """Authenticate (an account needs `scope`), and turn every failure into Twilio's
    error shape (the shared middleware would answer ``{"error": ...}``, which Twilio's
    SDKs cannot read)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            _authenticate(request, scope)
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


def _authenticate(request: web.Request, scope: Scope | None) -> None:
    """HTTP Basic with the account sid and auth token, both compared in constant time,
    or an account's (its name and api_token, or the api_token as a bearer token); the
    path's AccountSid must be ``[api.twilio]``'s (Twilio: 20003 for either). The
    caller goes on the request (`caller_of`: None for the account sid)."""
    twilio = _credentials(request)
    settings = request.app[CONTEXT].settings
    kind, _, encoded = request.headers.get("Authorization", "").partition(" ")
    caller = None
    if kind.lower() == "bearer":
        caller = by_token(settings, encoded.strip())
        if caller is None:
            raise TwilioError(401, 20003, "Authenticate")
    else:
        user = password = b""
        if kind.lower() == "basic":
            try:
                decoded = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                decoded = b""
            user, _, password = decoded.partition(b":")
        # Both comparisons always run, so timing does not tell which one failed.
        good_user = hmac.compare_digest(user, twilio.account_sid.encode())
        secret = twilio.auth_token.get_secret_value().encode()
        good_password = hmac.compare_digest(password, secret)
        if not (good_user and good_password):
            try:
                caller = by_password(
                    settings, user.decode(errors="replace"), password.decode(errors="replace"),
                    smpp=False,
                )  # fmt: skip
            except AccountError:
                raise TwilioError(401, 20003, "Authenticate") from None
    if request.match_info["account_sid"] != twilio.account_sid:
        # Twilio answers 20003 for credentials used on another account's path.
        raise TwilioError(401, 20003, "Authenticate: the AccountSid in the path is not yours")
    if caller is not None and scope is not None:
        scopes = caller.account.scopes
        if scope not in scopes and "admin" not in scopes:
            raise TwilioError(
                403, _FORBIDDEN, f"Forbidden: account {caller.name!r} lacks the {scope!r} scope"
            )
    request[CALLER] = caller


async def create_message(request: web.Request) -> web.Response:
    """Send one message: Twilio's form fields in, Twilio's Message resource out (201)."""
    context = request.app[CONTEXT]
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    # MediaUrl is repeated, one per file (the SDKs send MediaUrl=a&MediaUrl=b).
    media = [v if isinstance(v, str) else "" for v in form.getall("MediaUrl", [])]
    job, messaging_service = _job_from_form(fields, media, request)
    wire = dict(job)
    if "sender" in wire:
        wire["from"] = wire.pop("sender")
    caller = caller_of(request)
    try:
        sid = (await context.client.send_many([wire], caller=caller))[0]
    except JobError as exc:
        raise _job_error(exc) from None
    except AccountError as exc:
        raise _account_error(exc, messaging_service) from None
    except OverLimit as exc:
        limited = exc.limited
        raise TwilioError(
            429,
            _TOO_MANY_REQUESTS,
            f"Too Many Requests: {limited.reason}",
            headers={"Retry-After": retry_after(limited.retry_after)},
        ) from None
    record = await context.ledger.get(
        sid, profile=job.get("profile"), profiles=list(context.settings.profiles)
    ) or {
        "id": sid,
        "status": "queued",
    }
    twilio = _credentials(request)
    resource = message_resource(
        record,
        twilio.account_sid,
        body=job.get("text", ""),
        messaging_service_sid=messaging_service,
    )
    # SendAt passed the job's validation above, so it parses.
    if "send_at" in job and datetime.fromisoformat(job["send_at"]).timestamp() > time.time():
        resource["status"] = "scheduled"  # as Twilio answers a scheduled message at once
    log.debug("twilio api: enqueued", id=sid, profile=job.get("profile"))
    return json_response(resource, 201)


async def fetch_message(request: web.Request) -> web.Response:
    """One message's resource, from its record."""
    record = await _own_record(request)
    twilio = _credentials(request)
    return json_response(
        message_resource(record, twilio.account_sid, messaging_service_sid=_service(record))
    )


async def _own_record(request: web.Request) -> dict[str, Any]:
    """The record of the path's message sid, or TwilioError 404 (20404): no such
    message, or another account's (as unknown to this caller as a missing one)."""
    context = request.app[CONTEXT]
    sid = request.match_info["sid"]
    profiles = list(context.settings.profiles)
    record = await context.ledger.get(sid, profiles=profiles) if sid.startswith("SM") else None
    mine = own_account(caller_of(request), None)
    if record is None or (mine is not None and record.get("account") != mine):
        raise _missing(request)
    return record


async def list_media(request: web.Request) -> web.Response:
    """An MMS's Media list (Twilio's ``media_list`` page; empty for an SMS): each media
    URL as a Media resource, ``PageSize`` and ``Page`` as the Messages list takes them."""
    record = await _own_record(request)
    twilio = _credentials(request)
    size = min(_integer(request.query, "PageSize", PAGE_SIZE, 1), MAX_PAGE_SIZE)
    number = _integer(request.query, "Page", 0, 0)
    items = [
        media_resource(record, twilio.account_sid, index)
        for index in range(len(_media_urls(record)))
    ]
    start = number * size
    page = items[start : start + size]

    def uri(at: int) -> str:
        return f"{request.path}?{urlencode([('PageSize', size), ('Page', at)])}"

    return json_response(
        {
            "end": start + max(len(page), 1) - 1,
            "first_page_uri": uri(0),
            "media_list": page,
            "next_page_uri": uri(number + 1) if start + size < len(items) else None,
            "page": number,
            "page_size": size,
            "previous_page_uri": uri(number - 1) if number > 0 else None,
            "start": start,
            "uri": uri(number),
        }
    )


async def fetch_media(request: web.Request) -> web.Response:
    """One Media resource of an MMS."""
    record = await _own_record(request)
    index = _media_index(request, record)
    return json_response(media_resource(record, _credentials(request).account_sid, index))


async def media_content(request: web.Request) -> web.Response:
    """A media file's content: a redirect (307) to its URL, as Twilio redirects to
    where it stores the file (the router keeps none)."""
    record = await _own_record(request)
    url = _media_urls(record)[_media_index(request, record)]
    return web.Response(status=307, headers={"Location": url})


def _media_index(request: web.Request, record: Mapping[str, Any]) -> int:
    """The position of the path's media sid in the record's media, or TwilioError 404."""
    wanted = request.match_info["media_sid"]
    sid = str(record["id"])
    for index in range(len(_media_urls(record))):
        if media_sid(sid, index) == wanted:
            return index
    raise _missing(request)


def _media_urls(record: Mapping[str, Any]) -> list[str]:
    """A record's media URLs (an SMS's: none)."""
    media = record.get("media")
    return [str(url) for url in media] if isinstance(media, list) else []


def media_sid(message_sid: str, index: int) -> str:
    """The sid of a message's `index`-th media: ``ME`` + 32 hex digits, the same at
    every read (the router stores no media, so none is kept)."""
    digest = hashlib.blake2b(f"{message_sid}/{index}".encode(), digest_size=16)
    return "ME" + digest.hexdigest()


def media_resource(record: Mapping[str, Any], account_sid: str, index: int) -> dict[str, Any]:
    """The `index`-th media URL of a record as Twilio's Media resource JSON. Its
    ``content_type`` is null: the router does not fetch the file at the door."""
    sid = str(record["id"])
    me = media_sid(sid, index)
    created = _rfc2822(record.get("created_at"))
    return {
        "account_sid": account_sid,
        "content_type": None,
        "date_created": created,
        "date_updated": created,
        "parent_sid": sid,
        "sid": me,
        "uri": f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}/Media/{me}.json",
    }


def _service(record: Mapping[str, Any]) -> str:
    """The messaging service sid a record was sent with ('' when none)."""
    meta = record.get("meta") or {}
    return str(meta.get("twilio_messaging_service_sid") or "") if isinstance(meta, dict) else ""


async def list_messages(request: web.Request) -> web.Response:
    """A page of the SMS log as Twilio's Message list: filters ``To``, ``From``,
    ``DateSent``, ``DateSent<``, ``DateSent>``; ``PageSize``; paging links."""
    context = request.app[CONTEXT]
    twilio = _credentials(request)
    query = _list_query(request.query)
    profiles = list(context.settings.profiles)
    account = own_account(caller_of(request), None)
    before = query.position
    if query.back and before != "+":
        before = await position_above(
            context.redis, context.ledger, after=before, since=query.since,
            limit=query.size, to=query.to, match=query.matches, scan=LIST_SCAN,
            account=account,
        )  # fmt: skip
    page = await message_log(
        context.redis, context.ledger, profiles=profiles, since=query.since,
        limit=query.size, to=query.to, match=query.matches, before=before, scan=LIST_SCAN,
        account=account,
    )  # fmt: skip
    number = 0 if before == "+" else query.page
    messages = [
        message_resource(r, twilio.account_sid, messaging_service_sid=_service(r))
        for r in page.records
    ]
    start = number * query.size
    uri = query.uri(request.path)
    return json_response(
        {
            "end": start + max(len(messages), 1) - 1,
            "first_page_uri": uri(0, None),
            "messages": messages,
            "next_page_uri": uri(number + 1, _token("PA", page.next)) if page.next else None,
            "page": number,
            "page_size": query.size,
            "previous_page_uri": (
                None if before == "+" else uri(max(number - 1, 0), _token("PB", before))
            ),
            "start": start,
            "uri": uri(number, None if before == "+" else _token("PA", before)),
        }
    )


@dataclass(frozen=True, slots=True)
class _ListQuery:
    """A list request's filters and page, checked."""

    filters: list[tuple[str, str]]  # the filter parameters as given, for the page links
    to: str | None
    sender: str | None
    sent_from: float | None  # the first second a date_sent may show (inclusive)
    sent_to: float | None  # the last (inclusive)
    size: int
    page: int
    position: str  # the smslog position this page starts below ("+": the top)
    back: bool  # the page before `position` is asked for (a previous_page_uri)

    @property
    def since(self) -> float:
        """The SMS log's lower bound: a record sent at or after `sent_from` last
        changed at or after it."""
        return self.sent_from or 0.0

    def matches(self, record: Mapping[str, Any]) -> bool:
        """The filters the SMS log does not apply itself: From and the sent dates."""
        if self.sender is not None and record.get("from") != self.sender:
            return False
        if self.sent_from is None and self.sent_to is None:
            return True
        sent = next((h["at"] for h in record.get("history", []) if h["status"] == "sent"), None)
        if sent is None:
            return False
        second = int(sent)  # date_sent shows whole seconds: compare what the client sees
        return (self.sent_from is None or second >= self.sent_from) and (
            self.sent_to is None or second <= self.sent_to
        )

    def uri(self, path: str) -> Callable[[int, str | None], str]:
        """Page links: this list's filters and size, a page number and token."""

        def link(page: int, token: str | None) -> str:
            params = [*self.filters, ("PageSize", str(self.size)), ("Page", str(page))]
            if token is not None:
                params.append(("PageToken", token))
            return f"{path}?{urlencode(params)}"

        return link


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _list_query(query: Mapping[str, str]) -> _ListQuery:
    """A list request's parameters, or TwilioError 400 (20001) naming the first bad one."""
    filters = [(name, query[name]) for name in ("To", "From", "DateSent", "DateSent<",
                                                "DateSent>") if query.get(name)]  # fmt: skip
    to = sender = None
    if query.get("To"):
        try:
            to = normalise_e164(query["To"].strip())
        except ValueError as exc:
            raise _invalid("To", f"{exc} (in a URL, + is written %2B)") from None
    if query.get("From"):
        sender = query["From"].strip()
        try:
            sender = normalise_e164(sender)
        except ValueError:
            pass  # an alphanumeric sender ID or a short code: compared as given
    low: list[float] = []
    high: list[float] = []
    if query.get("DateSent"):
        day = _day(query["DateSent"], "DateSent")
        low.append(day)
        high.append(day + 86_399)
    if query.get("DateSent>"):
        low.append(_moment(query["DateSent>"], "DateSent>")[0])
    if query.get("DateSent<"):
        at, is_day = _moment(query["DateSent<"], "DateSent<")
        high.append(at + 86_399 if is_day else at)  # a date: to the end of that day
    size = _integer(query, "PageSize", PAGE_SIZE, 1)
    page = _integer(query, "Page", 0, 0)
    position, back = _read_token(query.get("PageToken"))
    if page > 0 and query.get("PageToken") is None:
        raise _invalid("Page", "a page after the first needs its PageToken (follow next_page_uri)")
    return _ListQuery(
        filters=filters,
        to=to,
        sender=sender,
        sent_from=max(low) if low else None,
        sent_to=min(high) if high else None,
        size=min(size, MAX_PAGE_SIZE),
        page=page,
        position=position,
        back=back,
    )


def _invalid(name: str, why: str) -> TwilioError:
    return TwilioError(400, _INVALID_PARAMETER, f"Invalid parameter {name}: {why}")


def _moment(text: str, name: str) -> tuple[float, bool]:
    """Unix seconds for a date (YYYY-MM-DD, GMT: its midnight) or a time with a zone
    (the SDKs send YYYY-MM-DDTHH:MM:SSZ), and whether it was a date."""
    value = text.strip()
    if _DATE.fullmatch(value):
        try:
            return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp(), True
        except ValueError:
            raise _invalid(name, f"{text!r} is not a date") from None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise _invalid(
            name, f"{text!r} is not a date (YYYY-MM-DD) or a time (YYYY-MM-DDTHH:MM:SSZ)"
        )
    return moment.timestamp(), False


def _day(text: str, name: str) -> float:
    """Midnight (GMT) starting the day of a date or of a time."""
    at, _ = _moment(text, name)
    day = datetime.fromtimestamp(at, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


def _integer(query: Mapping[str, str], name: str, default: int, least: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least or value > 1_000_000_000:
        raise _invalid(name, f"{text!r} is not a whole number of at least {least}")
    return value


def _token(kind: str, position: str) -> str:
    """A PageToken: PA (the page below a position) or PB (the page above it), then
    the position, opaque to clients."""
    return kind + base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def _read_token(token: str | None) -> tuple[str, bool]:
    """(position, back) of a PageToken; no token: the first page."""
    if token is None:
        return "+", False
    kind, encoded = token[:2], token[2:]
    try:
        position = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        parse_position(position)
    except (binascii.Error, ValueError):
        position = "+"
    if kind not in ("PA", "PB") or position == "+":
        raise _invalid("PageToken", "not a page token of this API (follow the page links)")
    return position, kind == "PB"


def _job_from_form(
    form: Mapping[str, str], media: list[str], request: web.Request
) -> tuple[dict[str, Any], str]:
    """The `Client.send` arguments for Twilio's form fields (`media`: the MediaUrl
    values, in order), and the messaging service sid ('' when none), or TwilioError
    with Twilio's code for the first problem. The media URLs are checked with the job
    (`parse_media`, as at every door)."""
    settings = request.app[CONTEXT].settings
    to = form.get("To", "").strip()
    if not to:
        raise TwilioError(400, 21604, "A 'To' phone number is required.")
    body = form.get("Body", "")
    if form.get("ContentSid"):
        raise TwilioError(400, 21619, "Content templates (ContentSid) cannot be sent here")
    if not body and not media:
        # Twilio's 21602: Body or MediaUrl, at least one.
        raise TwilioError(400, 21602, "Message body is required.")
    if len(body) > MAX_BODY:
        raise TwilioError(
            400, 21617, f"The concatenated message body exceeds the {MAX_BODY} character limit."
        )
    sender = form.get("From", "").strip()
    service = form.get("MessagingServiceSid", "").strip()
    if service:
        # A messaging service is a profile: its name is the sid (docs/twilio-api.md).
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
    job: dict[str, Any] = {"to": to, "profile": profile, "id": new_sid()}
    if body:
        job["text"] = body
    if media:
        job["media"] = media
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
    "text": (21617, "Body"),  # missing is 21602, answered before: this is the content
    "status_callback_url": (21609, "StatusCallback"),
    "send_at": (35114, "SendAt"),
    "expires_at": (21624, "ValidityPeriod"),
}


def _job_error(exc: JobError) -> TwilioError:
    """The job validation's verdict in Twilio's terms, naming Twilio's field."""
    if exc.field.startswith("media["):
        # media[1] is the second MediaUrl: Twilio's 21620 (Invalid media URL(s)).
        code, name = _INVALID_MEDIA, "MediaUrl" + exc.field.removeprefix("media")
    elif exc.field == "media":
        code, name = _TOO_MANY_MEDIA, "MediaUrl"  # the only way a form's list is wrong
    else:
        code, name = _FIELD_ERRORS.get(exc.field, (_BAD_REQUEST, exc.field or "request"))
    text = str(exc)
    # "job 0: job.to: not a valid ..." -> "To: not a valid ..."
    detail = text.split(f"job.{exc.field}: ", 1)[-1] if exc.field else text
    return TwilioError(400, code, f"{name}: {detail}")


def _account_error(exc: AccountError, service: str) -> TwilioError:
    """An account's refusal as Twilio answers a From or Messaging Service that is not
    the account's (400: 21606, 21701), naming Twilio's field."""
    detail = str(exc).split(": ", 1)[-1]
    if exc.code == SENDER_NOT_ALLOWED or not service:
        return TwilioError(400, 21606, f"From: {detail}")
    return TwilioError(400, 21701, f"MessagingServiceSid: {detail}")


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
    """A record (router/store/ledger.py `get`) as Twilio's Message resource JSON."""
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
        "num_media": str(len(_media_urls(record))),
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
