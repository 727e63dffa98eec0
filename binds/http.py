"""The Web-URL bind: sends each message as one HTTP request to a provider.

What the request looks like comes from an `HttpSpec` whose url, form fields, JSON
leaves and headers are templates with ``{from}``, ``{to}``, ``{text}``, ``{id}``
and ``{secret:NAME}`` (``{{``/``}}`` are literal braces). Templates are checked
and compiled when the spec is built, so a typo fails at start-up, not per message.

An MMS's media URLs: ``{media}`` is them separated by commas and ``{media_json}`` a
JSON array of them, except where a whole value is the placeholder alone: a form field
(or a GET's query field) ``{media}`` is sent once per URL (``MediaUrl=a&MediaUrl=b``,
as Twilio takes them; not at all for an SMS), and a JSON leaf ``{media}`` or
``{media_json}`` becomes the array itself. A spec whose templates use either carries
media (`HttpSpec.carries_media`); the router sends an MMS only over such a bind.
"""

from __future__ import annotations

import json as jsonlib
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
from yarl import URL

from .base import (
    Accepted,
    BindConfigError,
    BindError,
    Done,
    Failed,
    OutboundMessage,
    Outcome,
    Retry,
    TaskSends,
)
from .flow import RateLimiter, Window

__all__ = ["HttpSender", "HttpSpec"]

METHODS = ("GET", "POST", "PUT")
RAW_LIMIT = 500  # characters of provider output kept in an outcome's `raw`
REASON_BODY_LIMIT = 120  # characters of provider output quoted in a failure reason
SECRET_MIN_LEN = 4  # shorter "secrets" would redact innocent text everywhere

_FIELDS = frozenset({"from", "to", "text", "id", "media", "media_json"})
_MEDIA_FIELDS = frozenset({"media", "media_json"})
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
# Characters left alone in the literal parts of a url template: URL syntax and
# existing %XX escapes. Anything else (spaces, non-ASCII) is percent-encoded once.
_URL_LITERAL_SAFE = "!#$%&'()*+,/:;=?@[]~"


@dataclass(frozen=True, kw_only=True)
class HttpSpec:
    """How one provider wants its requests (see the module docstring for templates).

    `message_id` picks the provider's id out of a successful response:
    ``json:<dotted.path>`` (numeric segments index lists), ``regex:<pattern>``
    (the group named ``id``, else the only group, else the whole match) or ``""``.
    With `sync` the bind keeps one request in flight whatever `window` says.
    A ``GET`` sends `form` fields, if any, in the query string.
    At most `max_response_bytes` of an answer are read; a longer one is judged by
    its status (and whatever id the first bytes hold), the rest is never read.
    """

    url: str
    method: str = "POST"
    form: Mapping[str, str] | None = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    success_status: tuple[int, ...] = (200, 201, 202)
    message_id: str = ""
    timeout: float = 10.0
    max_response_bytes: int = 65_536
    window: int = 10
    tps: float = 0.0
    sync: bool = False
    # Kept out of repr so a logged spec never shows them.
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    _compiled: _Compiled = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", str(self.method).upper())
        object.__setattr__(self, "_compiled", _compile_spec(self))

    @property
    def carries_media(self) -> bool:
        """Whether requests made from this spec carry an MMS's media."""
        return uses_media(self.url, self.form, self.json, self.headers)


def uses_media(*templates: object) -> bool:
    """Whether any string in `templates` (strings, or tables and lists of them, as a
    spec's url, form, json and headers) has a ``{media}`` or ``{media_json}``
    placeholder."""
    for node in templates:
        if isinstance(node, str):
            if any(m.group(1) in _MEDIA_FIELDS for m in _TOKEN.finditer(node)):
                return True
        elif isinstance(node, Mapping):
            if uses_media(*node.values()):
                return True
        elif isinstance(node, list | tuple) and uses_media(*node):
            return True
    return False


class HttpSender:
    """A `Bind` that posts each message to a Web-URL provider over a pooled session."""

    def __init__(
        self, name: str, spec: HttpSpec, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.name = name
        self.spec = spec
        self._session = session
        self._owns_session = False
        self._window = Window(1 if spec.sync else spec.window)
        self._limiter = RateLimiter(spec.tps)
        self._timeout = aiohttp.ClientTimeout(total=spec.timeout)
        self._sends = TaskSends()
        self.throttles = 0  # answers 429 Too Many Requests (metrics)

    @property
    def window(self) -> int:
        """Most requests kept in flight (1 in sync mode)."""
        return self._window.limit

    @property
    def in_flight(self) -> int:
        """Requests holding a window slot now."""
        return self._window.in_flight

    @property
    def ready(self) -> bool:
        """Always: every request opens (or reuses) its own connection."""
        return True

    async def start(self) -> None:
        """Open the connection pool, unless a session was passed in."""
        if self._session is not None:
            return
        # One kept-alive connection per window slot: never more sockets than requests.
        connector = aiohttp.TCPConnector(limit=self.window, keepalive_timeout=30.0)
        self._session = aiohttp.ClientSession(connector=connector)
        self._owns_session = True

    def send(self, message: OutboundMessage, done: Done) -> None:
        """`submit` in a task of its own (see `TaskSends`)."""
        self._sends.send(self.submit, message, done)

    async def close(self) -> None:
        """Cancel sends in progress; close the pool if this sender opened it."""
        await self._sends.cancel_all()
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()
        self._owns_session = False

    def redact(self, text: str) -> str:
        """`text` with every secret value (and its URL/JSON-escaped forms) as ``***``."""
        for secret in self.spec._compiled.redactions:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    async def submit(self, message: OutboundMessage) -> Outcome:
        """Send one message and map the provider's answer to an outcome."""
        session = self._session
        if session is None:
            raise BindError(f"http bind {self.name!r} is not started")
        async with self._window.slot():
            await self._limiter.acquire()
            return await self._send(session, message)

    async def _send(self, session: aiohttp.ClientSession, message: OutboundMessage) -> Outcome:
        compiled = self.spec._compiled
        values = {
            "from": message.source,
            "to": message.destination,
            "text": message.text,
            "id": message.id,
        }
        if compiled.media:
            values["media"] = ",".join(message.media)
            values["media_json"] = jsonlib.dumps(list(message.media), separators=(",", ":"))
        try:
            request = compiled.build(values, message.media)
        except _BadRequest as exc:
            return Failed(reason=str(exc), code="invalid_request")
        except ValueError as exc:  # e.g. text with lone surrogates that cannot be encoded
            return Failed(
                reason=f"request could not be built: {type(exc).__name__}", code="invalid_request"
            )
        try:
            async with session.request(
                self.spec.method,
                request.url,
                headers=request.headers,
                data=request.data,
                timeout=self._timeout,
                # A redirected POST silently turns into a GET without the message;
                # better to report the 3xx than to lose the body.
                allow_redirects=False,
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                charset = response.charset or "utf-8"
                payload, cut = await _read_capped(response, self.spec.max_response_bytes)
        except TimeoutError:  # includes aiohttp.ServerTimeoutError
            return Retry(
                reason=f"timed out after {self.spec.timeout:g}s", code="timeout", maybe_sent=True
            )
        except aiohttp.InvalidURL:
            return Failed(reason="invalid url", code="invalid_url")
        except (aiohttp.ClientConnectionError, OSError) as exc:
            # Only the class name: str() of aiohttp errors can carry the URL and its secrets.
            return Retry(
                reason=f"connection error: {type(exc).__name__}",
                code="connection",
                maybe_sent=isinstance(exc, aiohttp.ServerDisconnectedError),
            )
        except aiohttp.ClientError as exc:
            return Retry(reason=f"http error: {type(exc).__name__}", code="http_error")
        return self._outcome(status, _decode(payload, charset), retry_after, cut=cut)

    def _outcome(
        self, status: int, text: str, retry_after: str | None, *, cut: bool = False
    ) -> Outcome:
        spec = self.spec
        # Redact before truncating, so a secret cut in half at the limit cannot slip out.
        body = self.redact(text)
        raw = body[:RAW_LIMIT]
        if cut:
            raw = f"[answer cut at {spec.max_response_bytes} bytes] " + raw
        if status in spec.success_status:
            extract = spec._compiled.extract
            if extract is None:
                return Accepted(provider_message_id=None, raw=raw)
            # The id comes from the unredacted text: redaction must not alter an id
            # that delivery reports will be matched against.
            found = extract(text)
            if found is None:
                note = f"[message id not found by {spec.message_id[:60]}] "
                return Accepted(provider_message_id=None, raw=note + raw)
            return Accepted(provider_message_id=found, raw=raw)
        code = f"http_{status}"
        if status == 429 or 500 <= status <= 599:
            if status == 429:
                self.throttles += 1
            return Retry(reason=f"http {status}", code=code, raw=raw, after=_seconds(retry_after))
        short = " ".join(body.split())
        if len(short) > REASON_BODY_LIMIT:
            short = short[: REASON_BODY_LIMIT - 3] + "..."
        reason = f"http {status}: {short}" if short else f"http {status}"
        return Failed(reason=reason, code=code, raw=raw)


# --- compiled spec ---------------------------------------------------------------------


class _BadRequest(ValueError):
    """A message rendered into something that cannot be sent (e.g. a header with a newline)."""


@dataclass(frozen=True, slots=True)
class _Template:
    """A parsed template: literal text and field names, with `encode` applied to fields."""

    parts: tuple[tuple[bool, str], ...]  # (is_field, field name or literal)
    encode: Callable[[str], str]

    def render(self, values: Mapping[str, str]) -> str:
        encode = self.encode
        return "".join(encode(values[s]) if is_field else s for is_field, s in self.parts)

    @property
    def media_alone(self) -> bool:
        """The whole template is ``{media}`` or ``{media_json}`` (as a JSON leaf: the
        array itself)."""
        return len(self.parts) == 1 and self.parts[0][0] and self.parts[0][1] in _MEDIA_FIELDS

    @property
    def repeats(self) -> bool:
        """The whole template is ``{media}`` (as a form or query field: once per URL)."""
        return self.parts == ((True, "media"),)


@dataclass(frozen=True, slots=True)
class _Request:
    url: URL
    headers: dict[str, str]
    # A form as pairs when a field repeats (``{media}``: once per URL).
    data: dict[str, str] | list[tuple[str, str]] | bytes | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    url: _Template
    query: tuple[tuple[str, _Template], ...]  # GET form fields, key already encoded
    form: tuple[tuple[str, _Template], ...] | None
    json: object  # the json template with _Template leaves, or None
    headers: tuple[tuple[str, _Template], ...]
    json_content_type: bool  # add Content-Type: application/json
    extract: Callable[[str], str | None] | None
    redactions: tuple[str, ...]
    media: bool  # some template uses {media} or {media_json}

    def build(self, values: Mapping[str, str], media: Sequence[str] = ()) -> _Request:
        url = self.url.render(values)
        if self.query:
            pairs: list[str] = []
            for k, t in self.query:
                if self.media and t.repeats:
                    pairs += [f"{k}={t.encode(m)}" for m in media]  # once per URL
                else:
                    pairs.append(f"{k}={t.render(values)}")
            if pairs:
                sep = "" if url.endswith(("?", "&")) else "&" if "?" in url else "?"
                url = f"{url}{sep}{'&'.join(pairs)}"
        headers: dict[str, str] = {}
        for name, template in self.headers:
            value = template.render(values)
            if any(c in value for c in "\r\n\0"):
                # aiohttp would refuse it anyway; header injection must never reach the wire.
                raise _BadRequest(f"http.headers.{name}: rendered value contains a line break")
            headers[name] = value
        data: dict[str, str] | list[tuple[str, str]] | bytes | None = None
        if self.form is not None:
            # aiohttp form-encodes the dict (or pairs) itself; pre-encoding would
            # encode twice.
            if self.media and any(t.repeats for _k, t in self.form):
                data = [
                    pair
                    for k, t in self.form
                    for pair in ([(k, m) for m in media] if t.repeats else [(k, t.render(values))])
                ]
            else:
                data = {k: t.render(values) for k, t in self.form}
        elif self.json is not None:
            body = _render_json(self.json, values, media)
            data = jsonlib.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
            if self.json_content_type:
                headers["Content-Type"] = "application/json"
        # encoded=True: every value is already percent-encoded, and letting yarl
        # "normalise" again would decode %26, %3D, %2F... back into URL syntax.
        return _Request(URL(url, encoded=True), headers, data)


def _compile_spec(spec: HttpSpec) -> _Compiled:
    if spec.method not in METHODS:
        raise BindConfigError(f"http.method: must be one of {', '.join(METHODS)}")
    if not isinstance(spec.window, int) or spec.window < 1:
        raise BindConfigError("http.window: must be an integer >= 1")
    if not spec.timeout > 0:
        raise BindConfigError("http.timeout: must be > 0")
    if not isinstance(spec.max_response_bytes, int) or spec.max_response_bytes < 1:
        raise BindConfigError("http.max_response_bytes: must be an integer >= 1")
    if not spec.success_status or not all(
        isinstance(s, int) and 100 <= s <= 599 for s in spec.success_status
    ):
        raise BindConfigError("http.success_status: must list HTTP status codes (100-599)")
    if spec.form is not None and spec.json is not None:
        raise BindConfigError("http.json: only one of form and json may be set")
    if spec.method == "GET" and spec.json is not None:
        raise BindConfigError("http.json: a GET request has no body; use form or the url")
    secrets = dict(spec.secrets)

    url = _compile(spec.url, "http.url", secrets, _quote, _requote)
    sample = url.render(dict.fromkeys(_FIELDS, "x"))
    try:
        parsed = URL(sample, encoded=True)
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise BindConfigError("http.url: must be an absolute http:// or https:// URL")

    form = _compile_fields(spec.form, "http.form", secrets, _same)
    query: tuple[tuple[str, _Template], ...] = ()
    if spec.method == "GET" and spec.form is not None:
        query = tuple(
            (_quote(k), _compile(v, f"http.form.{k}", secrets, _quote, _same))
            for k, v in spec.form.items()
        )
        form = None
    headers = _compile_fields(spec.headers, "http.headers", secrets, _same) or ()
    json_template = None if spec.json is None else _compile_json(spec.json, "http.json", secrets)
    has_type = any(k.lower() == "content-type" for k in spec.headers)
    return _Compiled(
        url=url,
        query=query,
        form=form,
        json=json_template,
        headers=headers,
        json_content_type=not has_type,
        extract=_compile_extractor(spec.message_id),
        redactions=_redactions(secrets.values()),
        media=uses_media(spec.url, spec.form, spec.json, spec.headers),
    )


def _compile(
    template: object,
    where: str,
    secrets: Mapping[str, str],
    encode: Callable[[str], str],
    literal: Callable[[str], str],
) -> _Template:
    """Parse `template`; secrets are substituted (encoded) now, fields at render time."""
    if not isinstance(template, str):
        raise BindConfigError(f"{where}: must be a string")
    parts: list[tuple[bool, str]] = []
    text: list[str] = []  # pending literal text, merged so render joins fewer pieces
    pos = 0
    for match in _TOKEN.finditer(template):
        text.append(literal(template[pos : match.start()]))
        pos = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            text.append(literal(token[0]))
        elif token in ("{", "}"):
            raise BindConfigError(
                f"{where}: unmatched {token!r} at position {match.start()} "
                "(write {{ or }} for a literal brace)"
            )
        else:
            name = match.group(1)
            if name in _FIELDS:
                parts.append((False, "".join(text)))
                text.clear()
                parts.append((True, name))
            elif name.startswith("secret:"):
                key = name.removeprefix("secret:")
                if key not in secrets:
                    raise BindConfigError(
                        f"{where}: unknown secret {{secret:{key}}} (no secret named {key!r})"
                    )
                text.append(encode(secrets[key]))
            else:
                raise BindConfigError(f"{where}: unknown placeholder {{{name}}}")
    text.append(literal(template[pos:]))
    parts.append((False, "".join(text)))
    return _Template(tuple(p for p in parts if p[0] or p[1]), encode)


def _compile_fields(
    fields: Mapping[str, str] | None,
    where: str,
    secrets: Mapping[str, str],
    encode: Callable[[str], str],
) -> tuple[tuple[str, _Template], ...] | None:
    if fields is None:
        return None
    if not isinstance(fields, Mapping):
        raise BindConfigError(f"{where}: must be a table of strings")
    return tuple(
        (str(k), _compile(v, f"{where}.{k}", secrets, encode, _same)) for k, v in fields.items()
    )


def _compile_json(node: object, where: str, secrets: Mapping[str, str]) -> object:
    """Copy a JSON template, turning every string leaf into a `_Template`."""
    if isinstance(node, str):
        return _compile(node, where, secrets, _same, _same)
    if isinstance(node, Mapping):
        out: dict[str, object] = {}
        for key, value in node.items():
            if not isinstance(key, str):
                raise BindConfigError(f"{where}: object keys must be strings")
            out[key] = _compile_json(value, f"{where}.{key}", secrets)
        return out
    if isinstance(node, Sequence) and not isinstance(node, bytes | bytearray):
        return [_compile_json(v, f"{where}.{i}", secrets) for i, v in enumerate(node)]
    if node is None or isinstance(node, bool | int):
        return node
    if isinstance(node, float) and math.isfinite(node):
        return node
    raise BindConfigError(f"{where}: {type(node).__name__} is not a JSON value")


def _render_json(node: object, values: Mapping[str, str], media: Sequence[str]) -> object:
    if isinstance(node, _Template):
        if node.media_alone:
            return list(media)
        return node.render(values)
    if isinstance(node, dict):
        return {k: _render_json(v, values, media) for k, v in node.items()}
    if isinstance(node, list):
        return [_render_json(v, values, media) for v in node]
    return node


def _compile_extractor(selector: str) -> Callable[[str], str | None] | None:
    where = "http.message_id"
    if not selector:
        return None
    kind, _, arg = selector.partition(":")
    if kind == "json":
        path = tuple(arg.split("."))
        if not arg or "" in path:
            raise BindConfigError(f"{where}: json path must look like json:data.id")
        return lambda body: _json_path(body, path)
    if kind == "regex":
        try:
            pattern = re.compile(arg)
        except re.error as exc:
            raise BindConfigError(f"{where}: bad regular expression: {exc}") from None
        if "id" in pattern.groupindex:
            group: int | str = "id"
        elif pattern.groups <= 1:
            group = pattern.groups  # the only group, or the whole match
        else:
            raise BindConfigError(f"{where}: several groups; name the id one (?P<id>...)")
        return lambda body: _regex(pattern, group, body)
    raise BindConfigError(f"{where}: must be json:<path>, regex:<pattern> or empty")


def _json_path(body: str, path: tuple[str, ...]) -> str | None:
    try:
        node: object = jsonlib.loads(body)
    except ValueError:
        return None
    for segment in path:
        if isinstance(node, dict):
            if segment not in node:
                return None
            node = node[segment]
        elif isinstance(node, list):
            try:
                node = node[int(segment)]
            except (ValueError, IndexError):
                return None
        else:
            return None
    if isinstance(node, str):
        return node or None
    if isinstance(node, int | float) and not isinstance(node, bool):
        return str(node)
    return None


def _regex(pattern: re.Pattern[str], group: int | str, body: str) -> str | None:
    match = pattern.search(body)
    if match is None:
        return None
    return match.group(group) or None


def _redactions(secrets: Iterable[str]) -> tuple[str, ...]:
    """Every secret as it may appear in output: raw, URL-encoded or JSON-escaped."""
    found: set[str] = set()
    for value in secrets:
        if not isinstance(value, str) or len(value) < SECRET_MIN_LEN:
            continue
        found.update(
            {
                value,
                quote(value, safe=""),
                quote_plus(value),
                jsonlib.dumps(value)[1:-1],
                jsonlib.dumps(value, ensure_ascii=False)[1:-1],
            }
        )
    # Longest first, so a secret containing another is replaced whole.
    return tuple(sorted(found, key=len, reverse=True))


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, and whether there was more.

    A provider (or anything posing as one) may answer with megabytes; reading it whole
    once took RSS to 700 MB. aiohttp buffers only a little ahead of what is read, and a
    body left unread makes it close the connection rather than reuse it.
    """
    buffer = bytearray()
    while len(buffer) <= limit:
        chunk = await response.content.read(limit + 1 - len(buffer))
        if not chunk:
            return bytes(buffer), False
        buffer += chunk
    response.close()
    return bytes(buffer[:limit]), True


def _seconds(value: str | None) -> float | None:
    """Retry-After in seconds from now: delay-seconds or an HTTP-date (RFC 9110 10.2.3);
    None for absent or nonsense. A date in the past means now (0)."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:  # "-0000": the date is UTC, says RFC 5322
            moment = moment.replace(tzinfo=UTC)
        return max(0.0, moment.timestamp() - time.time())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _decode(payload: bytes, charset: str) -> str:
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return payload.decode("utf-8", errors="replace")


def _quote(value: str) -> str:
    return quote(value, safe="")


def _requote(value: str) -> str:
    return quote(value, safe=_URL_LITERAL_SAFE)


def _same(value: str) -> str:
    return value
