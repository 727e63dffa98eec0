"""The Lua scripts the router runs in Redis, read from ``router/store/lua/``.

Every script lives in that folder as a ``.lua`` file (none in Python strings), so
each can be read, diffed and reviewed as Lua."""

from __future__ import annotations

from importlib import resources

_LUA = resources.files(__package__) / "lua"


def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return (_LUA / f"{name}.lua").read_text()


def with_common(name: str) -> str:
    """A record script: the shared functions (``common.lua``), then the script itself."""
    return source("common") + source(name)
