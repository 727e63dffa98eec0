"""The seam between the router and its transports.

The router hands a bind an `OutboundMessage` that is ready to send and gets back
one `Outcome`: `Accepted`, `Retry` or `Failed`. Nothing here knows about Redis,
profiles or rules; these types are all that crosses the boundary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class BindError(Exception):
    """The root of every error the transports raise on purpose (`BindConfigError`,
    `PduError`, `FramingError`, `EncodeError`). `binds` imports nothing of the router,
    so this root stands beside the router's `RouterError`, not under it."""


class BindConfigError(BindError):
    """A bind was given settings it cannot work with (bad template, bad extractor)."""


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message, composed and addressed, ready for a bind."""

    id: str
    source: str
    destination: str
    text: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    # Unix time after which the message must not be sent: a bind holding it (throttled)
    # gives it back to the router before then.
    expires_at: float | None = None
    # An MMS: its media URLs (checked by the router); () for an SMS. Only binds that
    # carry media get one (Twilio's MediaUrl, a Web-URL template with {media}).
    media: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Accepted:
    """The provider took the message; `provider_message_id` matches later reports."""

    provider_message_id: str | None
    raw: str = ""
    segments: int = 1
    # Every part's id, in order, when the provider took a long message in parts
    # (SMPP): delivery reports come per part and are rolled up by the router.
    part_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again later: throttling, a 5xx, a time-out, a broken connection.

    `after` is the provider's own hint in seconds (Retry-After), if it gave one.
    """

    reason: str
    code: str = "temporary"
    raw: str = ""
    after: float | None = None
    # The request may have reached the provider (a time-out, a connection lost after
    # sending): sending again may deliver twice. The router counts such retries.
    maybe_sent: bool = False
    # False: the provider never saw it (no bound session, held while throttled): the
    # router does not count it against the message's attempts.
    attempted: bool = True


@dataclass(frozen=True, slots=True)
class Failed:
    """The provider refused the message for good.

    `code` is normalised (for example ``http_400``, ``invalid_destination``);
    `raw` is what the provider said, kept beside it.
    """

    reason: str
    code: str
    raw: str = ""


Outcome = Accepted | Retry | Failed


@dataclass(frozen=True, slots=True)
class Crashed:
    """Not the provider's answer: the bind raised while sending (a bug, or a message
    that triggers one). The router dead-letters the message naming the error."""

    error: Exception


# Called once per message with its outcome (see `Bind.send`).
Done = Callable[[Outcome | Crashed], None]


@runtime_checkable
class Bind(Protocol):
    """One connection that carries messages (an SMPP session or an HTTP sender).

    `window` is the most submits this bind keeps in flight at once; the bind
    enforces it itself, callers use it to size how much work they take on.
    """

    name: str

    @property
    def window(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def ready(self) -> bool:
        """Whether a submit can go out now (an SMPP session is bound); the router reads
        new work only while some bind is ready, so an outage holds messages unread."""
        ...

    async def start(self) -> None: ...

    async def submit(self, message: OutboundMessage) -> Outcome:
        """Send one message and wait for its outcome."""
        ...

    def send(self, message: OutboundMessage, done: Done) -> None:
        """Queue one message without waiting: `done` is called exactly once, on the event
        loop, with its outcome (possibly before `send` returns). Never raises for the
        message's sake. The router's hot path uses this, so a bind can carry thousands
        of messages a second without a task or a future per message."""
        ...

    async def close(self) -> None: ...


class TaskSends:
    """`Bind.send` for a bind whose natural form is the coroutine `submit` (an HTTP
    request costs far more than the task that waits for it): one task per message,
    kept until it ends, cancelled by `cancel_all` when the bind closes."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def send(
        self,
        submit: Callable[[OutboundMessage], Awaitable[Outcome]],
        message: OutboundMessage,
        done: Done,
    ) -> None:
        task = asyncio.create_task(self._run(submit, message, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @staticmethod
    async def _run(
        submit: Callable[[OutboundMessage], Awaitable[Outcome]],
        message: OutboundMessage,
        done: Done,
    ) -> None:
        outcome: Outcome
        try:
            outcome = await submit(message)
        except asyncio.CancelledError:
            done(Retry("the bind closed while sending", code="closed", maybe_sent=True))
            raise
        except Exception as exc:
            done(Crashed(exc))
            return
        done(outcome)
