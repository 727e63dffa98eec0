"""Routes: which connectors may carry a message, in the order its route tries them.

A profile with an inline ``protocol`` is a connector of its own, and that is its only
route. Every other profile's messages take the first ``[[routes]]`` entry that
matches (destination prefix or country, profile, the sender's kind, use case, the
message's kind: ``sms`` or ``mms``); none matching: the message is rejected
``no_route``. An MMS takes only the connectors of its route that carry media
(`Connector.carries_media`); a route with none, or an inline profile whose connector
carries none, never matches one. The route names its connectors and a
strategy; the engine orders them per message by that strategy and their health
(router/engine/routing.py). Matching is memoised per destination prefix, so a table
of hundreds of routes costs one dictionary look-up per message.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import overload

from router.config import Connector, Route, Settings, Strategy
from router.numbers import country_of, region_key, sender_kind

__all__ = ["OWN_ROUTE", "Matched", "RouteTable", "kind_of"]

OWN_ROUTE = -1  # `Matched.index` of an inline profile's own connector

# Destination digits enough to decide a NANP country (+1 and the area code).
_COUNTRY_DIGITS = 5


@dataclass(frozen=True, slots=True)
class Matched:
    """The route a message takes: its index in ``[[routes]]`` (`OWN_ROUTE` for an
    inline profile's own connector), its connectors and strategy."""

    index: int
    connectors: tuple[str, ...]
    strategy: Strategy
    weights: tuple[int, ...] = ()
    quality_window: float = 3600.0
    quality_min_sample: int = 50
    # The route as an MMS takes it: only its connectors that carry media.
    mms: bool = False

    @property
    def label(self) -> str:
        """How logs and `sms-router route` name it."""
        return "own connector" if self.index == OWN_ROUTE else f"routes[{self.index}]"


class RouteTable:
    """The routes of a configuration, matched per message."""

    def __init__(self, settings: Settings) -> None:
        self.connectors: dict[str, Connector] = settings.all_connectors()
        self._own = {
            name: Matched(OWN_ROUTE, (name,), "failover")
            for name, p in settings.profiles.items()
            if p.protocol is not None
        }
        self._routes = [
            (index, route, _matched(index, route)) for index, route in enumerate(settings.routes)
        ]
        # What an MMS takes: each route with only its connectors that carry media
        # (None: it has none), and the inline profiles whose connector carries media.
        self._mms = [
            _matched(index, route, [c for c in route.connectors if self._carries(c)])
            for index, route in enumerate(settings.routes)
        ]
        self._own_mms = {name for name in self._own if self._carries(name)}
        self._countries = [{region_key(c) for c in route.countries} for route in settings.routes]
        longest = max((len(p) for r in settings.routes for p in r.to), default=0)
        # The memo's key keeps as many digits as any route's prefix (and enough for a
        # country): two numbers alike that far match the same routes.
        self._digits = max(longest, _COUNTRY_DIGITS + 1)
        self._memo = lru_cache(maxsize=65_536)(self._match)

    def connectors_of(self, profile: str) -> list[str]:
        """Every connector `profile`'s messages may go out over (for its windows)."""
        own = self._own.get(profile)
        if own is not None:
            return list(own.connectors)
        names: dict[str, None] = {}
        for _index, route, matched in self._routes:
            if not route.profiles or profile in route.profiles:
                names.update(dict.fromkeys(matched.connectors))
        return list(names)

    def profiles_of(self, connector: str, profiles: list[str]) -> list[str]:
        """The profiles (of `profiles`) whose messages may go out over `connector`."""
        return [p for p in profiles if connector in self.connectors_of(p)]

    def _carries(self, connector: str) -> bool:
        found = self.connectors.get(connector)
        return found is not None and found.carries_media

    def match(
        self, profile: str, to: str, sender: str, use_case: str | None, message: str = "sms"
    ) -> Matched | None:
        """The route a message (`message`: ``sms`` or ``mms``) takes, or None (no route
        matches: ``no_route``)."""
        own = self._own.get(profile)
        if own is not None:
            return own if message == "sms" or profile in self._own_mms else None
        return self._memo(profile, to[: self._digits], kind_of(sender), use_case or "", message)

    def _match(
        self, profile: str, to: str, kind: str, use_case: str, message: str
    ) -> Matched | None:
        country = country_of(to) if len(to) > 2 else ""
        for index, route, matched in self._routes:
            if route.kind is not None and route.kind != message:
                continue
            if message == "mms":
                found = self._mms[index]
                if found is None:
                    continue  # none of its connectors carries media
                matched = found
            if route.profiles and profile not in route.profiles:
                continue
            if route.to and not to.startswith(tuple(route.to)):
                continue
            if route.countries and country not in self._countries[index]:
                continue
            if route.senders and kind not in route.senders:
                continue
            if route.use_cases and use_case not in route.use_cases:
                continue
            return matched
        return None


@overload
def _matched(index: int, route: Route) -> Matched: ...
@overload
def _matched(index: int, route: Route, only: list[str]) -> Matched | None: ...
def _matched(index: int, route: Route, only: list[str] | None = None) -> Matched | None:
    """`route` as matched, or with only the connectors `only` (None when it is empty);
    a weighted route keeps each one's weight."""
    names = route.connectors if only is None else only
    if not names:
        return None
    weights = dict(zip(route.connectors, route.weights, strict=False))
    return Matched(
        index,
        tuple(names),
        route.strategy,
        tuple(weights[n] for n in names) if route.weights else (),
        route.quality_window,
        route.quality_min_sample,
        only is not None,
    )


@lru_cache(maxsize=4096)
def kind_of(sender: str) -> str:
    """The kind of a sender (`router.numbers.sender_kind`), '' if it is none."""
    try:
        return sender_kind(sender)
    except ValueError:
        return ""
