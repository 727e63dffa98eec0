"""Messages and live events in a real browser (Debian's Chromium driven by Playwright)
against the real daemon sending over SMPP to our SMSC simulator, which reports
delivery: with the live events page open, a message sent through the API shows up
there as it happens (queued ... delivered); then found in the message search by its
recipient, opened, and its timeline shows `delivered`. No browser errors (the CSP lets
events.js run and its websocket connect). Screenshots of the three pages at 1280 px
and at a phone's width (docs/console/ with CONSOLE_SCREENSHOTS=docs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import Browser
from redis.asyncio import Redis

from router.config import Settings

from ..conftest import RunningDaemon
from .browser import (
    PHONE,
    base_of,
    fits_a_phone,
    new_page,
    screenshot,
    sign_in_to,
    wait_until_up,
)
from .site import ADMIN, settings_of

TO = "+447911123456"


async def _send(base: str, text: str) -> str:
    """Send `text` to `TO` through the API (POST /v1/messages); its id."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/v1/messages",
            json={"to": TO, "text": text},
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as answer,
    ):
        assert answer.status == 202, await answer.text()
        return str((await answer.json())["id"])


async def test_send_find_by_recipient_see_delivered_and_the_live_events(
    browser: Browser,
    redis: Redis,
    tmp_path: Path,
    smpp_data: dict[str, Any],
    shots: Path,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    settings = settings_of(smpp_data, tmp_path)
    run_daemon(settings)
    base = base_of(smpp_data)
    page, errors = await new_page(browser)
    await wait_until_up(page, base)
    await sign_in_to(page, base, "/console/events")
    await page.wait_for_selector("#feed-state:has-text('Live: connected')", timeout=10_000)

    # A message through the API while the live events page is open.
    job_id = await _send(base, "console browser test")
    row = page.locator("#events tbody tr", has_text=job_id)
    await row.locator(".state-delivered").wait_for(timeout=20_000)
    for kind in ("queued", "sending", "sent"):
        assert await row.locator(f".state-{kind}").count() == 1, kind
    await screenshot(page, "events-1280", shots)
    # Only the ticked kinds once filtered (the socket subscribes again).
    await page.check("input[name=status][value=delivered]")
    await page.wait_for_selector("#feed-state:has-text('Live: connected')", timeout=10_000)
    await page.click("#clear")
    for text in ("second", "third"):
        await _send(base, text)
    await page.locator("#events tbody tr").nth(1).wait_for(timeout=20_000)
    kinds = await page.locator("#events tbody tr").evaluate_all(
        "rows => rows.map(r => r.getAttribute('data-kind'))"
    )
    assert set(kinds) == {"delivered"}, kinds
    # The search box hides what does not match.
    await page.fill("#search", job_id)
    assert await page.locator("#events tbody tr:visible").count() == 0

    # Find it by its recipient; open it; `delivered` in its timeline.
    await page.goto(f"{base}/console/messages")
    await page.fill("input[name=to]", TO)
    await page.click("form.search button[type=submit]")
    await page.wait_for_selector("#results")
    assert await page.locator("#results tbody tr").count() == 3
    await screenshot(page, "messages-1280", shots)
    await page.click(f"#results a:text-is('{job_id}')")
    await page.wait_for_url(f"{base}/console/messages/{job_id}")
    timeline = page.locator("#timeline tbody tr")
    statuses = await timeline.locator(".state").all_inner_texts()
    assert statuses == ["queued", "sending", "sent", "delivered"], statuses
    assert "console browser test" in await page.inner_text("#text")
    assert "DELIVRD" in await page.inner_text("#receipts")
    await screenshot(page, "message-1280", shots)

    # At a phone's width: nothing wider than the screen but the tables' own scrollers.
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await page.reload()
    await fits_a_phone(page)
    await screenshot(page, "message-390", shots)
    await page.goto(f"{base}/console/messages?to={TO.replace('+', '%2B')}")
    await fits_a_phone(page)
    await screenshot(page, "messages-390", shots)
    await page.goto(f"{base}/console/events")
    await page.wait_for_selector("#feed-state:has-text('Live: connected')", timeout=10_000)
    await fits_a_phone(page)
    await screenshot(page, "events-390", shots)
    assert errors == []
    await page.context.close()
