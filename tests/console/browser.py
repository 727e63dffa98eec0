"""A real browser for the console's tests: Playwright (async API) driving Debian's
Chromium (`make test` installs the package `chromium` when it is missing; Playwright
downloads no browser of its own). Without Chromium the browser tests are skipped,
saying why.

The fixture `browser` is offered to every test module here by tests/console/conftest.py;
the helpers open a page, sign in on it, check it fits a phone's screen.
Screenshots refresh docs/console/*.png when asked:
``CONSOLE_SCREENSHOTS=docs .venv/bin/python -m pytest tests/console/test_console_browser.py``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import pytest

from sims.smscsim import SmscSimulator

from ..conftest import free_port, wait_for
from .site import ADMIN, smpp_console_config

CHROMIUM: Final = os.environ.get("CHROMIUM", "/usr/bin/chromium")
DESKTOP: Final = {"width": 1280, "height": 800}
PHONE: Final = {"width": 390, "height": 844}
DOCS_SHOTS: Final = Path(__file__).resolve().parents[2] / "docs" / "console"

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # the test extra is not installed
    async_playwright = None  # type: ignore[assignment]


def chromium_path() -> str | None:
    """Debian's Chromium, or None."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium (skips the test when Chromium or Playwright is missing)."""
    path = chromium_path()
    if path is None:
        pytest.skip(f"Chromium not found ({CHROMIUM}); `make chromium` installs Debian's")
    if async_playwright is None:
        pytest.skip("playwright is not installed (the project's test extra)")
    async with async_playwright() as playwright:
        found = await playwright.chromium.launch(
            executable_path=path,
            headless=True,
            # Containers often run as root, where Chromium needs --no-sandbox; /dev/shm
            # may be small.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield found
        finally:
            await found.close()


@pytest.fixture
def smpp_data(redis_url: str, tmp_path: Path, smsc: SmscSimulator) -> dict[str, Any]:
    """The configuration of a daemon sending over SMPP to the SMSC simulator, its API
    (with the console's admin key) on a free port: `base_of` it."""
    return smpp_console_config(redis_url, tmp_path, smsc.port, free_port())  # type: ignore[attr-defined]


def base_of(data: dict[str, Any]) -> str:
    """The base URL of the API that `data` configures."""
    return f"http://{data['api']['listen']}"


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where the test's screenshots go (`shots_dir`)."""
    return shots_dir(tmp_path / "shots")


def shots_dir(tmp: Path) -> Path:
    """Where screenshots go: docs/console when ``CONSOLE_SCREENSHOTS=docs`` (to refresh
    the docs' pictures), else `tmp`, so that a test run leaves the checkout as it was
    (every run's pictures differ: times, pids)."""
    where = DOCS_SHOTS if os.environ.get("CONSOLE_SCREENSHOTS") == "docs" else tmp
    where.mkdir(parents=True, exist_ok=True)
    return where


async def screenshot(page: Page, name: str, where: Path) -> Path:
    """Save the whole page as `where`/<name>.png (`where` from `shots_dir`)."""
    path = where / f"{name}.png"
    taken = await page.screenshot(path=str(path), full_page=True)
    assert taken[:8] == b"\x89PNG\r\n\x1a\n"
    return path


async def new_page(browser: Browser) -> tuple[Page, list[str]]:
    """A page in a new context at the desktop width, and the list its console errors
    and failed requests are appended to (a CSP violation shows there). Close it with
    ``await page.context.close()``."""
    context = await browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


async def wait_until_up(page: Page, base: str) -> None:
    """Wait (20 s at most) for the API at `base` to answer its health check."""

    async def up() -> bool:
        try:
            answer = await page.request.get(f"{base}/healthz")
        except Exception:
            return False
        return answer.ok

    await wait_for(up, 20, "the API listening")


async def sign_in_to(page: Page, base: str, path: str, token: str = ADMIN) -> None:
    """Open `path` without a session: the console sends the browser to sign-in (and
    back to `path` after it); sign in with `token` and arrive at `path`."""
    await page.goto(f"{base}{path}")
    assert page.url == f"{base}/console/login?next={quote(path, safe='')}"
    await page.fill("input[name=token]", token)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}{path}")


async def fits_a_phone(page: Page) -> None:
    """Nothing on `page` is wider than a phone's screen but the tables' own scrollers."""
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
