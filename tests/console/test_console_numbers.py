"""The console's Numbers page over plain HTTP against a real daemon started from a
configuration file (router/console/numbers.py): every sender listed under its profile
with whether it may send and why not; a ``read`` session sees no change forms and is
refused the changes; a change without the CSRF token is refused; a preview shows the
diff, or the problems of a change the router's loader refuses; a refused change and a
stale confirmation leave the file's bytes as they were; a confirmed move is written,
reloaded, and the daemon's settings and the page show the number in its new profile."""

from __future__ import annotations

import hashlib
import html
import re
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from router.config import Profile
from router.daemon.daemon import Daemon

from ..conftest import Provider, wait_for
from ..daemon.test_process import write_config
from .site import (
    ADMIN,
    READER,
    admin_session,
    console_config,
    csrf_of,
    each_on_a_new_connection,
    get,
    post,
    sign_in,
    workers_base,
)

MOVED = "+14082223333"  # one of alerts' numbers (conftest NUMBERS)
PAUSED = "+14155552671"  # alerts' number with sms_enabled = false
UK = "+447911123456"  # bulk's
PREVIEW = "/console/numbers/preview"
APPLY = "/console/numbers/apply"


@pytest.fixture
def data(redis_url: str, provider: Provider, tmp_path: Path) -> dict[str, Any]:
    """The console tests' configuration, with one number paused."""
    found = console_config(redis_url, provider.url, tmp_path)
    found["numbers"][PAUSED]["sms_enabled"] = False
    return found


def console_of(daemon: Daemon) -> None:
    """The daemon gives its API the console's access to its file and reload."""
    assert daemon.api is not None
    found = daemon.api.context.config_file
    assert found is not None and found.path == daemon.config_path


async def api_base(daemon: Daemon) -> str:
    """The base URL of the daemon's API listener, once it listens (with the console's
    access to the daemon's file)."""
    await wait_for(lambda: daemon.api is not None and daemon.api.port, 20, "the API listening")
    console_of(daemon)
    assert daemon.api is not None
    return f"http://127.0.0.1:{daemon.api.port}"


@asynccontextmanager
async def numbers_site(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of the daemon's API listener (no redirects followed, no cookies kept)."""
    async with aiohttp.ClientSession(
        base_url=await api_base(daemon), cookie_jar=aiohttp.DummyCookieJar()
    ) as http:
        yield http


@dataclass
class OnFile:
    """A daemon started from its configuration file, and a client of its API."""

    path: Path
    daemon: Daemon
    http: aiohttp.ClientSession


@pytest.fixture
async def on_file(
    redis: Redis, data: dict[str, Any], tmp_path: Path, daemon_from: Any
) -> AsyncIterator[OnFile]:
    """The daemon on `data` written to a file, its API's client."""
    path = write_config(tmp_path / "router.toml", data)
    daemon = daemon_from(path)
    async with numbers_site(daemon) as http:
        yield OnFile(path, daemon, http)


def digest_of(page: str) -> str:
    found = re.search(r'name="digest" value="([0-9a-f]{64})"', page)
    assert found is not None, page
    return found.group(1)


def row_of(page: str, number: str) -> str:
    """The table row of `number` on the Numbers page."""
    found = re.search(rf'<tr data-number="{re.escape(number)}".*?</tr>', page, re.S)
    assert found is not None, f"{number} not on the page"
    return found.group(0)


async def test_the_page_lists_every_sender_and_a_reader_cannot_change_anything(
    on_file: OnFile,
) -> None:
    path, daemon, http = on_file.path, on_file.daemon, on_file.http
    before = path.read_bytes()
    async with http.get("/console/numbers", allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"] == "/console/login?next=%2Fconsole%2Fnumbers"
    reader = await sign_in(http, READER)
    status, page = await get(http, reader, "/console/numbers")
    assert status == 200
    for number in ("+16501112345", MOVED, PAUSED):
        assert 'data-profile="alerts"' in row_of(page, number)
    assert 'data-profile="bulk"' in row_of(page, UK)
    assert 'data-can-send="yes"' in row_of(page, MOVED)
    paused = row_of(page, PAUSED)
    assert 'data-can-send="no"' in paused and "(SMS disabled)" in paused
    assert "sms_enabled" in html.unescape(paused)  # why it may not send
    assert "test<br><small>Confirmed, StandardVolume</small>" in row_of(page, MOVED)
    assert "0 / " in row_of(page, MOVED)  # today's count against the cap
    # A reader sees no change forms, and is refused the changes themselves.
    assert PREVIEW not in page and "Settings of" not in page
    csrf = await csrf_of(http, reader)
    move = {"csrf": csrf, "action": "move", "sender": MOVED, "profile": "bulk"}
    status, _, text = await post(http, reader, PREVIEW, move)
    assert status == 403 and "lacks the 'admin' scope" in html.unescape(text)
    status, _, _ = await post(http, reader, APPLY, {**move, "digest": "0" * 64})
    assert status == 403

    admin = await sign_in(http, ADMIN)
    _, page = await get(http, admin, "/console/numbers")
    assert PREVIEW in page and "Settings of bulk" in page
    # Without the CSRF token (or with another session's), nothing is planned or written.
    good = {**move, "csrf": await csrf_of(http, admin)}
    status, _, text = await post(http, admin, PREVIEW, good)
    assert status == 200
    confirm = {**good, "digest": digest_of(text)}
    for form in ({k: v for k, v in confirm.items() if k != "csrf"}, {**confirm, "csrf": csrf}):
        status, _, text = await post(http, admin, APPLY, form)
        assert status == 403 and "CSRF token" in text
    assert path.read_bytes() == before
    assert daemon.settings.profile_of_number(MOVED) == "alerts"


async def test_a_preview_shows_the_diff_or_the_problems_and_a_refusal_writes_nothing(
    on_file: OnFile,
) -> None:
    path, http = on_file.path, on_file.http
    before = path.read_bytes()
    admin, csrf = await admin_session(http)

    # A setting the loader accepts: the diff, and a confirmation form with its digest.
    window = {"csrf": csrf, "action": "setting", "profile": "bulk", "key": "window"}
    status, _, text = await post(http, admin, PREVIEW, {**window, "value": "12"})
    assert status == 200, text
    assert '<span class="add">+window = 12</span>' in text
    assert f'action="{APPLY}"' in text and digest_of(text)

    # A value the loader refuses: its problem, no confirmation form.
    bad = {"csrf": csrf, "action": "setting", "profile": "alerts", "key": "sender"}
    bad["value"] = "fastest"
    status, _, text = await post(http, admin, PREVIEW, bad)
    assert status == 422, text
    assert 'id="problems"' in text and "profiles.alerts.sender" in html.unescape(text)
    assert '+sender = "fastest"' in html.unescape(text)  # the diff it refused
    assert f'action="{APPLY}"' not in text
    # Confirming it anyway (a forged form) is refused the same way.
    status, _, text = await post(http, admin, APPLY, {**bad, "digest": digest_of_file(path)})
    assert status == 422 and 'id="problems"' in text

    # Changes that cannot be made name the field.
    for form, field in (
        ({"action": "move", "sender": "+19999999999", "profile": "bulk"}, "sender"),
        ({"action": "move", "sender": MOVED, "profile": "nope"}, "profile"),
        ({"action": "setting", "profile": "bulk", "key": "numbers", "value": "x"}, "key"),
        ({"action": "setting", "profile": "bulk", "key": "window", "value": "many"}, "window"),
        ({"action": "sms", "sender": MOVED, "enabled": "maybe"}, "enabled"),
        ({"action": "drop"}, "action"),
    ):
        status, _, text = await post(http, admin, PREVIEW, {"csrf": csrf, **form})
        assert status == 400, (form, text)
        assert re.search(rf"<li class=\"error\">[^<]*{field}[^<]*:", text), (form, text)
    assert path.read_bytes() == before


def digest_of_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_confirmed_move_is_written_and_reloaded_and_a_stale_one_is_refused(
    on_file: OnFile,
) -> None:
    path, daemon, http = on_file.path, on_file.daemon, on_file.http
    admin, csrf = await admin_session(http)
    move = {"csrf": csrf, "action": "move", "sender": MOVED, "profile": "bulk"}
    status, _, text = await post(http, admin, PREVIEW, move)
    assert status == 200, text
    assert path.read_text().count(MOVED) == 2  # nothing written by a preview
    confirm = {**move, "digest": digest_of(text)}

    # Someone edits the file between the diff and the confirmation: refused, and
    # the change shown again against the file as it is now.
    edited = path.read_text() + "# edited by hand\n"
    path.write_text(edited)
    status, _, text = await post(http, admin, APPLY, confirm)
    assert status == 409 and "changed since the diff was shown" in text
    assert path.read_text() == edited
    confirm["digest"] = digest_of(text)

    status, _, text = await post(http, admin, APPLY, confirm)
    assert status == 200, text
    assert 'data-applied="yes"' in text and 'data-reloaded="yes"' in text
    assert "Applied and reloaded" in text
    assert 'data-profile="bulk"' in row_of(text, MOVED)  # the page after the reload
    assert daemon.settings.profile_of_number(MOVED) == "bulk"
    assert daemon.reloads == 1
    assert path.read_text().endswith("# edited by hand\n")  # the rest kept

    # The same confirmation again (a browser's resubmission): stale, nothing written.
    after = path.read_bytes()
    status, _, text = await post(http, admin, APPLY, confirm)
    assert status in (400, 409), text
    assert path.read_bytes() == after and daemon.reloads == 1

    # SMS off on a number, confirmed: the page shows it disabled after the reload.
    sms = {"csrf": csrf, "action": "sms", "sender": UK, "enabled": "false"}
    status, _, text = await post(http, admin, PREVIEW, sms)
    assert status == 200, text
    status, _, text = await post(http, admin, APPLY, {**sms, "digest": digest_of(text)})
    assert status == 200 and 'data-reloaded="yes"' in text, text
    assert 'data-can-send="no"' in row_of(text, UK)
    assert daemon.settings.number(UK).sms_enabled is False

    # A profile setting set, then removed (back to its default), each reloaded.
    window = {"csrf": csrf, "action": "setting", "profile": "bulk", "key": "window"}
    for form, expected in (({**window, "value": "12"}, 12), ({**window, "remove": "1"}, None)):
        status, _, text = await post(http, admin, PREVIEW, form)
        assert status == 200, text
        status, _, text = await post(http, admin, APPLY, {**form, "digest": digest_of(text)})
        assert status == 200 and 'data-reloaded="yes"' in text, text
        assert tomllib.loads(path.read_text())["profiles"]["bulk"].get("window") == expected
    assert daemon.settings.profiles["bulk"].window == Profile.model_fields["window"].default
    assert daemon.reloads == 4


async def test_a_callback_url_password_is_not_shown(
    redis: Redis, data: dict[str, Any], tmp_path: Path, daemon_from: Any
) -> None:
    data["profiles"]["bulk"]["status_callback_url"] = "https://hook:s3cret-pw@example.com/status"
    daemon = daemon_from(write_config(tmp_path / "router.toml", data))
    async with numbers_site(daemon) as http:
        _, page = await get(http, await sign_in(http, ADMIN), "/console/numbers")
    assert "https://hook:**********@example.com/status" in page
    assert "s3cret-pw" not in page


async def test_api_workers_pass_the_changes_to_the_daemon(
    redis: Redis, data: dict[str, Any], tmp_path: Path, daemon_from: Any
) -> None:
    """With ``[api] workers`` every connection is a worker's: the page is the worker's
    own, the preview and the apply go on to the daemon (its file, its reload), and the
    workers' page shows the move once the daemon has handed them the new settings."""
    data["api"]["workers"] = 2
    path = write_config(tmp_path / "router.toml", data)
    daemon = daemon_from(path)
    base = await workers_base(daemon)
    console_of(daemon)
    async with each_on_a_new_connection(base) as http:
        admin, csrf = await admin_session(http)
        move = {"csrf": csrf, "action": "move", "sender": MOVED, "profile": "bulk"}
        status, _, text = await post(http, admin, PREVIEW, move)
        assert status == 200, text
        status, _, text = await post(http, admin, APPLY, {**move, "digest": digest_of(text)})
        assert status == 200 and 'data-reloaded="yes"' in text, text
        assert daemon.settings.profile_of_number(MOVED) == "bulk"

        async def shown_in_bulk() -> bool:
            pages = []
            for _ in range(6):
                pages.append((await get(http, admin, "/console/numbers"))[1])
            return all('data-profile="bulk"' in row_of(page, MOVED) for page in pages)

        await wait_for(shown_in_bulk, 20, "the workers showing the move")


async def test_without_the_daemons_file_a_change_is_refused(
    http: aiohttp.ClientSession,
) -> None:
    """An application the daemon gave no configuration file (started from settings, not
    a file): the page works, a change says why it cannot be made."""
    admin, csrf = await admin_session(http)
    status, page = await get(http, admin, "/console/numbers")
    assert status == 200 and 'data-profile="bulk"' in row_of(page, UK)
    move = {"csrf": csrf, "action": "move", "sender": MOVED, "profile": "bulk"}
    status, _, text = await post(http, admin, PREVIEW, move)
    assert status == 409 and "not started from a configuration file" in text
