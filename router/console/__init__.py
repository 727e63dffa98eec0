"""The operator's web console, served under ``/console`` by the daemon's `[api]`
listener: server-rendered pages (jinja2, router/console/templates) with the vendored
htmx (router/console/static) for live updates; sessions in Redis.

The HTTP application registers it with `add_routes(app)`; each group of pages (a
module of this package) registers its own routes.
"""

from __future__ import annotations

from aiohttp import web

from router.console import dead_letters, lists, numbers, pages
from router.console import events as event_pages
from router.console import messages as message_pages

__all__ = ["add_routes"]


def add_routes(app: web.Application) -> None:
    """Register every console page under ``/console``."""
    pages.add_routes(app)
    message_pages.add_routes(app)
    event_pages.add_routes(app)
    dead_letters.add_routes(app)
    lists.add_routes(app)
    numbers.add_routes(app)
