"""The console's messages over plain HTTP, against the real application and Redis,
with messages sent by the real daemon to a real HTTP provider: search by id,
recipient, sender, status, profile, account and time; a message's page with its
record, text, timeline, delivery report and clicks; ``store_text = false`` hides the
text; an account's session sees only its own messages; no session is sent to sign in.
And the recipient index itself: one member per message in its profile's day set, in
the profile's slot, expiring the retention after the day; none with ``[queue]
recipient_index = false`` (the search then reads the SMS log); its pages over days and
profiles, with no repeat and no gap."""

from __future__ import annotations

import html
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from redis.asyncio import Redis

from router import Client
from router.config import Settings
from router.console.messages import Below, recipient_messages
from router.links import Link, Links
from router.policy.accounts import Caller
from router.policy.jobs import encode_job
from router.store import keys
from router.store.connections import as_text
from router.store.ledger import Finished, Ledger, Report, Sending

from ..conftest import Provider, RunningDaemon, wait_for
from .site import ACCOUNT, ADMIN, console_config, console_site, cookie, settings_of, sign_in

TO = "+4915100000001"
OTHER = "+4915100000002"


@pytest.fixture
def settings(redis_url: str, provider: Provider, tmp_path: Path) -> Settings:
    data = console_config(redis_url, provider.url, tmp_path)
    data["profiles"]["bulk"]["store_text"] = False
    return settings_of(data, tmp_path)


@pytest.fixture
async def http(settings: Settings, redis: Redis) -> AsyncIterator[aiohttp.ClientSession]:
    async with console_site(settings, redis) as client:
        yield client


async def sent(
    redis: Redis,
    settings: Settings,
    run_daemon: Callable[[Settings], RunningDaemon],
    jobs: list[dict[str, Any]],
) -> None:
    """`jobs` through a door (`Client.send_many`), then sent by the daemon to the
    provider (each recorded `sent`)."""
    client = Client.from_settings(redis, settings)
    await client.send_many(jobs)
    run_daemon(settings)
    ledger = Ledger(redis, retention=60, events_maxlen=100)
    ids = [j["id"] for j in jobs]

    async def all_sent() -> bool:
        found = await ledger.find(ids, profiles=list(settings.profiles))
        return all(r is not None and r["status"] == "sent" for r in found)

    await wait_for(all_sent, 15, "the messages recorded sent")


async def indexed(redis: Redis, profile: str) -> dict[str, list[tuple[str, str, str]]]:
    """Every recipient index day set of `profile` by its day: its members as (to, job
    id, time stamp), in the set's order, each checked to score 0."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    async for name in redis.scan_iter(match=keys.recipient_index(profile, "*")):
        rows = []
        pairs: Any = await redis.zrange(name, 0, -1, withscores=True)
        for member, score in pairs:
            assert score == 0
            parts = as_text(member).split("|", 2)
            rows.append((parts[0], parts[2], parts[1]))
        out[as_text(name).rsplit(":", 1)[1]] = rows
    return out


def ids_listed(page: str) -> list[str]:
    """The message ids of a results table, in order."""
    return [
        html.unescape(m) for m in re.findall(r'<a href="/console/messages/[^"]+">([^<]+)</a>', page)
    ]


async def get(
    http: aiohttp.ClientSession, session: str, path: str, **query: str
) -> tuple[int, str]:
    async with http.get(path, params=query, headers=cookie(session), allow_redirects=False) as r:
        text = await r.text()
        return r.status, r.headers.get("Location", "") or text


async def test_search_by_every_filter_and_the_message_page(
    http: aiohttp.ClientSession,
    redis: Redis,
    settings: Settings,
    provider: Provider,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    jobs = [
        {"id": "m-1", "to": TO, "text": "first to one"},
        {"id": "m-2", "to": OTHER, "text": "to the other"},
        {"id": "m-3", "to": TO, "text": "second to one"},
        {"id": "b-1", "to": TO, "text": "a secret", "profile": "bulk"},
    ]
    await sent(redis, settings, run_daemon, jobs)
    session = await sign_in(http, ADMIN)
    # The recipient index holds one entry per message in its profile's day set (the day
    # of its record's creation), expiring the retention after that day.
    for profile, ids in (("alerts", ["m-1", "m-2", "m-3"]), ("bulk", ["b-1"])):
        days = await indexed(redis, profile)
        entries = sorted(e for rows in days.values() for e in rows)
        records = await Ledger(redis, retention=60, events_maxlen=100).get_many(
            [(profile, i) for i in ids]
        )
        assert entries == sorted(
            (r["to"], r["id"], keys.recipient_stamp(r["created_at"]))
            for r in records
            if r is not None
        )
        for day, rows in days.items():
            days_of = {keys.recipient_day(keys.recipient_stamp_time(at)) for _t, _i, at in rows}
            assert days_of == {day}
            ttl = await redis.ttl(keys.recipient_index(profile, day))
            assert settings.queue.retention < ttl <= settings.queue.retention + 86_400

    status, page = await get(http, session, "/console/messages")
    # Without filters: the newest messages (the SMS log).
    assert status == 200 and 'name="to"' in page
    assert sorted(ids_listed(page)) == ["b-1", "m-1", "m-2", "m-3"]
    # By recipient (given with spaces: normalised), newest first, over both profiles.
    status, page = await get(http, session, "/console/messages", to="+49 151 00000001")
    assert status == 200, page
    assert ids_listed(page) == ["b-1", "m-3", "m-1"]
    assert "recipient index" in page
    _, page = await get(http, session, "/console/messages", to=TO, profile="alerts")
    assert ids_listed(page) == ["m-3", "m-1"]
    # By id: straight to its page.
    status, where = await get(http, session, "/console/messages", id="m-2")
    assert (status, where) == (303, "/console/messages/m-2")
    status, page = await get(http, session, "/console/messages", id="nope")
    assert status == 404 and "No message nope" in page
    # By sender, status, profile: the SMS log.
    sender = await Ledger(redis, retention=60, events_maxlen=100).get("m-2", profile="alerts")
    assert sender is not None
    _, page = await get(http, session, "/console/messages", **{"from": sender["from"]})
    assert "m-2" in ids_listed(page) and "b-1" not in ids_listed(page)
    assert "narrow the search with since and until" in page
    _, page = await get(http, session, "/console/messages", status="sent", profile="bulk")
    assert ids_listed(page) == ["b-1"]
    _, page = await get(http, session, "/console/messages", status="delivered")
    assert ids_listed(page) == []
    # By time: nothing before an hour ago; everything in the last hour.
    _, page = await get(http, session, "/console/messages", until="1h")
    assert ids_listed(page) == []
    _, page = await get(http, session, "/console/messages", since="1h", profile="alerts")
    assert sorted(ids_listed(page)) == ["m-1", "m-2", "m-3"]
    _, page = await get(http, session, "/console/messages", to=TO, until="1h")
    assert ids_listed(page) == []
    # Bad input: a clear error naming the field.
    for query, field in (
        ({"to": "12ab"}, "to:"),
        ({"status": "lost"}, "status:"),
        ({"profile": "nope"}, "profile:"),
        ({"since": "yesterday"}, "since:"),
    ):
        status, page = await get(http, session, "/console/messages", **query)
        assert status == 400 and field in html.unescape(page), (query, page)

    # A delivery report and a click, through the router's own code paths.
    ledger = Ledger(redis, retention=60, events_maxlen=100)
    record = await ledger.get("m-3", profile="alerts")
    assert record is not None
    pmid = record["provider_message_id"]
    [result] = await ledger.reports(
        "alerts", [Report("delivered", "DELIVRD", "000", [pmid])], keep_for=60
    )
    assert result.result.ok
    await Links(redis, profiles=["alerts"]).click(Link("https://x.example/a", "m-3", "alerts"))
    status, page = await get(http, session, "/console/messages/m-3")
    assert status == 200, page
    timeline = re.search(r'<table id="timeline">(.*?)</table>', page, re.S)
    assert timeline is not None
    steps = re.findall(r'class="state state-(\w+)"', timeline.group(1))
    assert steps == ["queued", "sending", "sent", "delivered"]
    assert "second to one" in page and pmid in page
    receipts = re.search(r'<table id="receipts">(.*?)</table>', page, re.S)
    assert receipts is not None and "DELIVRD" in receipts.group(1)
    assert re.search(r'<dd id="clicks">1</dd>', page)
    # store_text = false: the text is not shown (nor stored).
    _, page = await get(http, session, "/console/messages/b-1")
    assert "a secret" not in page and "store_text = false" in page
    status, page = await get(http, session, "/console/messages/nope")
    assert status == 404


async def test_paging_by_recipient_and_through_the_log(
    http: aiohttp.ClientSession, redis: Redis, settings: Settings
) -> None:
    # 120 messages to one recipient, queued (no daemon): three pages of 50, 50, 20.
    client = Client.from_settings(redis, settings)
    for start in (0, 60):
        await client.send_many(
            [{"id": f"p-{i:03d}", "to": TO, "text": "x"} for i in range(start, start + 60)]
        )
    session = await sign_in(http, ADMIN)
    for query in ({"to": TO}, {"status": "queued"}):
        seen: list[str] = []
        path, params = "/console/messages", dict(query)
        for _ in range(5):
            _, page = await get(http, session, path, **params)
            seen += ids_listed(page)
            more = re.search(r'<a href="\?([^"]+)" rel="next">', page)
            if more is None:
                break
            params = dict(parse_qsl(html.unescape(more.group(1))))
        assert sorted(seen) == [f"p-{i:03d}" for i in range(120)], query
        assert len(seen) == len(set(seen))


async def test_an_account_sees_only_its_own_messages(
    http: aiohttp.ClientSession, redis: Redis, settings: Settings
) -> None:
    client = Client.from_settings(redis, settings)
    shop = Caller("shop", settings.accounts["shop"])
    await client.send_many([{"id": "own-1", "to": TO, "text": "mine"}], caller=shop)
    await client.send_many([{"id": "else-1", "to": TO, "text": "not mine"}])
    session = await sign_in(http, ACCOUNT)
    _, page = await get(http, session, "/console/messages", to=TO)
    assert ids_listed(page) == ["own-1"]
    _, page = await get(http, session, "/console/messages", status="queued")
    assert ids_listed(page) == ["own-1"]
    status, _ = await get(http, session, "/console/messages/else-1")
    assert status == 404
    status, _ = await get(http, session, "/console/messages", id="else-1")
    assert status == 404
    status, page = await get(http, session, "/console/messages/own-1")
    assert status == 200 and "mine" in page
    status, page = await get(http, session, "/console/messages", account="other")
    assert status == 400 and "account:" in page
    # The admin sees both.
    admin = await sign_in(http, ADMIN)
    _, page = await get(http, admin, "/console/messages", to=TO)
    assert sorted(ids_listed(page)) == ["else-1", "own-1"]


async def test_no_session_is_sent_to_sign_in(http: aiohttp.ClientSession) -> None:
    for path in ("/console/messages?to=%2B4915100000001", "/console/messages/m-1"):
        async with http.get(path, allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"].startswith("/console/login?next=")


async def test_the_index_of_a_plain_xadd_job(
    redis: Redis,
    settings: Settings,
    provider: Provider,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    # A plain XADD job (no record until sending): sending.lua indexes it, once.
    wire = {"id": "plain-1", "to": TO, "text": "from a producer in any language"}
    await redis.xadd(keys.queue("alerts"), {"job": encode_job(wire)})
    run_daemon(settings)
    ledger = Ledger(redis, retention=60, events_maxlen=100)

    async def sent() -> bool:
        record = await ledger.get("plain-1", profile="alerts")
        return record is not None and record["status"] == "sent"

    await wait_for(sent, 15, "the plain job recorded sent")
    record = await ledger.get("plain-1", profile="alerts")
    assert record is not None
    [(day, rows)] = (await indexed(redis, "alerts")).items()
    assert rows == [(TO, "plain-1", keys.recipient_stamp(record["created_at"]))]
    assert day == keys.recipient_day(float(record["created_at"]))


async def test_no_index_when_switched_off_and_the_search_reads_the_log(
    redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    """``[queue] recipient_index = false``: the ledger writes no index (the doors'
    enqueue and a plain job's `sending`), and the console's search by recipient reads
    the SMS log, saying so."""
    off = settings.model_copy(
        update={"queue": settings.queue.model_copy(update={"recipient_index": False})}
    )
    client = Client.from_settings(redis, off)
    client.ledger.recipient_index = False  # (the daemon sets it from [queue])
    await client.send_many([{"id": "off-1", "to": TO, "text": "x"}])
    ledger = Ledger(redis, retention=60, events_maxlen=100, recipient_index=False)
    item = Sending(id="off-2", owner="1-1", replay="", sender="+16501112345", to=TO,
                   text="y", meta="", url="", sticky_key="", sticky_ttl=0)  # fmt: skip
    [began] = await ledger.sending("alerts", [item])
    assert began.ok and began.previous == ""
    assert await indexed(redis, "alerts") == {}
    # Switched on again (a reload): the next records are indexed.
    ledger.recipient_index = True
    [began] = await ledger.sending("alerts", [item._replace(id="on-1")])
    assert [e[:2] for rows in (await indexed(redis, "alerts")).values() for e in rows] == [
        (TO, "on-1")
    ]
    async with console_site(off, redis) as http:
        session = await sign_in(http, ADMIN)
        status, page = await get(http, session, "/console/messages", to=TO)
        assert status == 200, page
        assert ids_listed(page) == ["on-1", "off-2", "off-1"]
        assert "recipient index is off" in html.unescape(page)
        assert "[queue] recipient_index = false" in html.unescape(page)


async def test_recipient_pages_over_days_and_profiles(redis: Redis, settings: Settings) -> None:
    """Entries over four days (two of them more than `DAYS_A_TRIP` back), in two
    profiles, with one time and id in both: pages of 3, a filter dropping some, go
    newest first with no repeat and no gap; `since` and `until` bound them."""
    client = Client.from_settings(redis, settings)
    await client.send_many([{"id": f"d-{i}", "to": TO, "text": "x"} for i in range(10)])
    await client.send_many(
        [{"id": f"d-{i}", "to": TO, "text": "x", "profile": "bulk"} for i in range(4)]
    )
    async for name in redis.scan_iter(match="sms:{*}:to:*"):
        await redis.delete(name)  # (replaced by entries at chosen times)
    now = time.time()
    ago = [0, 50, 3_600, 86_400, 86_400 * 1.5, 86_400 * 3, 86_400 * 10, 86_400 * 10.2, 5, 9]
    entries: list[tuple[float, str, str]] = [(now - ago[i], f"d-{i}", "alerts") for i in range(10)]
    entries += [(now - ago[i], f"d-{i}", "bulk") for i in range(3)]  # the same times
    entries.append((now - 86_400 * 2, "d-3", "bulk"))
    entries.append((now - 10, "gone", "alerts"))  # its record expired: passed over
    for at, job, profile in entries:
        stamp = keys.recipient_stamp(f"{at:.6f}")
        index = keys.recipient_index(profile, keys.recipient_day(float(f"{at:.6f}")))
        await redis.zadd(index, {keys.recipient_member(TO, stamp, job): 0})
        await redis.zadd(index, {keys.recipient_member(OTHER, stamp, job): 0})  # not shown
    ledger = Ledger(redis, retention=60, events_maxlen=100)

    def order(rows: list[tuple[float, str, str]]) -> list[tuple[str, str]]:
        ranked = sorted(
            ((keys.recipient_stamp(f"{at:.6f}"), job, p) for at, job, p in rows), reverse=True
        )
        return [(p, job) for _s, job, p in ranked if job != "gone"]

    async def pages(
        keep: Callable[[dict[str, Any]], bool], since: float | None, until: float | None
    ) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        below: Below | None = None
        for _ in range(20):
            rows, below = await recipient_messages(
                redis, ledger, profiles=["alerts", "bulk"], to=TO, since=since, until=until,
                below=below, limit=3, keep=keep, now=now, retention=30 * 86_400,
            )  # fmt: skip
            assert len(rows) <= 3
            seen += [(r["profile"], r["id"]) for r in rows]
            if below is None:
                return seen
            assert Below.parse(below.text(), ["alerts", "bulk"]) == below
        raise AssertionError("no last page")

    everything = order(entries)
    assert len(everything) == 14
    assert await pages(lambda r: True, None, None) == everything
    odd = [e for e in everything if e[1] not in ("d-1", "d-3", "d-5")]
    assert await pages(lambda r: r["id"] not in ("d-1", "d-3", "d-5"), None, None) == odd
    window = order([e for e in entries if now - 86_400 * 2.5 <= e[0] <= now - 30])
    assert await pages(lambda r: True, now - 86_400 * 2.5, now - 30) == window
    # Past the retention: not read.
    recent = order([e for e in entries if e[0] >= now - 86_400 * 9])
    rows, below = await recipient_messages(
        redis, ledger, profiles=["alerts", "bulk"], to=TO, since=None, until=None, below=None,
        limit=50, keep=lambda r: True, now=now, retention=9 * 86_400,
    )  # fmt: skip
    assert [(r["profile"], r["id"]) for r in rows] == recent and below is None


async def test_a_long_message_shows_its_parts_reports_and_hides_its_callback_url(
    http: aiohttp.ClientSession, redis: Redis, settings: Settings
) -> None:
    url = "https://hooks.example.com/status?token=s3cr3t-t0k3n"
    ledger = Ledger(redis, retention=60, events_maxlen=100)
    client = Client.from_settings(redis, settings)
    await client.send_many(
        [{"id": "lm-1", "to": TO, "text": "y" * 200, "status_callback_url": url}]
    )
    owner = as_text(await redis.hget(keys.record("alerts", "lm-1"), "owner") or b"")
    item = Sending(id="lm-1", owner=owner, replay="", sender="+16501112345", to=TO,
                   text="y" * 200, meta="", url=url, sticky_key="", sticky_ttl=0)  # fmt: skip
    [began] = await ledger.sending("alerts", [item])
    done = Finished(id="lm-1", entry=owner, step=began.step + 1, status="sent", note="",
                    url=url, to=TO, sender="+16501112345", meta="", segments=2,
                    error_code="", error_raw="", error="", part_ids=["p-a", "p-b"], forms=[],
                    connector="smsc-a", price=0.0125)  # fmt: skip
    await ledger.finish("alerts", keys.queue("alerts"), [done])
    await ledger.reports("alerts", [Report("delivered", "DELIVRD", "000", ["p-a"])], keep_for=60)
    session = await sign_in(http, ADMIN)
    status, page = await get(http, session, "/console/messages/lm-1")
    assert status == 200, page
    receipts = re.search(r'<table id="receipts">(.*?)</table>', page, re.S)
    assert receipts is not None
    assert re.search(r"<td>p-a</td>.*?state-delivered.*?DELIVRD", receipts.group(1), re.S)
    assert "state state-sent" in page  # one part of two: still `sent`
    assert "s3cr3t" not in page
    record = re.search(r'<dl id="record">(.*?)</dl>', page, re.S)
    assert record is not None
    for shown in ("segments</dt><dd>2", "price</dt><dd>0.0125", "connector</dt><dd>smsc-a"):
        assert shown in record.group(1), shown
