"""Messages over HTTP: send (``POST /v1/messages``), one record, and the SMS log.

A request body is checked twice, by the same rules every producer meets: first its
shape by the pydantic model the OpenAPI document shows, then each job by the wire
decoder (`router.policy.jobs.decode_job`) and its profile's checks (`router.policy.checks.JobCheck`:
template, variables, length, sender), both through `Client` and both what the worker
runs, so a job is refused here for exactly what a job on the Redis stream would be
dead-lettered for. Errors name the field:
``{"error": "messages[3].to: '+1' is not a valid E.164 number"}``,
``{"error": "messages[3].vars.code: missing variable 'code' (template 'otp')"}``,
``{"error": "media[1]: must be an absolute http:// or https:// URL"}`` (a job with
``media`` is an MMS; its text is then optional). Jobs are
enqueued with `Client.send_each` (one round trip per batch); an id that already has a
record is answered ``duplicate`` and never sent twice.

A caller that is an account (its `api_token` as the bearer token) sends as that
account: each job is admitted by it (its default profile when the job names none; a
profile or ``from`` it does not allow is 403 naming the field), then the request's
jobs are taken from its rate and daily quota: over either, 429 with ``Retry-After``
and nothing enqueued. Its messages record the account (``account``), a filter of the
SMS log; an account without the ``admin`` scope reads only its own messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Annotated, Any, Literal, get_args

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.config import JsonDict

from router.api.common import (
    CONTEXT,
    ApiError,
    caller_of,
    json_response,
    own_account,
    read_json,
    retry_after,
)
from router.api.spec import Operation, Reply, add_operations, validate
from router.client import Client, OverLimit, Refused
from router.numbers import normalise_e164
from router.policy.accounts import AccountError, Caller
from router.policy.jobs import MAX_ID_LENGTH, MAX_JOB_BYTES, MAX_LENGTHS, MAX_URL_LENGTH, JobError
from router.policy.media import MAX_MEDIA
from router.store.ledger import STATUSES
from router.store.smslog import message_log, parse_position, parse_since

__all__ = ["add_routes", "over_limit"]

log = structlog.get_logger("router.api")

MAX_BATCH = 1000
MAX_PAGE = 1000
# Events one log page may read: a narrow filter answers a short page with a cursor
# instead of reading the whole event stream in one request.
LOG_SCAN = 20_000

Status = Literal[
    "queued", "scheduled", "sending", "delivered", "expired", "failed", "rejected", "sent",
    "undelivered",
]  # fmt: skip
assert set(get_args(Status)) == set(STATUSES), "Status must list the ledger's statuses"

_TIME = WithJsonSchema(
    {
        "anyOf": [
            {"type": "number", "minimum": 0},
            {"type": "string", "maxLength": MAX_LENGTHS["send_at"]},
            {"type": "null"},
        ],
        "description": "Unix seconds, or an ISO 8601 time with a time zone.",
    }
)
_MEDIA = WithJsonSchema(
    {
        "anyOf": [
            {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_MEDIA,
                "items": {
                    "type": "string",
                    "maxLength": MAX_URL_LENGTH,
                    # An absolute http(s) URL without spaces or control characters
                    # (the outline of `parse_media`'s checks, which decide).
                    "pattern": r"^https?://[^\s/?#\x00-\x1f]+([/?#][^\s\x00-\x1f]*)?$",
                },
            },
            {"type": "null"},
        ],
        "description": f"An MMS: 1 to {MAX_MEDIA} http(s) URLs of its media (images, audio, "
        "video, vCards); `text` is then optional. A bad one is refused naming it "
        "(`media[1]: ...`).",
    }
)
_MAP: JsonDict = {
    "type": "object",
    "description": "Free-form JSON object (at most 8 levels, 8 KiB).",
}


def _text(name: str, description: str) -> Any:
    return Field(None, description=description, json_schema_extra={"maxLength": MAX_LENGTHS[name]})


class Job(BaseModel):
    """One message to send: the fields of the Redis wire format (docs/wire-format.md)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, title="Job")
    id: str | None = Field(
        None,
        description="Idempotency key: a second job with this id is never sent "
        "(default: generated).",
        json_schema_extra={"maxLength": MAX_ID_LENGTH},
    )
    to: str = Field(
        description="Destination in E.164 (+14155552671).",
        json_schema_extra={"maxLength": MAX_LENGTHS["to"]},
    )
    text: str | None = Field(None, description="The text; or give `template`.")
    template: str | None = _text("template", "A template of the configuration.")
    vars: dict[str, Any] | None = Field(None, json_schema_extra=_MAP)
    lang: str | None = _text("lang", "The template's language (BCP 47).")
    from_: str | None = Field(
        None,
        alias="from",
        description="A sender number of the profile (default: its sender strategy).",
        json_schema_extra={"maxLength": MAX_LENGTHS["from"]},
    )
    profile: str | None = _text("profile", "The profile (default: the global one).")
    use_case: str | None = _text("use_case", "The campaign use case.")
    send_at: Annotated[Any, _TIME] = None
    expires_at: Annotated[Any, _TIME] = None
    status_callback_url: str | None = Field(
        None,
        description="POSTed every status change of this message.",
        json_schema_extra={"maxLength": MAX_URL_LENGTH},
    )
    meta: dict[str, Any] | None = Field(None, json_schema_extra=_MAP)
    # Checked by the wire decoder (`parse_media`), not here: its words name the URL
    # (``media[1]: must be an absolute http:// or https:// URL``) whichever door.
    media: Annotated[Any, _MEDIA] = None


class Batch(BaseModel):
    """Several jobs, enqueued in one round trip."""

    model_config = ConfigDict(extra="forbid", title="Batch")
    messages: list[Job] = Field(min_length=1, max_length=MAX_BATCH)


class Accepted(BaseModel):
    """A job taken: `queued`, or `duplicate` when its id had a record already (the
    earlier job stands; nothing new is sent)."""

    id: str
    status: Literal["queued", "duplicate"]


class BatchAccepted(BaseModel):
    """Each job of a batch, in order, and the counts."""

    messages: list[Accepted]
    queued: int
    duplicates: int


class Step(BaseModel):
    """One status change of a message."""

    status: str
    at: float
    note: str
    connector: str | None = None  # the connector the attempt went over (outcomes, retries)


class MessageRecord(BaseModel):
    """A message record with its history (``sms-router status --json``). Other
    fields appear as the message goes (provider ids, delivery report details)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    id: str
    status: str
    history: list[Step]
    profile: str | None = None
    to: str | None = None
    from_: str | None = Field(None, alias="from")
    text: str | None = None
    attempts: int | None = None
    segments: int | None = None
    created_at: float | None = None
    updated_at: float | None = None
    meta: Any = None
    error: str | None = None
    error_code: str | None = None
    provider_message_id: str | None = None
    connector: str | None = None  # the latest attempt's connector
    account: str | None = None  # the account that submitted it, when one did
    media: list[str] | None = Field(None, description="An MMS's media URLs.")
    num_media: int | None = Field(None, description="How many media URLs (an MMS only).")
    mms: str | None = Field(
        None,
        description="How an MMS went, once sending: `mms`, or `link` (as an SMS with links "
        "to its media: the profile's `mms_fallback`).",
    )


class LogQuery(BaseModel):
    """Filters of the SMS log; pass the same ones again with `cursor`."""

    model_config = ConfigDict(extra="forbid")
    profile: str | None = Field(None, description="Only this profile's messages.")
    status: Status | None = Field(None, description="Only messages now in this status.")
    to: str | None = Field(None, description="Only messages to this number (E.164).")
    account: str | None = Field(
        None,
        description="Only messages this account submitted (an account without the "
        "`admin` scope always reads only its own).",
    )
    since: str | None = Field(
        None,
        description="Changed since: a duration back from now (90s, 15m, 2h, 1d) or an "
        "ISO 8601 time (default: everything kept).",
    )
    limit: int = Field(100, ge=1, le=MAX_PAGE, description="Records per page.")
    cursor: str | None = Field(None, description="`next_cursor` of the previous page.")


class MessagePage(BaseModel):
    """One page of the SMS log, newest change first."""

    messages: list[MessageRecord]
    next_cursor: str | None = Field(description="Pass it as `cursor` for the next page.")


async def post_messages(request: web.Request) -> web.Response:
    """Enqueue one job or a batch."""
    body = await read_json(request)
    client = request.app[CONTEXT].client
    caller = caller_of(request)
    if isinstance(body, dict) and "messages" in body:
        return await _post_batch(client, body, caller)
    validate(Job, body)
    try:
        # Concurrent single-job requests share one Redis call.
        job_id, queued = await client.send_coalesced(body, caller=caller)
    except JobError as exc:
        raise ApiError(400, _job_problem(exc, "")) from None
    except AccountError as exc:
        raise ApiError(403, str(exc)) from None
    except OverLimit as exc:
        raise over_limit(exc) from None
    # `Accepted`, written directly: this answer is the hot path of single submits.
    status = b'","status":"queued"}' if queued else b'","status":"duplicate"}'
    return web.Response(body=b'{"id":"' + _json_text(job_id) + status, status=202,
                        content_type="application/json", charset="utf-8")  # fmt: skip


def _json_text(text: str) -> bytes:
    """`text` inside a JSON string (without the quotes)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text.encode()
    return json.dumps(text)[1:-1].encode()


async def _post_batch(client: Client, body: dict[str, Any], caller: Caller | None) -> web.Response:
    validate(Batch, body)
    # The wire decoder gets the jobs as sent, not as the model parsed them.
    jobs: list[dict[str, Any]] = body["messages"]
    try:
        taken = await client.send_each(jobs, caller=caller)
    except JobError:
        index, problem = client.problems(jobs, caller=caller)[0]
        raise ApiError(400, _job_problem(problem, f"messages[{index}]")) from None
    except Refused as exc:
        raise ApiError(403, f"messages[{exc.index}].{exc}") from None
    except OverLimit as exc:
        raise over_limit(exc) from None
    accepted = [Accepted(id=i, status="queued" if ok else "duplicate") for i, ok in taken]
    queued = sum(1 for a in accepted if a.status == "queued")
    answer = BatchAccepted(messages=accepted, queued=queued, duplicates=len(accepted) - queued)
    return json_response(answer.model_dump(), 202)


def over_limit(exc: OverLimit) -> ApiError:
    """An account over its rate or quota: 429 naming the limit, with ``Retry-After``."""
    limited = exc.limited
    log.debug("api: account over a limit", code=limited.code, reason=limited.reason)
    return ApiError(
        429, f"account: {limited.reason}", headers={"Retry-After": retry_after(limited.retry_after)}
    )


def _job_problem(exc: JobError, where: str) -> str:
    """A wire decoder's error (``job.to: ...``) as the API's ``messages[3].to: ...``."""
    message = str(exc)
    if exc.field:
        message = message.removeprefix(f"job.{exc.field}: ")
        return f"{where}.{exc.field}: {message}" if where else f"{exc.field}: {message}"
    return f"{where}: {message}" if where else message


async def get_message(request: web.Request) -> web.Response:
    """One message record with its history."""
    job_id = request.match_info["id"]
    context = request.app[CONTEXT]
    record = await context.ledger.get(job_id, profiles=list(context.settings.profiles))
    mine = own_account(caller_of(request), None)
    if record is None or (mine is not None and record.get("account") != mine):
        # Another account's message is as unknown to this caller as a missing one.
        raise ApiError(404, f"id: no message {job_id!r}")
    return json_response(_record(record))


def _record(record: dict[str, Any]) -> dict[str, Any]:
    # The callback URL may carry a token: a `read` key does not get to see it.
    record.pop("status_callback_url", None)
    return MessageRecord.model_validate(record).model_dump(by_alias=True, exclude_unset=True)


async def list_messages(request: web.Request) -> web.Response:
    """A page of the SMS log."""
    context = request.app[CONTEXT]
    query = validate(LogQuery, dict(request.query))
    account = own_account(caller_of(request), query.account)
    if query.profile is not None and query.profile not in context.settings.profiles:
        raise ApiError(400, f"profile: unknown profile {query.profile!r}")
    to = None
    if query.to is not None:
        try:
            to = normalise_e164(query.to)
        except ValueError as exc:
            raise ApiError(400, f"to: {exc}") from None
    if query.cursor is not None:
        before, since = _read_cursor(query.cursor)
    else:
        before, since = "+", 0.0
        if query.since is not None:
            try:
                since = parse_since(query.since)
            except ValueError as exc:
                raise ApiError(400, f"since: {exc}") from None
    page = await message_log(
        context.redis,
        context.ledger,
        profiles=list(context.settings.profiles),
        since=since,
        limit=query.limit,
        profile=query.profile,
        status=query.status,
        to=to,
        account=account,
        before=before,
        scan=LOG_SCAN,
    )
    cursor = _cursor(page.next, since) if page.next else None
    return json_response({"messages": [_record(r) for r in page.records], "next_cursor": cursor})


_CURSOR = re.compile(r"([^|]{1,20000})\|(\d{1,20}(?:\.\d{1,6})?)")


def _cursor(position: str, since: float) -> str:
    """Opaque to callers: where the page ended and the `since` it was asked with
    (a duration must not slide between pages)."""
    raw = f"{position}|{since:.3f}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_cursor(cursor: str) -> tuple[str, float]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, ValueError):
        raw = ""
    match = _CURSOR.fullmatch(raw)
    try:
        if match is None:
            raise ValueError(raw)
        parse_position(match.group(1))
    except ValueError:
        raise ApiError(400, "cursor: not a next_cursor of this API") from None
    return match.group(1), float(match.group(2))


def add_routes(app: web.Application) -> None:
    """Register the message endpoints."""
    add_operations(
        app,
        [
            Operation(
                "POST",
                "/v1/messages",
                "Send one message or a batch",
                post_messages,
                {
                    202: Reply("Accepted: each job queued, or a duplicate of an earlier id.",
                               Accepted | BatchAccepted),
                    400: Reply("A job is malformed, or its profile would refuse it (unknown "
                               "template, missing variable, more parts than max_segments, "
                               "a sender it does not own, a media URL that is not an http(s) "
                               "URL); the error names it and its field."),
                    403: Reply("The caller's account may not send through that profile or "
                               "from that sender; the error names the job and field."),
                    429: Reply("The caller's account is over its rate (tps) or its daily "
                               "quota: nothing was enqueued; Retry-After says when to try "
                               "again (seconds)."),
                },
                scope="send",
                body=Job | Batch,
                examples={
                    "one": {"to": "+14155552671", "text": "Your code is 123456", "id": "otp-1"},
                    "mms": {"to": "+14155552671", "text": "Your receipt",
                            "media": ["https://example.com/receipt.png"]},
                    "batch": {"messages": [{"to": "+14155552671", "text": "Hello"},
                                           {"to": "+14155552671", "template": "otp",
                                            "vars": {"code": "123456"}, "lang": "es"}]},
                },
                description="A body with `messages` is a batch of 1 to "
                f"{MAX_BATCH} jobs (all or none are taken); any other is one job. A job "
                f"takes at most {MAX_JOB_BYTES} bytes.",
            ),
            Operation(
                "GET",
                "/v1/messages",
                "The SMS log, paginated",
                list_messages,
                {
                    200: Reply("A page; `next_cursor` null on the last.", MessagePage),
                    400: Reply("A bad filter or cursor."),
                    403: Reply("An account asked for another account's messages."),
                },
                scope="read",
                query=LogQuery,
            ),
            Operation(
                "GET",
                "/v1/messages/{id}",
                "One message record with its history",
                get_message,
                {200: Reply("The record.", MessageRecord), 404: Reply("No such message.")},
                scope="read",
            ),
        ],
    )  # fmt: skip
