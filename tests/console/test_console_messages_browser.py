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

import aiohttp
from playwright.async_api import Browser, Page
from redis.asyncio import Redis

from router.config import Settings
from sims.smscsim import SmscSimulator

from ..conftest import RunningDaemon, free_port, wait_for
from .browser import DESKTOP, PHONE, browser, screenshot, shots_dir  # noqa: F401 - the fixture
from .site import ADMIN
from .test_console_browser import _config, _up, _watch_errors

TO = "+447911123456"


async def _fits_a_phone(page: Page) -> None:
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width


async def test_send_find_by_recipient_see_delivered_and_the_live_events(
    browser: Browser,  # noqa: F811 - the fixture imported above
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    shots = shots_dir(tmp_path / "shots")
    port = free_port()
    settings = _config(redis_url, tmp_path, smsc.port, port)  # type: ignore[attr-defined]
    run_daemon(settings)
    base = f"http://127.0.0.1:{port}"
    context = await browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    page = await context.new_page()
    errors = _watch_errors(page)
    await wait_for(lambda: _up(page, base), 20, "the API listening")
    await page.goto(f"{base}/console/events")
    assert page.url.startswith(f"{base}/console/login")
    await page.fill("input[name=token]", ADMIN)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/console/events")
    await page.wait_for_selector("#feed-state:has-text('Live: connected')", timeout=10_000)

    # A message through the API while the live events page is open.
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/v1/messages",
            json={"to": TO, "text": "console browser test"},
            headers={"Authorization": f"Bearer {ADMIN}"},
        ) as answer,
    ):
        assert answer.status == 202, await answer.text()
        job_id = (await answer.json())["id"]
    row = page.locator("#events tbody tr", has_text=job_id)
    await row.locator(".state-delivered").wait_for(timeout=20_000)
    for kind in ("queued", "sending", "sent"):
        assert await row.locator(f".state-{kind}").count() == 1, kind
    await screenshot(page, "events-1280", shots)
    # Only the ticked kinds once filtered (the socket subscribes again).
    await page.check("input[name=status][value=delivered]")
    await page.wait_for_selector("#feed-state:has-text('Live: connected')", timeout=10_000)
    await page.click("#clear")
    async with aiohttp.ClientSession() as http:
        for text in ("second", "third"):
            async with http.post(
                f"{base}/v1/messages",
                json={"to": TO, "text": text},
                headers={"Authorization": f"Bearer {ADMIN}"},
            ) as answer:
                assert answer.status == 202
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
    await _fits_a_phone(page)
    await screenshot(page, "message-390", shots)
    await page.goto(f"{base}/console/messages?to={TO.replace('+', '%2B')}")
    await _fits_a_phone(page)
    await screenshot(page, "messages-390", shots)
    await page.goto(f"{base}/console/events")
    await page.wait_for_selector("#feed-state:has-text('Live: connected')", timeout=10_000)
    await _fits_a_phone(page)
    await screenshot(page, "events-390", shots)
    assert errors == []
    await context.close()
