"""The console's dead letters over plain HTTP, against the daemon's real HTTP
application on a real Redis (and the real daemon sending to a real HTTP provider when a
replay must be sent): the list shows reasons and jobs, a page at a time; a ``read``
session cannot replay or drop, nor can a change without the CSRF token; a replayed
dead letter is sent; "all" is confirmed with a count and leaves what arrived after."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from redis.asyncio import Redis

from router.client import Client
from router.config import Settings
from router.console.dead_letters import PAGE_SIZE, TEXT_SHOWN
from router.store import keys
from router.store.connections import as_text
from router.store.queue import WorkQueue

from ..conftest import Provider, RunningDaemon, wait_for
from .site import (
    READER,
    admin_session,
    console_config,
    each_on_a_new_connection,
    get,
    outcome,
    post,
    refused_to_readers_and_without_csrf,
    settings_of,
    sign_in,
    status_of,
    workers_base,
)
from .site import done as done_at

UK = "+447911123456"
PAGE = "/console/dead-letters"


@pytest.fixture
def data(redis_url: str, provider: Provider, tmp_path: Path) -> dict[str, Any]:
    found = console_config(redis_url, provider.url, tmp_path)
    # A job taken by a consumer that dies is dead-lettered at its second delivery.
    found["queue"].update(claim_idle=0.2, max_deliveries=1)
    return found


async def dead_letter(redis: Redis, profile: str, reason: str, job: Any = None) -> str:
    """XADD a dead letter as the worker writes one; a dict `job` is packed as a job."""
    fields: dict[Any, Any] = {"reason": reason, "at": "1700000000.5"}
    if isinstance(job, dict):
        fields["job"] = msgpack.packb(job)
    elif job is not None:
        fields["job"] = job
    return as_text(await redis.xadd(keys.dead_letters(profile), fields))


async def done(http: aiohttp.ClientSession, session: str, path: str, form: dict[str, str]) -> str:
    """POST a change that succeeds; the dead letters it shows then."""
    return await done_at(http, session, path, form, PAGE)


def rows(page: str) -> list[str]:
    """The entry ids the page lists, in order."""
    return re.findall(r'<tr data-entry="([^"]+)">', page)


async def test_the_list_shows_reasons_and_jobs_a_page_at_a_time(
    http: aiohttp.ClientSession, redis: Redis
) -> None:
    long_text = "x" * (TEXT_SHOWN + 20)
    first = await dead_letter(
        redis, "bulk", "job.sender: <not> a sender", {"id": "j-1", "to": UK, "text": long_text}
    )
    await dead_letter(redis, "bulk", "job: not msgpack", b"\xc1")  # a byte msgpack never uses
    await dead_letter(redis, "bulk", "job: missing")
    reader = await sign_in(http, READER)
    # The first profile with dead letters is shown when none is asked for.
    status, page = await get(http, reader, PAGE)
    assert status == 200
    assert 'data-profile="alerts" data-count="0"' in page
    assert 'data-profile="bulk" data-count="3"' in page
    assert rows(page)[0] == first and len(rows(page)) == 3
    assert "job.sender: &lt;not&gt; a sender" in page  # escaped
    assert "j-1" in page and UK in page
    assert "x" * (TEXT_SHOWN - 1) + "…" in page and long_text not in page
    assert "(a job that does not decode)" in page and "(no job)" in page
    assert "2023-11-14 22:13:20 UTC" in page  # its "at"
    # A read session sees no buttons it could not use.
    assert "/console/dead-letters/replay" not in page and "Replay all" not in page

    status, page = await get(http, reader, f"{PAGE}?profile=alerts")
    assert status == 200 and "No dead letters" in page and rows(page) == []

    # Pages of PAGE_SIZE, oldest first, the next one after the last shown.
    made = [await dead_letter(redis, "alerts", f"reason {i}") for i in range(PAGE_SIZE + 5)]
    status, page = await get(http, reader, f"{PAGE}?profile=alerts")
    assert rows(page) == made[:PAGE_SIZE]
    following = re.search(r'href="([^"]+)" rel="next"', page)
    assert following is not None
    status, page = await get(http, reader, following.group(1).replace("&amp;", "&"))
    assert status == 200 and rows(page) == made[PAGE_SIZE:]
    assert 'rel="next"' not in page

    for wrong, field in [
        ("?profile=nope", "profile: unknown profile &#39;nope&#39;"),
        ("?profile=alerts&after=yesterday", "after: &#39;yesterday&#39; is not a dead-letter"),
    ]:
        status, page = await get(http, reader, PAGE + wrong)
        assert status == 400 and field in page, page


async def test_a_read_session_or_a_change_without_csrf_changes_nothing(
    http: aiohttp.ClientSession, redis: Redis
) -> None:
    entry = await dead_letter(redis, "alerts", "job.to: required", {"text": "hi"})
    changes = {
        f"{PAGE}/replay": {"profile": "alerts", "entry": entry},
        f"{PAGE}/drop": {"profile": "alerts", "entry": entry},
        f"{PAGE}/replay-all": {"profile": "alerts", "upto": entry},
        f"{PAGE}/drop-all": {"profile": "alerts", "upto": entry},
    }
    await refused_to_readers_and_without_csrf(http, changes)
    # The confirmation is an admin's page too.
    reader = await sign_in(http, READER)
    status, _ = await get(http, reader, f"{PAGE}/all?profile=alerts&action=drop")
    assert status == 403
    assert await redis.xlen(keys.dead_letters("alerts")) == 1
    assert await redis.xlen(keys.queue("alerts")) == 0


async def _two_real_dead_letters(redis: Redis, settings: Settings) -> list[str]:
    """Two jobs a consumer took and died with: the daemon dead-letters them at their
    second delivery (queue.max_deliveries = 1). Their job ids."""
    client = Client.from_settings(redis, settings)
    ids = [await client.send(UK, "again", id="dead-1"), await client.send(UK, "gone", id="dead-2")]
    crashed = WorkQueue(redis, "alerts", "crashed")
    await crashed.ensure_group()
    assert len(await crashed.read_new(2, 100)) == 2
    await asyncio.sleep(0.3)
    return ids


async def test_replay_one_is_sent_and_all_is_confirmed_first(
    http: aiohttp.ClientSession,
    redis: Redis,
    settings: Settings,
    provider: Provider,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    first, second = await _two_real_dead_letters(redis, settings)
    run_daemon(settings)
    await wait_for(lambda: _len_is(redis, keys.dead_letters("alerts"), 2), 20, "two dead letters")
    admin, csrf = await admin_session(http)
    status, page = await get(http, admin, f"{PAGE}?profile=alerts")
    assert status == 200 and page.count("delivered 2 times") == 2
    entries = rows(page)
    assert "dead-1" in page and "dead-2" in page and len(entries) == 2
    assert await status_of(redis, first) == "rejected"

    # Replay the first: back on the work stream, sent to the provider, gone from here.
    shown = await done(
        http, admin, f"{PAGE}/replay", {"csrf": csrf, "profile": "alerts", "entry": entries[0]}
    )
    assert outcome(shown) == "Replayed 1: back on profile alerts&#39;s work stream."
    assert rows(shown) == entries[1:]
    await wait_for(lambda: _is_sent(redis, first), 20, "the replayed job sent")
    assert provider.refs == {first: 1}
    # The same entry again: already gone, nothing sent twice.
    shown = await done(
        http, admin, f"{PAGE}/replay", {"csrf": csrf, "profile": "alerts", "entry": entries[0]}
    )
    assert (
        outcome(shown)
        == f"Dead letter {entries[0]} is already gone (replayed or dropped meanwhile)."
    )
    # A dead letter without a job cannot be replayed: it stays, and the page says so.
    jobless = await dead_letter(redis, "alerts", "job: missing")
    shown = await done(
        http, admin, f"{PAGE}/replay", {"csrf": csrf, "profile": "alerts", "entry": jobless}
    )
    assert "carries no job" in outcome(shown) and jobless in rows(shown)

    # "Drop all" says how many first; a dead letter that comes after is left.
    status, page = await get(http, admin, f"{PAGE}/all?profile=alerts&action=drop")
    assert status == 200 and "2 dead letter(s) are deleted for good" in page
    upto = re.search(r'name="upto" value="([^"]+)"', page)
    assert upto is not None and upto.group(1) == jobless
    later = await dead_letter(
        redis, "alerts", "came later", {"id": "later", "to": UK, "text": "hi"}
    )
    shown = await done(
        http, admin, f"{PAGE}/drop-all", {"csrf": csrf, "profile": "alerts", "upto": upto.group(1)}
    )
    assert outcome(shown) == "Dropped 2 for good."
    assert rows(shown) == [later]
    assert await status_of(redis, second) == "rejected"  # dropped, never sent
    assert provider.refs == {first: 1}

    # Replay all: the one left goes back onto the work stream.
    status, page = await get(http, admin, f"{PAGE}/all?profile=alerts&action=replay")
    assert status == 200 and "1 dead letter(s) go back" in page
    shown = await done(
        http, admin, f"{PAGE}/replay-all", {"csrf": csrf, "profile": "alerts", "upto": later}
    )
    assert outcome(shown).startswith("Replayed 1:") and rows(shown) == []
    await wait_for(lambda: _is_sent(redis, "later"), 20, "the job replayed with the rest sent")
    status, page = await get(http, admin, f"{PAGE}/all?profile=alerts&action=replay")
    assert status == 200 and "has no dead letters" in page and "upto" not in page

    # Wrong fields are named; nothing changes.
    await dead_letter(redis, "bulk", "stays")
    for path, form, said in [
        ("/replay", {"profile": "nope", "entry": "1-0"}, "profile: unknown profile"),
        ("/drop", {"profile": "bulk"}, "entry: required"),
        ("/drop", {"profile": "bulk", "entry": "last"}, "entry: &#39;last&#39; is not"),
        ("/drop-all", {"profile": "bulk", "upto": ""}, "upto: required"),
    ]:
        status, _, body = await post(http, admin, PAGE + path, {"csrf": csrf, **form})
        assert status == 400 and said in body, (path, form, body)
    # A link cannot make the page say what was not done.
    status, page = await get(http, admin, f"{PAGE}?profile=bulk&done=gone&entry=Call+us")
    assert status == 200 and "data-outcome" not in page
    status, _ = await get(http, admin, f"{PAGE}/all?profile=bulk&action=burn")
    assert status == 400
    assert await redis.xlen(keys.dead_letters("bulk")) == 1


async def _len_is(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.xlen(key)) == n


async def _is_sent(redis: Redis, job_id: str) -> bool:
    return await status_of(redis, job_id) in {"sent", "delivered"}


async def test_api_workers_serve_both_pages(
    redis: Redis,
    data: dict[str, Any],
    tmp_path: Path,
    provider: Provider,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    """With ``[api] workers = 2`` each page is a worker process's (they read Redis and
    the configuration only): a dead letter listed and replayed, a number opted out."""
    data["api"]["workers"] = 2
    base = await workers_base(run_daemon(settings_of(data, tmp_path)).daemon)
    entry = await dead_letter(
        redis, "alerts", "fixed since", {"id": "w-1", "to": UK, "text": "from a worker"}
    )
    async with each_on_a_new_connection(base) as http:
        admin, csrf = await admin_session(http)
        for _ in range(6):
            status, page = await get(http, admin, f"{PAGE}?profile=alerts")
            assert status == 200 and rows(page) == [entry] and "fixed since" in page
            status, page = await get(http, admin, "/console/opt-outs?profile=alerts")
            assert status == 200 and "Opted out" in page
        shown = await done(
            http, admin, f"{PAGE}/replay", {"csrf": csrf, "profile": "alerts", "entry": entry}
        )
        assert outcome(shown).startswith("Replayed 1")
        await wait_for(lambda: _is_sent(redis, "w-1"), 20, "the replayed job sent")
        form = {"csrf": csrf, "profile": "alerts", "number": UK}
        status, _, _ = await post(http, admin, "/console/opt-outs/add", form)
        assert status == 303
    assert await redis.sismember(keys.opt_outs("alerts"), UK)
