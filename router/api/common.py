"""The daemon's HTTP surface (aiohttp): one listener, `[api]` in the configuration.

This module holds what every endpoint shares: the application's context,
bearer-token authentication with scopes, JSON errors and body limits.

A bearer token is a key of ``[api.keys]`` or an account's `api_token`
(``[accounts.NAME]``), each with its scopes; the request then carries the caller
(`caller_of`: the account, or None for an ``[api.keys]`` key). A caller that is an
account without the ``admin`` scope sees only its own messages (`own_account`). Each group of
endpoints lives in a module of its own and registers its routes; `router.api.app`
builds the application from them.

Errors are JSON, ``{"error": "field: what is wrong"}``, with the status that fits
(400 bad input, 401 no or unknown token, 403 a token without the scope or an
account refused what it asked, 404, 405, 413 body too large, 429 an account over its
rate or daily quota, with ``Retry-After``). Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import json
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from aiohttp import web
from redis.asyncio import Redis

from router.api.forward import Forwarder, forwarded
from router.client import Client
from router.config import Scope, Settings
from router.errors import RouterError
from router.policy.accounts import Caller, by_token
from router.store.ledger import Ledger
from router.store.outages import REDIS_ERRORS

__all__ = [
    "CALLER",
    "CONTEXT",
    "ApiContext",
    "ApiError",
    "Handler",
    "Who",
    "caller_of",
    "json_response",
    "middleware",
    "own_account",
    "read_json",
    "retry_after",
    "scoped",
    "who",
]

log = structlog.get_logger("router.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(RouterError):
    """An answer other than success: `status` and a message naming what is wrong."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Ready(Protocol):
    """What readiness asks of a profile's worker."""

    name: str

    @property
    def ready(self) -> bool: ...


@dataclass(frozen=True)
class ConfigFile:
    """The daemon's configuration file and its reload (returns whether the file was
    applied): what the web console changes the configuration through."""

    path: str | os.PathLike[str]
    reload: Callable[[], Awaitable[bool]]


@dataclass
class ApiContext:
    """What the endpoints use: the settings, Redis, the ledger, a client to enqueue,
    and the workers (readiness)."""

    settings: Settings
    redis: Redis
    ledger: Ledger
    client: Client
    workers: Sequence[Ready] = ()
    extras: dict[str, Any] = field(default_factory=dict)
    # In an API worker process: where the requests of `in_daemon` handlers go.
    forward: Forwarder | None = None
    # The daemon's file and reload (None: an API worker, or not started from a file).
    config_file: ConfigFile | None = None


CONTEXT: web.AppKey[ApiContext] = web.AppKey("context", ApiContext)
API_KEY: web.RequestKey[str] = web.RequestKey("api_key", str)  # the caller's key name
# The account the bearer token is the api_token of; None for an [api.keys] key.
CALLER: web.RequestKey[Caller | None] = web.RequestKey("caller")


def caller_of(request: web.Request) -> Caller | None:
    """The account that authenticated `request`, or None (an ``[api.keys]`` key, or an
    endpoint without authentication)."""
    return request.get(CALLER)


def own_account(caller: Caller | None, asked: str | None) -> str | None:
    """The account whose messages a caller may read when it asks for `asked` (None:
    every account): any for a key or an ``admin`` account, else only its own (asking
    for another is ApiError 403)."""
    if caller is None or "admin" in caller.account.scopes:
        return asked
    if asked is not None and asked != caller.name:
        raise ApiError(403, f"account: account {caller.name!r} may read only its own messages")
    return caller.name


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def scoped(scope: Scope) -> Callable[[Handler], Handler]:
    """Mark a handler as needing a bearer token with `scope` (``admin`` implies all)."""

    def mark(handler: Handler) -> Handler:
        handler._scope = scope  # type: ignore[attr-defined]
        return handler

    return mark


def json_response(body: Any, status: int = 200) -> web.Response:
    """A compact JSON answer."""
    return web.Response(
        text=json.dumps(body, separators=(",", ":"), default=str),
        status=status,
        content_type="application/json",
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    response = json_response({"error": message}, status)
    response.headers.update(headers or {})
    return response


@dataclass(frozen=True)
class Who:
    """Whom a token belongs to: the ``[api.keys]`` key's or the account's `name`, its
    `scopes`, and the account (`caller`; None for a key)."""

    name: str
    scopes: tuple[Scope, ...]
    caller: Caller | None = None

    def holds(self, scope: Scope) -> bool:
        """Whether the token may do what `scope` allows (``admin`` implies all)."""
        return scope in self.scopes or "admin" in self.scopes


def who(settings: Settings, token: str) -> Who | None:
    """Whom `token` (an ``[api.keys]`` token or an account's `api_token`) belongs to, or
    None. Every key and every account is compared, each in constant time, whether one
    matched already or not, so timing tells nothing."""
    given = token.strip()
    found = None
    for name, key in settings.api.keys.items():
        if hmac.compare_digest(given.encode(), key.token.get_secret_value().encode()):
            found = Who(name, tuple(key.scopes))
    caller = by_token(settings, given)
    if found is not None:
        return found
    if caller is None:
        return None
    return Who(caller.name, tuple(caller.account.scopes), caller)


def _authorised(request: web.Request, scope: Scope) -> None:
    """Raise ApiError 401/403 unless the bearer token holds `scope`."""
    header = request.headers.get("Authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token:
        raise ApiError(401, "Authorization: a bearer token is required")
    found = who(request.app[CONTEXT].settings, token)
    if found is None:
        raise ApiError(401, "Authorization: unknown token")
    if not found.holds(scope):
        what = "key" if found.caller is None else "account"
        raise ApiError(403, f"Authorization: {what} {found.name!r} lacks the {scope!r} scope")
    if found.caller is None:
        request[API_KEY] = found.name
    request[CALLER] = found.caller


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    forward = request.app[CONTEXT].forward
    if forward is not None and forwarded(handler):
        return await forward(request)  # the daemon authenticates it
    try:
        scope = getattr(handler, "_scope", None)
        if scope is not None:
            _authorised(request, scope)
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.message, exc.headers)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CONTEXT].settings.api.max_body
        return _error(413, f"body: larger than api.max_body = {limit} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except REDIS_ERRORS:
        log.warning("api: redis unavailable", path=request.path)
        return _error(503, "redis: unavailable, try again")


_UTF8 = frozenset({"utf-8", "utf8"})


async def read_json(request: web.Request) -> Any:
    """The request's JSON body, or ApiError 400 naming the problem."""
    try:
        raw = await request.read()
        charset = request.charset
        if charset is None or charset.lower() in _UTF8:
            return json.loads(raw)  # bytes: no text made first (json reads UTF-8 itself)
        return json.loads(raw.decode(charset))
    except web.HTTPRequestEntityTooLarge:
        raise
    except LookupError:
        raise ApiError(400, f"body: unknown charset {request.charset!r}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"body: not valid JSON ({exc})") from None
    except RecursionError:  # json gives up on deep nesting this way, not ValueError
        raise ApiError(400, "body: nested too deeply") from None
