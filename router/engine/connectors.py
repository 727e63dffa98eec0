"""Connectors at run time: their binds, and whether they are healthy enough to route to.

A connector (``[connectors.C]``, or an inline profile's own) holds the binds of one
carrier connection; every profile routed to it sends through the same binds, so the
window, the rate and the sessions are the connector's. It is unhealthy

- while none of its binds has been ready for `failover_after` seconds (no bound SMPP
  session: the SMSC is away), or
- while its circuit breaker is open: in the last `breaker.window` seconds at least
  `min_requests` submits had an outcome and `failure_ratio` of them failed at the
  route level (`route_level`: never reached the carrier, a system error, a 5xx).
  After `cooldown` seconds one message is let through (half-open): accepted closes
  the breaker, failed opens it again.

Routes skip unhealthy connectors (router/engine/routing.py). `watch` notices the
state changes and logs each once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Final, Literal

import structlog

from binds.base import Accepted, Bind, Outcome, Retry
from binds.smpp import SmppBind
from router.config import Connector
from router.engine.shared import Recent

log = structlog.get_logger("router.connectors")

# SMPP command_status names that say "this SMSC cannot take it now", whatever the
# message (SMPP 3.4 5.1.3): another connector may.
ROUTE_LEVEL_CODES: Final = frozenset({"ESME_RSYSERR", "ESME_RSUBMITFAIL"})
WATCH_EVERY: Final = 0.25  # seconds between two looks at the binds' readiness
PRICES_MEMO: Final = 65_536  # destination prefixes whose price is remembered

BreakerState = Literal["closed", "open", "half-open"]


def route_level(outcome: Outcome, extra: frozenset[str] = frozenset()) -> bool:
    """Whether `outcome` says the connector, not the message, is the problem, and the
    carrier surely did not take it: it may go out over another connector at once."""
    if isinstance(outcome, Accepted):
        return False
    if isinstance(outcome, Retry):
        if outcome.maybe_sent:
            return False  # it may be on its way: never sent again elsewhere
        if not outcome.attempted:
            return True  # the carrier never saw it (no bound session)
        code = outcome.code
        return code.startswith("http_5") or code in ("connection", *extra)
    return outcome.code in ROUTE_LEVEL_CODES or outcome.code in extra


class ConnectorRuntime:
    """One connector's binds, health and breaker."""

    def __init__(self, name: str, settings: Connector, binds: Sequence[Bind]) -> None:
        self.name = name
        self.settings = settings
        self.binds = list(binds)
        # Messages handed to each bind (by name) since start: the health record's rate.
        self.handed: Counter[str] = Counter()
        self.route_codes = frozenset(settings.route_codes)
        self._breaker = settings.breaker
        # Outcomes per second: [second, ok, failed], oldest first.
        self._seconds: deque[list[int]] = deque()
        self._ok = self._failed = 0
        self.breaker: BreakerState = "closed"
        self._open_until = 0.0
        self._probing = False
        self._unready_since: float | None = None
        self.down = False  # no ready bind for `failover_after` seconds
        self._prices: dict[str, float | None] = {}
        self.price_digits = settings.price_digits
        # Provider ids of what this instance sent here, when several profiles share the
        # connector (their receipts find their profile: router/engine/shared.py).
        self.recent: Recent | None = None
        # Put before its provider ids where they are indexed and recorded: '' for an
        # inline profile's own connector, "NAME/" for a shared one (router/engine/shared.py).
        self.namespace = ""

    def price(self, to: str) -> float | None:
        """One part's price to `to` (`Connector.price`), memoised by the digits that
        decide it: the hot path asks twice per message (least_cost, spend)."""
        key = to[: self.price_digits]
        memo = self._prices
        try:
            return memo[key]
        except KeyError:
            pass
        if len(memo) >= PRICES_MEMO:
            memo.clear()
        found = memo[key] = self.settings.price(to)
        return found

    @property
    def window(self) -> int:
        return sum(b.window for b in self.binds)

    @property
    def ready(self) -> bool:
        """Whether some bind can send now."""
        return any(b.ready for b in self.binds)

    @property
    def healthy(self) -> bool:
        """Whether routes send here now (see the module docstring)."""
        if self.down:
            return False
        if self.breaker == "closed":
            return True
        if self.breaker == "open":
            if time.monotonic() < self._open_until:
                return False
            self.breaker = "half-open"
            log.info("connector half-open: one message tries it", connector=self.name)
        return not self._probing

    @property
    def state(self) -> str:
        """``up``, ``down`` (no session) or the breaker's ``open``/``half-open``."""
        if self.down:
            return "down"
        return "up" if self.breaker == "closed" else self.breaker

    def bind(self) -> Bind:
        """The bind a message goes to: the least busy ready one (any, if none is)."""
        binds = self.binds
        if len(binds) == 1:
            found = binds[0]
        else:
            found = min([b for b in binds if b.ready] or binds, key=lambda b: b.in_flight)
        self.handed[found.name] += 1
        return found

    def took(self) -> None:
        """A message was handed to a bind (in half-open, it is the probe)."""
        if self.breaker == "half-open":
            self._probing = True

    def outcome(self, outcome: Outcome) -> None:
        """Count one outcome towards the breaker."""
        failed = route_level(outcome, self.route_codes) or (
            isinstance(outcome, Retry) and outcome.maybe_sent
        )
        if self.breaker == "half-open":
            self._probing = False
            if failed:
                self._open(time.monotonic(), "the probe failed")
            else:
                self.breaker = "closed"
                self._seconds.clear()
                self._ok = self._failed = 0
                log.info("connector breaker closed: the probe went through", connector=self.name)
            return
        now = time.monotonic()
        second = int(now)
        seconds = self._seconds
        if not seconds or seconds[-1][0] != second:
            seconds.append([second, 0, 0])
            horizon = second - self._breaker.window
            while seconds and seconds[0][0] <= horizon:
                _, ok, bad = seconds.popleft()
                self._ok -= ok
                self._failed -= bad
        if failed:
            seconds[-1][2] += 1
            self._failed += 1
            total = self._ok + self._failed
            if (
                self.breaker == "closed"
                and total >= self._breaker.min_requests
                and self._failed >= self._breaker.failure_ratio * total
            ):
                self._open(now, f"{self._failed} of the last {total} submits failed")
        else:
            seconds[-1][1] += 1
            self._ok += 1

    def _open(self, now: float, why: str) -> None:
        self.breaker = "open"
        self._open_until = now + self._breaker.cooldown
        log.warning(
            "connector breaker open: routes fail over",
            connector=self.name,
            why=why,
            cooldown=self._breaker.cooldown,
        )

    def look(self, now: float | None = None) -> None:
        """Note whether some bind is ready; past `failover_after` without one the
        connector is down (logged once per change)."""
        now = time.monotonic() if now is None else now
        if self.ready:
            self._unready_since = None
            if self.down:
                self.down = False
                log.info("connector up: a session is bound again", connector=self.name)
            return
        if self._unready_since is None:
            self._unready_since = now
        if not self.down and now - self._unready_since >= self.settings.failover_after:
            self.down = True
            # What waits in its binds for a session moves now, not after each bind's
            # response_timeout (handed back as never sent: the pipeline re-routes it).
            given = sum(b.give_back_waiting() for b in self.binds if isinstance(b, SmppBind))
            log.warning(
                "connector down: no bound session; routes fail over",
                connector=self.name,
                after=self.settings.failover_after,
                handed_back=given,
            )

    async def watch(self, stopping: asyncio.Event) -> None:
        """`look` every `WATCH_EVERY` seconds until `stopping`."""
        while not stopping.is_set():
            self.look()
            try:
                await asyncio.wait_for(stopping.wait(), WATCH_EVERY)
            except TimeoutError:
                pass

    def failed_share(self) -> tuple[int, int]:
        """(failed, total) outcomes in the breaker's window (for `route` and health)."""
        return self._failed, self._ok + self._failed
