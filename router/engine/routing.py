"""Routing at run time: which connector each message of a profile goes out over.

The route (router/policy/routes.py) is matched when the message is planned; the
connector is chosen when the message is handed to a bind, so health is as fresh as
it can be:

- ``failover``: the first healthy connector, in the route's order;
- ``weighted``: the healthy connectors in proportion to their weights (smooth
  weighted round robin: over any run of messages each gets its share, to a message);
- ``least_cost``: the healthy connector with the lowest price for the destination
  (longest prefix of its ``prices``; unknown prices last, then route order);
- ``quality``: the healthy connector with the highest delivery ratio to the
  destination's country over the route's ``quality_window``. A connector with fewer
  than ``quality_min_sample`` reports for that country keeps its place in the route's
  order; those with enough are ranked among the places they hold (ties keep route
  order). Such a connector gets one message in `PROBE_EVERY` of the route's traffic to
  that country (those below the sample take turns), so that it earns a sample: the
  one in front gets all the rest, and without probes the others would never be
  judged. A connector that lost the traffic gets no new reports: once its old ones
  slide out of the window it is below the sample again, is probed, and wins the
  traffic back if it delivers better. The ratios come from the daemon's
  `QualityBoard` (router/store/health.py), read from Redis every few seconds, never
  per message; the ranking is kept per route and country until the next read.
  Without a board the route's order stands.

A message whose connector answered at the route level (`connectors.route_level`)
moves to the route's next healthy connector it has not tried, without an attempt
used; when none is left its outcome stands as on a single connector (a `Retry`
takes the retry path, a refusal such as ESME_RSYSERR is recorded `failed`). When no
connector is healthy the first one not tried gets the message all the same (its
binds hold it, or give it back as not sent).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import NamedTuple

from binds.base import Bind
from router.engine.connectors import ConnectorRuntime
from router.numbers import country_of
from router.policy.routes import Matched, RouteTable, kind_of
from router.policy.rules import Refusal
from router.store.health import QualityBoard

__all__ = ["PROBE_EVERY", "Routing", "no_route", "rank"]

# ``quality``: one message in this many (per route and country) goes to a connector
# below the route's minimum sample, when one is healthy.
PROBE_EVERY = 20
CHEAPEST_MEMO = 65_536  # (route, destination prefix) orders kept for least_cost
# `unsettled_max` per bind of a connector in sync mode when none is configured. One
# window would be 1: each outcome flushed alone, and the next submit but one waiting
# for that flush's round trip (measured: 0.27 ms of router CPU and 1.03 script calls
# per message, 0.15x a raw pump at window 1). A batch lets the one submit outstanding
# go on while the outcomes behind it are recorded, many per call (a flush waits for 24
# here, or FLUSH_WAIT: about 14 per call at 5,000 msg/s; 0.11 ms and 0.10 calls per
# message). The price is the crash bound: 1 + 32 per bind may be sent twice (counted in
# possible_duplicates), what an async bind of window 16 has by default. More would
# raise it for little: the calls are already cut by FLUSH_WAIT, not by this.
SYNC_UNSETTLED = 32


def no_route(to: str, sender: str) -> Refusal:
    """The refusal of a message no route matches."""
    kind = (kind_of(sender) or "sender").replace("_", " ")
    return Refusal("no_route", f"no route matches a message to {to} from {kind} {sender}")


class Routing:
    """The routes of one profile over the daemon's connectors."""

    def __init__(
        self,
        profile: str,
        table: RouteTable,
        connectors: Mapping[str, ConnectorRuntime],
        *,
        quality: QualityBoard | None = None,
    ) -> None:
        self.profile = profile
        # Delivery ratios for ``quality`` routes (None: they keep their order).
        self.quality = quality
        # (route index, as an MMS takes it, country) -> its connectors ranked, and those below the
        # minimum sample, as of `_generation`'s read.
        self._ranked: dict[tuple[int, bool, str], Ranked] = {}
        self._generation = -1
        # (route index, country) -> messages routed (quality probes every PROBE_EVERY).
        self._routed: dict[tuple[int, str], int] = {}
        self.table = table
        self.connectors = {n: connectors[n] for n in table.connectors_of(profile)}
        # One connector and no choice (an inline profile): the hot path skips the rest.
        only = list(self.connectors.values())
        self._only = only[0] if len(only) == 1 else None
        # Smooth weighted round robin: each route's connectors' running credit.
        self._credit: dict[int, dict[str, float]] = {}
        # ``least_cost``: per route, the price digits that matter, and the connectors
        # cheapest first per (route, those digits of the destination).
        self._price_digits: dict[int, int] = {}
        self._cheapest: dict[tuple[int, bool, str], tuple[ConnectorRuntime, ...]] = {}

    @property
    def windows(self) -> int:
        """Submits the profile may have in flight at its binds (handed over, no
        answer yet): the sum of its connectors' windows."""
        return sum(c.window for c in self.connectors.values())

    @property
    def unsettled_max(self) -> int:
        """Answered outcomes the profile may hold unrecorded beyond the windows: each
        connector's `unsettled_max` per bind (None: one window, as the bind has it now;
        in sync mode `SYNC_UNSETTLED`), summed like `windows`."""
        total = 0
        for connector in self.connectors.values():
            per_bind = connector.settings.unsettled_max
            if per_bind is None and connector.settings.processing == "sync":
                per_bind = SYNC_UNSETTLED
            if per_bind is None:
                total += connector.window
            else:
                total += per_bind * len(connector.binds)
        return total

    @property
    def ready(self) -> bool:
        """Whether some connector can send now."""
        return any(c.ready for c in self.connectors.values())

    @property
    def binds(self) -> list[Bind]:
        """The binds of every connector the profile may use."""
        return [b for c in self.connectors.values() for b in c.binds]

    def match(
        self, to: str, sender: str, use_case: str | None, message: str = "sms"
    ) -> Matched | None:
        """The route of a message (`message`: ``sms`` or ``mms``), or None (``no_route``)."""
        return self.table.match(self.profile, to, sender, use_case, message)

    def pick(self, route: Matched | None, to: str, tried: tuple[str, ...]) -> ConnectorRuntime:
        """The connector a message goes out over now."""
        only = self._only
        if only is not None:
            return only
        assert route is not None
        found = self._choose(route, to, tried)
        if found is not None:
            return found
        # Nothing healthy: the first connector not tried holds it (or gives it back).
        untried = [n for n in route.connectors if n not in tried] or list(route.connectors)
        return self.connectors[untried[0]]

    def next(
        self, route: Matched | None, to: str, tried: tuple[str, ...]
    ) -> ConnectorRuntime | None:
        """A healthy connector of the route not in `tried`, or None."""
        if self._only is not None or route is None:
            return None
        return self._choose(route, to, tried)

    def order(self, route: Matched, to: str) -> list[ConnectorRuntime]:
        """The route's connectors in the order its strategy ranks them now, healthy
        or not (what `sms-router route` shows)."""
        if route.strategy == "quality":
            return [self.connectors[n] for n in self.ranked(route, to).order]
        if route.strategy == "least_cost":
            return list(self._by_price(route, to))
        return [self.connectors[n] for n in route.connectors]

    def _by_price(self, route: Matched, to: str) -> tuple[ConnectorRuntime, ...]:
        """A ``least_cost`` route's connectors, cheapest first for `to` (unknown prices
        last, ties in route order), memoised by the digits that decide the prices."""
        digits = self._price_digits.get(route.index)
        if digits is None:
            connectors = [self.connectors[n] for n in route.connectors]
            digits = max((c.price_digits for c in connectors), default=0)
            self._price_digits[route.index] = digits
        key = (route.index, route.mms, to[:digits])
        found = self._cheapest.get(key)
        if found is None:
            if len(self._cheapest) >= CHEAPEST_MEMO:
                self._cheapest.clear()
            connectors = [self.connectors[n] for n in route.connectors]
            found = tuple(sorted(connectors, key=lambda c: _price_key(c, to)))
            self._cheapest[key] = found
        return found

    def ranked(self, route: Matched, to: str) -> Ranked:
        """A ``quality`` route's connectors, best first for `to`'s country, and those
        below its minimum sample (see the module's docstring)."""
        board = self.quality
        if board is None:
            return Ranked(route.connectors, ())
        if board.generation != self._generation:
            self._ranked.clear()  # new ratios
            self._generation = board.generation
        key = (route.index, route.mms, _country(to[:_COUNTRY_DIGITS]))
        found = self._ranked.get(key)
        if found is None:
            found = self._ranked[key] = rank(route, key[2], board)
        return found

    def _choose(self, route: Matched, to: str, tried: tuple[str, ...]) -> ConnectorRuntime | None:
        if route.strategy == "least_cost":
            for connector in self._by_price(route, to):
                if connector.name not in tried and connector.healthy:
                    return connector
            return None
        eligible = [
            c for n in route.connectors if n not in tried and (c := self.connectors[n]).healthy
        ]
        if not eligible:
            return None
        if len(eligible) == 1:
            return eligible[0]
        if route.strategy == "weighted":
            return self._weighted(route, eligible)
        if route.strategy == "quality":
            return self._best(route, to, eligible)
        return eligible[0]

    def _best(self, route: Matched, to: str, eligible: list[ConnectorRuntime]) -> ConnectorRuntime:
        """``quality``: the best ranked of `eligible`, or every `PROBE_EVERY`th message a
        connector below the minimum sample (in turn)."""
        ranked = self.ranked(route, to)
        names = {c.name: c for c in eligible}
        if ranked.unsampled and self.quality is not None:
            key = (route.index, _country(to[:_COUNTRY_DIGITS]))
            routed = self._routed[key] = self._routed.get(key, 0) + 1
            if routed % PROBE_EVERY == 0:
                probes = [n for n in ranked.unsampled if n in names]
                if probes:
                    return names[probes[routed // PROBE_EVERY % len(probes)]]
        for name in ranked.order:
            if name in names:
                return names[name]
        return eligible[0]

    def _weighted(self, route: Matched, eligible: list[ConnectorRuntime]) -> ConnectorRuntime:
        weights = dict(zip(route.connectors, route.weights, strict=True))
        credit = self._credit.setdefault(route.index, {})
        total = 0.0
        best: ConnectorRuntime | None = None
        for connector in eligible:
            weight = weights[connector.name]
            total += weight
            credit[connector.name] = credit.get(connector.name, 0.0) + weight
            if weight and (best is None or credit[connector.name] > credit[best.name]):
                best = connector
        if best is None:  # every eligible weight is 0: route order
            return eligible[0]
        credit[best.name] -= total
        return best


class Ranked(NamedTuple):
    """A ``quality`` route's connectors for one country: best first (`order`), and
    those below the minimum sample that probes go to (`unsampled`: not the first)."""

    order: tuple[str, ...]
    unsampled: tuple[str, ...]


def rank(route: Matched, country: str, board: QualityBoard) -> Ranked:
    """`route`'s connectors for `country`: those with at least `quality_min_sample`
    reports over `quality_window` sorted by delivery ratio (best first, ties in route
    order) into the places they hold; the others where the route puts them."""
    window, least = route.quality_window, route.quality_min_sample
    ratios: dict[str, float] = {}
    for name in route.connectors:
        delivered, reports = board.sample(name, window, country)
        if reports >= least:
            ratios[name] = delivered / reports
    order = route.connectors
    if len(ratios) > 1:
        best = iter(sorted(ratios, key=lambda n: -ratios[n]))  # sorted() is stable
        order = tuple(next(best) if name in ratios else name for name in route.connectors)
    return Ranked(order, tuple(n for n in order[1:] if n not in ratios))


# Enough of a number's digits to know its country (+1 and the area code).
_COUNTRY_DIGITS = 5


@lru_cache(maxsize=4096)
def _country(prefix: str) -> str:
    return country_of(prefix)


def _price_key(connector: ConnectorRuntime, to: str) -> tuple[int, float]:
    price = connector.price(to)
    return (1, 0.0) if price is None else (0, price)
