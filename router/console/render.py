"""Pages of the web console: jinja2 templates shipped in the package, escaped.

Every template is rendered with autoescape on (HTML-escaping every value, so a
message text or an error naming a field cannot inject markup) and StrictUndefined (a
name the handler forgot is an error in the tests, not an empty cell). Every answer
carries headers that keep the pages to themselves: a Content-Security-Policy that
allows only this origin's scripts and styles (the vendored htmx, console.css), no
framing, no caching of pages.
"""

from __future__ import annotations

import hashlib
import time
from functools import cache
from importlib import resources
from typing import Any, Final

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined

__all__ = ["SECURITY_HEADERS", "asset", "clock", "environment", "page", "span", "static_file"]

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
_TYPES: Final = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain"}


@cache
def environment() -> Environment:
    """The templates' environment (made once)."""
    env = Environment(
        loader=PackageLoader("router.console"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["asset"] = asset
    env.filters["span"] = span
    env.filters["clock"] = clock
    return env


def span(seconds: float | None) -> str:
    """A duration as people read it: 4 s, 2 min 5 s, 3 h 10 min, 2 d 4 h; "-" for None."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"
    for unit, size, small, small_size in (
        ("d", 86_400, "h", 3600),
        ("h", 3600, "min", 60),
        ("min", 60, "s", 1),
    ):
        if whole >= size:
            rest = (whole % size) // small_size
            return f"{whole // size} {unit}" + (f" {rest} {small}" if rest else "")
    return f"{whole} s"


def clock(at: float) -> str:
    """Unix time `at` as UTC, e.g. 2026-12-06 03:04:05 UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


@cache
def static_file(name: str) -> tuple[bytes, str] | None:
    """A file of ``router/console/static`` and its content type, or None (no such
    file, or a name that is not a plain file name)."""
    if "/" in name or "\\" in name or name.startswith(".") or not name:
        return None
    suffix = name[name.rfind(".") :] if "." in name else ""
    if suffix not in _TYPES:
        return None
    path = resources.files("router.console").joinpath("static", name)
    if not path.is_file():
        return None
    return path.read_bytes(), _TYPES[suffix]


@cache
def asset(name: str) -> str:
    """The URL of static file `name` with its content hash, so it can be cached for a
    year and still change with a release."""
    found = static_file(name)
    version = hashlib.sha256(found[0]).hexdigest()[:12] if found else "missing"
    return f"/console/static/{name}?v={version}"


def page(template: str, status: int = 200, **values: Any) -> web.Response:
    """`template` rendered with `values` as an HTML answer with the console's headers."""
    text = environment().get_template(template).render(**values)
    response = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = "no-store"
    return response
