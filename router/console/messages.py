"""The console's messages: a search (``GET /console/messages``) and one message's page
(``GET /console/messages/<id>``).

The search takes its filters as query parameters — ``id``, ``to``, ``from``,
``status``, ``profile``, ``account``, ``since``, ``until`` — and finds messages in the
cheapest place that answers:

- ``id``: the record itself (`Ledger.find` in the configured profiles), shown at once;
- ``to``: the recipient index (``sms:{P}:to:<YYYYMMDD>``, `keys.recipient_index`: one
  sorted set per profile and UTC day whose members ``<to>|<time>|<id>`` put a
  recipient's messages in one lexicographic range), newest first, read day by day
  back through the retention, the other filters applied to the records it names; its
  pages go on below the last entry shown (``below``), so messages created meanwhile
  do not shift them. With ``[queue] recipient_index = false`` nothing is indexed and
  the search reads the SMS log instead (the page says so);
- anything else: the SMS log (`message_log`, what ``GET /v1/messages`` and
  ``sms-router log`` read): records by their latest change, newest first, reading at
  most `LOG_SCAN` events a page (a narrow filter may show a page short, with a link
  to read on). A sender is searched this way (no sender index: it would cost every
  message's first step a second sorted set), so the page says to narrow it by time.

``since`` and ``until`` take a duration back from now (``15m``, ``2h``, ``1d``) or an
ISO 8601 time with a zone. A session of an account without ``admin`` sees only that
account's messages, as the API's `own_account` does. Every page reads Redis and the
configuration only, so API worker processes serve it too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote, urlencode

from aiohttp import web
from redis.asyncio import Redis

from router.api.common import CONTEXT
from router.config import Settings
from router.console.auth import SESSION, needs
from router.console.render import page
from router.console.sessions import Session
from router.links import message_clicks
from router.numbers import normalise_e164
from router.store import keys
from router.store.connections import as_text
from router.store.ledger import STATUSES, Ledger
from router.store.smslog import message_log, parse_position, parse_since

__all__ = ["PAGE", "Search", "add_routes", "parse_search", "recipient_messages"]

PAGE: Final = 50  # rows a page shows
INDEX_SCAN: Final = 5000  # index entries read at most for one page (filters drop some)
DAYS_A_TRIP: Final = 8  # the recipient index's days (x profiles) read in one round trip
# Events the SMS log reads at most for one page: a filter that matches little reads this
# many records and shows a short page with a link to read on (2,000: ~0.1 s on a store
# of 1,000,000 messages, bench/console_search.py; the API's 20,000 took 1.2 s).
LOG_SCAN: Final = 2000
FILTERS: Final = ("id", "to", "from", "status", "profile", "account", "since", "until")
# The record's fields the message page shows in its summary, in this order (the
# others follow under "More fields").
SUMMARY: Final = (
    "status",
    "error",
    "error_code",
    "error_raw",
    "to",
    "from",
    "profile",
    "account",
    "connector",
    "segments",
    "price",
    "provider_message_id",
    "attempts",
    "created_at",
    "updated_at",
)
HIDDEN: Final = frozenset({"id", "text", "history", "meta", "media", "num_media", "mms", "owner"})


@dataclass
class Search:
    """One search's filters, checked (see the module's docstring)."""

    id: str | None = None
    to: str | None = None
    sender: str | None = None
    status: str | None = None
    profile: str | None = None
    account: str | None = None
    since: float | None = None
    until: float | None = None
    before: str | None = None  # the SMS log's position to continue below
    below: Below | None = None  # the recipient index's entry to continue below


@dataclass(frozen=True, order=True)
class Below:
    """An entry of the recipient index, as the search orders them (newest first is
    the highest): its time (`keys.recipient_stamp`), job id and profile. A page goes
    on below the last one it showed (``below=<stamp>|<profile>|<id>``)."""

    stamp: str
    id: str
    profile: str

    def text(self) -> str:
        """The query parameter's value."""
        return f"{self.stamp}|{self.profile}|{self.id}"

    @classmethod
    def parse(cls, text: str, profiles: Sequence[str]) -> Below:
        """`text` as `text` wrote it (ValueError when it is none)."""
        stamp, _, rest = text.partition("|")
        profile, _, job = rest.partition("|")
        keys.recipient_stamp_time(stamp)
        if profile not in profiles or not job:
            raise ValueError(f"not a recipient index entry: {text!r}")
        return cls(stamp, job, profile)


def own_account(session: Session) -> str | None:
    """The account whose messages alone `session` may see (None: every account): an
    account's session without ``admin``."""
    if session.kind == "account" and not session.holds("admin"):
        return session.name
    return None


def _time(text: str, name: str, now: float) -> float:
    try:
        return parse_since(text, now)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def parse_search(
    query: Mapping[str, str], settings: Settings, session: Session, now: float
) -> Search:
    """The search `query` asks for; ValueError naming the field when one is wrong
    (an account's session asking for another account's messages among them)."""
    given = {k: query.get(k, "").strip() for k in (*FILTERS, "before", "below")}
    found = Search()
    found.id = given["id"] or None
    if given["to"]:
        try:
            found.to = normalise_e164(given["to"])
        except ValueError as exc:
            raise ValueError(f"to: {exc}") from None
    if given["from"]:
        try:  # a number as the records keep it; an alphanumeric sender as given
            found.sender = normalise_e164(given["from"])
        except ValueError:
            found.sender = given["from"]
    if given["status"]:
        if given["status"] not in STATUSES:
            raise ValueError(f"status: {given['status']!r} is none of {', '.join(STATUSES)}")
        found.status = given["status"]
    if given["profile"]:
        if given["profile"] not in settings.profiles:
            raise ValueError(f"profile: no profile {given['profile']!r} is configured")
        found.profile = given["profile"]
    mine = own_account(session)
    if mine is not None and given["account"] and given["account"] != mine:
        raise ValueError(f"account: {mine!r} may see only its own messages")
    found.account = mine or given["account"] or None
    if given["since"]:
        found.since = _time(given["since"], "since", now)
    if given["until"]:
        found.until = _time(given["until"], "until", now)
    if found.since is not None and found.until is not None and found.until < found.since:
        raise ValueError("until: earlier than since")
    if given["before"]:
        try:
            parse_position(given["before"])
        except ValueError:
            raise ValueError("before: not a position of this search's pages") from None
        found.before = given["before"]
    if given["below"]:
        try:
            found.below = Below.parse(given["below"], list(settings.profiles))
        except ValueError:
            raise ValueError("below: not a position of this search's pages") from None
    return found


def _days(newest: float, oldest: float) -> list[str]:
    """The UTC days (YYYYMMDD) from `newest`'s back to `oldest`'s, newest first."""
    first = datetime.fromtimestamp(newest, UTC).date()
    last = datetime.fromtimestamp(max(0.0, oldest), UTC).date()
    return [(first - timedelta(days=n)).strftime("%Y%m%d") for n in range((first - last).days + 1)]


async def recipient_messages(
    redis: Redis,
    ledger: Ledger,
    *,
    profiles: Sequence[str],
    to: str,
    since: float | None,
    until: float | None,
    below: Below | None,
    limit: int,
    keep: Callable[[dict[str, Any]], bool],
    now: float,
    retention: float,
    scan: int = INDEX_SCAN,
) -> tuple[list[dict[str, Any]], Below | None]:
    """Up to `limit` records of messages to `to` created in [`since`, `until`] (None:
    unbounded) and below the entry `below`, newest first, that `keep` keeps, from the
    profiles' recipient indexes (one per UTC day: from the newest day asked back to
    `retention` before `now`, `DAYS_A_TRIP` days a round trip, stopping once the page
    is full); and the entry the next page goes on below (None: no more). Reads at
    most `scan` index entries (a page may then be short and still go on)."""
    prefix = to.encode() + b"|"
    width = keys.RECIPIENT_STAMP_WIDTH
    low = b"[" + prefix + (keys.recipient_stamp(since).encode() if since is not None else b"")
    top = until if until is not None else now
    if below is not None:
        top = min(top, keys.recipient_stamp_time(below.stamp))
    days = _days(top, max(since or 0.0, now - retention))
    cursor = below  # the last entry read through

    def high(profile: str) -> bytes:
        """The range's top in `profile`'s sets: below `cursor`, else up to `until`."""
        if cursor is not None:
            # (an entry of the same time and id sorts below `cursor` only in a profile
            # named before its own)
            edge = b"[" if profile < cursor.profile else b"("
            return edge + prefix + f"{cursor.stamp}|{cursor.id}".encode()
        if until is not None:
            return b"[" + prefix + keys.recipient_stamp(until).encode() + b"|\xff"
        return b"[" + prefix + b"\xff"

    shown: list[dict[str, Any]] = []
    read = 0
    at = 0  # the first of `days` not read through
    while at < len(days):
        want = min(limit, scan - read)
        trip = days[at : at + DAYS_A_TRIP]
        async with redis.pipeline(transaction=False) as pipe:
            for day in trip:
                for p in profiles:
                    pipe.execute_command(
                        "ZRANGE", keys.recipient_index(p, day), high(p), low,
                        "BYLEX", "REV", "LIMIT", 0, want,
                    )  # fmt: skip
            replies: list[list[bytes]] = await pipe.execute()
        found = [
            Below(rest[:width], rest[width + 1 :], p)
            for p, members in zip(list(profiles) * len(trip), replies, strict=True)
            for rest in (as_text(m)[len(prefix) :] for m in members)
        ]
        # Newest first over every set read: the top `want` of them all is a prefix of
        # each set's range, so the next read goes on below the last entry taken.
        taken = sorted(found, reverse=True)[:want]
        records = await ledger.get_many([(e.profile, e.id) for e in taken]) if taken else []
        read += len(taken)
        for entry, record in zip(taken, records, strict=True):
            cursor = entry
            # (an entry whose record has expired has no record: passed over)
            if record is not None and keep(record):
                shown.append(record)
                if len(shown) == limit:
                    break
        # These days are read through when no set had more than it gave and every
        # entry was taken and gone through; the next days are read below `cursor`.
        if (
            all(len(m) < want for m in replies)
            and len(taken) == len(found)
            and (not taken or cursor == taken[-1])
        ):
            at += DAYS_A_TRIP
        if len(shown) >= limit or read >= scan:
            return shown, cursor if at < len(days) else None
    return shown, None


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _stamp(at: float | None) -> str:
    """A record's time, to the millisecond, UTC."""
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def message_href(job_id: str) -> str:
    """The message page of `job_id`."""
    return "/console/messages/" + quote(job_id, safe="")


def _row(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": record.get("id", ""),
        "href": message_href(str(record.get("id", ""))),
        "to": record.get("to", ""),
        "from": record.get("from", ""),
        "status": record.get("status", ""),
        "profile": record.get("profile", ""),
        "account": record.get("account", ""),
        "updated": _stamp(record.get("updated_at")),
    }


def _keeps(search: Search) -> Callable[[dict[str, Any]], bool]:
    """The test of a record by the filters the index or the log did not apply."""

    def keep(record: dict[str, Any]) -> bool:
        at = record.get("updated_at") or 0.0
        return (
            (search.status is None or record.get("status") == search.status)
            and (search.account is None or record.get("account") == search.account)
            and (search.sender is None or record.get("from") == search.sender)
            and (search.to is None or record.get("to") == search.to)
            and (search.until is None or search.to is not None or at <= search.until)
        )

    return keep


def _form(query: Mapping[str, str]) -> dict[str, str]:
    return {k: query.get(k, "") for k in FILTERS}


@needs("read")
async def search_page(request: web.Request) -> web.StreamResponse:
    """``GET /console/messages``: the search form and its results."""
    context = request.app[CONTEXT]
    session = request[SESSION]
    settings = context.settings
    now = datetime.now(UTC).timestamp()
    values: dict[str, Any] = {
        "session": session,
        "active": "messages",
        "form": _form(request.query),
        "statuses": STATUSES,
        "profiles": list(settings.profiles),
        "account_only": own_account(session),
        "rows": [],
        "next": None,
        "how": "",
        "error": None,
        "searched": False,
        "not_found": None,
    }
    try:
        search = parse_search(request.query, settings, session, now)
    except ValueError as exc:
        values["error"] = str(exc)
        return page("messages.html", status=400, **values)
    profiles = [search.profile] if search.profile else list(settings.profiles)
    if search.id:
        found = await context.ledger.find([search.id], profiles=profiles)
        record = found[0]
        if record is not None and (
            search.account is None or record.get("account") == search.account
        ):
            raise web.HTTPSeeOther(message_href(search.id))
        values["searched"] = True
        values["not_found"] = search.id
        return page("messages.html", status=404, **values)
    values["searched"] = True
    keep = _keeps(search)
    base = {k: v for k, v in values["form"].items() if v}
    if search.to is not None and settings.queue.recipient_index:
        rows, below = await recipient_messages(
            context.redis,
            context.ledger,
            profiles=profiles,
            to=search.to,
            since=search.since,
            until=search.until,
            below=search.below,
            limit=PAGE,
            keep=keep,
            now=now,
            retention=settings.queue.retention,
        )
        values["how"] = (
            f"Messages to {search.to} by the time they were created, newest first "
            "(the recipient index; a message created while [queue] recipient_index was "
            "off is not in it)."
        )
        if below is not None:
            values["next"] = "?" + urlencode({**base, "below": below.text()})
    else:
        since = search.since if search.since is not None else 0.0
        before = search.before or "+"
        if search.before is None and search.until is not None:
            # Below each profile's first event after `until` (event ids are times in ms).
            top = f"{int(search.until * 1000) + 1}-0"
            before = ",".join(f"{p}={top}" for p in profiles)
        log = await message_log(
            context.redis,
            context.ledger,
            profiles=list(settings.profiles),
            since=since,
            limit=PAGE,
            profile=search.profile,
            status=search.status,
            to=search.to,
            account=search.account,
            before=before,
            scan=LOG_SCAN,
            match=keep if search.sender is not None else None,
        )
        rows = log.records
        unindexed = search.to is not None  # ([queue] recipient_index = false)
        values["how"] = (
            "Messages by their latest change, newest first (the SMS log: each page reads "
            f"at most {LOG_SCAN:,} events"
            + (
                "; the recipient index is off ([queue] recipient_index = false), so "
                "narrow the search with since and until"
                if unindexed
                else "; a sender has no index, so narrow the search with since and until"
                if search.sender is not None
                else ""
            )
            + ")."
        )
        if log.next is not None:
            frozen = {"since": _iso(since)} if search.since is not None else {}
            values["next"] = "?" + urlencode({**base, **frozen, "before": log.next})
    values["rows"] = [_row(r) for r in rows]
    return page("messages.html", **values)


def _receipts(record: dict[str, Any]) -> list[dict[str, str]]:
    """The delivery reports a record holds: the final one (its step's stat and err)
    and each part's kept report (``dlr:<part>``, JSON [outcome, stat, err])."""
    out: list[dict[str, str]] = []
    for name in sorted(k for k in record if k.startswith("dlr:")):
        try:
            outcome, stat, err = json.loads(record[name])
        except (ValueError, TypeError):
            continue
        out.append({"part": name[4:], "outcome": str(outcome), "stat": str(stat), "err": str(err)})
    if "dlr_stat" in record:
        final = [s["status"] for s in record.get("history", [])][-1:] or [""]
        out.append({"part": "message", "outcome": final[0], "stat": record["dlr_stat"],
                    "err": record.get("dlr_err", "")})  # fmt: skip
    return out


def _shown(value: Any, name: str) -> str:
    if name in ("created_at", "updated_at") and isinstance(value, float):
        return _stamp(value)
    return str(value)


@needs("read")
async def message_page(request: web.Request) -> web.StreamResponse:
    """``GET /console/messages/<id>``: one message's record, text, timeline, receipts
    and clicks."""
    context = request.app[CONTEXT]
    session = request[SESSION]
    job_id = request.match_info["id"]
    record = (await context.ledger.find([job_id], profiles=list(context.settings.profiles)))[0]
    mine = own_account(session)
    if record is None or (mine is not None and record.get("account") != mine):
        # Another account's message is as unknown to this session as a missing one.
        return page(
            "error.html",
            status=404,
            session=session,
            title="No such message",
            message=f"No message {job_id!r} is stored (or its retention has passed).",
        )
    profile = str(record.get("profile", ""))
    # The callback URL may carry a token: not shown (as the API does not).
    record.pop("status_callback_url", None)
    configured = context.settings.profiles.get(profile)
    stores_text = configured.store_text if configured is not None else True
    clicks = (await message_clicks(context.redis, profile, [job_id]))[0]
    summary = [(n, _shown(record[n], n)) for n in SUMMARY if record.get(n) not in (None, "")]
    more = [
        (n, _shown(v, n))
        for n, v in sorted(record.items())
        if n not in SUMMARY and n not in HIDDEN and not n.startswith("dlr") and v not in (None, "")
    ]
    timeline = [
        {
            "status": step["status"],
            "at": _stamp(step["at"]),
            "connector": step.get("connector", ""),
            "note": step.get("note", ""),
        }
        for step in record.get("history", [])
    ]
    meta = record.get("meta")
    return page(
        "message.html",
        session=session,
        active="messages",
        id=job_id,
        record=record,
        summary=summary,
        more=more,
        text=record.get("text") if stores_text else None,
        stores_text=stores_text,
        media=record.get("media") or [],
        mms=record.get("mms", ""),
        meta=json.dumps(meta, ensure_ascii=False, indent=1) if meta else "",
        timeline=timeline,
        receipts=_receipts(record),
        clicks=clicks,
        search_href="/console/messages?" + urlencode({"to": record.get("to", "")}),
    )


def add_routes(app: web.Application) -> None:
    """Register the message search and the message page."""
    app.router.add_get("/console/messages", search_page)
    app.router.add_get("/console/messages/{id}", message_page)
