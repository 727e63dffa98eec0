"""The console's pages: sign-in and sign-out, the overview and its live fragment,
ending every session, and the vendored static files.

Every page reads Redis and the configuration only, so the daemon and API worker
processes serve them alike (nothing here is `in_daemon`).
"""

from __future__ import annotations

import time
from typing import Any, Final
from urllib.parse import urlencode

import structlog
from aiohttp import web

from router.api.common import CONTEXT, retry_after
from router.console import sessions
from router.console.auth import (
    COOKIE,
    SESSION,
    clear_cookie,
    failed_sign_in,
    needs,
    redis_unavailable,
    safe_next,
    same_origin,
    set_cookie,
    throttled,
)
from router.console.overview import RATE_WINDOW, read_overview
from router.console.render import SECURITY_HEADERS, page, static_file
from router.errors import RouterError
from router.store.outages import REDIS_ERRORS

__all__ = ["FormError", "add_routes", "profile_field", "see_other"]

log = structlog.get_logger("router.console")

POLL_EVERY: Final = 2  # seconds between the overview's live updates
_MAX_TOKEN: Final = 1024  # longer is no token of ours: refused before comparing


class FormError(RouterError, ValueError):
    """A form or query field a page cannot use: the message names the field."""


def profile_field(request: web.Request, given: Any) -> str:
    """The configured profile `given` (a form or query field ``profile``) names, or
    FormError naming the field."""
    if not isinstance(given, str) or not given:
        raise FormError("profile: required")
    if given not in request.app[CONTEXT].settings.profiles:
        raise FormError(f"profile: unknown profile {given[:60]!r}")
    return given


def see_other(path: str, **query: str | int) -> web.Response:
    """303 to `path` with `query` (after a change: what it did, for the page to say)."""
    return web.Response(status=303, headers={"Location": f"{path}?{urlencode(query)}"})


def _ttl(request: web.Request) -> int:
    """Seconds a session lasts: `[api] console_session_ttl`."""
    return request.app[CONTEXT].settings.api.console_session_ttl


def _address(request: web.Request) -> str:
    return request.remote or "unknown"


async def login_form(request: web.Request) -> web.StreamResponse:
    """``GET /console/login``: the sign-in form (or on to the console when signed in)."""
    context = request.app[CONTEXT]
    nxt = safe_next(request.query.get("next"))
    try:
        found = await sessions.find(context.redis, context.settings, request.cookies.get(COOKIE))
    except REDIS_ERRORS:
        return redis_unavailable(request)
    if found is not None:
        return web.Response(status=303, headers={"Location": nxt})
    return page("login.html", next=nxt, error=None)


async def login(request: web.Request) -> web.StreamResponse:
    """``POST /console/login``: form field ``token`` (an ``[api.keys]`` token or an
    account's ``api_token``) starts a session; a wrong one is counted (429 after
    too many from one address)."""
    context = request.app[CONTEXT]
    if not same_origin(request, context.settings):
        # Another site's page posting a token here would sign the browser in as
        # someone else (login CSRF).
        log.warning("console: sign-in from another site's page refused", address=_address(request))
        return page("login.html", status=403, next="/console", error="Sign in from this page.")
    form = await request.post()
    token, given_next = form.get("token"), form.get("next")
    nxt = safe_next(given_next if isinstance(given_next, str) else None)
    address = _address(request)
    try:
        wait = await throttled(context.redis, address)
        if wait is not None:
            response = page(
                "login.html",
                status=429,
                next=nxt,
                error=f"Too many wrong tokens from this address: try again in "
                f"{retry_after(wait)} s.",
            )
            response.headers["Retry-After"] = retry_after(wait)
            return response
        session = None
        if isinstance(token, str) and token.strip() and len(token) <= _MAX_TOKEN:
            session = await sessions.start(context.redis, context.settings, token, _ttl(request))
        if session is None:
            await failed_sign_in(context.redis, address)
            # The same answer for an unknown token and a missing one.
            return page("login.html", status=401, next=nxt, error="Unknown token.")
    except REDIS_ERRORS:
        return redis_unavailable(request)
    log.info("console: signed in", caller=session.name, address=address)
    response = web.Response(status=303, headers={"Location": nxt})
    set_cookie(response, request, session, _ttl(request))
    return response


@needs("read")
async def logout(request: web.Request) -> web.StreamResponse:
    """``POST /console/logout``: end this session."""
    session = request[SESSION]
    await sessions.end(request.app[CONTEXT].redis, session)
    log.info("console: signed out", caller=session.name)
    response = web.Response(status=303, headers={"Location": "/console/login"})
    clear_cookie(response)
    return response


@needs("admin")
async def revoke_all(request: web.Request) -> web.StreamResponse:
    """``POST /console/sessions/revoke-all``: end every console session (this one
    too), e.g. after a token leaked."""
    session = request[SESSION]
    ended = await sessions.end_all(request.app[CONTEXT].redis)
    log.warning("console: every session ended", caller=session.name, sessions=ended)
    response = web.Response(status=303, headers={"Location": "/console/login"})
    clear_cookie(response)
    return response


async def _overview_values(request: web.Request) -> dict[str, Any]:
    context = request.app[CONTEXT]
    return {
        "overview": await read_overview(context.redis, context.settings),
        "rate_window": RATE_WINDOW,
        "now": time.time(),
    }


@needs("read")
async def overview(request: web.Request) -> web.StreamResponse:
    """``GET /console``: instances, connectors and binds, queues, rates, campaigns,
    Redis; the live part updates every `POLL_EVERY` seconds."""
    values = await _overview_values(request)
    return page(
        "overview.html", session=request[SESSION], poll=POLL_EVERY, active="overview", **values
    )


@needs("read")
async def overview_live(request: web.Request) -> web.StreamResponse:
    """``GET /console/overview/live``: the overview's live part (the htmx poll)."""
    try:
        values = await _overview_values(request)
    except REDIS_ERRORS:
        return redis_unavailable(request)
    return page("live.html", **values)


async def static(request: web.Request) -> web.StreamResponse:
    """``GET /console/static/<name>``: a vendored or hand-written file, cached for a
    year (its URL carries its content hash)."""
    found = static_file(request.match_info["name"])
    if found is None:
        return page("error.html", status=404, session=None, title="Not found", message="")
    body, content_type = found
    response = web.Response(body=body, content_type=content_type)
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return response


def add_routes(app: web.Application) -> None:
    """Register the console's pages under ``/console``."""
    app.router.add_get("/console", overview)
    app.router.add_get("/console/", overview)
    app.router.add_get("/console/login", login_form)
    app.router.add_post("/console/login", login)
    app.router.add_post("/console/logout", logout)
    app.router.add_get("/console/overview/live", overview_live)
    app.router.add_post("/console/sessions/revoke-all", revoke_all)
    app.router.add_get("/console/static/{name}", static)
