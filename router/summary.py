"""What the operator sees of the rules: `check-config`'s summary and `sms-router numbers`.

`config_lines` describes a configuration without Redis: each profile's strategy and
defaults, each number with whether it may send (and why not), its campaign and cap,
the campaigns no number uses and the templates. `number_rows` adds, per number of a
profile, what Redis knows today: its campaign's count against the daily cap and how
many sticky mappings point at it.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from redis.asyncio import Redis

from router.config import Campaign, Settings
from router.numbers import is_toll_free
from router.policy.rules import SenderRules, daily_cap
from router.store import keys
from router.store.connections import as_text
from router.store.health import NumberHealth

__all__ = ["config_lines", "number_facts", "number_rows", "sticky_counts", "today"]

_CHUNK = 1000  # sticky mappings read per MGET


def today() -> str:
    """The UTC day the daily caps count (YYYYMMDD), as the workers name it."""
    return time.strftime("%Y%m%d", time.gmtime())


def _cap_text(campaign: Campaign) -> str:
    cap = daily_cap(campaign)
    return "no daily cap" if cap is None else f"cap {cap:,}/day"


def _campaign_text(campaign_id: str, campaign: Campaign | None) -> str:
    if campaign is None:
        return f"campaign {campaign_id}: not configured"
    uses = ", ".join(campaign.use_cases) or "none listed"
    return (
        f"campaign {campaign_id}: {campaign.status}, brand {campaign.brand} "
        f"({campaign.brand_status}), {campaign.tier}, {_cap_text(campaign)}, use cases {uses}"
    )


def _span(seconds: float) -> str:
    if seconds >= 86_400 and seconds % 86_400 == 0:
        return f"{seconds / 86_400:g} days"
    return f"{seconds:g} s"


def number_facts(settings: Settings, profile: str) -> list[dict[str, Any]]:
    """One dict per number of `profile`: its configuration and whether it may send.

    ``can_send`` is False with ``code``/``why`` when a rule rules the number out
    whatever the destination; a number that may send can still be refused a given
    message (another country without InternationalSmsSender, a use case, the cap).
    """
    p = settings.profiles[profile]
    rules = SenderRules(profile, p.numbers, settings)
    rows: list[dict[str, Any]] = []
    for number in p.numbers:
        details = settings.number(number)
        campaign_id = details.campaign
        campaign = settings.campaigns.get(campaign_id) if campaign_id else None
        refusal = rules.static_refusal(number)
        rows.append(
            {
                "number": number,
                "kind": rules.kind(number),
                "country": details.country,
                "features": list(details.features),
                "sms_enabled": details.sms_enabled,
                "international": "InternationalSmsSender" in details.features,
                "toll_free": is_toll_free(number),
                "verified": details.verified,
                "campaign": campaign_id,
                "campaign_status": campaign.status if campaign else None,
                "brand_status": campaign.brand_status if campaign else None,
                "tier": campaign.tier if campaign else None,
                "daily_cap": daily_cap(campaign) if campaign else None,
                "can_send": refusal is None,
                # Whether it may send an MMS (given a route that carries media).
                "mms": rules.mms_problem(number) is None,
                "code": refusal.code if refusal else None,
                # The reason starts with the number; the rows name it already.
                "why": refusal.reason.removeprefix(f"{number}: ") if refusal else None,
            }
        )
    return rows


def config_lines(settings: Settings) -> list[str]:
    """``check-config``'s summary: each profile's first line (`Settings.summary_lines`),
    then its rules and numbers indented under it; campaigns no number uses; templates;
    inbound routes."""
    lines: list[str] = []
    heads = settings.summary_lines()
    used: set[str] = set()
    for head, (name, p) in zip(heads, settings.profiles.items(), strict=True):
        lines.append(head)
        rule = f"  sender={p.sender} over_cap={p.over_cap} template={p.template or '-'}"
        rule += f" smart_encoding={str(p.smart_encoding).lower()}"
        if p.shorten:
            rule += f" shorten -> {settings.links.base_url}/<code>"
        if p.sender_preference:
            rule += " sender_preference=" + ",".join(p.sender_preference)
        if p.default_use_case:
            rule += f" default_use_case={p.default_use_case}"
        if p.sender.startswith("sticky"):
            rule += f" sticky_ttl={_span(p.sticky_ttl)}"
        if p.skip_unhealthy:
            rule += (
                f" skip_unhealthy (below {p.health_threshold:.0%} over "
                f"{_span(p.health_window)}, from {p.health_min_sample} reports)"
            )
        if p.daily_spend_limit is not None:
            rule += f" daily_spend_limit={p.daily_spend_limit:g}"
        if p.mms_fallback != "link":  # the default is not shown
            rule += f" mms_fallback={p.mms_fallback}"
        lines.append(rule)
        facts = number_facts(settings, name)
        able = sum(1 for f in facts if f["can_send"])
        lines.append(f"  numbers that can send: {able} of {len(facts)}")
        mine: list[str] = []
        for f in facts:
            where = "international" if f["international"] else "domestic only"
            if f["kind"] == "alphanumeric":
                refused = ", ".join(settings.router.alphanumeric_refused) or "none"
                where = f"not to {refused}"
            elif f["kind"] == "short_code":
                where = f"within {f['country']} only"
            state = f"can send ({where})" if f["can_send"] else f"cannot send: {f['why']}"
            line = f"    {f['number']} [{f['kind'].replace('_', ' ')}]: {state}"
            if f["can_send"] and f["mms"]:
                line += ", MMS"
            if f["campaign"]:
                line += f"; campaign {f['campaign']}"
                if f["campaign"] not in mine:
                    mine.append(f["campaign"])
            lines.append(line)
        for campaign_id in mine:
            lines.append("  " + _campaign_text(campaign_id, settings.campaigns.get(campaign_id)))
        used.update(mine)
    # A number of the table in no profile is a configuration error, so every campaign
    # in use was seen above.
    unused = sorted(set(settings.campaigns) - used)
    if unused:
        lines.append("campaigns not used by any number: " + ", ".join(unused))
    for name, template in sorted(settings.templates.items()):
        langs = ", ".join(sorted(template.text))
        line = f"template {name}: {langs} (default {template.default_lang})"
        if template.description:
            line += f" - {template.description}"
        lines.append(line)
    lines += route_lines(settings)
    lines += settings.inbound_route_lines()
    return lines


def route_lines(settings: Settings) -> list[str]:
    """The ``[connectors]`` (one line each) and ``[[routes]]`` (in the order they are
    tried), and the connectors no route uses."""
    lines: list[str] = []
    for name, c in settings.connectors.items():
        line = f"connector {name}: {c.protocol} {c.processing} window={c.window} tps={c.tps:g}"
        if c.carries_media:
            line += " (carries MMS)"
        if c.smpp is not None:
            line += f" -> {c.smpp.bind} x{c.smpp.binds} {c.smpp.host}:{c.smpp.port}"
        if c.prices:
            line += f"; prices for {len(c.prices)} prefixes"
        line += f"; failover after {c.failover_after:g}s"
        lines.append(line)
    used: set[str] = set()
    for index, route in enumerate(settings.routes):
        line = f"routes[{index}]:"
        for key, values in (
            ("to", route.to),
            ("countries", route.countries),
            ("profiles", route.profiles),
            ("senders", route.senders),
            ("use_cases", route.use_cases),
        ):
            if values:
                line += f" {key}=" + ",".join(values)
        if route.kind is not None:
            line += f" kind={route.kind}"
        if line.endswith(":"):
            line += " (matches every message)"
        line += f" -> {route.strategy} " + ",".join(route.connectors)
        if route.weights:
            line += " weights=" + ",".join(map(str, route.weights))
        used.update(route.connectors)
        lines.append(line)
    unused = [n for n in settings.connectors if n not in used]
    if unused:
        lines.append("connectors no route uses: " + ", ".join(unused))
    return lines


async def sticky_counts(redis: Redis, profile: str) -> Counter[str]:
    """How many sticky mappings of `profile` point at each number. Scans the keyspace
    (SCAN, then MGET in chunks): an operator's command, not for the hot path."""
    found: list[str] = []
    counts: Counter[str] = Counter()
    async for key in redis.scan_iter(match=keys.sticky(profile, "*"), count=_CHUNK):
        found.append(as_text(key))
        if len(found) >= _CHUNK:
            counts.update(await _senders(redis, found))
            found = []
    if found:
        counts.update(await _senders(redis, found))
    return counts


async def _senders(redis: Redis, found: list[str]) -> list[str]:
    values = await redis.mget(found)
    # A mapping may expire between SCAN and MGET.
    return [as_text(v) for v in values if v]


async def number_rows(
    redis: Redis, settings: Settings, profile: str, *, sticky: bool = True
) -> list[dict[str, Any]]:
    """`number_facts` plus today's count of each number's campaign (``today``) and the
    sticky mappings pointing at each number (``sticky``; a SCAN of the profile's
    mappings, left out with ``sticky=False``)."""
    rows = number_facts(settings, profile)
    campaigns = sorted({r["campaign"] for r in rows if r["campaign"]})
    day = today()
    counted: dict[str, int] = {}
    if campaigns:
        values = await redis.hmget(keys.campaign_counts(day), campaigns)
        counted = {c: int(v) if v else 0 for c, v in zip(campaigns, values, strict=True)}
    mapped = await sticky_counts(redis, profile) if sticky else None
    for row in rows:
        row["day"] = day
        row["today"] = counted.get(row["campaign"], 0) if row["campaign"] else None
        if mapped is not None:
            row["sticky"] = mapped.get(row["number"], 0)
    return rows


async def numbers_with_health(
    redis: Redis, settings: Settings, profile: str, *, sticky: bool = True
) -> list[dict[str, Any]]:
    """`number_rows`, each with its delivery ratio over the profile's health window
    (``delivered``, ``reports``, ``delivery_ratio``), whether it is below the threshold
    (``unhealthy``) and whether the sender pick passes it over (``skipped``): what
    ``sms-router numbers`` and the console's Numbers page show."""
    own = settings.profiles[profile]
    rows = await number_rows(redis, settings, profile, sticky=sticky)
    health = NumberHealth(profile, own.health_window)
    await health.refresh(redis)
    unhealthy = health.unhealthy(own.health_threshold, own.health_min_sample)
    for row in rows:
        delivered, reports = health.sample(row["number"])
        row["delivered"], row["reports"] = delivered, reports
        row["delivery_ratio"] = delivered / reports if reports else None
        row["unhealthy"] = row["number"] in unhealthy
        row["skipped"] = own.skip_unhealthy and row["unhealthy"]
    return rows
