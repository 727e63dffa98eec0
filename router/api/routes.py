"""Routing over HTTP: ``GET /v1/route`` explains where a message would go.

The same explanation as ``sms-router route --json`` (router/policy/explain.py): the
sender, the route that matches and its connectors in strategy order with their
health and price per part, or why the message would be rejected (200 either way: the
explanation is the answer). Health is this instance's own, live: the state of each
connector as its workers route to it now (the CLI reads every instance's health
record instead). A question that cannot be asked (an unknown profile, a `to` that
is not E.164, a `from` the profile does not own) is a 400 naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from router.api.common import CONTEXT, ApiError, json_response
from router.api.forward import in_daemon
from router.api.spec import Operation, Reply, add_operations, validate
from router.policy.explain import ExplainError, explain
from router.policy.jobs import MAX_LENGTHS
from router.policy.routes import Matched

__all__ = ["add_routes"]

State = Literal["up", "half-open", "open", "down", "unknown"]


class RouteQuery(BaseModel):
    """The message to explain."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    profile: str | None = Field(
        None,
        description="The profile (default: the global one).",
        max_length=MAX_LENGTHS["profile"],
    )
    to: str = Field(
        description="Destination in E.164.",
        max_length=MAX_LENGTHS["to"],
        examples=["+447911123456"],
    )
    from_: str | None = Field(
        None,
        alias="from",
        description="A sender of the profile (default: the one its strategy picks first).",
        max_length=MAX_LENGTHS["from"],
    )
    use_case: str | None = Field(
        None,
        description="The job's use case (default: the profile's default_use_case).",
        max_length=MAX_LENGTHS["use_case"],
    )
    mms: bool = Field(
        False,
        description="The message carries media: as an MMS, as an SMS with links, or refused.",
    )


class MmsDecision(BaseModel):
    """How a message with media would go: `as` ``mms`` (with its media), ``link`` (an
    SMS with links to them: mms_fallback = link) or ``rejected`` (mms_not_supported);
    `reason`: why not as an MMS (empty when it goes as one)."""

    model_config = ConfigDict(populate_by_name=True)
    as_: Literal["mms", "link", "rejected"] = Field(alias="as")
    reason: str


class RefusalView(BaseModel):
    """Why a sender may not send."""

    model_config = ConfigDict(title="SenderRefusal")
    code: str
    reason: str


class SenderChoice(BaseModel):
    """The sender: `from` when given, else the first the profile's strategy picks
    (no round-robin position is taken); null `number` when none may send."""

    number: str | None
    kind: Literal["long_code", "toll_free", "short_code", "alphanumeric"] | None
    given: bool = Field(description="Named with `from`.")
    strategy: str = Field(description="The profile's sender strategy.")
    candidates: list[str] = Field(description="The numbers the strategy picks among here.")
    refusal: RefusalView | None


class MatchedRoute(BaseModel):
    """The route that matches: its index in `[[routes]]` (null: the profile's own
    connector, an inline protocol) and the keys it matches on."""

    index: int | None
    label: str = Field(description='"routes[N]" or "own connector".')
    strategy: Literal["failover", "weighted", "least_cost", "quality"]
    conditions: dict[str, list[str]]


class RankedConnector(BaseModel):
    """A connector of the route, in the order its strategy ranks them here."""

    name: str
    state: State = Field(description="Its health on this instance; unknown: not running here.")
    price: float | None = Field(description="Per message part to `to`; null: unknown.")
    price_prefix: str | None = Field(description='The `prices` key that applies, or "default".')
    weight: int | None = Field(description="Its weight (weighted routes).")


class RouteExplanation(BaseModel):
    """Where a message would go, or why it would be rejected."""

    model_config = ConfigDict(populate_by_name=True)
    profile: str
    to: str = Field(description="The destination, normalised.")
    from_: str | None = Field(alias="from", description="The sender asked about.")
    use_case: str | None = Field(description="The use case the rules and routes apply.")
    outcome: Literal["send", "rejected"]
    code: str | None = Field(description="Rejected: the code its record would get.")
    reason: str | None
    sender: SenderChoice
    route: MatchedRoute | None
    connectors: list[RankedConnector]
    connector: str | None = Field(
        description="Where it would go now (null: weighted, split by weight; or rejected)."
    )
    health_source: str
    mms: MmsDecision | None = Field(
        None, description="Asked with mms=true: how the MMS would go (null otherwise)."
    )


class _Connector(Protocol):
    @property
    def state(self) -> str: ...


def live_health(workers: Iterable[Any]) -> dict[str, str]:
    """Each connector's state as this instance's workers route to it
    (`router.engine.routing.Routing.connectors`)."""
    states: dict[str, str] = {}
    for worker in workers:
        routing = getattr(worker, "routing", None)
        connectors: Mapping[str, _Connector] = getattr(routing, "connectors", None) or {}
        for name, connector in connectors.items():
            states[name] = connector.state
    return states


def live_quality(workers: Iterable[Any]) -> Callable[[str, Matched, str], Sequence[str]]:
    """A ``quality`` route's connectors as the profile's live routing ranks them now
    (`router.engine.routing.Routing.order`); route order without that worker."""
    by_name = {getattr(w, "name", ""): getattr(w, "routing", None) for w in workers}

    def ranking(profile: str, route: Matched, to: str) -> Sequence[str]:
        routing = by_name.get(profile)
        if routing is None:
            return route.connectors
        return [c.name for c in routing.order(route, to)]

    return ranking


@in_daemon  # the connectors' live health and quality
async def get_route(request: web.Request) -> web.Response:
    """Explain the routing decision for one message."""
    context = request.app[CONTEXT]
    query = validate(RouteQuery, dict(request.query))
    settings = context.settings
    source = f"instance {settings.router.instance_name}"
    try:
        found = explain(
            settings,
            query.profile,
            query.to,
            query.from_,
            query.use_case,
            live_health(context.workers),
            source,
            quality=live_quality(context.workers),
            mms=query.mms,
        )
    except ExplainError as exc:
        raise ApiError(400, str(exc)) from None
    answer = RouteExplanation.model_validate(found.as_dict())
    return json_response(answer.model_dump(by_alias=True))


def add_routes(app: web.Application) -> None:
    """Register the routing endpoint."""
    add_operations(
        app,
        [
            Operation(
                "GET",
                "/v1/route",
                "Explain where a message would go",
                get_route,
                {
                    200: Reply("The decision: sender, route, connectors; or why it would "
                               "be rejected (no_route, sender_not_allowed...).",
                               RouteExplanation),
                    400: Reply("An unknown profile, a `to` that is not E.164, a `from` the "
                               "profile does not own; the error names the field."),
                },
                scope="read",
                query=RouteQuery,
                tag="routing",
                description="Nothing is sent and no round-robin position is taken. Health "
                "is this instance's: each connector's state as its workers route now.",
            ),
        ],
    )  # fmt: skip
