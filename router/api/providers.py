"""Providers reporting back over HTTP: Twilio's status callbacks and inbound messages,
and generic Web-URL providers' delivery-report webhooks.

- ``POST /v1/providers/{profile}/status``: Twilio's StatusCallback. Verified with
  ``X-Twilio-Signature`` (`twilio_signature`), its MessageStatus mapped to ours and
  applied by provider message id through the same path as SMPP receipts
  (`router.engine.receipts.Reports.apply`, early reports included).
- ``POST /v1/providers/{profile}/inbound``: an inbound message, SMS or MMS, served by
  the carrier's protocol. Twilio's incoming-message webhook, verified the same way, its
  media read from ``NumMedia``, ``MediaUrlN`` and ``MediaContentTypeN``, answered with
  empty TwiML; or a Web-URL provider's, read as ``[profiles.P.http.inbound]`` says and
  authenticated as its reports are. Either is stored through
  `router.engine.inbound.Inbound.handle_text` (keywords, the callback_url post, the
  event stream), media and all.
- ``POST /v1/providers/{profile}/report``: a Web-URL provider's delivery report, read
  as ``[profiles.P.http.reports]`` says and authenticated by a shared token or an
  HMAC-SHA256 of the body.

No bearer token here: each request is authenticated by its provider's signature or
secret. The daemon registers each profile's `ProviderHooks` in the API context
(`PROVIDERS` in `ApiContext.extras`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import structlog
from aiohttp import web
from multidict import MultiDictProxy

from router.api.common import CONTEXT, ApiContext, ApiError, json_response
from router.api.forward import in_daemon
from router.config import (
    Connector,
    Profile,
    Settings,
    TwilioSection,
    WebhookInbound,
    WebhookReports,
)
from router.engine.inbound import MediaItem
from router.policy.media import MAX_MEDIA, MediaFieldError, parse_media

__all__ = [
    "PROVIDERS",
    "TWILIO_STATUSES",
    "ProviderHooks",
    "add_routes",
    "providers_of",
    "status_callback_url",
    "twilio_signature",
    "verify_twilio",
]

log = structlog.get_logger("router.api_providers")

PROVIDERS: Final = "providers"  # key in ApiContext.extras: {profile: ProviderHooks}
EMPTY_TWIML: Final = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
MAX_CONTENT_TYPE: Final = 255  # characters of an inbound medium's content type
# A media type as providers write it (image/jpeg, text/vcard; charset=utf-8): printable
# ASCII, no line breaks that could reach a header or a log line.
_CONTENT_TYPE: Final = re.compile(r"[\w.+-]+/[\w.+-]+(;[ -~]*)?", re.ASCII)

# Twilio's MessageStatus -> the final status a report writes. The others (queued,
# accepted, scheduled, sending, sent, receiving, received) change nothing: the record
# is `sent` once Twilio answered with a sid. `read` (WhatsApp) implies delivered.
TWILIO_STATUSES: Final = {
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "canceled": "failed",
}


class ReportSink(Protocol):
    """Takes a provider's delivery report (a profile's `Reports`, or a shared
    connector's `SharedDeliveries`, which finds the profile)."""

    async def apply(self, candidates: Sequence[str], outcome: str, stat: str, err: str) -> None:
        """Apply one report to the message indexed under one of `candidates`."""


class TextInbound(Protocol):
    """Takes a provider's inbound message (a profile's `Inbound`, or a shared
    connector's `SharedDeliveries`)."""

    async def handle_text(
        self, source: str, destination: str, text: str, media: Sequence[MediaItem] = ()
    ) -> None:
        """Store one inbound message (an MMS with its (url, content type) `media`)."""


@dataclass(frozen=True, slots=True)
class ProviderHooks:
    """What the provider webhooks of a profile's own connector (or of a shared
    ``[connectors]`` entry, under its name) feed: delivery reports and, for Twilio or
    a Web-URL provider with ``http.inbound``, inbound messages."""

    reports: ReportSink
    inbound: TextInbound | None = None


def providers_of(context: ApiContext) -> dict[str, ProviderHooks]:
    """The context's profile -> hooks table (created empty on first use)."""
    table: dict[str, ProviderHooks] = context.extras.setdefault(PROVIDERS, {})
    return table


def status_callback_url(settings: Settings, profile: str, port: int | None = None) -> str | None:
    """The StatusCallback a Twilio profile sends: ``{public base}/v1/providers/{profile}/
    status``, the base being `[api] public_url`, else ``http://`` + `[api] listen` (with
    `port`, the port actually bound, when listen asks for port 0). None without an API."""
    api = settings.api
    if api.public_url:
        base = api.public_url.rstrip("/")
    elif api.listen is not None:
        host, listen_port = api.address
        if ":" in host:
            host = f"[{host}]"
        base = f"http://{host}:{port or listen_port}"
    else:
        return None
    return f"{base}/v1/providers/{profile}/status"


# ---------------------------------------------------------------- Twilio signatures


def twilio_signature(url: str, params: Iterable[tuple[str, str]], auth_token: str) -> str:
    """Twilio's X-Twilio-Signature: base64 HMAC-SHA1 (keyed with the auth token) of the
    URL followed by each POST parameter, sorted by name, as name + value (a repeated
    name's distinct values sorted too, as Twilio's RequestValidator does)."""
    grouped: dict[str, set[str]] = {}
    for name, value in params:
        grouped.setdefault(name, set()).add(value)
    data = url + "".join(
        name + value for name in sorted(grouped) for value in sorted(grouped[name])
    )
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _port_forms(url: str) -> list[str]:
    """`url` without and with its port: Twilio signs either, depending on the request."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    bare = urlunsplit(parts._replace(netloc=prefix + host))
    ported = urlunsplit(parts._replace(netloc=f"{prefix}{host}:{port}"))
    return [bare, ported]


def verify_twilio(url: str, params: Iterable[tuple[str, str]], auth_token: str, given: str) -> bool:
    """Whether `given` is Twilio's signature of this request (compared in constant time,
    with and without the URL's port)."""
    items = list(params)
    ok = False
    for form in _port_forms(url):
        expected = twilio_signature(form, items, auth_token)
        ok |= hmac.compare_digest(expected.encode(), given.strip().encode())
    return ok


def _called_url(request: web.Request, settings: Settings) -> str:
    """The URL Twilio called: `[api] public_url` + path and query when set (a proxy
    in front changes host and scheme), else the request's own."""
    public = settings.api.public_url
    if public:
        return public.rstrip("/") + request.raw_path
    return f"{request.scheme}://{request.host}{request.raw_path}"


async def _twilio_request(
    request: web.Request,
) -> tuple[str, ProviderHooks, MultiDictProxy[str]]:
    """The profile, its hooks and the verified POST parameters; ApiError otherwise."""
    context = request.app[CONTEXT]
    name = request.match_info["profile"]
    carrier = _carrier(context.settings, name)
    if carrier is None or carrier.twilio is None:
        raise ApiError(404, f"profile: no Twilio profile or connector named {name!r}")
    hooks = providers_of(context).get(name)
    if hooks is None:
        raise ApiError(503, f"profile {name}: not started yet, try again")
    params = await _form(request)
    _check_twilio_signature(request, context.settings, carrier.twilio, params)
    return name, hooks, params


def _carrier(settings: Settings, name: str) -> Profile | Connector | None:
    """The profile with an own connector, or the ``[connectors]`` entry, named `name`
    (the webhook paths name either; config keeps the names apart)."""
    profile = settings.profiles.get(name)
    if profile is not None and profile.protocol is not None:
        return profile
    return settings.connectors.get(name)


def _check_twilio_signature(
    request: web.Request, settings: Settings, twilio: TwilioSection, params: MultiDictProxy[str]
) -> None:
    given = request.headers.get("X-Twilio-Signature")
    if not given:
        raise ApiError(403, "X-Twilio-Signature: missing")
    url = _called_url(request, settings)
    token = twilio.auth_token.get_secret_value()
    if not verify_twilio(url, params.items(), token, given):
        log.warning("twilio webhook with a bad signature refused", path=request.path, url=url)
        raise ApiError(403, "X-Twilio-Signature: does not match this request")


async def _form(request: web.Request) -> MultiDictProxy[str]:
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        raise
    except ValueError as exc:
        raise ApiError(400, f"body: not a form ({exc})") from None
    # Twilio sends no files; a file part cannot be signed as text, so it is refused.
    if any(not isinstance(value, str) for value in form.values()):
        raise ApiError(400, "body: file parts are not accepted")
    return form  # type: ignore[return-value]


@in_daemon  # the receipt handlers live in the daemon
async def twilio_status(request: web.Request) -> web.Response:
    """Twilio's StatusCallback: a message's status changed."""
    name, hooks, params = await _twilio_request(request)
    sid = params.get("MessageSid") or params.get("SmsSid")
    status = params.get("MessageStatus") or params.get("SmsStatus")
    if not sid:
        raise ApiError(400, "MessageSid: required")
    if not status:
        raise ApiError(400, "MessageStatus: required")
    outcome = TWILIO_STATUSES.get(status)
    if outcome is None:
        log.debug("twilio intermediate status", profile=name, sid=sid, status=status)
        return web.Response(status=200)
    error = params.get("ErrorCode") or ""
    await hooks.reports.apply([sid], outcome, status, error or "0")
    log.debug("twilio status applied", profile=name, sid=sid, status=status, error=error)
    return web.Response(status=200)


@in_daemon
async def provider_inbound(request: web.Request) -> web.Response:
    """An inbound message from the carrier the path names, by its protocol: Twilio's
    webhook, or a Web-URL provider's as its ``http.inbound`` says."""
    name = request.match_info["profile"]
    carrier = _carrier(request.app[CONTEXT].settings, name)
    if carrier is not None and carrier.protocol == "twilio" and carrier.twilio is not None:
        return await _twilio_inbound(request)
    if carrier is not None and carrier.protocol == "http" and carrier.http is not None:
        if carrier.http.inbound is not None:
            return await _web_inbound(request, name, carrier.http.inbound)
        raise ApiError(
            404,
            f"profile {name}: a Web-URL carrier without http.inbound takes no inbound "
            f"webhook (set [profiles.{name}.http.inbound] or [connectors.{name}.http.inbound])",
        )
    if carrier is not None:
        raise ApiError(
            404,
            f"profile {name}: protocol {carrier.protocol} has no inbound webhook "
            "(only twilio, and http with http.inbound)",
        )
    raise ApiError(404, f"profile: no profile or connector named {name!r} with its own carrier")


async def _twilio_inbound(request: web.Request) -> web.Response:
    """Twilio's incoming-message webhook: store it like an SMPP MO (an MMS with its
    media, its Body possibly empty), answer empty TwiML."""
    name, hooks, params = await _twilio_request(request)
    source = params.get("From")
    destination = params.get("To")
    if not source:
        raise ApiError(400, "From: required")
    if not destination:
        raise ApiError(400, "To: required")
    media = _twilio_media(params)
    if hooks.inbound is None:
        raise ApiError(404, f"profile {name}: takes no inbound messages")
    await hooks.inbound.handle_text(source, destination, params.get("Body") or "", media)
    log.debug("twilio inbound stored", profile=name, num_media=len(media))
    return web.Response(text=EMPTY_TWIML, content_type="text/xml")


def _twilio_media(params: MultiDictProxy[str]) -> list[MediaItem]:
    """An MMS's media as Twilio posts them: ``NumMedia``, then ``MediaUrl0`` ... and
    ``MediaContentType0`` ... (no NumMedia: none)."""
    count = params.get("NumMedia") or "0"
    if not (count.isascii() and count.isdigit()) or int(count) > MAX_MEDIA:
        raise ApiError(
            400, f"NumMedia: must be a whole number from 0 to {MAX_MEDIA}, not {count[:20]!r}"
        )
    return [
        _medium(
            f"MediaUrl{i}",
            params.get(f"MediaUrl{i}"),
            f"MediaContentType{i}",
            params.get(f"MediaContentType{i}"),
        )
        for i in range(int(count))
    ]


def _medium(url_field: str, url: Any, type_field: str, content_type: Any) -> MediaItem:
    """One inbound medium checked, or ApiError naming the field: an absolute http(s)
    URL of at most 2,048 characters (as a job's media, `parse_media`), and a content
    type of at most `MAX_CONTENT_TYPE` characters, or none."""
    if not isinstance(url, str) or not url:
        raise ApiError(400, f"{url_field}: required, an http(s) URL")
    try:
        parse_media([url])
    except MediaFieldError as exc:
        raise ApiError(400, f"{url_field}: {exc.problem}") from None
    if content_type is None or content_type == "":
        return url, None
    if (
        not isinstance(content_type, str)
        or len(content_type) > MAX_CONTENT_TYPE
        or not _CONTENT_TYPE.fullmatch(content_type)
    ):
        raise ApiError(
            400,
            f"{type_field}: must be a media type such as image/jpeg, "
            f"at most {MAX_CONTENT_TYPE} characters",
        )
    return url, content_type


# ---------------------------------------------------------------- Web-URL webhooks


def _check_secret(request: web.Request, body: bytes, spec: WebhookReports | WebhookInbound) -> None:
    secret = spec.secret.get_secret_value().encode()
    if spec.check == "token":
        given = request.headers.get("X-Webhook-Token")
        if not given:
            raise ApiError(401, "X-Webhook-Token: missing")
        if not hmac.compare_digest(given.strip().encode(), secret):
            raise ApiError(403, "X-Webhook-Token: wrong token")
        return
    signature = request.headers.get("X-Signature")
    if not signature:
        raise ApiError(401, "X-Signature: missing")
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    given = signature.strip().lower().removeprefix("sha256=")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(403, "X-Signature: does not match the body")


def _fields(request: web.Request, body: bytes) -> Any:
    """The body as JSON (a JSON content type) or as form fields: a field given once is
    its value, one given more than once the list of its values (an MMS's media)."""
    text = body.decode("utf-8", errors="replace")
    if request.content_type == "application/json" or request.content_type.endswith("+json"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ApiError(400, f"body: not valid JSON ({exc})") from None
    fields: dict[str, Any] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        given = fields.get(name)
        if given is None:
            fields[name] = value
        else:
            fields[name] = [*given, value] if isinstance(given, list) else [given, value]
    return fields


def _node(data: Any, path: str) -> Any:
    """What is at `path` (None: nothing): a form field's name, or a dotted path into
    JSON (numeric segments index lists)."""
    if isinstance(data, Mapping) and path in data:
        return data[path]
    node: Any = data
    for segment in path.split("."):
        if isinstance(node, Mapping) and segment in node:
            node = node[segment]
        elif isinstance(node, list) and segment.isdigit() and int(segment) < len(node):
            node = node[int(segment)]
        else:
            return None
    return node


def _pick(data: Any, path: str, setting: str, *, required: bool = True) -> str:
    """The single value (text or a number) at `path`; `setting` (``http.reports.id_field``)
    is named when it is missing."""
    node = _node(data, path)
    if isinstance(node, bool) or not isinstance(node, str | int | float) or node == "":
        if required:
            raise ApiError(400, f"{path}: missing from the body, or not one value ({setting})")
        return ""
    return str(node)


@in_daemon
async def web_report(request: web.Request) -> web.Response:
    """A Web-URL provider's delivery report for one message."""
    context = request.app[CONTEXT]
    name = request.match_info["profile"]
    carrier = _carrier(context.settings, name)
    spec = carrier.http.reports if carrier is not None and carrier.http is not None else None
    if spec is None:
        raise ApiError(
            404,
            f"profile: no profile or connector {name!r} with http.reports "
            f"([profiles.{name}.http.reports] or [connectors.{name}.http.reports])",
        )
    body = await request.read()
    _check_secret(request, body, spec)
    hooks = providers_of(context).get(name)
    if hooks is None:
        raise ApiError(503, f"profile {name}: not started yet, try again")
    data = _fields(request, body)
    provider_id = _pick(data, spec.id_field, "http.reports.id_field")
    value = _pick(data, spec.status_field, "http.reports.status_field")
    ours = spec.statuses.get(value)
    if ours is None:
        raise ApiError(
            400,
            f"{spec.status_field}: unknown status {value!r} "
            f"(not in {name}'s http.reports.statuses)",
        )
    if ours == "sent":
        return json_response({"status": "ok", "applied": False})
    error = (
        _pick(data, spec.error_field, "http.reports.error_field", required=False)
        if spec.error_field
        else ""
    )
    await hooks.reports.apply([provider_id], ours, value, error or "0")
    log.debug("web report applied", profile=name, provider_id=provider_id, status=ours)
    return json_response({"status": "ok", "applied": True})


async def _web_inbound(request: web.Request, name: str, spec: WebhookInbound) -> web.Response:
    """A Web-URL provider's inbound message (an MMS with its media): authenticated and
    read as `spec` says, stored; answered ``{"status": "ok", "num_media": N}``."""
    body = await request.read()
    _check_secret(request, body, spec)
    hooks = providers_of(request.app[CONTEXT]).get(name)
    if hooks is None:
        raise ApiError(503, f"profile {name}: not started yet, try again")
    data = _fields(request, body)
    source = _pick(data, spec.from_field, "http.inbound.from_field")
    destination = _pick(data, spec.to_field, "http.inbound.to_field")
    media = _web_media(data, spec)
    text = ""
    if spec.text_field:
        # Media alone make a message; without any, a missing text is a misread body.
        text = _pick(data, spec.text_field, "http.inbound.text_field", required=not media)
    if hooks.inbound is None:
        raise ApiError(404, f"profile {name}: takes no inbound messages")
    await hooks.inbound.handle_text(source, destination, text, media)
    log.debug("web inbound stored", profile=name, num_media=len(media))
    return json_response({"status": "ok", "num_media": len(media)})


def _web_media(data: Any, spec: WebhookInbound) -> list[MediaItem]:
    """The media at `spec.media_field`: a list of URLs or of objects (the URL under
    `media_url_key`, the content type under `media_type_key`). In a form body, the
    field repeated (one URL each) or a JSON-encoded list; a single URL is one medium."""
    path = spec.media_field
    node = _node(data, path) if path else None
    if path is None or node is None or node == "":
        return []
    if isinstance(node, str):
        if not node.lstrip().startswith("["):
            node = [node]
        else:
            try:
                node = json.loads(node)
            except ValueError as exc:
                raise ApiError(400, f"{path}: not a JSON list ({exc})") from None
    if not isinstance(node, list):
        raise ApiError(
            400, f"{path}: must be a list of URLs or of objects with {spec.media_url_key!r}"
        )
    if len(node) > MAX_MEDIA:
        raise ApiError(400, f"{path}: at most {MAX_MEDIA} media, not {len(node)}")
    media: list[MediaItem] = []
    for index, item in enumerate(node):
        where = f"{path}[{index}]"
        if isinstance(item, Mapping):
            url_field = f"{where}.{spec.media_url_key}"
            type_field = f"{where}.{spec.media_type_key}"
            media.append(
                _medium(
                    url_field,
                    item.get(spec.media_url_key),
                    type_field,
                    item.get(spec.media_type_key),
                )
            )
        else:
            media.append(_medium(where, item, where, None))
    return media


def add_routes(app: web.Application) -> None:
    """Register the provider webhooks."""
    app.router.add_post("/v1/providers/{profile}/status", twilio_status)
    app.router.add_post("/v1/providers/{profile}/inbound", provider_inbound)
    app.router.add_post("/v1/providers/{profile}/report", web_report)
