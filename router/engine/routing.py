"""Routing at run time: which connector each message of a profile goes out over.

The route (router/policy/routes.py) is matched when the message is planned; the
connector is chosen when the message is handed to a bind, so health is as fresh as
it can be:

- ``failover``: the first healthy connector, in the route's order;
- ``weighted``: the healthy connectors in proportion to their weights (smooth
  weighted round robin: over any run of messages each gets its share, to a message);
- ``least_cost``: the healthy connector with the lowest price for the destination
  (longest prefix of its ``prices``; unknown prices last, then route order).

A message whose connector answered at the route level (`connectors.route_level`)
moves to the route's next healthy connector it has not tried, without an attempt
used; when none is left it takes the ordinary retry path. When no connector is
healthy the first one gets the message all the same (its binds hold it, or give
it back as not sent).
"""

from __future__ import annotations

from collections.abc import Mapping

from binds.base import Bind
from router.engine.connectors import ConnectorRuntime
from router.policy.routes import Matched, RouteTable, kind_of
from router.policy.rules import Refusal

__all__ = ["Routing", "no_route"]


def no_route(to: str, sender: str) -> Refusal:
    """The refusal of a message no route matches."""
    kind = (kind_of(sender) or "sender").replace("_", " ")
    return Refusal("no_route", f"no route matches a message to {to} from {kind} {sender}")


class Routing:
    """The routes of one profile over the daemon's connectors."""

    def __init__(
        self, profile: str, table: RouteTable, connectors: Mapping[str, ConnectorRuntime]
    ) -> None:
        self.profile = profile
        self.table = table
        self.connectors = {n: connectors[n] for n in table.connectors_of(profile)}
        # One connector and no choice (an inline profile): the hot path skips the rest.
        only = list(self.connectors.values())
        self._only = only[0] if len(only) == 1 else None
        # Smooth weighted round robin: each route's connectors' running credit.
        self._credit: dict[int, dict[str, float]] = {}

    @property
    def windows(self) -> int:
        return sum(c.window for c in self.connectors.values())

    @property
    def ready(self) -> bool:
        """Whether some connector can send now."""
        return any(c.ready for c in self.connectors.values())

    @property
    def binds(self) -> list[Bind]:
        """The binds of every connector the profile may use."""
        return [b for c in self.connectors.values() for b in c.binds]

    def match(self, to: str, sender: str, use_case: str | None) -> Matched | None:
        """The message's route, or None (``no_route``)."""
        return self.table.match(self.profile, to, sender, use_case)

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
        connectors = [self.connectors[n] for n in route.connectors]
        if route.strategy == "least_cost":
            return sorted(connectors, key=lambda c: _price_key(c, to))
        return connectors

    def _choose(self, route: Matched, to: str, tried: tuple[str, ...]) -> ConnectorRuntime | None:
        eligible = [
            c for n in route.connectors if n not in tried and (c := self.connectors[n]).healthy
        ]
        if not eligible:
            return None
        if len(eligible) == 1:
            return eligible[0]
        if route.strategy == "weighted":
            return self._weighted(route, eligible)
        if route.strategy == "least_cost":
            return min(eligible, key=lambda c: _price_key(c, to))
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


def _price_key(connector: ConnectorRuntime, to: str) -> tuple[int, float]:
    price = connector.settings.price(to)
    return (1, 0.0) if price is None else (0, price)
