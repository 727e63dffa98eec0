"""The Numbers page in a real browser (Debian's Chromium driven by Playwright) against a
real daemon started from a configuration file and sending over SMPP to our SMSC
simulator: sign in as an admin, open Numbers, move a number to another profile (the
diff shown first, then confirmed), see the daemon's reload verdict and the number
under its new profile, in the file and on the reloaded page. Screenshots at 1280 px
and at a phone's width (docs/console/ with CONSOLE_SCREENSHOTS=docs)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from playwright.async_api import Browser
from redis.asyncio import Redis

from router import Client
from router.store.ledger import Ledger
from sims.smscsim import SmscSimulator

from ..conftest import NUMBERS, number_tables, wait_for
from ..daemon.test_process import write_config
from .browser import PHONE, fits_a_phone, new_page, screenshot, sign_in_to
from .site import smpp_console_config
from .test_console_numbers import api_base

MOVED = NUMBERS[1]
UK = "+447911123456"
TO = "+447700900123"


def _config(redis_url: str, tmp: Path, smsc_port: int) -> Path:
    """Profile `sms` (global, the US numbers) and `uk` (a UK number), both over SMPP to
    the simulator; the console's admin key; written with a comment at the top."""
    data = smpp_console_config(redis_url, tmp, smsc_port)
    uk: dict[str, Any] = {
        "protocol": "smpp",
        "window": 10,
        "numbers": [UK],
        "smpp": dict(data["profiles"]["sms"]["smpp"]),
    }
    data["profiles"]["uk"] = uk
    data.update(number_tables([*NUMBERS, UK]))
    path = write_config(tmp / "router.toml", data)
    path.write_text("# sms-router for the console's Numbers test\n" + path.read_text())
    return path


async def test_move_a_number_to_another_profile_and_see_the_reload_take_it(
    browser: Browser,
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    daemon_from: Any,
    shots: Path,
) -> None:
    path = _config(redis_url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    daemon = daemon_from(path)
    base = await api_base(daemon)
    # Some traffic, so the page has delivery ratios and today's counts to show.
    ids = await Client(redis).send_many(
        [
            {"to": TO, "text": f"test {i}", "from": NUMBERS[i % 3], "profile": "sms"}
            for i in range(9)
        ]
    )
    ledger = Ledger(redis, retention=3600, events_maxlen=1000)

    async def delivered() -> bool:
        return all(r and r["status"] == "delivered" for r in await ledger.find(ids))

    await wait_for(delivered, 30, "the messages delivered")

    page, errors = await new_page(browser)
    await sign_in_to(page, base, "/console/numbers")

    row = page.locator(f'tr[data-number="{MOVED}"]')
    assert await row.get_attribute("data-profile") == "sms"
    assert await row.get_attribute("data-can-send") == "yes"
    assert "of 3" in await row.inner_text()  # its delivery ratio over 3 reports
    await screenshot(page, "numbers-1280", shots)

    # Move it: the diff first, nothing written yet.
    before = path.read_bytes()
    await row.locator("select[name=profile]").select_option("uk")
    await row.locator("button", has_text="Move").click()
    await page.wait_for_selector("#diff")
    diff = await page.inner_text("#diff")
    lines = diff.splitlines()
    assert [x for x in lines if x.startswith("-") and MOVED in x and UK not in x], diff
    assert [x for x in lines if x.startswith("+") and UK in x and MOVED in x], diff
    assert path.read_bytes() == before
    await screenshot(page, "numbers-diff-1280", shots)

    await page.click("text=Apply and reload")
    await page.wait_for_selector('#verdict[data-applied="yes"][data-reloaded="yes"]')
    assert "Applied and reloaded" in await page.inner_text("#verdict")
    moved = page.locator(f'#profile-uk tr[data-number="{MOVED}"]')
    assert await moved.count() == 1
    assert daemon.settings.profile_of_number(MOVED) == "uk"
    text = path.read_text()
    assert text.startswith("# sms-router for the console's Numbers test\n")  # comment kept
    profiles = tomllib.loads(text)["profiles"]
    assert profiles["uk"]["numbers"] == [UK, MOVED]
    assert MOVED not in profiles["sms"]["numbers"]

    # The page loaded afresh shows the daemon's new configuration.
    await page.goto(f"{base}/console/numbers")
    assert await page.locator(f'#profile-uk tr[data-number="{MOVED}"]').count() == 1
    assert await page.locator(f'#profile-sms tr[data-number="{MOVED}"]').count() == 0

    # At a phone's width: nothing wider than the screen but the tables' own scrollers.
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await page.reload()
    await fits_a_phone(page)
    await screenshot(page, "numbers-390", shots)
    # A profile's settings and their form fit too.
    await page.click("text=Settings of uk")
    await page.locator('#profile-uk tr[data-setting="window"]').wait_for()
    assert "10" in await page.inner_text('#profile-uk tr[data-setting="window"]')
    await fits_a_phone(page)
    assert errors == []
    await page.context.close()
