"""The daemon's HTTP surface (aiohttp): one listener, `[api]` in the configuration.

This module holds what every endpoint shares: the application's context,
bearer-token authentication with scopes, JSON errors and body limits. Each group of
endpoints lives in a module of its own and registers its routes; `router.api.app`
builds the application from them.

Errors are JSON, ``{"error": "field: what is wrong"}``, with the status that fits
(400 bad input, 401 no or unknown token, 403 a token without the scope, 404, 405,
413 body too large). Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from aiohttp import web
from redis.asyncio import Redis

from router.client import Client
from router.config import Scope, Settings
from router.errors import RouterError
from router.store.ledger import Ledger
from router.store.outages import REDIS_ERRORS

__all__ = [
    "CONTEXT",
    "ApiContext",
    "ApiError",
    "Handler",
    "json_response",
    "middleware",
    "read_json",
    "scoped",
]

log = structlog.get_logger("router.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(RouterError):
    """An answer other than success: `status` and a message naming what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Ready(Protocol):
    """What readiness asks of a profile's worker."""

    name: str

    @property
    def ready(self) -> bool: ...


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


CONTEXT: web.AppKey[ApiContext] = web.AppKey("context", ApiContext)
API_KEY: web.RequestKey[str] = web.RequestKey("api_key", str)  # the caller's key name


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


def _error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


def _authorised(request: web.Request, scope: Scope) -> None:
    """Raise ApiError 401/403 unless the bearer token holds `scope`."""
    header = request.headers.get("Authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token:
        raise ApiError(401, "Authorization: a bearer token is required")
    keys = request.app[CONTEXT].settings.api.keys
    found = None
    given = token.strip().encode()
    for name, key in keys.items():
        # Every key is compared (constant time each), so timing tells nothing.
        if hmac.compare_digest(given, key.token.get_secret_value().encode()):
            found = (name, key)
    if found is None:
        raise ApiError(401, "Authorization: unknown token")
    name, key = found
    if scope not in key.scopes and "admin" not in key.scopes:
        raise ApiError(403, f"Authorization: key {name!r} lacks the {scope!r} scope")
    request[API_KEY] = name


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        scope = getattr(handler, "_scope", None)
        if scope is not None:
            _authorised(request, scope)
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.message)
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


async def read_json(request: web.Request) -> Any:
    """The request's JSON body, or ApiError 400 naming the problem."""
    try:
        return await request.json()
    except web.HTTPRequestEntityTooLarge:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"body: not valid JSON ({exc})") from None
    except RecursionError:  # json gives up on deep nesting this way, not ValueError
        raise ApiError(400, "body: nested too deeply") from None
