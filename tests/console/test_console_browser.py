"""The console in a real browser (Debian's Chromium driven by Playwright) against the
real daemon sending over SMPP to our SMSC simulator: the sign-in form, signing in with
an admin key, the overview showing the SMPP bind bound and the connector up and
updating by itself, no browser errors (the Content-Security-Policy lets the vendored
htmx run), signing out and being sent to sign-in again. Screenshots of each page at
1280 px and at a phone's width (docs/console/ with CONSOLE_SCREENSHOTS=docs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.async_api import Browser
from redis.asyncio import Redis

from router import Client
from router.config import Settings

from ..conftest import RunningDaemon
from .browser import (
    DESKTOP,
    PHONE,
    base_of,
    fits_a_phone,
    new_page,
    screenshot,
    wait_until_up,
)
from .site import ADMIN, settings_of

TO = "+447911123456"


async def test_sign_in_see_the_bound_connector_sign_out(
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
    client = Client.from_settings(redis, settings)
    await client.send_many([{"to": TO, "text": f"console test {i}"} for i in range(12)])

    page, errors = await new_page(browser)
    await wait_until_up(page, base)

    # No session: the console sends the browser to the sign-in form.
    await page.goto(f"{base}/console")
    assert page.url == f"{base}/console/login"
    await page.wait_for_selector("input[name=token]")
    await screenshot(page, "login-1280", shots)

    # A wrong token is refused on the form.
    await page.fill("input[name=token]", "x" * 32)
    await page.click("button[type=submit]")
    await page.wait_for_selector("text=Unknown token.")

    await page.fill("input[name=token]", ADMIN)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/console")
    assert "ops (admin)" in await page.inner_text("header")

    # The SMPP bind comes up by itself on the page (the live part polls every 2 s).
    bound = page.locator('tr[data-bind][data-state="bound"]')
    await bound.first.wait_for(timeout=20_000)
    await page.locator('tr[data-connector="sms"][data-state="up"]').wait_for(timeout=20_000)
    await page.locator('tr[data-status="delivered"]').wait_for(timeout=20_000)
    stamp = await page.inner_text(".stamp")
    await page.wait_for_function(
        "s => document.querySelector('.stamp').innerText !== s", arg=stamp, timeout=10_000
    )
    await screenshot(page, "overview-1280", shots)

    # At a phone's width: nothing wider than the screen but the tables' own scrollers.
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await page.reload()
    await bound.first.wait_for(timeout=10_000)
    await fits_a_phone(page)
    await screenshot(page, "overview-390", shots)

    # Sign out: back to sign-in, and the console refuses the old session.
    await page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]
    await page.click("text=Sign out")
    await page.wait_for_url(f"{base}/console/login")
    await page.goto(f"{base}/console")
    assert page.url == f"{base}/console/login"
    cookies = await page.context.cookies()
    assert not [c for c in cookies if c["name"] == "sms_console" and c["value"]]

    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await screenshot(page, "login-390", shots)
    # The wrong token's 401 is the one failed load the browser reports.
    assert [e for e in errors if "status of 401" not in e] == []
    await page.context.close()
