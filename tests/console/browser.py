"""A real browser for the console's tests: Playwright (async API) driving Debian's
Chromium (`make test` installs the package `chromium` when it is missing; Playwright
downloads no browser of its own). Without Chromium the browser tests are skipped,
saying why.

Import the fixtures into a test module: ``from .browser import browser  # noqa: F401``.
Screenshots refresh docs/console/*.png when asked:
``CONSOLE_SCREENSHOTS=docs .venv/bin/python -m pytest tests/console/test_console_browser.py``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import pytest

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
