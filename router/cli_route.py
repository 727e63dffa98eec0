"""`sms-router route`: explain where a message would go (router/policy/explain.py).

The decision comes from the configuration; the connectors' health from the health
records every running instance publishes in Redis (``sms:health:<instance>``): a
connector is as healthy as the best any instance reports, "unknown" when no daemon
runs (or Redis cannot be reached from here: said on stderr, the rest is answered).

Like the other operator commands it needs only the Redis settings of the file, not
the provider, API or webhook secrets. This module is registered by router/cli.py
(`main.add_command(route)`); it cannot import router.cli, which imports it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click
from redis.asyncio import Redis
from redis.exceptions import RedisError
from rich.table import Table

from router.cli_common import config_option, err, load_or_exit, out
from router.cli_tables import Column, fit_table, hidden_hint
from router.config import Settings
from router.policy.explain import ExplainError, Explanation, explain, health_from_records
from router.store import instances
from router.store.connections import RedisUnavailable, open_redis

__all__ = ["ROUTE_REJECTED", "ROUTE_SENDS", "route"]

# Exit codes: the message would be sent; it would be rejected (or an error).
ROUTE_SENDS, ROUTE_REJECTED = 0, 1


_COLUMNS = (
    Column("#", keep=0),
    Column("connector", "id"),
    Column("state", keep=0),
    Column("price", keep=1),
    Column("price key", keep=3),
    Column("weight", keep=2),
)


@click.command("route")
@config_option
@click.option("--profile", default=None, help="Profile (default: the global one).")
@click.option("--to", "to", required=True, help="Destination, E.164.")
@click.option(
    "--from", "sender", default=None, help="A sender of the profile (default: its strategy's)."
)
@click.option(
    "--use-case", default=None, help="The job's use case (default: the profile's default)."
)
@click.option(
    "--mms", is_flag=True, help="The message carries media: as an MMS, as links, or refused."
)
@click.option("--json", "as_json", is_flag=True, help="The explanation as one JSON object.")
def route(
    config_path: str | None,
    profile: str | None,
    to: str,
    sender: str | None,
    use_case: str | None,
    mms: bool,
    as_json: bool,
) -> None:
    """Explain where a message would go, without sending anything: the sender (--from if
    the profile's rules allow it for the destination, else why not; without it the
    first number the rules allow), the route that matches (its index in [[routes]], or
    the profile's own connector) and its strategy, and the route's connectors in the
    order the strategy ranks them for this destination, each with its health (from the
    running instances) and its price per part. With --mms: whether the message would go
    as an MMS (from the numbers with MmsSender, over connectors that carry media), as an
    SMS with its media links (mms_fallback = "link") or be refused (media URLs are not
    fetched here).

    Exit 0: the message would be sent; 1: it would be rejected (no_route,
    sender_not_allowed...: the code and reason are printed) or an error (an unknown
    profile, a --to that is not E.164, a --from the profile does not own)."""
    settings = load_or_exit(config_path, secrets=False)
    try:
        explain(settings, profile, to, sender, use_case, mms=mms)  # bad input: before Redis
    except ExplainError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(1)
    health, source = _health(settings)
    found = explain(settings, profile, to, sender, use_case, health, source, mms=mms)
    if as_json:
        click.echo(json.dumps(found.as_dict(), indent=2))
    else:
        _print(found)
    sys.exit(ROUTE_SENDS if found.outcome == "send" else ROUTE_REJECTED)


def _health(settings: Settings) -> tuple[dict[str, str], str]:
    """Each connector's state from the instances' health records, and where it came
    from (for the output)."""

    async def read(redis: Redis) -> list[dict[str, Any]]:
        return await instances.read_records(redis, scan_fallback=True)

    async def main() -> list[dict[str, Any]]:
        async with open_redis(settings) as redis:
            return await read(redis)

    try:
        records = asyncio.run(main())
    except (RedisUnavailable, RedisError, OSError) as exc:
        err.print(f"note: connector health unknown: redis unreachable ({exc})", markup=False)
        return {}, "unknown: redis unreachable"
    if not records:
        return {}, "unknown: no router instance is running"
    return health_from_records(records), f"{len(records)} running instance(s)"


def _print(found: Explanation) -> None:
    facts = Table(box=None, show_header=False, padding=(0, 1), pad_edge=False)
    facts.add_column(no_wrap=True)
    facts.add_column(overflow="fold")
    facts.add_row("profile", found.profile)
    facts.add_row("to", found.to)
    facts.add_row("use case", found.use_case or "none")
    facts.add_row("sender", _sender_line(found))
    if found.mms is not None:
        facts.add_row("mms", _mms_line(found))
    if found.route is not None:
        route = found.route
        where = "; ".join(f"{k} {', '.join(v)}" for k, v in route.conditions.items())
        if route.index is not None:
            where = where or "no conditions: every message"
        label = f"{route.label} ({where})" if where else route.label
        facts.add_row("route", f"{label}, strategy {route.strategy}")
    elif found.code == "no_route":
        facts.add_row("route", "none matches")
    facts.add_row("health", found.health_source)
    _show(facts)
    if found.connectors:
        rows = [
            [
                str(rank),
                c.name,
                c.state,
                "unknown" if c.price is None else f"{c.price:g}",
                c.price_prefix or "-",
                "-" if c.weight is None else str(c.weight),
            ]
            for rank, c in enumerate(found.connectors, 1)
        ]
        columns: tuple[Column, ...] = _COLUMNS
        if all(c.weight is None for c in found.connectors):
            columns, rows = columns[:-1], [row[:-1] for row in rows]
        out.print()
        table, hidden = fit_table(columns, rows, out.width)
        _show(table)
        hint = hidden_hint(hidden, out.width)
        if hint:
            err.print(hint, markup=False)
        out.print()
    out.print(_verdict(found), markup=False)


def _show(table: Table) -> None:
    """Print `table` within the width, without the spaces rich pads lines with."""
    with out.capture() as captured:
        out.print(table, soft_wrap=False, crop=False)
    for line in captured.get().splitlines():
        click.echo(line.rstrip())


def _sender_line(found: Explanation) -> str:
    sender = found.sender
    refusal = sender.refusal
    if sender.number is None:
        assert refusal is not None
        return f"none may send: {refusal.code}: {refusal.reason}"
    kind = (sender.kind or "").replace("_", " ")
    line = f"{sender.number} ({kind})"
    if sender.given:
        line += ", asked with --from"
        if refusal is not None:
            line += f": refused, {refusal.code}: {refusal.reason}"
        return line
    line += ", the strategy's first pick"
    if len(sender.candidates) > 1:
        line += f"; {sender.strategy} picks among {', '.join(sender.candidates)}"
    if sender.strategy.startswith("sticky"):
        line += " (sticky: a recipient keeps the number it had; not looked up here)"
    return line


def _mms_line(found: Explanation) -> str:
    assert found.mms is not None
    if found.mms.as_ == "mms":
        return "sent as an MMS (with its media)"
    if found.mms.as_ == "link":
        return f"sent as an SMS with its media links (mms_fallback = link): {found.mms.reason}"
    return f"refused (mms_fallback = reject): {found.mms.reason}"


def _verdict(found: Explanation) -> str:
    if found.outcome == "rejected":
        return f"rejected: {found.code}: {found.reason}"
    if found.connector is not None:
        return f"sends over {found.connector}"
    healthy = [c for c in found.connectors if c.state in ("up", "half-open", "unknown")]
    shares = ", ".join(f"{c.name} {c.weight}" for c in healthy or found.connectors)
    return f"sends by weight over the healthy connectors ({shares})"


if __name__ == "__main__":  # `python -m router.cli_route`, before router.cli registers it
    route()
