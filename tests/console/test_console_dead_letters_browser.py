"""Replaying a dead letter in a real browser (Debian's Chromium driven by Playwright)
against the real daemon sending over SMPP to our SMSC simulator: a job a consumer took
and died with is dead-lettered by the daemon (queue.max_deliveries), a job XADDed raw
with a bad field too; an admin signs in, opens Dead letters, sees both reasons, replays
the first and sees it gone and the message delivered; then opts a number out on
Opt-outs and lists and finds it. No browser errors (the Content-Security-Policy holds).
Screenshots of both pages at 1280 px and at a phone's width (docs/console/ with
CONSOLE_SCREENSHOTS=docs)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from playwright.async_api import Browser
from redis.asyncio import Redis

from router import Client
from router.config import Settings
from router.store import keys
from router.store.queue import WorkQueue, list_dead_letters
from sims.smscsim import SmscSimulator

from ..conftest import RunningDaemon, wait_for
from .browser import (
    DESKTOP,
    PHONE,
    base_of,
    fits_a_phone,
    new_page,
    screenshot,
    sign_in_to,
    wait_until_up,
)
from .site import settings_of, status_of

TO = "+447911123456"


async def test_replay_a_dead_letter_and_opt_a_number_out(
    browser: Browser,
    redis: Redis,
    tmp_path: Path,
    smsc: SmscSimulator,
    smpp_data: dict[str, Any],
    shots: Path,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    # A job taken by a consumer that dies is dead-lettered at its second delivery.
    smpp_data["queue"].update(claim_idle=0.2, max_deliveries=1)
    settings = settings_of(smpp_data, tmp_path)
    client = Client.from_settings(redis, settings)
    job_id = await client.send(TO, "Your code is 4711", id="code-4711")
    crashed = WorkQueue(redis, "sms", "crashed")
    await crashed.ensure_group()
    assert len(await crashed.read_new(1, 100)) == 1
    # A producer's own XADD with a bad field: dead-lettered with the field named.
    bad = msgpack.packb({"id": "raw-1", "to": "12345", "text": "no country code"})
    await redis.xadd(keys.queue("sms"), {"job": bad})
    await asyncio.sleep(0.3)
    run_daemon(settings)
    await wait_for(lambda: _len_is(redis, keys.dead_letters("sms"), 2), 20, "two dead letters")
    letters = {as_job_id(d.fields.get("job")): d for d in await list_dead_letters(redis, "sms")}
    assert "delivered 2 times" in letters[job_id].reason
    assert letters["raw-1"].reason.startswith("job.to")
    assert await status_of(redis, job_id) == "rejected"

    base = base_of(smpp_data)
    page, errors = await new_page(browser)
    await wait_until_up(page, base)
    await sign_in_to(page, base, "/console/dead-letters")

    # Both dead letters with their reasons; the one to replay is the stuck delivery.
    row = page.locator(f'tr[data-entry="{letters[job_id].entry_id}"]')
    assert "delivered 2 times" in await row.inner_text()
    assert "code-4711" in await row.inner_text() and TO in await row.inner_text()
    raw_row = page.locator(f'tr[data-entry="{letters["raw-1"].entry_id}"]')
    assert "job.to" in await raw_row.inner_text()
    await screenshot(page, "dead-letters-1280", shots)
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await fits_a_phone(page)
    await screenshot(page, "dead-letters-390", shots)
    await page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]

    await row.get_by_role("button", name="Replay").click()
    await page.locator("[data-outcome]").wait_for()
    assert (await page.inner_text("[data-outcome]")).startswith("Replayed 1")
    assert await row.count() == 0 and await raw_row.count() == 1
    await wait_for(lambda: _is(redis, job_id, "delivered"), 20, "the replayed job delivered")
    assert [s["destination"] for s in smsc.submits] == [TO.lstrip("+")]

    # Opt-outs and lists: opt a number out, find it, see what a send to it would meet.
    await page.goto(f"{base}/console/opt-outs")
    await page.fill("#opt-out-number", "+44 7911 123456")
    await page.get_by_role("button", name="Opt out").click()
    await page.locator("[data-outcome]").wait_for()
    assert await page.inner_text("[data-outcome]") == f"{TO} opted out of profile sms."
    assert "rejected opted_out" in await page.inner_text("#search")
    assert await page.locator(f'tr[data-opted-out="{TO}"]').count() == 1
    await page.fill("#block-entry", "+4420")
    await page.get_by_role("button", name="Add to the blocklist").click()
    await page.locator('tr[data-block="+4420"]').wait_for()
    await screenshot(page, "opt-outs-1280", shots)
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await fits_a_phone(page)
    await screenshot(page, "opt-outs-390", shots)
    assert errors == []
    await page.context.close()


def as_job_id(raw: bytes | None) -> str:
    assert raw is not None
    return str(msgpack.unpackb(raw)["id"])


async def _len_is(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.xlen(key)) == n


async def _is(redis: Redis, job_id: str, status: str) -> bool:
    return await status_of(redis, job_id) == status
