"""The console's opt-outs and lists: ``/console/opt-outs`` shows, per profile, the
numbers that opted out (search one, or page through them in number order: the store
keeps a set, so there is no "newest"), and the block and allow lists (the configured
ones, read-only here, and the ones kept in Redis). An admin opts a number out or back
in, and adds or removes a number or prefix on a Redis list.

The audience module does the work (router/policy/audience.py: the functions
``sms-router optout`` and ``sms-router lists`` call), and a searched number is screened
with the same `Audience` the worker uses, so the page says what a send to it would
meet. Every page reads Redis and the configuration only, so API worker processes
serve it too.
"""

from __future__ import annotations

from typing import Any, Final

import structlog
from aiohttp import web
from redis.asyncio import Redis

from router.api.common import CONTEXT
from router.console.auth import SESSION, needs
from router.console.pages import FormError, profile_field, see_other
from router.console.render import page
from router.numbers import normalise_e164
from router.policy import audience
from router.store import keys

__all__ = ["LISTED_UP_TO", "PAGE_SIZE", "add_routes"]

log = structlog.get_logger("router.console")

PAGE_SIZE: Final = 100  # opted-out numbers on one page
# Above this many opt-outs the page only searches: sorting them all for each page
# would cost the router's Redis more than a look is worth.
LISTED_UP_TO: Final = 20_000
_LISTS: Final[tuple[audience.ListName, ...]] = ("block", "allow")
# What a finished change says (the redirect names one of these and the number).
_DONE: Final = {
    "opted_out": "{number} opted out of profile {profile}.",
    "already_out": "{number} was already opted out of profile {profile}.",
    "opted_in": "{number} opted back in to profile {profile}.",
    "not_out": "{number} was not opted out of profile {profile}.",
    "added": "{number} added to profile {profile}'s {which}list.",
    "already_on": "{number} is already on profile {profile}'s {which}list.",
    "removed": "{number} removed from profile {profile}'s {which}list.",
    "not_on": "{number} was not on profile {profile}'s {which}list in Redis.",
    "in_config": "{number} is on profile {profile}'s {which}list in router.toml: change it there.",
}


def _number(given: Any, field: str = "number") -> str:
    """A phone number from a form in E.164, or FormError naming `field`."""
    if not isinstance(given, str) or not given.strip():
        raise FormError(f"{field}: required (a number with its country code, +14155552671)")
    try:
        return normalise_e164(given.strip()[:64])
    except ValueError as exc:
        raise FormError(f"{field}: {exc}") from None


def _list_entry(given: Any) -> str:
    """A block/allow list entry: a prefix as ``sms-router lists`` takes it ('+' then
    digits), or a whole number written any way E.164 normalises; else FormError."""
    if not isinstance(given, str) or not given.strip():
        raise FormError("entry: required (a number or prefix: '+' then 1-15 digits)")
    try:
        return audience.check_entry(given)
    except ValueError as exc:
        try:  # "+1 (415) 555-2671" is a number too
            return normalise_e164(given.strip()[:64])
        except ValueError:
            raise FormError(f"entry: {exc}") from None


def _which(given: Any) -> audience.ListName:
    if given == "block":
        return "block"
    if given == "allow":
        return "allow"
    raise FormError("list: block or allow")


def _shown_profile(request: web.Request) -> str:
    """The profile asked for, else the global one, else the first by name."""
    settings = request.app[CONTEXT].settings
    if "profile" in request.query:
        return profile_field(request, request.query["profile"])
    return settings.global_profile or min(settings.profiles)


async def _search(redis: Redis, request: web.Request, profile: str, number: str) -> dict[str, Any]:
    """What the page says of `number`: opted out or not, and the verdict the worker's
    `Audience` would give a send to it now (lists first, then the opt-out)."""
    rules = request.app[CONTEXT].settings.profiles[profile]
    opted = bool(await redis.sismember(keys.opt_outs(profile), number))
    verdict = (await audience.Audience(redis, profile, rules).screen([number]))[0]
    return {
        "number": number,
        "opted_out": opted,
        "code": verdict[0] if verdict else None,
        "reason": verdict[1] if verdict else None,
    }


async def _values(
    request: web.Request, profile: str, page_no: int, number: str | None
) -> dict[str, Any]:
    context = request.app[CONTEXT]
    redis = context.redis
    rules = context.settings.profiles[profile]
    total = int(await redis.scard(keys.opt_outs(profile)))
    listed: list[str] | None = None
    if total <= LISTED_UP_TO:
        every = await audience.list_opt_outs(redis, profile)
        listed = every[page_no * PAGE_SIZE : (page_no + 1) * PAGE_SIZE]
    kept = await audience.show_lists(redis, profile)
    return {
        "session": request[SESSION],
        "active": "opt-outs",
        "profiles": sorted(context.settings.profiles),
        "profile": profile,
        "total": total,
        "listed": listed,
        "page_no": page_no,
        "pages": max(1, -(-total // PAGE_SIZE)),
        "listed_up_to": LISTED_UP_TO,
        "found": await _search(redis, request, profile, number) if number else None,
        "lists": {
            which: {"config": sorted(getattr(rules, f"{which}list")), "redis": kept[which]}
            for which in _LISTS
        },
    }


def _outcome(query: Any) -> str | None:
    """The sentence for a finished change named in the query (after the redirect)."""
    done = query.get("done")
    if done not in _DONE:
        return None
    # Only what this page's own redirects say: a link cannot make it say anything else.
    try:
        number = _number(query["number"]) if "number" in query else _list_entry(query.get("entry"))
    except FormError:
        return None
    which = query.get("list", "")
    return _DONE[done].format(
        number=number,
        profile=query.get("profile", ""),
        which=which if which in _LISTS else "",
    )


@needs("read")
async def opt_outs(request: web.Request) -> web.StreamResponse:
    """``GET /console/opt-outs?profile=P&number=N&page=K``: profile P's opt-outs (page
    K of them), the search for number N, and its block and allow lists."""
    query = request.query
    try:
        profile = _shown_profile(request)
        number = _number(query["number"]) if query.get("number", "").strip() else None
        given_page = query.get("page", "0")
        if not given_page.isdigit() or int(given_page) > 1_000_000:
            raise FormError("page: a whole number (0 is the first page)")
    except FormError as exc:
        return await _page_with_error(request, str(exc), query)
    values = await _values(request, profile, int(given_page), number)
    return page("lists.html", outcome=_outcome(query), error=None, typed=number or "", **values)


async def _page_with_error(request: web.Request, message: str, given: Any) -> web.Response:
    """The page again, 400, saying which field is wrong; the typed text kept."""
    settings = request.app[CONTEXT].settings
    chosen = given.get("profile")
    profile = chosen if chosen in settings.profiles else None
    profile = profile or settings.global_profile or min(settings.profiles)
    values = await _values(request, profile, 0, None)
    typed = given.get("number") or given.get("entry") or ""
    response = page(
        "lists.html",
        status=400,
        outcome=None,
        error=message,
        typed=typed if isinstance(typed, str) else "",
        **values,
    )
    return response


def _back(profile: str, **done: str) -> web.Response:
    """303 to the profile's page, saying what was done (an opt-out's ``number`` is
    searched there too)."""
    return see_other("/console/opt-outs", profile=profile, **done)


@needs("admin")
async def opt_out(request: web.Request) -> web.StreamResponse:
    """``POST /console/opt-outs/add``: opt ``number`` out of ``profile`` (as if it had
    texted STOP); ``POST /console/opt-outs/remove``: opt it back in (as if it had
    texted START)."""
    add = request.match_info["change"] == "add"
    form = await request.post()  # already read by `needs`' CSRF check
    try:
        profile = profile_field(request, form.get("profile"))
        number = _number(form.get("number"))
    except FormError as exc:
        return await _page_with_error(request, str(exc), form)
    redis = request.app[CONTEXT].redis
    if add:
        changed = await audience.add_opt_out(redis, profile, number)
        done = "opted_out" if changed else "already_out"
    else:
        changed = await audience.remove_opt_out(redis, profile, number)
        done = "opted_in" if changed else "not_out"
    log.info("console: opt-out " + done, caller=request[SESSION].name, profile=profile)
    return _back(profile, done=done, number=number)


@needs("admin")
async def list_change(request: web.Request) -> web.StreamResponse:
    """``POST /console/lists/add``: add ``entry`` (a number or prefix) to
    ``profile``'s Redis ``list`` (block or allow); ``POST /console/lists/remove``:
    remove it."""
    add = request.match_info["change"] == "add"
    form = await request.post()  # already read by `needs`' CSRF check
    try:
        profile = profile_field(request, form.get("profile"))
        which = _which(form.get("list"))
        entry = _list_entry(form.get("entry"))
    except FormError as exc:
        return await _page_with_error(request, str(exc), form)
    redis = request.app[CONTEXT].redis
    if add:
        changed = await audience.add_list_entry(redis, profile, which, entry)
        done = "added" if changed else "already_on"
    else:
        changed = await audience.remove_list_entry(redis, profile, which, entry)
        configured = getattr(request.app[CONTEXT].settings.profiles[profile], f"{which}list")
        done = "removed" if changed else "in_config" if entry in configured else "not_on"
    log.info(
        "console: list entry " + done, caller=request[SESSION].name, profile=profile, list=which
    )
    return _back(profile, done=done, entry=entry, list=which)


def add_routes(app: web.Application) -> None:
    """Register the opt-out and list pages."""
    app.router.add_get("/console/opt-outs", opt_outs)
    app.router.add_post("/console/opt-outs/{change:add|remove}", opt_out)
    app.router.add_post("/console/lists/{change:add|remove}", list_change)
