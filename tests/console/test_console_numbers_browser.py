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

from playwright.async_api import Browser, Page
from redis.asyncio import Redis

from router import Client
from router.store.ledger import Ledger
from sims.smscsim import SmscSimulator

from ..binds.test_smpp_flow import smpp_config
from ..conftest import NUMBERS, number_tables, wait_for
from ..daemon.test_process import write_config
from ..daemon.test_reload import daemon_from  # noqa: F401 - the daemon-on-a-file fixture
from .browser import DESKTOP, PHONE, browser, screenshot, shots_dir  # noqa: F401 - the fixture
from .site import ADMIN
from .test_console_numbers import console_of

MOVED = NUMBERS[1]
UK = "+447911123456"
TO = "+447700900123"


def _config(redis_url: str, tmp: Path, smsc_port: int) -> Path:
    """Profile `sms` (global, the US numbers) and `uk` (a UK number), both over SMPP to
    the simulator; the console's admin key; written with a comment at the top."""
    data = smpp_config(redis_url, tmp, smsc_port)
    uk: dict[str, Any] = {
        "protocol": "smpp",
        "window": 10,
        "numbers": [UK],
        "smpp": dict(data["profiles"]["sms"]["smpp"]),
    }
    data["profiles"]["uk"] = uk
    data.update(number_tables([*NUMBERS, UK]))
    data["api"] = {"listen": "127.0.0.1:0", "keys": {"ops": {"token": ADMIN, "scopes": ["admin"]}}}
    path = write_config(tmp / "router.toml", data)
    path.write_text("# sms-router for the console's Numbers test\n" + path.read_text())
    return path


def _watch_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


async def test_move_a_number_to_another_profile_and_see_the_reload_take_it(
    browser: Browser,  # noqa: F811 - the fixture imported above
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    daemon_from: Any,  # noqa: F811 - the fixture imported above
) -> None:
    shots = shots_dir(tmp_path / "shots")
    path = _config(redis_url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    daemon = daemon_from(path)
    await wait_for(lambda: daemon.api is not None and daemon.api.port, 20, "the API listening")
    console_of(daemon)
    assert daemon.api is not None
    base = f"http://127.0.0.1:{daemon.api.port}"
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

    context = await browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    page = await context.new_page()
    errors = _watch_errors(page)
    await page.goto(f"{base}/console/numbers")
    assert page.url == f"{base}/console/login?next=%2Fconsole%2Fnumbers"
    await page.fill("input[name=token]", ADMIN)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/console/numbers")

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
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    await screenshot(page, "numbers-390", shots)
    # A profile's settings and their form fit too.
    await page.click("text=Settings of uk")
    await page.locator('#profile-uk tr[data-setting="window"]').wait_for()
    assert "10" in await page.inner_text('#profile-uk tr[data-setting="window"]')
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    assert errors == []
    await context.close()
