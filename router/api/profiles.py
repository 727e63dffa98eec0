"""Profiles over HTTP: the profiles, their numbers, and their dead letters.

``GET /v1/profiles``, ``/v1/profiles/{p}`` (with its connectors' health and today's
spend) and ``/v1/profiles/{p}/numbers`` show what the configuration says and what the
rules make of it (which numbers may send, how much of a campaign's
daily cap is used today). The dead-letter endpoints mirror ``sms-router dlq``: list,
replay (back onto the work stream) and drop, by entry id or all of them.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Literal

import msgpack
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from router.api.common import CONTEXT, ApiError, json_response, read_json
from router.api.forward import in_daemon
from router.api.spec import Operation, Reply, add_operations, validate
from router.config import Profile
from router.policy.rules import Refusal, SenderRules
from router.store import keys
from router.store.connections import as_text
from router.store.queue import DeadLetter, drop_dead_letters, list_dead_letters, replay_dead_letters

__all__ = ["add_routes"]

MAX_DEAD_LETTERS = 1000  # per request: list, or entries named in one replay/drop
ALL_DEAD_LETTERS = 1_000_000  # "all": the CLI's bound too
_ENTRY = re.compile(r"\d{1,20}-\d{1,20}")


class ProfileView(BaseModel):
    """One profile as configured, and whether it can send now."""

    model_config = ConfigDict(populate_by_name=True)
    name: str
    protocol: Literal["http", "smpp", "twilio"] | None  # None: sends over [[routes]]
    direction: str
    processing: str
    window: int
    tps: float
    sender: str
    numbers: int
    global_: bool = Field(alias="global")
    ready: bool | None = Field(description="A bind is ready (null: not known here).")


class ConnectorState(BaseModel):
    """A connector the profile sends over, as this instance routes to it now."""

    name: str
    state: str = Field(description="up, down (no bound session), open or half-open.")


class ProfileDetail(ProfileView):
    """One profile, with its connectors and what it spent today."""

    connectors: list[ConnectorState]
    spend_today: dict[str, float] = Field(
        description="Today's (UTC) spend of its sent messages: total and per connector."
    )
    daily_spend_limit: float | None


class ProfileList(BaseModel):
    """Every configured profile."""

    profiles: list[ProfileView]


class RefusalView(BaseModel):
    """Why a number may not send, whatever the message."""

    code: str
    reason: str


class NumberView(BaseModel):
    """One sender number of a profile."""

    number: str
    kind: str = Field(description="long_code, toll_free, short_code or alphanumeric.")
    features: list[str]
    sms_enabled: bool
    campaign: str | None
    verified: bool
    can_send: bool = Field(description="No rule rules it out whatever the message.")
    refusal: RefusalView | None
    daily_cap: int | None = Field(description="The campaign's daily cap (US/CA), if any.")
    sent_today: int | None = Field(description="Messages counted against the cap today (UTC).")


class NumberList(BaseModel):
    """A profile's numbers, on UTC day `day` (YYYYMMDD)."""

    profile: str
    day: str
    numbers: list[NumberView]


class DeadLetterQuery(BaseModel):
    """How many dead letters to list, oldest first."""

    model_config = ConfigDict(extra="forbid")
    limit: int = Field(100, ge=1, le=MAX_DEAD_LETTERS)


class DeadLetterView(BaseModel):
    """A dead letter: the job as it came (when it is a msgpack map) and why."""

    entry: str
    reason: str
    at: float | None
    origin: str | None
    job: dict[str, Any] | None = Field(description="The job, or null when not decodable.")


class DeadLetterList(BaseModel):
    """The oldest dead letters of a profile."""

    profile: str
    dead_letters: list[DeadLetterView]


class Selection(BaseModel):
    """Which dead letters: `entries` (ids from the list) or `all`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    entries: list[str] | None = Field(None, max_length=MAX_DEAD_LETTERS)
    all: bool = False


class Replayed(BaseModel):
    """How many dead letters went back onto the work stream."""

    replayed: int


class Dropped(BaseModel):
    """How many dead letters were deleted."""

    dropped: int


def _profile(request: web.Request) -> tuple[str, Profile]:
    name = request.match_info["profile"]
    profile = request.app[CONTEXT].settings.profiles.get(name)
    if profile is None:
        raise ApiError(404, f"profile: unknown profile {name!r}")
    return name, profile


def _view(name: str, p: Profile, ready: bool | None) -> dict[str, Any]:
    return {
        "name": name,
        "protocol": p.protocol,
        "direction": p.direction,
        "processing": p.processing,
        "window": p.window,
        "tps": p.tps,
        "sender": p.sender,
        "numbers": len(p.numbers),
        "global": p.global_,
        "ready": ready,
    }


@in_daemon  # each profile's readiness is the daemon's
async def list_profiles(request: web.Request) -> web.Response:
    """Every profile."""
    context = request.app[CONTEXT]
    ready = {w.name: w.ready for w in context.workers}
    views = [
        ProfileView.model_validate(_view(name, p, ready.get(name)))
        for name, p in sorted(context.settings.profiles.items())
    ]
    return json_response(ProfileList(profiles=views).model_dump(by_alias=True))


@in_daemon  # its connectors' live health
async def show_profile(request: web.Request) -> web.Response:
    """One profile: its connectors' health and today's spend."""
    name, profile = _profile(request)
    context = request.app[CONTEXT]
    worker = next((w for w in context.workers if w.name == name), None)
    states: list[dict[str, str]] = []
    if worker is not None:
        # The live routing (duck-typed: the API does not build workers).
        routing = getattr(worker, "routing", None)
        for connector in getattr(routing, "connectors", {}).values():
            states.append({"name": connector.name, "state": connector.state})
    day = keys.utc_day()
    raw = await context.redis.hgetall(keys.spend(name, day))
    detail = ProfileDetail.model_validate(
        {
            **_view(name, profile, None if worker is None else worker.ready),
            "connectors": states,
            "spend_today": {as_text(k): keys.spend_amount(v) for k, v in raw.items()},
            "daily_spend_limit": profile.daily_spend_limit,
        }
    )
    return json_response(detail.model_dump(by_alias=True))


async def list_numbers(request: web.Request) -> web.Response:
    """A profile's numbers: what they may do and today's use of their campaign caps."""
    context = request.app[CONTEXT]
    name, profile = _profile(request)
    rules = SenderRules(name, profile.numbers, context.settings)
    caps = rules.caps()
    day = time.strftime("%Y%m%d", time.gmtime())
    capped = sorted(caps)
    counts = await context.redis.hmget(keys.campaign_counts(day), capped) if capped else []
    used = {c: int(n or 0) for c, n in zip(capped, counts, strict=True)}
    views = []
    for number in profile.numbers:
        details = context.settings.number(number)
        refusal = _static_refusal(rules, number)
        campaign = details.campaign
        views.append(
            NumberView(
                number=number,
                kind=rules.kind(number),
                features=list(details.features),
                sms_enabled=details.sms_enabled,
                campaign=campaign,
                verified=details.verified,
                can_send=refusal is None,
                refusal=RefusalView(code=refusal.code, reason=refusal.reason) if refusal else None,
                daily_cap=caps.get(campaign) if campaign else None,
                sent_today=used.get(campaign) if campaign else None,
            )
        )
    answer = NumberList(profile=name, day=day, numbers=views)
    return json_response(answer.model_dump())


def _static_refusal(rules: SenderRules, number: str) -> Refusal | None:
    """What rules `number` out whatever the message (SenderRules works it out once at
    start; a public `static_refusal` is used when the rules module has one)."""
    public = getattr(rules, "static_refusal", None)
    if public is not None:
        return public(number)  # type: ignore[no-any-return]
    return rules._static_refusal(number)


async def list_letters(request: web.Request) -> web.Response:
    """The oldest dead letters of a profile."""
    name, _ = _profile(request)
    query = validate(DeadLetterQuery, dict(request.query))
    letters = await list_dead_letters(request.app[CONTEXT].redis, name, query.limit)
    answer = DeadLetterList(profile=name, dead_letters=[letter_view(d) for d in letters])
    return json_response(answer.model_dump())


def letter_view(letter: DeadLetter) -> DeadLetterView:
    fields = letter.fields
    try:
        at: float | None = float(as_text(fields.get("at", b"")))
    except ValueError:
        at = None
    origin = fields.get("origin")
    return DeadLetterView(
        entry=letter.entry_id,
        reason=letter.reason,
        at=at,
        origin=origin.decode(errors="backslashreplace") if origin else None,
        job=_job(fields.get("job")),
    )


def _job(raw: bytes | None) -> dict[str, Any] | None:
    """The dead job as JSON, or None: it may be dead precisely for not decoding."""
    if raw is None:
        return None
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        if not isinstance(data, dict):
            return None
        # Through JSON and back: only what a JSON answer can carry, or nothing.
        clean = json.loads(json.dumps(data, default=_as_json, allow_nan=False))
    except Exception:  # msgpack raises several unrelated types; any means "not a job"
        return None
    return clean if isinstance(clean, dict) else None


def _as_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="backslashreplace")
    raise TypeError(type(value).__name__)


async def _selected(request: web.Request, name: str) -> list[str]:
    """The entry ids a replay or drop asks for (``entries``, or ``all``)."""
    choice = validate(Selection, await read_json(request))
    if choice.all and choice.entries is not None:
        raise ApiError(400, "all: give entries or all, not both")
    if choice.all:
        redis = request.app[CONTEXT].redis
        return [d.entry_id for d in await list_dead_letters(redis, name, count=ALL_DEAD_LETTERS)]
    if choice.entries is None:
        raise ApiError(400, "entries: required (or all: true)")
    for index, entry in enumerate(choice.entries):
        if not _ENTRY.fullmatch(entry):
            raise ApiError(400, f"entries[{index}]: {entry[:40]!r} is not a dead-letter entry id")
    return choice.entries


async def replay_letters(request: web.Request) -> web.Response:
    """Put dead letters back onto the profile's work stream."""
    name, _ = _profile(request)
    ids = await _selected(request, name)
    moved = await replay_dead_letters(request.app[CONTEXT].redis, name, ids)
    return json_response(Replayed(replayed=moved).model_dump())


async def drop_letters(request: web.Request) -> web.Response:
    """Delete dead letters for good."""
    name, _ = _profile(request)
    ids = await _selected(request, name)
    dropped = await drop_dead_letters(request.app[CONTEXT].redis, name, ids)
    return json_response(Dropped(dropped=dropped).model_dump())


def add_routes(app: web.Application) -> None:
    """Register the profile and dead-letter endpoints."""
    unknown = Reply("No such profile.")
    bad = Reply("A bad parameter or body; the error names it.")
    letters = "/v1/profiles/{profile}/dead-letters"
    add_operations(
        app,
        [
            Operation("GET", "/v1/profiles", "The profiles", list_profiles,
                      {200: Reply("Every profile.", ProfileList)}, scope="read", tag="profiles"),
            Operation("GET", "/v1/profiles/{profile}", "One profile, its connectors and spend",
                      show_profile, {200: Reply("The profile.", ProfileDetail), 404: unknown},
                      scope="read", tag="profiles"),
            Operation("GET", "/v1/profiles/{profile}/numbers", "A profile's numbers",
                      list_numbers, {200: Reply("Its numbers.", NumberList), 404: unknown},
                      scope="read", tag="profiles"),
            Operation("GET", letters, "A profile's dead letters, oldest first", list_letters,
                      {200: Reply("Dead letters.", DeadLetterList), 400: bad, 404: unknown},
                      scope="admin", query=DeadLetterQuery, tag="dead letters"),
            Operation("POST", f"{letters}/replay", "Replay dead letters", replay_letters,
                      {200: Reply("How many moved.", Replayed), 400: bad, 404: unknown},
                      scope="admin", body=Selection, tag="dead letters"),
            Operation("POST", f"{letters}/drop", "Drop dead letters for good", drop_letters,
                      {200: Reply("How many were deleted.", Dropped), 400: bad, 404: unknown},
                      scope="admin", body=Selection, tag="dead letters"),
        ],
    )  # fmt: skip
