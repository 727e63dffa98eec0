"""Requests an API worker process passes on to the daemon (`[api] workers`).

A worker (router/daemon/api_worker.py) holds Redis and the configuration, which is
all the doors need: it authenticates, validates and enqueues itself. A few endpoints
read what lives in the daemon's process only: the workers' readiness and bind
health, the metrics, the receipt and inbound handlers fed by provider webhooks.
Their handlers are marked `in_daemon`; a worker sends such a request, as it came
(method, path, query, headers with the caller's Host and Authorization, body), to
the daemon's private listener on 127.0.0.1 and answers what the daemon answered, so
the daemon authenticates it as on its own listener.
"""

from __future__ import annotations

import json
from typing import Any, Final, TypeVar

import aiohttp
import structlog
from aiohttp import web

__all__ = ["Forwarder", "in_daemon"]

log = structlog.get_logger("router.api")

F = TypeVar("F")
# Seconds the daemon may take to answer (a /metrics scrape waits for Redis at most 2 s).
TIMEOUT: Final = 30.0
# Headers that describe one connection, not the request (RFC 9110, 7.6.1), and the
# ones aiohttp sets again for the body it sends.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


def in_daemon(handler: F) -> F:
    """Mark a handler as reading state only the daemon's process holds: an API
    worker forwards its requests to the daemon."""
    handler._in_daemon = True  # type: ignore[attr-defined]
    return handler


def forwarded(handler: Any) -> bool:
    """Whether `handler` was marked `in_daemon`."""
    return bool(getattr(handler, "_in_daemon", False))


class Forwarder:
    """Passes requests on to the daemon at `base` (``http://127.0.0.1:PORT``)."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, request: web.Request) -> web.Response:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=TIMEOUT),
                auto_decompress=False,  # the body goes on as it came, encoding and all
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        body = await request.read()
        try:
            async with self._session.request(
                request.method,
                self.base + request.raw_path,
                headers=headers,
                data=body or None,
                allow_redirects=False,
            ) as answer:
                payload = await answer.read()
                kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
                return web.Response(status=answer.status, body=payload, headers=kept)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("api worker: the daemon did not answer", path=request.path,
                        error=type(exc).__name__)  # fmt: skip
            text = json.dumps({"error": "daemon: unavailable, try again"}, separators=(",", ":"))
            return web.Response(text=text, status=503, content_type="application/json")

    async def close(self) -> None:
        """Close the connections to the daemon."""
        if self._session is not None:
            await self._session.close()
            self._session = None
