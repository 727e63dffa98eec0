"""`RouterError`: the root of every error the router raises on purpose.

``except RouterError`` catches any of them (a bad configuration, a refused job, an
unreachable Redis, a daemon already running under this instance name...) and nothing
else: a bug still surfaces as itself. Each concrete error lives next to the code
that raises it and keeps a second, built-in base where callers catch that one
(`JobError` is still a `ValueError`, `RedisUnavailable` a `RuntimeError`).

The transports (`binds`) import nothing of the router, so their errors have a root
of their own, `binds.base.BindError`, beside this one, not under it.
"""

from __future__ import annotations

__all__ = ["RouterError"]


class RouterError(Exception):
    """Base class of every error the router package raises on purpose."""
