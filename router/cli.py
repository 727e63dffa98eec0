"""The `sms-router` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from router.cli_common import config_option, err, load_or_exit, out
from router.cli_route import route
from router.cli_tables import Column, fit_table, hidden_hint
from router.client import Client
from router.config import (
    Settings,
    resolve_config_path,
)
from router.numbers import normalise_e164
from router.policy import audience
from router.store import instances, keys
from router.store.connections import RedisUnavailable, as_text, open_redis
from router.store.ledger import STATUSES, Ledger
from router.store.migrate import MigrationReport, migrate_keys
from router.store.queue import DeadLetter, drop_dead_letters, list_dead_letters, replay_dead_letters
from router.store.smslog import message_log, parse_since

log = structlog.get_logger("router.cli")

T = TypeVar("T")


def _with_redis(settings: Settings, work: Callable[[Redis], Awaitable[T]]) -> T:
    async def main() -> T:
        async with open_redis(settings) as redis:
            return await work(redis)

    try:
        return asyncio.run(main())
    except (RedisUnavailable, RedisError, OSError) as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sms-router")
def main() -> None:
    """sms-router: route SMS from Redis queues to SMPP and HTTP providers."""


@main.command()
@config_option
def run(config_path: str | None) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    from router.daemon.daemon import Daemon
    from router.daemon.lease import InstanceTaken
    from router.logs import configure

    settings = load_or_exit(config_path)
    configure(settings.router.log_format, settings.router.log_level)
    try:
        daemon = Daemon(settings, resolve_config_path(config_path))
        code = _run_loop(daemon.run(), uvloop=settings.router.uvloop)
    except (RedisUnavailable, InstanceTaken) as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(1)
    sys.exit(code)


def _run_loop(main: Coroutine[Any, Any, int], *, uvloop: bool) -> int:
    """Run the daemon on uvloop's event loop when asked for (and installed)."""
    if uvloop:
        try:
            import uvloop as loops
        except ImportError:
            log.warning("uvloop is not installed; using asyncio's event loop")
        else:
            return loops.run(main)
    return asyncio.run(main)


@main.command("check-config")
@config_option
@click.argument("path", required=False)
def check_config(config_path: str | None, path: str | None) -> None:
    """Validate a configuration: OK and a summary per profile (strategy, numbers that
    can send and why others cannot, campaigns and caps, templates), or every problem."""
    from router.summary import config_lines

    if config_path and path and config_path != path:
        raise click.UsageError("give the configuration once: -c PATH or PATH")
    settings = load_or_exit(config_path or path)
    out.print("OK")
    for line in config_lines(settings):
        out.print(f"  {line}", markup=False)


@main.command()
@config_option
@click.option("--profile", required=True, help="Profile.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per number.")
def numbers(config_path: str | None, profile: str, as_json: bool) -> None:
    """Each sender of a profile: its kind (long code, toll-free, short code,
    alphanumeric), features, campaign, whether it can send, today's count
    against its campaign's daily cap (UTC day), its delivery ratio over the profile's
    health_window (delivered share of its final delivery reports; "skipped" when
    skip_unhealthy passes it over) and the sticky mappings pointing at it.
    Counting the mappings scans the profile's sticky keys (SCAN): fine for an operator,
    slow on a very large keyspace."""
    from router.summary import numbers_with_health

    settings = load_or_exit(config_path, secrets=False)
    _known_profile(settings, profile)

    async def work(redis: Redis) -> list[dict[str, Any]]:
        return await numbers_with_health(redis, settings, profile)

    rows = _with_redis(settings, work)
    if as_json:
        for row in rows:
            out.print(json.dumps(row, sort_keys=True), markup=False, soft_wrap=True)
        return
    window = _duration(settings.profiles[profile].health_window)
    table = Table(
        "number",
        "kind",
        "features",
        "campaign",
        "can send",
        "today / cap",
        f"delivered ({window})",
        "sticky",
        box=None,
    )
    for column in table.columns:
        column.overflow = "fold"
    table.columns[0].no_wrap = True
    for r in rows:
        table.add_row(*_number_cells(r))
    out.print(table)


def _number_cells(r: dict[str, Any]) -> list[str]:
    features = ", ".join(r["features"])
    if not r["sms_enabled"]:
        features += " (sms_enabled = false)"
    if r["toll_free"]:
        features += " (toll-free, " + ("verified)" if r["verified"] else "not verified)")
    campaign = "-"
    if r["campaign"]:
        campaign = f"{r['campaign']} ({r['campaign_status'] or 'not configured'}"
        campaign += f", {r['tier']})" if r["tier"] else ")"
    can = "yes" if r["can_send"] else f"no: {r['code']}: {r['why']}"
    if r["today"] is None:
        count = "-"
    else:
        cap = "no cap" if r["daily_cap"] is None else f"{r['daily_cap']:,}"
        count = f"{r['today']:,} / {cap}"
    kind = r["kind"].replace("_", " ")
    if r["country"]:
        kind += f" ({r['country']})"
    delivered = "-"
    if r["reports"]:
        delivered = f"{r['delivery_ratio']:.1%} of {r['reports']:,}"
        if r["skipped"]:
            delivered += " (skipped)"
        elif r["unhealthy"]:
            delivered += " (below threshold)"
    return [r["number"], kind, features, campaign, can, count, delivered, str(r["sticky"])]


def _duration(seconds: float) -> str:
    """A window as people say it: 1h, 90m, 2d, 45s."""
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@main.command()
@config_option
@click.option("--profile", default=None, help="Profile (default: the global one).")
@click.option("--to", "to", required=True, help="Destination, E.164.")
@click.option("--text", default=None, help="Message text (or --template).")
@click.option("--template", default=None, help="A template of the configuration.")
@click.option(
    "--var",
    "variables",
    multiple=True,
    metavar="NAME=VALUE",
    help="A template variable (repeatable).",
)
@click.option("--lang", default=None, help="The template's language (BCP 47).")
@click.option("--from", "sender", default=None, help="Sender number of the profile.")
@click.option("--id", "job_id", default=None, help="Idempotency key (default: generated).")
@click.option(
    "--media",
    "media",
    multiple=True,
    metavar="URL",
    help="An http(s) URL of a media file (repeatable, up to 10): the message is an MMS, "
    "--text optional.",
)
def send(
    config_path: str | None,
    profile: str | None,
    to: str,
    text: str | None,
    template: str | None,
    variables: tuple[str, ...],
    lang: str | None,
    sender: str | None,
    job_id: str | None,
    media: tuple[str, ...],
) -> None:
    """Enqueue one message and print its id.

    A job the profile would refuse (unknown template, missing variable, more parts
    than max_segments, a sender it does not own, a --media that is not an http(s) URL)
    fails here, exit 1, and nothing is enqueued."""
    settings = load_or_exit(config_path)
    _known_profile(settings, profile)
    job: dict[str, Any] = {"to": to}
    named = (("text", text), ("template", template), ("lang", lang), ("from", sender))
    for name, value in (*named, ("id", job_id), ("profile", profile)):
        if value is not None:
            job[name] = value
    if variables:
        job["vars"] = _variables(variables)
    if media:
        job["media"] = list(media)
    # Checked before Redis is touched, by the checks the worker runs: a job that would
    # be refused fails at once.
    for _index, exc in Client.from_settings(Redis(), settings).problems([job]):
        err.print(f"error: {str(exc).removeprefix('job.')}", markup=False)
        sys.exit(1)

    async def work(redis: Redis) -> str:
        return (await Client.from_settings(redis, settings).send_many([job]))[0]

    out.print(_with_redis(settings, work), markup=False)


@main.command()
@config_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--profile", default=None, help="Profile for lines that name none.")
@click.option("--chunk", default=1000, show_default=True, help="Jobs per round trip.")
def enqueue(config_path: str | None, file: str, profile: str | None, chunk: int) -> None:
    """Enqueue every job of a JSON-lines FILE (one wire-format job per line)."""
    settings = load_or_exit(config_path)
    _known_profile(settings, profile)
    lines, problems = _read_jobs(file, profile)
    jobs = [job for _line, job in lines]
    # Validate everything before the first XADD: a bad line enqueues nothing.
    checker = Client.from_settings(Redis(), settings)  # validation never touches Redis
    for index, exc in checker.problems(jobs):
        problems.append((lines[index][0], str(exc).removeprefix("job.")))
    if problems:
        for number, why in sorted(problems):
            err.print(f"{file}:{number}: {why}", markup=False)
        err.print(f"{len(problems)} bad line(s); nothing enqueued", markup=False)
        sys.exit(1)

    async def work(redis: Redis) -> tuple[float, int]:
        client = Client.from_settings(redis, settings)
        started = time.perf_counter()
        with Progress(
            TextColumn("enqueue"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>8.0f}/s"),
            TimeElapsedColumn(),
            console=err,
        ) as progress:
            task = progress.add_task("enqueue", total=len(jobs), rate=0.0)
            for start in range(0, len(jobs), chunk):
                part = jobs[start : start + chunk]
                await client.send_many(part)
                done = start + len(part)
                rate = done / max(1e-9, time.perf_counter() - started)
                progress.update(task, completed=done, rate=rate)
        return time.perf_counter() - started, client.duplicates_dropped

    elapsed, dropped = _with_redis(settings, work)
    rate = len(jobs) / max(elapsed, 1e-9)
    fresh = len(jobs) - dropped
    out.print(f"enqueued {fresh} jobs in {elapsed:.2f}s ({rate:.0f}/s)", markup=False)
    if dropped:
        out.print(f"{dropped} dropped as duplicates (their id was already known)", markup=False)


def _variables(pairs: tuple[str, ...]) -> dict[str, str]:
    """``--var NAME=VALUE`` options as the job's `vars`."""
    found: dict[str, str] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--var")
        found[name] = value
    return found


def _read_jobs(
    file: str, profile: str | None
) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, str]]]:
    """The jobs of a JSON-lines file and the unreadable lines, with 1-based line numbers."""
    jobs: list[tuple[int, dict[str, Any]]] = []
    problems: list[tuple[int, str]] = []
    stream = sys.stdin if file == "-" else open(file, encoding="utf-8")
    with stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                job = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append((number, f"not JSON ({exc.msg})"))
                continue
            if not isinstance(job, dict):
                problems.append((number, "must be a JSON object"))
                continue
            if profile and "profile" not in job:
                job["profile"] = profile
            jobs.append((number, job))
    return jobs, problems


@main.command()
@config_option
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def status(config_path: str | None, job_id: str, as_json: bool) -> None:
    """Show one message record and its history."""
    settings = load_or_exit(config_path, secrets=False)

    async def work(redis: Redis) -> dict[str, Any] | None:
        return await _ledger(redis, settings).get(job_id, profiles=list(settings.profiles))

    record = _with_redis(settings, work)
    if record is None:
        err.print(f"error: no message with id {job_id!r}", markup=False)
        sys.exit(1)
    if as_json:
        out.print(json.dumps(record, indent=2, sort_keys=True), markup=False)
        return
    history = record.pop("history")
    table = Table(show_header=False, box=None)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # long values (an id, a text) wrap, never cut
    for name in _field_order(record):
        if not _internal(name):
            table.add_row(name, _show(name, record[name]))
    out.print(table)
    # `via`: the connector each attempt went over, when the history names any (records
    # written before connectors, or never sent, have none).
    via = any(step.get("connector") for step in history)
    steps = Table("time", "status", *(["via"] if via else []), "note", box=None)
    for column in steps.columns[:-1]:
        column.no_wrap = True
    steps.columns[-1].overflow = "fold"
    for step in history:
        connector = [str(step.get("connector") or "")] if via else []
        steps.add_row(_ts(step["at"]), step["status"], *connector, step["note"])
    out.print(steps)


# `status` shows what an operator asks first first; other fields follow by name.
_STATUS_FIELDS = (
    "status",
    "error_code",
    "error",
    "id",
    "profile",
    "to",
    "from",
    "connector",
    "text",
    "num_media",
    "media",
    "mms",
    "template",
    "attempts",
    "segments",
    "provider_message_id",
    "created_at",
    "updated_at",
)


def _field_order(record: dict[str, Any]) -> list[str]:
    """The record's field names: `_STATUS_FIELDS` in that order, then the rest sorted."""
    first = [name for name in _STATUS_FIELDS if name in record]
    return first + sorted(name for name in record if name not in _STATUS_FIELDS)


@main.command("log")
@config_option
@click.option("--profile", default=None)
@click.option("--account", default=None, help="Only the messages this account submitted.")
@click.option("--status", "wanted", type=click.Choice(STATUSES), default=None)
@click.option(
    "--since", default="1h", show_default=True, help="e.g. 90s, 15m, 2h, 1d or an ISO time"
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Records, 1 or more.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
def log_(
    config_path: str | None,
    profile: str | None,
    account: str | None,
    wanted: str | None,
    since: str,
    limit: int,
    as_json: bool,
) -> None:
    """Messages that changed status recently, newest first (the SMS log)."""
    settings = load_or_exit(config_path, secrets=False)
    _known_profile(settings, profile)
    try:
        start = parse_since(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None

    async def work(redis: Redis) -> list[dict[str, Any]]:
        page = await message_log(
            redis,
            _ledger(redis, settings),
            profiles=list(settings.profiles),
            since=start,
            limit=limit,
            profile=profile,
            status=wanted,
            account=account,
        )
        return page.records

    records = _with_redis(settings, work)
    if as_json:
        for record in records:
            record.pop("owner", None)
            out.print(json.dumps(record, sort_keys=True), markup=False, soft_wrap=True)
        return
    rows = [
        [
            _ts(r.get("updated_at", 0)),
            r.get("id", ""),
            r.get("profile", ""),
            r.get("status", ""),
            r.get("to", ""),
            r.get("from", ""),
            r.get("connector", ""),
            str(r.get("attempts", 0)),
            _why(r),
            _media_cell(r),
        ]
        for r in records
    ]
    columns: tuple[Column, ...] = _LOG_COLUMNS
    # Columns no record fills are left out: media when no record is an MMS; the connector
    # when none names one (none sent yet, or written before connectors).
    for empty in (_LOG_MEDIA, _LOG_CONNECTOR):  # the later position first
        if not any(row[empty] for row in rows):
            columns = columns[:empty] + columns[empty + 1 :]
            rows = [row[:empty] + row[empty + 1 :] for row in rows]
    _print_fitted(columns, rows)


def _media_cell(record: dict[str, Any]) -> str:
    """An MMS's media in the log: each URL on a line of its own, so the lines count
    them (empty for an SMS)."""
    media = record.get("media")
    return "\n".join(str(url) for url in media) if isinstance(media, list) else ""


# What `log` keeps at a narrow width: the id whole, then status, time, destination, note;
# the connector (the latest attempt's) before the sender and the attempts.
_LOG_COLUMNS = (
    Column("updated", keep=1),
    Column("id", "id"),
    Column("profile", keep=4),
    Column("status", keep=0),
    Column("to", keep=2),
    Column("from", keep=6),
    Column("connector", keep=5),
    Column("tries", keep=7),
    Column("note", "text", keep=3),
    Column("media", "text", keep=8, min_width=24),
)
# The positions in `_LOG_COLUMNS` and in each row of the columns left out when empty.
_LOG_CONNECTOR = [c.header for c in _LOG_COLUMNS].index("connector")
_LOG_MEDIA = [c.header for c in _LOG_COLUMNS].index("media")


def _print_fitted(columns: tuple[Column, ...], rows: list[list[str]]) -> None:
    """Print a table within the terminal's width (80 through a pipe unless COLUMNS says
    otherwise); say on stderr which columns were left out."""
    table, hidden = fit_table(columns, rows, out.width)
    out.print(table, soft_wrap=False, crop=False)
    hint = hidden_hint(hidden, out.width)
    if hint and rows:
        err.print(hint, markup=False)


@main.group()
def dlq() -> None:
    """Dead letters: list, replay or drop them."""


def _dlq_command(name: str, *, profile_required: bool = True) -> Callable[..., Any]:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        help_text = "Profile." if profile_required else "Profile (default: every profile)."
        fn = click.option("--profile", required=profile_required, help=help_text)(fn)
        fn = config_option(fn)
        return dlq.command(name)(fn)

    return decorate


@_dlq_command("list", profile_required=False)
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Per profile."
)
@click.option("--json", "as_json", is_flag=True)
def dlq_list(config_path: str | None, profile: str | None, limit: int, as_json: bool) -> None:
    """List the oldest dead letters of one profile, or of every profile."""
    settings = load_or_exit(config_path, secrets=False)
    _known_profile(settings, profile)
    names = [profile] if profile else sorted(settings.profiles)

    async def work(redis: Redis) -> list[tuple[str, DeadLetter]]:
        return [(name, d) for name in names for d in await list_dead_letters(redis, name, limit)]

    rows: list[dict[str, Any]] = [
        {
            "profile": name,
            "entry": d.entry_id,
            "reason": d.reason,
            "at": float(as_text(d.fields.get("at", b"0"))),
            "job": _job_preview(d.fields.get("job")),
        }
        for name, d in _with_redis(settings, work)
    ]
    if as_json:
        for row in rows:
            out.print(json.dumps(row), markup=False, soft_wrap=True)
        return
    cells = [[r["profile"], r["entry"], _ts(r["at"]), r["reason"], r["job"]] for r in rows]
    _print_fitted(_DLQ_COLUMNS, cells)
    out.print(f"{len(rows)} dead letter(s) shown", markup=False)


# The entry id is what `dlq replay --entry` takes: never cut. The job preview gives way.
_DLQ_COLUMNS = (
    Column("profile", keep=0),
    Column("entry", "id"),
    Column("at", keep=2),
    Column("reason", "text", keep=1, min_width=20),
    Column("job", "text", keep=3, min_width=24),
)


_EntryAction = Callable[[Redis, str, list[str]], Awaitable[int]]


def _dlq_entries_command(name: str, help_text: str, action: _EntryAction, done: str) -> None:
    """`dlq NAME --profile P (--entry ID... | --all)`: `action` on the chosen dead
    letters, then `done N`; ids that are not dead letters of the profile: exit 1."""

    @_dlq_command(name)
    @click.option("--entry", "entries", multiple=True, help="Dead-letter entry id (repeatable).")
    @click.option("--all", "everything", is_flag=True, help="Every dead letter of the profile.")
    def command(
        config_path: str | None, profile: str, entries: tuple[str, ...], everything: bool
    ) -> None:
        settings = load_or_exit(config_path, secrets=False)
        _known_profile(settings, profile)
        wanted = _entry_ids(entries)

        async def work(redis: Redis) -> tuple[int, list[str]]:
            ids, missing = await _select(redis, profile, wanted, everything)
            return await action(redis, profile, ids), missing

        count, missing = _with_redis(settings, work)
        out.print(f"{done} {count}", markup=False)
        _missing_entries(profile, missing)

    command.help = help_text


_dlq_entries_command(
    "replay",
    "Put dead letters back on the work stream (after fixing the cause).",
    replay_dead_letters,
    "replayed",
)
_dlq_entries_command("drop", "Delete dead letters for good.", drop_dead_letters, "dropped")


_ENTRY_ID = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?")
_UINT64 = 2**64


def _entry_ids(entries: tuple[str, ...]) -> list[str]:
    """The `--entry` values as stream ids (``1700000000000-0``; a bare time means
    sequence 0); exit 1 naming the first that is not one."""
    ids = []
    for entry in entries:
        match = _ENTRY_ID.fullmatch(entry.strip())
        if match is None or any(int(n or 0) >= _UINT64 for n in match.groups()):
            err.print(
                f"error: --entry {entry!r} is not a dead-letter entry id: an id looks like "
                "1700000000000-0 (see `sms-router dlq list`)",
                markup=False,
            )
            sys.exit(1)
        ids.append(f"{match.group(1)}-{match.group(2) or 0}")
    return ids


def _missing_entries(profile: str, missing: list[str]) -> None:
    """Exit 1 naming the `--entry` ids that are not dead letters of the profile."""
    for entry in missing:
        err.print(f"error: no dead letter {entry} in profile {profile}", markup=False)
    if missing:
        sys.exit(1)


async def _select(
    redis: Redis, profile: str, entries: list[str], everything: bool
) -> tuple[list[str], list[str]]:
    """The entries to act on and the `entries` that are not in the dead-letter stream."""
    if entries and everything:
        raise click.UsageError("give --entry or --all, not both")
    if entries:
        found: list[str] = []
        missing: list[str] = []
        for entry in entries:
            here = await redis.xrange(keys.dead_letters(profile), entry, entry)
            (found if here else missing).append(entry)
        return found, missing
    if not everything:
        raise click.UsageError("give --entry ID (repeatable) or --all")
    return [d.entry_id for d in await list_dead_letters(redis, profile, count=1_000_000)], []


@main.group()
def optout() -> None:
    """Numbers that opted out of a profile (STOP): list, add or remove them."""


def _profile_command(group: click.Group, name: str) -> Callable[..., Any]:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option("--profile", required=True, help="Profile.")(fn)
        fn = config_option(fn)
        return group.command(name)(fn)

    return decorate


def _e164_argument(number: str) -> str:
    try:
        return normalise_e164(number)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NUMBER") from None


@_profile_command(optout, "list")
def optout_list(config_path: str | None, profile: str) -> None:
    """Every opted-out number of the profile, sorted."""
    settings = load_or_exit(config_path, secrets=False)
    _known_profile(settings, profile)
    numbers = _with_redis(settings, lambda redis: audience.list_opt_outs(redis, profile))
    for number in numbers:
        out.print(number, markup=False)
    err.print(f"{len(numbers)} opted-out number(s) in profile {profile}", markup=False)


@_profile_command(optout, "add")
@click.argument("number")
def optout_add(config_path: str | None, profile: str, number: str) -> None:
    """Opt NUMBER out of the profile (as if it had texted STOP)."""
    settings = load_or_exit(config_path, secrets=False)
    _known_profile(settings, profile)
    number = _e164_argument(number)
    added = _with_redis(settings, lambda redis: audience.add_opt_out(redis, profile, number))
    done = "opted out of" if added else "was already opted out of"
    out.print(f"{number} {done} profile {profile}", markup=False)


@_profile_command(optout, "remove")
@click.argument("number")
def optout_remove(config_path: str | None, profile: str, number: str) -> None:
    """Opt NUMBER back in (as if it had texted START)."""
    settings = load_or_exit(config_path, secrets=False)
    _known_profile(settings, profile)
    number = _e164_argument(number)
    removed = _with_redis(settings, lambda redis: audience.remove_opt_out(redis, profile, number))
    done = "opted back in to" if removed else "was not opted out of"
    out.print(f"{number} {done} profile {profile}", markup=False)


@main.group("lists")
def lists_() -> None:
    """A profile's block and allow lists (numbers or prefixes) kept in Redis."""


def _which(block: bool, allow: bool) -> audience.ListName:
    if block == allow:
        raise click.UsageError("give --block or --allow (one of them)")
    return "block" if block else "allow"


def _entry_argument(entry: str) -> str:
    try:
        return audience.check_entry(entry)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NUMBER_OR_PREFIX") from None


def _list_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--allow", is_flag=True, help="The allowlist: send only there.")(fn)
    return click.option("--block", is_flag=True, help="The blocklist: never send there.")(fn)


@_profile_command(lists_, "show")
def lists_show(config_path: str | None, profile: str) -> None:
    """The configured lists and the Redis lists of the profile."""
    settings = load_or_exit(config_path, secrets=False)
    _known_profile(settings, profile)
    rules = settings.profiles[profile]
    kept = _with_redis(settings, lambda redis: audience.show_lists(redis, profile))
    for label, entries in (
        ("blocklist (config)", sorted(rules.blocklist)),
        ("blocklist (redis)", kept["block"]),
        ("allowlist (config)", sorted(rules.allowlist)),
        ("allowlist (redis)", kept["allow"]),
    ):
        out.print(f"{label}: " + (" ".join(entries) or "-"), markup=False)


@_profile_command(lists_, "add")
@_list_options
@click.argument("entry", metavar="NUMBER_OR_PREFIX")
def lists_add(config_path: str | None, profile: str, block: bool, allow: bool, entry: str) -> None:
    """Add a number or prefix to the profile's Redis blocklist or allowlist."""
    settings = load_or_exit(config_path, secrets=False)
    _known_profile(settings, profile)
    which = _which(block, allow)
    entry = _entry_argument(entry)
    added = _with_redis(
        settings, lambda redis: audience.add_list_entry(redis, profile, which, entry)
    )
    done = "added to" if added else "already on"
    out.print(f"{entry} {done} profile {profile}'s {which}list", markup=False)


@_profile_command(lists_, "remove")
@_list_options
@click.argument("entry", metavar="NUMBER_OR_PREFIX")
def lists_remove(
    config_path: str | None, profile: str, block: bool, allow: bool, entry: str
) -> None:
    """Remove a number or prefix from the profile's Redis blocklist or allowlist."""
    settings = load_or_exit(config_path, secrets=False)
    _known_profile(settings, profile)
    which = _which(block, allow)
    entry = _entry_argument(entry)
    removed = _with_redis(
        settings, lambda redis: audience.remove_list_entry(redis, profile, which, entry)
    )
    done = "removed from" if removed else "was not on"
    out.print(f"{entry} {done} profile {profile}'s {which}list", markup=False)
    if not removed and entry in getattr(settings.profiles[profile], f"{which}list"):
        err.print(f"({entry} is in the configuration: edit router.toml)", markup=False)


@main.command()
@config_option
@click.option(
    "--wait",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the daemon's verdict.",
)
def reload(config_path: str | None, wait: float) -> None:
    """Ask the running daemon (this instance, on this host) to reload its own
    configuration file (its health record names it) and report its verdict. Exit 0 when
    it applied the file (what changed is printed), 1 when it refused it (its problems
    are printed; the old configuration stays), no daemon runs, or no answer came
    within --wait seconds. -c PATH only says where Redis is and which instance."""
    from router.daemon.daemon import health_key
    from router.daemon.reload import Verdict, read_verdict, wait_for_verdict

    settings = load_or_exit(config_path, secrets=False)  # where Redis is and which instance to ask
    instance = settings.router.instance_name

    async def find(redis: Redis) -> dict[str, Any] | None:
        raw = await redis.get(health_key(instance))
        return json.loads(raw) if raw else None

    found = _with_redis(settings, find)
    if found is None:
        err.print(f"error: no running daemon for instance {instance!r}", markup=False)
        sys.exit(1)
    pid = int(found["pid"])
    if found.get("host") != socket.gethostname():
        err.print(
            f"error: instance {instance!r} runs on host {found.get('host')}; "
            "run `sms-router reload` there",
            markup=False,
        )
        sys.exit(1)
    if "config" not in found:
        err.print(
            f"error: instance {instance!r} (pid {pid}) does not say which file it runs on "
            f"(an older version); restart it, or signal it yourself: kill -HUP {pid}",
            markup=False,
        )
        sys.exit(1)
    daemon_file = found["config"]
    if daemon_file is None:
        err.print(
            f"error: instance {instance!r} (pid {pid}) was not started from a "
            "configuration file; there is nothing to reload",
            markup=False,
        )
        sys.exit(1)
    if resolve_config_path(config_path).absolute() != Path(daemon_file):
        err.print(f"note: instance {instance!r} runs on {daemon_file}; reloading that file",
                  markup=False)  # fmt: skip
    # The daemon checks its file itself, in its own environment (its secrets may come
    # from systemd credentials this shell does not have): its verdict is the answer.

    async def ask(redis: Redis) -> Verdict | None:
        await read_verdict(redis, instance)  # Redis answers before the signal goes
        asked = time.time()
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            err.print(f"error: instance {instance!r}: no process {pid} (stopped?)", markup=False)
            sys.exit(1)
        except PermissionError:
            err.print(
                f"error: not allowed to signal pid {pid}: run as the daemon's user",
                markup=False,
            )
            sys.exit(1)
        return await wait_for_verdict(redis, instance, pid, asked, wait)

    verdict = _with_redis(settings, ask)
    if verdict is None:
        err.print(
            f"error: no answer from instance {instance!r} (pid {pid}) within {wait:g}s; "
            "it may still be reloading (in-flight messages finish first): see its log, "
            "then `sms-router health`",
            markup=False,
        )
        sys.exit(1)
    if not verdict.applied:
        _print_refusal(
            f"instance {instance!r} refused the reload; {daemon_file} has problems "
            "(the old configuration stays)",
            verdict.problems,
        )
        sys.exit(1)
    out.print(f"reloaded instance {instance} (pid {pid}) from {daemon_file}", markup=False)
    for change in verdict.changes or ["nothing changed"]:
        out.print(f"  {change}", markup=False)


def _print_refusal(headline: str, problems: list[str]) -> None:
    err.print(f"error: {headline}", markup=False)
    for problem in problems:
        err.print(f"  {problem}", markup=False)


# `sms-router health` exit codes: documented, for monitoring checks.
HEALTH_READY, HEALTH_NONE, HEALTH_DEGRADED = 0, 1, 2


def _instance_problems(item: dict[str, Any]) -> list[str]:
    """Why an instance is not fully ready: a bind down, a connector down or its
    breaker open, Redis unreachable from the daemon, a profile without a ready bind."""
    problems = []
    if item.get("redis_down_since"):
        since = time.strftime("%H:%M:%S", time.localtime(item["redis_down_since"]))
        problems.append(f"redis unreachable from the daemon since {since}")
    for name, bind in item.get("binds", {}).items():
        ready = bind.get("ready", bind.get("state") in ("ready", "bound"))
        if not ready:
            why = f": {bind['error']}" if bind.get("error") else ""
            problems.append(f"bind {name} down ({bind.get('state')}{why})")
    for name, connector in item.get("connectors", {}).items():
        if connector.get("state") not in ("up", None):
            problems.append(f"connector {name} {connector['state']}: its routes fail over")
    for name, profile in item.get("profiles", {}).items():
        if profile.get("ready") is False:
            problems.append(f"profile {name} not ready: no bind can send")
    return problems


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="The instances' health records.")
def health(config_path: str | None, as_json: bool) -> None:
    """Live router instances, their binds and load, and each profile's backlog.

    Exit codes, for monitoring checks: 0 ready; 1 no daemon running (or Redis not
    reachable from here); 2 degraded: a bind down, Redis unreachable from a daemon,
    or a profile without a ready bind."""

    settings = load_or_exit(config_path, secrets=False)

    async def work(
        redis: Redis,
    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]], dict[str, int]]:
        records = await instances.read_records(redis, scan_fallback=True)
        stats = {
            name: {
                as_text(k): as_text(v) for k, v in (await redis.hgetall(keys.stats(name))).items()
            }
            for name in settings.profiles
        }
        depth = {name: int(await redis.xlen(keys.dead_letters(name))) for name in settings.profiles}
        return records, stats, depth

    running, stats, depth = _with_redis(settings, work)
    running.sort(key=lambda item: str(item.get("instance")))
    for item in running:
        item["problems"] = _instance_problems(item)
    if as_json:
        out.print(json.dumps(running, indent=2), markup=False)
    for item in [] if as_json else running:
        load = ", ".join(
            f"{name} {p['in_flight']}/{p['capacity']}" for name, p in item["profiles"].items()
        )
        out.print(
            f"{item['instance']} pid {item['pid']} up "
            f"{time.time() - item['started_at']:.0f}s: {load}",
            markup=False,
        )
        if item.get("redis_outages"):
            down = " (down now)" if item.get("redis_down_since") else ""
            out.print(f"  redis outages: {item['redis_outages']}{down}", markup=False)
        for name, bind in item.get("binds", {}).items():
            problem = f" ({bind['error']})" if bind.get("error") else ""
            out.print(f"  bind {name}: {bind['state']}{problem}", markup=False)
        for name, connector in item.get("connectors", {}).items():
            out.print(f"  connector {name}: {connector['state']}", markup=False)
    if not as_json and running:
        backlog = running[0].get("backlog", {})
        for name in sorted(settings.profiles):
            waiting = backlog.get(name, {})
            parts = [
                f"{k} {waiting[k]}" for k in ("stream", "pending", "scheduled") if k in waiting
            ]
            # The stream's depth now, apart from the running total of the counters.
            parts.append(f"dead-letter stream {depth.get(name, 0)}")
            out.print(f"profile {name}: " + ", ".join(parts), markup=False)
            spent = running[0].get("spend", {}).get(name)
            if spent:
                per = ", ".join(f"{k} {v:.4f}" for k, v in sorted(spent.items()) if k != "total")
                out.print(
                    f"  spend today (UTC): {spent.get('total', 0.0):.4f}"
                    + (f" ({per})" if per else ""),
                    markup=False,
                )
            counted = stats.get(name, {})
            if counted:
                totals = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(counted.items()))
                out.print(f"  running totals: {totals}", markup=False)
    if not running:
        err.print("no router instance is running", markup=False)
        sys.exit(HEALTH_NONE)
    problems = [f"{i['instance']}: {p}" for i in running for p in i["problems"]]
    if not as_json:
        verdict = "degraded" if problems else "ready"
        out.print(f"status: {verdict}", markup=False)
        for problem in problems:
            out.print(f"  {problem}", markup=False)
    sys.exit(HEALTH_DEGRADED if problems else HEALTH_READY)


main.add_command(route)


@main.command("migrate-keys")
@config_option
@click.option("--dry-run", is_flag=True, help="Count what would move; change nothing.")
def migrate_keys_(config_path: str | None, dry_run: bool) -> None:
    """Move the keys of the old layout (sms:msg:<id>, sms:events, sms:callbacks...) to
    the per-profile one. Stop every instance first; running it twice is harmless."""
    settings = load_or_exit(config_path, secrets=False)

    async def work(redis: Redis) -> MigrationReport:
        with err.status("migrating keys") as status:

            def progress(stage: str, done: int) -> None:
                status.update(f"migrating keys: {stage} {done:,}")

            return await migrate_keys(redis, dry_run=dry_run, progress=progress)

    for line in _migration_lines(_with_redis(settings, work)):
        out.print(line, markup=False)


def _migration_lines(report: MigrationReport) -> list[str]:
    """The counts of a `MigrationReport`, one per line (never a record's contents)."""
    moved = "would move" if report.dry_run else "moved"
    events = ", ".join(f"{p} {n}" for p, n in sorted(report.events_moved.items())) or "0"
    kept = "kept" if report.event_ids_preserved else "new ids (newer entries were there)"
    kept_cb = "kept" if report.callback_ids_preserved else "new ids (newer entries were there)"
    lines = ["dry run: nothing changed"] if report.dry_run else []
    lines += [
        f"records {moved}: {report.records_moved} "
        f"(of which placed by their events: {report.records_resolved_from_events})",
        f"records moved by an earlier run (old key dropped): {report.records_already_moved}",
        f"records without a profile, left under sms:msg:<id>: {report.records_unresolved}"
        + (f" (e.g. {', '.join(report.unresolved_ids)})" if report.unresolved_ids else ""),
        f"events {moved}: {events} (ids {kept})",
        f"callbacks {moved}: {report.callbacks_moved} (ids {kept_cb})",
        f"callback dead letters {moved}: {report.callback_dead_letters_moved}",
    ]
    for stream, count in sorted(report.left_behind.items()):
        lines.append(f"{stream} kept: {count} entries name no profile")
    if not report.changed and not report.dry_run:
        lines.append("nothing to move: the keys are in the new layout")
    return lines


@main.command()
@click.option("--count", default=1000, show_default=True, help="Sample messages to send.")
@click.option("--window", default=32, show_default=True, help="SMPP window of the session.")
@click.option("--limit", default=300.0, show_default=True, help="Seconds before giving up.")
def demo(count: int, window: int, limit: float) -> None:
    """Embedded Redis + SMSC simulator + daemon: send samples, wait for every report."""
    from router.logs import configure
    from sims.demo import run_demo

    configure("json", "error")
    sys.exit(asyncio.run(run_demo(count, window, limit, out)))


@main.command("http-sim")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8780, show_default=True)
@click.option("--latency", default=0.0, show_default=True, help="Seconds per request.")
@click.option("--fail-rate", default=0.0, show_default=True, help="Share answered 503.")
def http_sim(host: str, port: int, latency: float, fail_rate: float) -> None:
    """A local Web-URL SMS provider for demos and benchmarks."""
    from sims.httpsim import serve

    try:
        asyncio.run(serve(host, port, latency=latency, fail_rate=fail_rate))
    except KeyboardInterrupt:
        pass


@main.command("smsc-sim")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=2775, show_default=True)
@click.option("--http-port", default=8781, show_default=True, help="Control API; -1 = none.")
@click.option("--system-id", default="smppclient1", show_default=True)
@click.option("--password", default="password", help="Password clients must bind with.")
@click.option("--delivered-ratio", default=1.0, show_default=True)
@click.option("--receipt-delay", default=0.05, show_default=True, help="Seconds.")
@click.option("--date-digits", type=click.Choice(["10", "12"]), default="10", show_default=True)
@click.option("--throttle-ratio", default=0.0, show_default=True)
@click.option(
    "--max-rate",
    default=0.0,
    show_default=True,
    help="Submits/s taken; beyond, ESME_RMSGQFUL (queue full). 0 = no limit.",
)
@click.option(
    "--queue-full-for",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds the queue stays full (ESME_RMSGQFUL) once --queue-room is used up.",
)
@click.option(
    "--queue-room",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Submits the queue takes before it is full again for --queue-full-for. 0 = off.",
)
@click.option("--drop-ratio", default=0.0, show_default=True, help="Share never answered.")
@click.option("--response-delay", default=0.0, show_default=True, help="Seconds.")
@click.option("--disconnect-every", default=0, show_default=True, help="PDUs; 0 = never.")
@click.option("--report-before-response", is_flag=True)
@click.option("--seed", type=int, default=None)
def smsc_sim(
    host: str,
    port: int,
    http_port: int,
    system_id: str,
    password: str,
    delivered_ratio: float,
    receipt_delay: float,
    date_digits: str,
    throttle_ratio: float,
    max_rate: float,
    queue_full_for: float,
    queue_room: int,
    drop_ratio: float,
    response_delay: float,
    disconnect_every: int,
    report_before_response: bool,
    seed: int | None,
) -> None:
    """A local SMPP SMSC for demos, benchmarks and fault tests."""
    from sims.smscsim import SimConfig, serve

    if (queue_room > 0) != (queue_full_for > 0):
        raise click.UsageError(
            "--queue-full-for and --queue-room go together: full for S seconds, then "
            "room for N submits (e.g. --queue-full-for 60 --queue-room 1000)"
        )

    config = SimConfig(
        accounts={system_id: password},
        delivered_ratio=delivered_ratio,
        receipt_delay=receipt_delay,
        date_digits=int(date_digits),
        throttle_ratio=throttle_ratio,
        max_rate=max_rate,
        queue_full_for=queue_full_for,
        queue_room=queue_room,
        drop_response_ratio=drop_ratio,
        response_delay=response_delay,
        disconnect_every=disconnect_every,
        report_before_response=report_before_response,
        seed=seed,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, host, port, None if http_port < 0 else http_port))


@main.group()
def links() -> None:
    """Tracked links (``shorten = true``): their clicks."""


@links.command("stats")
@config_option
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    help="Profile (repeat for several; default: every profile).",
)
@click.option("--day", help="UTC day of the most clicked messages, YYYY-MM-DD (default: today).")
@click.option(
    "--top",
    type=click.IntRange(min=0, max=10_000),
    default=10,
    show_default=True,
    help="Most clicked messages shown per profile.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per profile.")
def links_stats(
    config_path: str | None, profiles: tuple[str, ...], day: str | None, top: int, as_json: bool
) -> None:
    """Each profile's clicks on its tracked links (all time, every instance; link
    previews not counted) and its most clicked messages on a UTC day, with their
    clicks."""
    from router.links import click_stats

    settings = load_or_exit(config_path, secrets=False)
    for profile in profiles:
        _known_profile(settings, profile)
    if day is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        raise click.BadParameter("must be YYYY-MM-DD (a UTC day)", param_hint="--day")
    wanted = list(dict.fromkeys(profiles)) or list(settings.profiles)
    on = keys.utc_day() if day is None else day

    async def work(redis: Redis) -> Any:
        return await click_stats(redis, wanted, top=top, day=on)

    found = _with_redis(settings, work)
    if as_json:
        for stats in found:
            row = {
                "profile": stats.profile,
                "shorten": settings.profiles[stats.profile].shorten,
                "clicks": stats.total,
                "day": on,
                "top": [{"id": m, "clicks": n} for m, n in stats.top],
            }
            out.print(json.dumps(row), markup=False, soft_wrap=True)
        return
    for stats in found:
        state = "" if settings.profiles[stats.profile].shorten else " (shorten off)"
        out.print(f"{stats.profile}: {stats.total:,} clicks{state}", markup=False)
        if top and stats.top:
            out.print(f"  most clicked on {on}:", markup=False)
            for message, count in stats.top:
                out.print(f"    {message}  {count:,}", markup=False)
        elif top:
            out.print(f"  no clicks on {on}", markup=False)


def _known_profile(settings: Settings, profile: str | None) -> None:
    """Exit 1 with one line when `profile` is given but not configured."""
    if profile is not None and profile not in settings.profiles:
        known = ", ".join(sorted(settings.profiles))
        err.print(f"error: unknown profile {profile!r} (configured: {known})", markup=False)
        sys.exit(1)


def _ledger(redis: Redis, settings: Settings) -> Ledger:
    queue = settings.queue
    return Ledger(redis, retention=queue.retention, events_maxlen=queue.events_maxlen)


def _ts(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else ""


def _why(record: dict[str, Any]) -> str:
    """The log's note: ``code: error`` (a rule's refusal, a provider's status), else the
    last history note."""
    error = str(record.get("error") or "")
    code = str(record.get("error_code") or "")
    if code and not error.startswith(code):
        return f"{code}: {error}" if error else code
    return error or _last_note(record)


def _last_note(record: dict[str, Any]) -> str:
    """The note of the latest status change (e.g. ``no delivery report``)."""
    history = record.get("history") or []
    return str(history[-1]["note"] or "") if history else ""


def _internal(name: str) -> bool:
    """Record fields the router keeps for itself (shown by ``status --json`` only): the
    owning stream entry, each part's raw report, flags, and the status callback URL,
    which may carry a token."""
    return name in _INTERNAL or name.startswith("dlr:")


_INTERNAL = frozenset({"owner", "status_callback_url", "report_timeout"})


def _show(name: str, value: Any) -> str:
    if name in ("created_at", "updated_at"):
        return _ts(value)
    if name == "media" and isinstance(value, list):
        return "\n".join(str(url) for url in value)  # an MMS's URLs, one a line, whole
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _job_preview(raw: bytes | None) -> str:
    if raw is None:
        return "(no job field)"
    try:
        import msgpack

        data = msgpack.unpackb(raw, raw=False)
        return json.dumps(data, default=str)[:120]
    except Exception:  # the reason it is a dead letter may be that it is not msgpack
        return repr(raw[:60])


if __name__ == "__main__":
    main()
