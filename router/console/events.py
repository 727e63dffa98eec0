"""The console's live events: ``GET /console/events`` (the page: filters by profile and
by status — a message status, ``inbound`` or ``click`` —, a search box over what is
shown, the newest `SHOWN` events, pausable) and ``GET /console/events/ws``, the event
websocket of ``GET /v1/events`` (router/api/events.py's `serve`: the same protocol,
subscription and filters) authenticated by the console session instead of a bearer
token. A session of an account without ``admin`` gets only its own messages' events,
as that account's token would. The socket's handshake must come from a page of this
console (its ``Origin``): another site's page cannot open it with the operator's
cookie. Once the session ends (sign-out, every session ended by an admin, its key or
account removed) the socket is closed within `SESSION_CHECK` seconds (code 4401).
The page's script is static/events.js (the CSP allows no inline script).
"""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web

from router.api.common import CONTEXT
from router.api.events import KINDS, is_upgrade, serve
from router.console import sessions
from router.console.auth import SESSION, needs, same_origin
from router.console.render import page
from router.console.sessions import Session
from router.policy.accounts import Caller
from router.store.ledger import STATUSES
from router.store.outages import REDIS_ERRORS

__all__ = ["SESSION_CHECK", "SESSION_ENDED", "SHOWN", "add_routes"]

SHOWN: Final = 200  # events the page keeps on screen (older ones drop off)
SESSION_CHECK: Final = 15.0  # seconds between looks at whether the socket's session lives
SESSION_ENDED: Final = 4401  # the close code once it does not
# The page's status filters, in the lifecycle's order, then the other kinds.
_KINDS: Final = (*STATUSES, *sorted(KINDS - set(STATUSES)))


def caller_of_session(session: Session, request: web.Request) -> Caller | None:
    """The account a session signed in as (None: an ``[api.keys]`` key), as the event
    feed restricts callers."""
    if session.kind != "account":
        return None
    account = request.app[CONTEXT].settings.accounts.get(session.name)
    if account is None:  # removed since (the session check would have ended it)
        raise web.HTTPForbidden(text="account: no longer configured")
    return Caller(session.name, account)


@needs("read")
async def events_page(request: web.Request) -> web.StreamResponse:
    """``GET /console/events``: the live feed's page."""
    session = request[SESSION]
    return page(
        "events.html",
        session=session,
        active="events",
        profiles=list(request.app[CONTEXT].settings.profiles),
        kinds=_KINDS,
        shown=SHOWN,
    )


@needs("read")
async def events_socket(request: web.Request) -> web.StreamResponse:
    """``GET /console/events/ws``: the event websocket for this session."""
    session = request[SESSION]
    if not same_origin(request, request.app[CONTEXT].settings):
        return page(
            "error.html",
            status=403,
            session=session,
            title="Refused",
            message="The live events open only from a page of this console.",
        )
    if not is_upgrade(request):
        return page(
            "error.html",
            status=400,
            session=session,
            title="Not a websocket",
            message="GET /console/events/ws: a websocket upgrade is required.",
        )
    context = request.app[CONTEXT]

    async def until_signed_out(ws: web.WebSocketResponse) -> None:
        # A socket outlives its handshake: once its session ends (signed out, every
        # session ended, the key or account removed) the feed ends too.
        while not ws.closed:
            await asyncio.sleep(SESSION_CHECK)
            try:
                still = await sessions.find(context.redis, context.settings, session.id)
            except REDIS_ERRORS:
                continue  # Redis away: the feed waits for it too
            if still is None:
                await ws.close(code=SESSION_ENDED, message=b"session ended: sign in again")
                return

    return await serve(request, caller_of_session(session, request), watch=until_signed_out)


def add_routes(app: web.Application) -> None:
    """Register the live events' page and websocket."""
    app.router.add_get("/console/events", events_page)
    app.router.add_get("/console/events/ws", events_socket)
