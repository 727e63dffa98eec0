"""The console's dead letters: ``/console/dead-letters`` lists each profile's dead
letters, oldest first, with their reasons and jobs; an admin replays one (back onto the
work stream, as ``sms-router dlq replay --entry``) or drops one (deleted for good), or
all of a profile's after a confirmation that says how many.

The store's functions do the work (router/store/queue.py: `list_dead_letters`,
`replay_dead_letters`, `drop_dead_letters`, the ones the CLI and the API call), and a
dead letter is shown as the API shows it (router/api/profiles.py). Every page reads
Redis and the configuration only, so API worker processes serve it too.

"All" means the dead letters the confirmation counted: the form carries the newest
entry id it saw (``upto``), so a dead letter that arrives between the confirmation and
the click is left for the next look.
"""

from __future__ import annotations

import re
from typing import Any, Final

import structlog
from aiohttp import web
from redis.asyncio import Redis

from router.api.common import CONTEXT
from router.api.profiles import ALL_DEAD_LETTERS, letter_view
from router.console.auth import SESSION, needs
from router.console.pages import FormError, profile_field, see_other
from router.console.render import page
from router.store import keys
from router.store.connections import as_text
from router.store.queue import (
    DeadLetter,
    drop_dead_letters,
    list_dead_letters,
    replay_dead_letters,
)

__all__ = ["PAGE_SIZE", "add_routes"]

log = structlog.get_logger("router.console")

PAGE_SIZE: Final = 50  # dead letters on one page
TEXT_SHOWN: Final = 60  # characters of a job's text in the list
# A stream entry id as the list shows it (the CLI's and the API's rule).
_ENTRY: Final = re.compile(r"\d{1,20}-\d{1,20}")
# What a finished action says (the redirect names one of these and the figures).
_DONE: Final = {
    "replayed": "Replayed {count}: back on profile {profile}'s work stream.{left}",
    "dropped": "Dropped {count} for good.",
    "gone": "Dead letter {entry} is already gone (replayed or dropped meanwhile).",
    "no_job": "Dead letter {entry} carries no job, so there is nothing to replay: drop it.",
}


def _entry(given: Any, field: str = "entry") -> str:
    """A dead-letter entry id from a form, or FormError naming `field`."""
    if not isinstance(given, str) or not given.strip():
        raise FormError(f"{field}: required (an entry id such as 1700000000000-0)")
    if not _ENTRY.fullmatch(given.strip()):
        raise FormError(
            f"{field}: {given[:40]!r} is not a dead-letter entry id (such as 1700000000000-0)"
        )
    return given.strip()


def _stream_id(entry: str) -> tuple[int, int]:
    millis, _, seq = entry.partition("-")
    return int(millis), int(seq or 0)


def _default_profile(request: web.Request, counts: dict[str, int]) -> str:
    """The profile shown when none is asked for: the first with dead letters, else the
    global one, else the first by name."""
    settings = request.app[CONTEXT].settings
    with_letters = [name for name, n in counts.items() if n]
    return (with_letters or [settings.global_profile or min(settings.profiles)])[0]


async def _counts(redis: Redis, profiles: list[str]) -> dict[str, int]:
    """How many dead letters each profile has (XLEN, one pipeline; each key alone,
    so it runs on Redis Cluster)."""
    async with redis.pipeline(transaction=False) as pipe:
        for name in profiles:
            pipe.xlen(keys.dead_letters(name))
        lengths = await pipe.execute()
    return {name: int(n) for name, n in zip(profiles, lengths, strict=True)}


async def _page_of(redis: Redis, profile: str, after: str | None) -> list[DeadLetter]:
    """Up to `PAGE_SIZE` + 1 dead letters of `profile`, oldest first, after entry
    `after` (the extra one says whether there is a next page)."""
    return await list_dead_letters(redis, profile, PAGE_SIZE + 1, after)


def _row(letter: DeadLetter) -> dict[str, Any]:
    """One dead letter as the table shows it: the API's view, the text cut short."""
    view = letter_view(letter).model_dump()
    job = view["job"]
    text = ""
    if job is not None:
        text = str(job.get("text") or "")
        if not text and job.get("template"):
            text = f"(template {job['template']})"
        if len(text) > TEXT_SHOWN:
            text = text[: TEXT_SHOWN - 1] + "…"
    return {**view, "text": text, "has_job": "job" in letter.fields}


async def _values(request: web.Request, profile: str | None, after: str | None) -> dict[str, Any]:
    context = request.app[CONTEXT]
    names = sorted(context.settings.profiles)
    counts = await _counts(context.redis, names)
    shown = profile or _default_profile(request, counts)
    letters = await _page_of(context.redis, shown, after)
    return {
        "session": request[SESSION],
        "active": "dead-letters",
        "counts": counts,
        "profile": shown,
        "after": after,
        "letters": [_row(d) for d in letters[:PAGE_SIZE]],
        "next_after": letters[PAGE_SIZE - 1].entry_id if len(letters) > PAGE_SIZE else None,
        "page_size": PAGE_SIZE,
    }


def _outcome(query: Any) -> str | None:
    """The sentence for a finished action named in the query (after the redirect)."""
    done = query.get("done")
    entry = query.get("entry", "")
    # Only what this page's own redirects say: a link cannot make it say anything else.
    if done not in _DONE or (entry and not _ENTRY.fullmatch(entry)):
        return None
    count, left = query.get("count", "0"), query.get("left", "0")
    stayed = ""
    if left.isdigit() and int(left):
        stayed = f" {int(left)} not replayed: gone meanwhile, or carrying no job (drop those)."
    return _DONE[done].format(
        count=int(count) if count.isdigit() else 0,
        profile=query.get("profile", ""),
        entry=entry,
        left=stayed,
    )


@needs("read")
async def dead_letters(request: web.Request) -> web.StreamResponse:
    """``GET /console/dead-letters?profile=P&after=ID``: profile P's dead letters
    (default: the first profile that has any), `PAGE_SIZE` a page, oldest first."""
    query = request.query
    try:
        profile = profile_field(request, query["profile"]) if "profile" in query else None
        after = _entry(query["after"], "after") if "after" in query else None
    except FormError as exc:
        return _error(request, str(exc))
    values = await _values(request, profile, after)
    return page("dead_letters.html", outcome=_outcome(query), error=None, **values)


def _error(request: web.Request, message: str) -> web.Response:
    return page(
        "error.html", status=400, session=request[SESSION], title="Not done", message=message
    )


def _back(profile: str, **done: str | int) -> web.Response:
    """303 to the profile's dead letters, saying what was done."""
    return see_other("/console/dead-letters", profile=profile, **done)


async def _form(request: web.Request) -> Any:
    return await request.post()  # already read (and cached) by `needs`' CSRF check


@needs("admin")
async def change_one(request: web.Request) -> web.StreamResponse:
    """``POST /console/dead-letters/replay``: put dead letter ``entry`` of ``profile``
    back on the work stream; ``POST /console/dead-letters/drop``: delete it for good."""
    replay = request.match_info["action"] == "replay"
    form = await _form(request)
    try:
        profile = profile_field(request, form.get("profile"))
        entry = _entry(form.get("entry"))
    except FormError as exc:
        return _error(request, str(exc))
    redis = request.app[CONTEXT].redis
    action = replay_dead_letters if replay else drop_dead_letters
    count = await action(redis, profile, [entry])
    caller = request[SESSION].name
    if count:
        done = "replayed" if replay else "dropped"
        log.info("console: dead letter " + done, caller=caller, profile=profile, entry=entry)
        return _back(profile, done=done, count=count)
    # Nothing moved: gone already, or (replay) an entry without a job, which stays.
    still = await redis.xrange(keys.dead_letters(profile), entry, entry)
    return _back(profile, done="no_job" if still else "gone", entry=entry)


async def _newest(redis: Redis, profile: str) -> str | None:
    rows: Any = await redis.xrevrange(keys.dead_letters(profile), count=1)
    return as_text(rows[0][0]) if rows else None


@needs("admin")
async def confirm_all(request: web.Request) -> web.StreamResponse:
    """``GET /console/dead-letters/all?profile=P&action=replay|drop``: how many dead
    letters "all" is now, and the form that does it."""
    action = request.query.get("action")
    try:
        profile = profile_field(request, request.query.get("profile"))
        if action not in ("replay", "drop"):
            raise FormError("action: replay or drop")
    except FormError as exc:
        return _error(request, str(exc))
    redis = request.app[CONTEXT].redis
    count = (await _counts(redis, [profile]))[profile]
    return page(
        "dead_letters_confirm.html",
        session=request[SESSION],
        active="dead-letters",
        profile=profile,
        action=action,
        count=count,
        upto=await _newest(redis, profile),
    )


@needs("admin")
async def change_all(request: web.Request) -> web.StreamResponse:
    """``POST /console/dead-letters/replay-all`` and ``.../drop-all``: replay or drop
    every dead letter of ``profile`` up to entry ``upto`` (the newest the
    confirmation counted)."""
    replay = request.match_info["action"] == "replay"
    form = await _form(request)
    try:
        profile = profile_field(request, form.get("profile"))
        upto = _stream_id(_entry(form.get("upto"), "upto"))
    except FormError as exc:
        return _error(request, str(exc))
    redis = request.app[CONTEXT].redis
    # "All" as the CLI and the API take it, less what arrived after the confirmation.
    every = await list_dead_letters(redis, profile, count=ALL_DEAD_LETTERS)
    ids = [d.entry_id for d in every if _stream_id(d.entry_id) <= upto]
    action = replay_dead_letters if replay else drop_dead_letters
    count = await action(redis, profile, ids)
    done = "replayed" if replay else "dropped"
    log.info(
        "console: dead letters " + done,
        caller=request[SESSION].name,
        profile=profile,
        count=count,
        asked=len(ids),
    )
    if replay and count < len(ids):
        # Entries without a job stay (the store's replay leaves them), or went meanwhile.
        return _back(profile, done=done, count=count, left=len(ids) - count)
    return _back(profile, done=done, count=count)


def add_routes(app: web.Application) -> None:
    """Register the dead-letter pages."""
    app.router.add_get("/console/dead-letters", dead_letters)
    app.router.add_get("/console/dead-letters/all", confirm_all)
    app.router.add_post("/console/dead-letters/{action:replay|drop}", change_one)
    app.router.add_post("/console/dead-letters/{action:replay|drop}-all", change_all)
