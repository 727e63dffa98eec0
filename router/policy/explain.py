"""Explain a routing decision: which sender, route and connectors a message would take.

`sms-router route` and ``GET /v1/route`` answer "where would a message from profile P
to N go?" with the steps the worker takes, in its order, without sending anything:

1. the sender: the job's ``from`` when the profile's rules allow it for the
   destination, else why not; without one, the first number the rules allow
   (within the profile's ``sender_preference`` and, for geomatch, the nearest tier).
   No round-robin position is taken and no sticky mapping read: the strategy rotates
   among `SenderView.candidates`;
2. the route (router/policy/routes.py), matched with that sender's kind and the
   use case (the job's, else the profile's ``default_use_case``): its index in
   ``[[routes]]``, or the inline profile's own connector; none: ``no_route``;
3. for an MMS (``--mms``): which numbers may send it as one and over which route
   (router/policy/mms.py), or the profile's ``mms_fallback``: ``link`` (an SMS with
   the media links, routed as an SMS) or ``reject`` (``mms_not_supported``). Media
   URLs are not fetched here;
4. the route's connectors in the order its strategy ranks them for the destination
   (``least_cost``: by `Connector.price`, unknown prices last; ``failover``,
   ``weighted`` and ``quality``: route order), each with its health and price.

Pure: settings and a health map (connector name -> state, as the daemon publishes
it) in, an `Explanation` out. The caller reads the health: the CLI from every
instance's health record (`health_from_records`), the API from its own connectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from router.config import Connector, Route, Settings
from router.errors import RouterError
from router.numbers import normalise_e164, normalise_sender, sender_kind
from router.policy.jobs import Job
from router.policy.mms import MMS_NOT_SUPPORTED, MmsStage
from router.policy.routes import OWN_ROUTE, Matched, RouteTable
from router.policy.rules import Refusal, SenderRules
from router.policy.senders import Want

__all__ = [
    "STATES",
    "ConnectorView",
    "ExplainError",
    "Explanation",
    "MmsView",
    "RouteView",
    "SenderView",
    "explain",
    "health_from_records",
]

# A connector's health as the daemon publishes it (`ConnectorRuntime.state`), best
# first, and "unknown" when no running instance says.
STATES: Final = ("up", "half-open", "open", "down", "unknown")
# States a route sends to: half-open lets a probe through, unknown is not known bad.
_SENDS_TO: Final = frozenset({"up", "half-open", "unknown"})
# The `Route` keys a route matches on, as `[[routes]]` spells them.
_CONDITIONS: Final = ("to", "countries", "profiles", "senders", "use_cases")


class ExplainError(RouterError, ValueError):
    """A question that cannot be answered as asked; `field` names the culprit
    (``profile``, ``to``, ``from``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class SenderView:
    """The sender a message would go out from.

    `number` is None when none may send; `refusal` says why `number` (when `given`)
    or every number may not. `candidates`: the numbers the profile's strategy picks
    among for this destination (round robin rotates over them; `number` is the first)."""

    number: str | None
    kind: str | None
    given: bool
    strategy: str
    candidates: tuple[str, ...]
    refusal: Refusal | None


@dataclass(frozen=True, slots=True)
class RouteView:
    """The route that matches: `index` in ``[[routes]]`` (None for an inline profile's
    own connector), how logs name it, its strategy and what it matches on."""

    index: int | None
    label: str
    strategy: str
    conditions: dict[str, list[str]]


@dataclass(frozen=True, slots=True)
class ConnectorView:
    """One connector of the route, in strategy order: its health, the price of one
    part to the destination (None: unknown) and the ``prices`` key that gave it, and
    its weight (``weighted`` routes only)."""

    name: str
    state: str
    price: float | None
    price_prefix: str | None
    weight: int | None


@dataclass(frozen=True, slots=True)
class MmsView:
    """How an MMS would go: `as_` ``mms`` (with its media), ``link`` (an SMS with the
    media links: ``mms_fallback = "link"``) or ``rejected`` (``reject``); `reason`:
    why not as an MMS ('' when it goes as one)."""

    as_: Literal["mms", "link", "rejected"]
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """The decision for one message. `outcome` "rejected" carries the `code` and
    `reason` the message's record would get. `connector` is where a message would go
    now: the first connector in order that routes send to (every one unhealthy: the
    first); None for ``weighted`` (split by weight) or without a route."""

    profile: str
    to: str
    sender_asked: str | None
    use_case: str | None
    outcome: Literal["send", "rejected"]
    code: str | None
    reason: str | None
    sender: SenderView
    route: RouteView | None
    connectors: tuple[ConnectorView, ...]
    connector: str | None
    health_source: str
    # Asked about an MMS: how it goes ("mms", "link" or "rejected") and why not as an
    # MMS; None when the question was about an SMS.
    mms: MmsView | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of ``sms-router route --json`` and ``GET /v1/route``."""
        sender = self.sender
        refusal = sender.refusal
        route = self.route
        return {
            "profile": self.profile,
            "to": self.to,
            "from": self.sender_asked,
            "use_case": self.use_case,
            "outcome": self.outcome,
            "code": self.code,
            "reason": self.reason,
            "sender": {
                "number": sender.number,
                "kind": sender.kind,
                "given": sender.given,
                "strategy": sender.strategy,
                "candidates": list(sender.candidates),
                "refusal": None
                if refusal is None
                else {"code": refusal.code, "reason": refusal.reason},
            },
            "route": None
            if route is None
            else {
                "index": route.index,
                "label": route.label,
                "strategy": route.strategy,
                "conditions": {k: list(v) for k, v in route.conditions.items()},
            },
            "connectors": [
                {
                    "name": c.name,
                    "state": c.state,
                    "price": c.price,
                    "price_prefix": c.price_prefix,
                    "weight": c.weight,
                }
                for c in self.connectors
            ],
            "connector": self.connector,
            "health_source": self.health_source,
            "mms": None if self.mms is None else {"as": self.mms.as_, "reason": self.mms.reason},
        }


def explain(
    settings: Settings,
    profile: str | None,
    to: str,
    sender: str | None = None,
    use_case: str | None = None,
    health: Mapping[str, str] | None = None,
    health_source: str = "none",
    quality: Callable[[str, Matched, str], Sequence[str]] | None = None,
    mms: bool = False,
) -> Explanation:
    """The decision for a message of `profile` (None: the global one) to `to`, from
    `sender` (None: the profile's strategy), for `use_case` (None: the profile's
    default), with connectors' `health` (name -> state; missing: "unknown"). A
    ``quality`` route's connectors come in the order `quality(profile, route, to)`
    gives (the daemon's live ranking), else in route order. `mms`: the message carries
    media (see the module docstring).

    ExplainError (naming the field) for an unknown profile, a `to` that is not E.164,
    a `sender` that is not one or not the profile's."""
    name = _profile_name(settings, profile)
    config = settings.profiles[name]
    try:
        destination = normalise_e164(to)
    except ValueError as exc:
        raise ExplainError("to", str(exc)) from None
    given = _given_sender(sender, name, config.numbers)
    effective_use_case = use_case or config.default_use_case
    rules = SenderRules(name, config.numbers, settings)
    table = RouteTable(settings)
    only, mms_view = None, None
    if mms:
        only, mms_view = _mms(settings, name, rules, table, destination, effective_use_case, given)
    view = _sender(rules, config.sender, config.sender_preference, destination,
                   effective_use_case, given, only)  # fmt: skip
    outcome: Literal["send", "rejected"] = "send"
    code = reason = None
    if view.refusal is not None:
        outcome, code, reason = "rejected", view.refusal.code, view.refusal.reason
    elif mms_view is not None and mms_view.as_ == "rejected":
        outcome, code, reason = "rejected", MMS_NOT_SUPPORTED, mms_view.reason
    route: RouteView | None = None
    connectors: tuple[ConnectorView, ...] = ()
    chosen: str | None = None
    if view.number is not None:
        # Matched with the sender's kind, as the worker does (also for a refused
        # `from`: what it would take if the rules allowed it).
        kind = "mms" if mms_view is not None and mms_view.as_ == "mms" else "sms"
        matched = table.match(name, destination, view.number, effective_use_case, kind)
        if matched is None:
            if outcome == "send":
                outcome, code = "rejected", "no_route"
                reason = _no_route(name, destination, view, effective_use_case)
        else:
            route = _route_view(matched, settings.routes)
            weights = matched.weights if matched.strategy == "weighted" else ()
            connectors = _ranked(
                matched.connectors, matched.strategy, weights, table.connectors,
                destination, health or {},
            )  # fmt: skip
            if matched.strategy == "quality" and quality is not None:
                place = {n: i for i, n in enumerate(quality(name, matched, destination))}
                connectors = tuple(sorted(connectors, key=lambda c: place.get(c.name, len(place))))
            if outcome == "send" and matched.strategy != "weighted":
                healthy = [c.name for c in connectors if c.state in _SENDS_TO]
                chosen = healthy[0] if healthy else connectors[0].name
    return Explanation(
        profile=name,
        to=destination,
        sender_asked=given,
        use_case=effective_use_case,
        outcome=outcome,
        code=code,
        reason=reason,
        sender=view,
        route=route,
        connectors=connectors,
        connector=chosen,
        health_source=health_source,
        mms=mms_view,
    )


def _mms(
    settings: Settings,
    profile: str,
    rules: SenderRules,
    table: RouteTable,
    to: str,
    use_case: str | None,
    given: str | None,
) -> tuple[frozenset[str] | None, MmsView]:
    """The numbers that may send an MMS to `to` (None: any, when it goes as links or
    no number may send at all), and how it goes: `MmsStage.decide`, the planner's own."""
    job = Job(id="route", to=to, media=("https://media.invalid/m",), sender=given)
    want = Want(to, use_case, given)
    refusal = MmsStage(profile, settings, rules, table).decide(job, want)
    if refusal is not None:
        return None, MmsView("rejected", refusal.reason)
    if job.fallback:
        return None, MmsView("link", job.fallback)
    return want.only, MmsView("mms", "")


def health_from_records(records: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Each connector's health from the instances' health records (``sms:health:*``,
    each with ``"connectors": {name: {"state": ...}}``): the best any instance reports
    (up if one says up). A record or entry of another shape is skipped."""
    rank = {state: i for i, state in enumerate(STATES)}
    found: dict[str, str] = {}
    for record in records:
        connectors = record.get("connectors")
        if not isinstance(connectors, Mapping):
            continue
        for name, entry in connectors.items():
            state = entry.get("state") if isinstance(entry, Mapping) else None
            if not isinstance(state, str) or state not in rank:
                continue
            if name not in found or rank[state] < rank[found[name]]:
                found[name] = state
    return found


def _profile_name(settings: Settings, profile: str | None) -> str:
    if profile is None:
        found = settings.global_profile
        if found is None:
            raise ExplainError("profile", "required (no profile is global)")
        return found
    if profile not in settings.profiles:
        known = ", ".join(sorted(settings.profiles))
        raise ExplainError("profile", f"unknown profile {profile!r} (configured: {known})")
    return profile


def _given_sender(sender: str | None, profile: str, numbers: list[str]) -> str | None:
    """The `from` asked about, normalised; ExplainError when the door would refuse it."""
    if sender is None:
        return None
    try:
        number = normalise_sender(sender)
    except ValueError as exc:
        raise ExplainError("from", str(exc)) from None
    if number not in numbers:
        # What the doors answer (router.policy.checks.check_sender).
        raise ExplainError("from", f"{number} is not a number of profile {profile!r}")
    return number


def _sender(
    rules: SenderRules,
    strategy: str,
    preference: Sequence[str],
    to: str,
    use_case: str | None,
    given: str | None,
    only: frozenset[str] | None = None,
) -> SenderView:
    capable = rules.capable(to, use_case)
    if given is not None:
        refusal = capable.refusals.get(given)
        return SenderView(given, sender_kind(given), True, strategy, (given,), refusal)
    if capable.refusal is not None:
        return SenderView(None, None, False, strategy, (), capable.refusal)
    # The group the strategy picks among first (router.policy.senders `_candidates`).
    if strategy.endswith("geomatch"):
        candidates = capable.tiers[0]
    elif preference:
        candidates = capable.ranked[0]
    else:
        candidates = capable.numbers
    if only is not None:  # an MMS: the numbers that may send one, in the same order
        candidates = tuple(n for n in candidates if n in only) or tuple(
            n for n in capable.numbers if n in only
        )
    first = candidates[0]
    return SenderView(first, sender_kind(first), False, strategy, candidates, None)


def _route_view(matched: Matched, routes: list[Route]) -> RouteView:
    if matched.index == OWN_ROUTE:
        return RouteView(None, matched.label, matched.strategy, {})
    route = routes[matched.index]
    conditions = {key: list(getattr(route, key)) for key in _CONDITIONS if getattr(route, key)}
    return RouteView(matched.index, matched.label, matched.strategy, conditions)


def _ranked(
    names: tuple[str, ...],
    strategy: str,
    weights: tuple[int, ...],
    configured: Mapping[str, Connector],
    to: str,
    health: Mapping[str, str],
) -> tuple[ConnectorView, ...]:
    views = []
    for i, name in enumerate(names):
        connector = configured.get(name)
        price = connector.price(to) if connector is not None else None
        prefix = _price_prefix(connector, to) if price is not None else None
        weight = weights[i] if i < len(weights) else None
        views.append(ConnectorView(name, health.get(name, "unknown"), price, prefix, weight))
    if strategy == "least_cost":
        # As router.engine.routing ranks them: cheapest first, unknown prices last,
        # ties in route order (sorted is stable).
        views.sort(key=lambda v: (1, 0.0) if v.price is None else (0, v.price))
    return tuple(views)


def _price_prefix(connector: Connector | None, to: str) -> str | None:
    """The ``prices`` key `Connector.price` takes its answer from (longest prefix of
    `to`, else "default")."""
    if connector is None:
        return None
    for size in range(min(len(to), 16), 1, -1):
        if to[:size] in connector.prices:
            return to[:size]
    return "default" if "default" in connector.prices else None


def _no_route(profile: str, to: str, sender: SenderView, use_case: str | None) -> str:
    """The record's ``no_route`` reason (router.engine.routing `no_route`), and what
    was matched on."""
    kind = (sender.kind or "sender").replace("_", " ")
    return (
        f"no route matches a message to {to} from {kind} {sender.number} "
        f"(profile {profile!r}, use case {use_case or 'none'})"
    )
