"""The console's opt-outs and lists over plain HTTP, against the daemon's real HTTP
application on a real Redis (and the real daemon sending to a real HTTP provider): a
number opted out on the page is rejected ``opted_out`` and sent again once opted back
in; the block and allow lists change as the CLI changes them; a search says what a send
would meet; a ``read`` session or a change without the CSRF token changes nothing; a
bad number is refused naming the field."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from router.client import Client
from router.config import Settings
from router.console.lists import PAGE_SIZE
from router.policy import audience
from router.store import keys
from router.store.ledger import Ledger

from ..conftest import Provider, RunningDaemon, wait_for
from .site import (
    READER,
    admin_session,
    console_config,
    done,
    error,
    get,
    outcome,
    post,
    refused_to_readers_and_without_csrf,
    sign_in,
    status_of,
)

UK = "+447911123456"
PAGE = "/console/opt-outs"


@pytest.fixture
def data(redis_url: str, provider: Provider, tmp_path: Path) -> dict[str, Any]:
    found = console_config(redis_url, provider.url, tmp_path)
    found["profiles"]["alerts"]["blocklist"] = ["+1900"]
    return found


async def changed(
    http: aiohttp.ClientSession, session: str, path: str, form: dict[str, str]
) -> str:
    """POST a change that succeeds (303 back to the page); what the page says it did."""
    return outcome(await done(http, session, path, form, PAGE))


async def _judged(redis: Redis, job_id: str) -> dict[str, Any]:
    """The record of a message once it is sent or rejected (20 s at most)."""

    async def settled() -> bool:
        return await status_of(redis, job_id) in {"sent", "delivered", "rejected"}

    await wait_for(settled, 20, "the send settled")
    record = await Ledger(redis, retention=60, events_maxlen=10).get(job_id)
    assert record is not None
    return record


async def test_an_opt_out_made_here_is_rejected_until_opted_back_in(
    http: aiohttp.ClientSession,
    redis: Redis,
    settings: Settings,
    provider: Provider,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    run_daemon(settings)
    client = Client.from_settings(redis, settings)
    admin, csrf = await admin_session(http)
    said = await changed(
        http,
        admin,
        f"{PAGE}/add",
        {"csrf": csrf, "profile": "alerts", "number": "+44 7911 123-456"},
    )
    assert said == f"{UK} opted out of profile alerts."  # normalised to E.164
    assert await redis.sismember(keys.opt_outs("alerts"), UK)
    said = await changed(
        http, admin, f"{PAGE}/add", {"csrf": csrf, "profile": "alerts", "number": UK}
    )
    assert said == f"{UK} was already opted out of profile alerts."

    record = await _judged(redis, await client.send(UK, "hello"))
    assert (record["status"], record["error_code"]) == ("rejected", "opted_out")
    # The search says so, with the reason the worker gives.
    status, page = await get(http, admin, f"{PAGE}?profile=alerts&number=%2B447911123456")
    assert status == 200 and f'data-found="{UK}" data-opted-out="true"' in page
    assert f"rejected opted_out</span> {UK} opted out of profile alerts" in page
    assert f'<tr data-opted-out="{UK}">' in page

    said = await changed(
        http, admin, f"{PAGE}/remove", {"csrf": csrf, "profile": "alerts", "number": UK}
    )
    assert said == f"{UK} opted back in to profile alerts."
    back = await client.send(UK, "welcome back")
    assert (await _judged(redis, back))["status"] == "sent"
    assert provider.refs == {back: 1}
    status, page = await get(http, admin, f"{PAGE}?profile=alerts&number=%2B447911123456")
    assert 'data-opted-out="false"' in page and "may receive" in page
    said = await changed(
        http, admin, f"{PAGE}/remove", {"csrf": csrf, "profile": "alerts", "number": UK}
    )
    assert said == f"{UK} was not opted out of profile alerts."


async def test_block_and_allow_lists(http: aiohttp.ClientSession, redis: Redis) -> None:
    admin, csrf = await admin_session(http)
    status, page = await get(http, admin, PAGE)  # the global profile, alerts
    assert status == 200 and '<tr data-block="+1900"><td>+1900</td><td>router.toml</td>' in page
    form = {"csrf": csrf, "profile": "alerts", "list": "block"}
    said = await changed(http, admin, "/console/lists/add", {**form, "entry": "+4479"})
    assert said == "+4479 added to profile alerts&#39;s blocklist."
    assert await audience.show_lists(redis, "alerts") == {"block": ["+4479"], "allow": []}
    status, page = await get(http, admin, f"{PAGE}?number=%2B447911123456")
    assert f"rejected blocked</span> {UK} is on profile alerts&#39;s blocklist (+4479)" in page
    said = await changed(http, admin, "/console/lists/remove", {**form, "entry": "+4479"})
    assert said == "+4479 removed from profile alerts&#39;s blocklist."
    said = await changed(http, admin, "/console/lists/remove", {**form, "entry": "+1900"})
    assert said == "+1900 is on profile alerts&#39;s blocklist in router.toml: change it there."
    # A whole number written with spaces is normalised; the allowlist then rules.
    allow = {**form, "list": "allow", "profile": "bulk"}
    said = await changed(http, admin, "/console/lists/add", {**allow, "entry": "+1 415 555 2671"})
    assert said == "+14155552671 added to profile bulk&#39;s allowlist."
    status, page = await get(http, admin, f"{PAGE}?profile=bulk&number=%2B447911123456")
    assert f"{UK} is not on profile bulk&#39;s allowlist" in page
    assert await audience.show_lists(redis, "bulk") == {"block": [], "allow": ["+14155552671"]}

    # Opt-outs a page at a time, in number order.
    numbers = [f"+4479111{i:05d}" for i in range(PAGE_SIZE + 3)]
    for number in numbers:
        await audience.add_opt_out(redis, "bulk", number)
    status, page = await get(http, admin, f"{PAGE}?profile=bulk")
    assert re.findall(r'<tr data-opted-out="([^"]+)">', page) == numbers[:PAGE_SIZE]
    assert f"{PAGE_SIZE + 3} number(s), page 1 of 2" in page
    status, page = await get(http, admin, f"{PAGE}?profile=bulk&page=1")
    assert re.findall(r'<tr data-opted-out="([^"]+)">', page) == numbers[PAGE_SIZE:]


async def test_bad_input_is_refused_naming_the_field(
    http: aiohttp.ClientSession, redis: Redis
) -> None:
    admin, csrf = await admin_session(http)
    for path, form, said in [
        (
            f"{PAGE}/add",
            {"profile": "alerts", "number": "07911 123456"},
            "number: &#39;07911 123456&#39; is not a valid E.164 number (must start with",
        ),
        (f"{PAGE}/add", {"profile": "alerts", "number": ""}, "number: required"),
        (f"{PAGE}/remove", {"profile": "nope", "number": UK}, "profile: unknown profile"),
        (
            "/console/lists/add",
            {"profile": "alerts", "list": "block", "entry": "44"},
            "entry: &#39;44&#39; is not",
        ),
        (
            "/console/lists/add",
            {"profile": "alerts", "list": "deny", "entry": UK},
            "list: block or allow",
        ),
    ]:
        status, _, page = await post(http, admin, path, {"csrf": csrf, **form})
        assert status == 400, (path, form)
        assert error(page).startswith(said), (error(page), said)
        # The field's text stays in the form to correct.
        typed = form.get("number") or form.get("entry") or ""
        assert f'value="{typed}"' in page
    status, page = await get(http, admin, f"{PAGE}?number=nonsense")
    assert status == 400 and error(page).startswith("number: ")
    status, page = await get(http, admin, f"{PAGE}?page=-1")
    assert status == 400 and error(page).startswith("page: ")
    # A link cannot make the page say what was not done.
    for spoof in ["done=opted_out&number=Call+us+now", "done=added&entry=Call&list=block"]:
        status, page = await get(http, admin, f"{PAGE}?profile=alerts&{spoof}")
        assert "data-outcome" not in page, spoof
    assert await redis.scard(keys.opt_outs("alerts")) == 0
    assert await audience.show_lists(redis, "alerts") == {"block": [], "allow": []}


async def test_a_read_session_or_a_change_without_csrf_changes_nothing(
    http: aiohttp.ClientSession, redis: Redis
) -> None:
    await audience.add_opt_out(redis, "alerts", UK)
    await audience.add_list_entry(redis, "alerts", "block", "+4420")
    reader = await sign_in(http, READER)
    status, page = await get(http, reader, PAGE)
    assert status == 200 and f'<tr data-opted-out="{UK}">' in page and "+4420" in page
    assert 'method="post" action="/console/opt-outs' not in page  # no forms it cannot use
    assert 'action="/console/lists' not in page
    changes = {
        f"{PAGE}/add": {"profile": "alerts", "number": "+14155552671"},
        f"{PAGE}/remove": {"profile": "alerts", "number": UK},
        "/console/lists/add": {"profile": "alerts", "list": "allow", "entry": "+1"},
        "/console/lists/remove": {"profile": "alerts", "list": "block", "entry": "+4420"},
    }
    await refused_to_readers_and_without_csrf(http, changes)
    assert await audience.list_opt_outs(redis, "alerts") == [UK]
    assert await audience.show_lists(redis, "alerts") == {"block": ["+4420"], "allow": []}
