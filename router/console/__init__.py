"""The operator's web console, served under ``/console`` by the daemon's `[api]`
listener: server-rendered pages (jinja2, router/console/templates) with the vendored
htmx (router/console/static) for live updates; sessions in Redis.

The HTTP application registers it with `add_routes(app)`.
"""

from __future__ import annotations

from router.console.pages import add_routes

__all__ = ["add_routes"]
