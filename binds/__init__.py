"""Transports that carry messages: HTTP (Web-URL) senders now, SMPP sessions next.

`binds` knows nothing of Redis, profiles or rules; `router` uses it, never the
reverse. The types that cross that boundary live in `binds.base`.
"""

from .base import (
    Accepted,
    Bind,
    BindConfigError,
    BindError,
    Failed,
    OutboundMessage,
    Outcome,
    Retry,
)

__all__ = [
    "Accepted",
    "Bind",
    "BindConfigError",
    "BindError",
    "Failed",
    "OutboundMessage",
    "Outcome",
    "Retry",
]
