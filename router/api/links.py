"""``GET /l/{code}``: a tracked link's redirect to the URL it stands for, and its click.

Public (no token: the recipient's phone follows it). A known code answers 302 with
the original URL in ``Location``; an unknown or expired one, 404 with a short plain
text. Neither may be cached (``Cache-Control: no-store``): a cache in between would
hide clicks, and an expired code must stop answering. A ``GET`` is a click
(`router.links.Links.click`: counters, the ``click`` event, the status callback); a
``HEAD`` gets the same answer and is not counted, nor is a ``GET`` from a link
preview (iMessage, WhatsApp, Slack... fetch a link to show a card before anyone taps
it: `router.links.is_preview`), which is counted as ``link_previews`` instead. A
click Redis fails to record still redirects: the recipient gets where the link goes,
the loss is logged.

Needs Redis alone, so API worker processes serve it themselves.
"""

from __future__ import annotations

from urllib.parse import quote

import structlog
from aiohttp import web

from router.api.common import CONTEXT
from router.links import Links, is_preview
from router.store.outages import REDIS_ERRORS

__all__ = ["add_routes", "follow"]

log = structlog.get_logger("router.api_links")

NOT_FOUND = "This link is unknown or has expired.\n"
_NO_STORE = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex"}
# What may stay as it is in a Location: RFC 3986's reserved and unreserved characters
# and '%' (the URL's own escapes); anything else (a non-ASCII character of a URL
# written in a text) is %-escaped as UTF-8.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~-._"


async def follow(request: web.Request) -> web.Response:
    """Redirect to the link's URL (302), or 404; a GET counts as a click."""
    context = request.app[CONTEXT]
    settings = context.settings
    links = Links(
        context.redis, profiles=settings.profiles, events_maxlen=settings.queue.events_maxlen
    )
    link = await links.resolve(request.match_info["code"])
    if link is None:
        return web.Response(status=404, text=NOT_FOUND, headers=_NO_STORE)
    if request.method == "GET":
        agent = request.headers.get("User-Agent", "")
        try:
            if is_preview(agent):
                await links.preview(link)
            else:
                await links.click(link, user_agent=agent)
        except REDIS_ERRORS as exc:
            log.warning(
                "link click not recorded",
                profile=link.profile,
                id=link.message_id,
                error=type(exc).__name__,
            )
    location = quote(link.url, safe=_URL_SAFE)
    return web.Response(status=302, headers={"Location": location, **_NO_STORE})


def add_routes(app: web.Application) -> None:
    """Register ``GET /l/{code}`` (``HEAD`` too)."""
    app.router.add_get("/l/{code}", follow)
