"""Who may see and change what in the web console.

A page handler says the scope it needs with `needs` (``read`` to look, ``admin`` to
change; ``admin`` implies every scope). The wrapper finds the session from the
``sms_console`` cookie (router/console/sessions.py): without one, a page answers 303 to
the sign-in form with ``next`` set to the page (an htmx poll gets ``HX-Redirect``
instead, so the whole page goes there); a session without the scope gets a 403 page;
every POST must carry the form field ``csrf`` equal to the session's CSRF token, or it
gets a 403 page and nothing changes. When Redis does not answer the page says so
(503; an htmx poll gets the message as its fragment, so it keeps polling).

Wrong tokens at sign-in are counted per client address in Redis: after
`FAILURES_ALLOWED` in `FAILURE_WINDOW` seconds the sign-in answers 429 with
``Retry-After``, whatever the token, and one warning names the address (never the
token).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Final
from urllib.parse import urlencode, urlsplit

import structlog
from aiohttp import web
from redis.asyncio import Redis

from router.api.common import CONTEXT, Handler
from router.config import Scope, Settings
from router.console import sessions
from router.console.render import page
from router.console.sessions import Session
from router.store import keys
from router.store.outages import REDIS_ERRORS

__all__ = [
    "COOKIE",
    "FAILURES_ALLOWED",
    "FAILURE_WINDOW",
    "SESSION",
    "clear_cookie",
    "failed_sign_in",
    "needs",
    "safe_next",
    "same_origin",
    "set_cookie",
    "throttled",
]

log = structlog.get_logger("router.console")

COOKIE: Final = "sms_console"
FAILURES_ALLOWED: Final = 5
FAILURE_WINDOW: Final = 60  # seconds
SESSION: web.RequestKey[Session] = web.RequestKey("console_session", Session)
# Where sign-in may send the browser afterwards: a path of the console, nothing else
# (no other host, no scheme, no "//host", no backslashes or control characters).
_NEXT = re.compile(r"/console(?:/[A-Za-z0-9._~%!$&'()*+,;=:@/-]*)?(?:\?[^\s\\#]*)?")


def safe_next(given: str | None) -> str:
    """Where to go after signing in: `given` when it is a console path, else
    ``/console`` (no open redirect)."""
    if given and _NEXT.fullmatch(given) and not given.startswith("//") and "//" not in given:
        return given
    return "/console"


def is_https(request: web.Request, settings: Settings) -> bool:
    """Whether the browser reached us over https: the connection itself, a proxy's
    ``X-Forwarded-Proto: https``, or an https `[api] public_url`."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    public = settings.api.public_url or ""
    return request.secure or forwarded == "https" or str(public).startswith("https://")


def same_origin(request: web.Request, settings: Settings) -> bool:
    """Whether a form was posted from a page of this console: a browser names the page's
    origin in ``Origin``; its host must be the one the request was sent to (``Host``, a
    proxy's ``X-Forwarded-Host``, or `[api] public_url`'s). No ``Origin`` (not a
    browser, or an old one) passes: sign-in then rests on the token alone."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    given = urlsplit(origin).netloc.lower()
    ours = {request.host.lower()}
    forwarded = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip().lower()
    if forwarded:
        ours.add(forwarded)
    if settings.api.public_url:
        ours.add(urlsplit(str(settings.api.public_url)).netloc.lower())
    return bool(given) and given in ours


def set_cookie(
    response: web.StreamResponse, request: web.Request, session: Session, ttl: int
) -> None:
    """Put `session`'s id in the console cookie: HttpOnly, SameSite=Strict, only for
    /console, for the session's lifetime, Secure over https."""
    response.set_cookie(
        COOKIE,
        session.id,
        max_age=ttl,
        path="/console",
        httponly=True,
        samesite="Strict",
        secure=is_https(request, request.app[CONTEXT].settings),
    )


def clear_cookie(response: web.StreamResponse) -> None:
    """Tell the browser to forget the console cookie."""
    response.del_cookie(COOKIE, path="/console", httponly=True, samesite="Strict")


async def throttled(redis: Redis, address: str) -> float | None:
    """Seconds until `address` may try a token again, or None (not throttled)."""
    key = keys.console_failures(address)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.get(key)
        pipe.pttl(key)
        count, pttl = await pipe.execute()
    if count is not None and int(count) >= FAILURES_ALLOWED:
        return max(1.0, int(pttl) / 1000) if int(pttl) > 0 else float(FAILURE_WINDOW)
    return None


async def failed_sign_in(redis: Redis, address: str) -> None:
    """Count a wrong token from `address`; warn once when it reaches the limit."""
    key = keys.console_failures(address)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(key, 0, ex=FAILURE_WINDOW, nx=True)  # the window starts at the first
        pipe.incr(key)
        _, count = await pipe.execute()
    if int(count) == FAILURES_ALLOWED:
        log.warning(
            "console: sign-in throttled after wrong tokens",
            address=address,
            failures=FAILURES_ALLOWED,
            window=FAILURE_WINDOW,
        )


def _htmx(request: web.Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def redis_unavailable(request: web.Request) -> web.Response:
    """The answer when Redis does not answer: a fragment for an htmx poll (it keeps
    polling and shows the message), else a 503 page."""
    log.warning("console: redis unavailable", path=request.path)
    if _htmx(request):
        return page("redis_down.html")
    return page("unavailable.html", status=503)


def needs(scope: Scope) -> Callable[[Handler], Handler]:
    """Wrap a console handler: it runs only for a signed-in session holding `scope`,
    and a POST only with the session's CSRF token (see the module's docstring)."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: web.Request) -> web.StreamResponse:
            context = request.app[CONTEXT]
            try:
                session = await sessions.find(
                    context.redis, context.settings, request.cookies.get(COOKIE)
                )
                if session is None:
                    return _to_sign_in(request)
                if not session.holds(scope):
                    return page(
                        "error.html",
                        status=403,
                        session=session,
                        title="Not allowed",
                        message=f"{session.name!r} lacks the {scope!r} scope this needs.",
                    )
                if request.method == "POST":
                    form = await request.post()
                    given = form.get("csrf")
                    if not session.csrf_ok(given if isinstance(given, str) else None):
                        log.warning(
                            "console: change without a valid CSRF token refused",
                            path=request.path,
                            caller=session.name,
                        )
                        return page(
                            "error.html",
                            status=403,
                            session=session,
                            title="Refused",
                            message="The form's CSRF token is missing or wrong; nothing "
                            "was changed. Reload the page and try again.",
                        )
                request[SESSION] = session
                return await handler(request)
            except REDIS_ERRORS:
                return redis_unavailable(request)

        return checked

    return wrap


def _to_sign_in(request: web.Request) -> web.Response:
    target = "/console/login"
    if request.method == "GET":
        wanted = request.path_qs
        if _htmx(request):  # a poll: come back to the page it polls from
            shown = urlsplit(request.headers.get("HX-Current-URL", ""))
            wanted = shown.path + (f"?{shown.query}" if shown.query else "")
        nxt = safe_next(wanted)
        if nxt != "/console":
            target += "?" + urlencode({"next": nxt})
    if _htmx(request):
        return web.Response(status=200, headers={"HX-Redirect": target})
    return web.Response(status=303, headers={"Location": target})
