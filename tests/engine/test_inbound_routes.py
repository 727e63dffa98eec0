"""Inbound routes (``[[inbound_routes]]``): an inbound message that matches a route is
posted to the route's callback_url, signed with its profile's webhook_secret; the
rest go to the profile's callback_url; keywords (STOP...) stay with the profile.
Real Redis, the real daemon, the SMSC simulator and two real aiohttp receivers."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis
from standardwebhooks import Webhook

from router.config import ConfigError, Settings, load_settings, parse_settings
from router.daemon.daemon import Daemon
from router.engine.inbound import CallbackPoster
from router.store import keys
from router.summary import config_lines
from sims.smscsim import SmscSimulator

from ..binds.test_smpp_flow import smpp_config
from ..conftest import NUMBERS, RunningDaemon, serve_app, wait_for
from ..daemon.test_process import write_config

SECRET = "whsec_" + base64.b64encode(b"r" * 32).decode()
PERSON = "+447911123456"
US_PERSON = "+15551230000"


@dataclass
class Receiver:
    """A real application endpoint: every post's path and body, its signature checked."""

    url: str = ""
    got: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refuse: int = 0
    refused: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.refuse > 0:
            self.refuse -= 1
            self.refused += 1
            return web.Response(status=503)
        body = Webhook(SECRET).verify(await request.read(), dict(request.headers))
        self.got.append((request.path, body))
        return web.Response(status=204)

    def texts(self, path: str | None = None) -> list[str]:
        return [body["text"] for where, body in self.got if path is None or where == path]


async def _receiver() -> tuple[Receiver, web.AppRunner]:
    box = Receiver()
    app = web.Application()
    app.router.add_post("/{path:.*}", box.handle)
    runner, box.url = await serve_app(app)
    return box, runner


@pytest.fixture
async def receivers() -> AsyncIterator[tuple[Receiver, Receiver]]:
    """(the profile's application, the routes' application)."""
    first, one = await _receiver()
    second, two = await _receiver()
    yield first, second
    await one.cleanup()
    await two.cleanup()


def _config(
    redis_url: str, tmp: Path, smsc: SmscSimulator, app: Receiver, routed: Receiver
) -> dict[str, Any]:
    data = smpp_config(
        redis_url, tmp, smsc.port, callback=f"{app.url}/inbound", webhook_secret=SECRET
    )
    data["inbound_routes"] = [
        # STOP listed here too: a keyword is handled by its profile, never routed.
        {"keywords": ["join", "STOP"], "callback_url": f"{routed.url}/join"},
        {"to": [NUMBERS[1]], "callback_url": f"{routed.url}/second-number"},
        {"to": ["+1415"], "from": ["+1555"], "callback_url": f"{routed.url}/us-to-sf"},
    ]
    return data


async def test_messages_go_to_the_first_matching_route_else_to_the_profile(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    run_daemon: Callable[[Settings], RunningDaemon],
    receivers: tuple[Receiver, Receiver],
) -> None:
    app, routed = receivers
    settings = parse_settings(_config(redis_url, tmp_path, smsc, app, routed), env={})
    run_daemon(settings)
    await wait_for(lambda: smsc.stats()["sessions"] == 1, 10, "bound")
    routed.refuse = 2  # the route's application is down at first: retried, not lost
    await smsc.inject(PERSON, NUMBERS[0], "JOIN now")
    await smsc.inject(PERSON, NUMBERS[0], "join")
    await smsc.inject(PERSON, NUMBERS[0], "joining is not the keyword")
    await smsc.inject(PERSON, NUMBERS[1], "hello second number")  # a `to` route
    await smsc.inject(PERSON, NUMBERS[2], "hello third number")
    await smsc.inject(US_PERSON, NUMBERS[2], "from and to both match")
    await smsc.inject(PERSON, NUMBERS[2], "only to matches")
    await smsc.inject(PERSON, NUMBERS[1], "stop")  # matches two routes: still an opt-out
    await smsc.inject(PERSON, NUMBERS[0], "Join again, long " + "x" * 200, parts=2)
    await wait_for(lambda: len(app.got) + len(routed.got) == 9, 30, "nine posts")
    assert routed.refused == 2
    # The routes' posts in the order the messages came, each once.
    assert routed.texts() == [
        "JOIN now",
        "join",
        "hello second number",
        "from and to both match",
        "Join again, long " + "x" * 200,
    ]
    assert routed.texts("/join") == ["JOIN now", "join", "Join again, long " + "x" * 200]
    assert routed.texts("/second-number") == ["hello second number"]
    assert routed.texts("/us-to-sf") == ["from and to both match"]
    assert app.texts("/inbound") == [
        "joining is not the keyword",
        "hello third number",
        "only to matches",
        "stop",
    ]
    stop = app.got[-1][1]
    assert stop["opt_out"] == "stop" and stop["profile"] == "sms"
    assert await redis.sismember(keys.opt_outs("sms"), PERSON)
    # Same body as the profile's posts: the same keys.
    assert set(routed.got[0][1]) == set(app.got[0][1]) - {"opt_out"}
    assert routed.got[0][1]["from"] == PERSON and routed.got[0][1]["to"] == NUMBERS[0]
    assert await redis.xlen(keys.inbound("sms")) == 0  # every one taken


async def test_a_reload_applies_new_inbound_routes(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    receivers: tuple[Receiver, Receiver],
) -> None:
    app, routed = receivers
    data = smpp_config(
        redis_url, tmp_path, smsc.port, callback=f"{app.url}/inbound", webhook_secret=SECRET
    )
    path = write_config(tmp_path / "router.toml", data)
    daemon = Daemon(load_settings(path), path)
    task = asyncio.create_task(daemon.run(install_signals=False))
    try:
        await wait_for(lambda: smsc.stats()["sessions"] == 1, 10, "bound")
        await smsc.inject(PERSON, NUMBERS[0], "JOIN before")
        await wait_for(lambda: len(app.got) == 1, 20, "posted to the profile")
        with path.open("a") as file:  # the operator's way: an array of tables
            file.write('\n[[inbound_routes]]\nkeywords = ["JOIN"]\n')
            file.write(f'callback_url = "{routed.url}/j"\n')
        assert await daemon.reload() is True
        await wait_for(lambda: smsc.stats()["sessions"] >= 1, 10, "bound")
        await smsc.inject(PERSON, NUMBERS[0], "JOIN after")
        await wait_for(lambda: len(routed.got) == 1, 20, "posted to the route")
        assert routed.texts("/j") == ["JOIN after"] and app.texts() == ["JOIN before"]
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(task, 30) == 0


def _poster(redis: Redis, settings: Settings) -> CallbackPoster:
    profile = settings.profiles["sms"]
    assert profile.callback_url is not None
    return CallbackPoster(
        redis,
        "sms",
        profile.callback_url,
        consumer="t",
        inbound=None,
        routes=settings.inbound_routes,
    )


def _body(text: str, *, to: str = NUMBERS[0], source: str = PERSON, **more: Any) -> dict[str, Any]:
    return {"from": source, "to": to, "text": text, "binary": False, **more}


async def test_route_matching_rules(redis: Redis, tmp_path: Path) -> None:
    data = smpp_config("redis://127.0.0.1:1", tmp_path, 1, callback="http://app/in")
    data["inbound_routes"] = [
        {"keywords": ["Join"], "callback_url": "http://r/join"},
        {"from": ["+44"], "to": ["+1650"], "callback_url": "http://r/uk"},
        {"callback_url": "http://r/rest"},
    ]
    poster = _poster(redis, parse_settings(data, env={}))
    assert poster.destination(_body("  jOiN  please")) == ("http://r/join", 0)
    # Binary content has no first word: not a keyword.
    assert poster.destination(_body("4a4f494e", binary=True)) == ("http://r/uk", 1)
    assert poster.destination(_body("hi", source="+15550000000")) == ("http://r/rest", 2)
    assert poster.destination(_body("JOIN", opt_out="help")) == ("http://app/in", None)
    del data["inbound_routes"][2]
    poster = _poster(redis, parse_settings(data, env={}))
    assert poster.destination(_body("hi", to=NUMBERS[1])) == ("http://app/in", None)
    assert poster.destination(_body("", source=US_PERSON)) == ("http://app/in", None)


def test_check_config_lists_the_routes_and_bad_values_name_their_path(tmp_path: Path) -> None:
    data = smpp_config("redis://127.0.0.1:1", tmp_path, 1, callback="http://app/in")
    data["inbound_routes"] = [
        {"keywords": ["join", "stop"], "callback_url": "http://r/join?token=secret"},
        {"callback_url": "https://r/all"},
        {"to": ["+1650"], "from": ["+44"], "callback_url": "http://r/late"},
    ]
    lines = config_lines(parse_settings(data, env={}))
    assert lines[-3:] == [
        "inbound_routes[0]: keywords=JOIN,STOP -> http://r/join"
        " (STOP is an opt-out keyword of profile sms: handled there, never routed)",
        "inbound_routes[1]: (no to/keywords/from: matches every inbound message) -> https://r/all",
        "inbound_routes[2]: to=+1650 from=+44 -> http://r/late"
        " (never reached: inbound_routes[1] takes every message)",
    ]
    data["inbound_routes"] = [
        {"callback_url": "http://r/ok"},
        {"keywords": ["two words"], "callback_url": "http://r/x"},
        {"to": ["16501112345"], "from": ["+44", 7], "callback_url": "ftp://r", "url": "x"},
        {"to": ["+1650"]},
    ]
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, env={})
    assert caught.value.problems == [
        "inbound_routes[1].keywords[0]: 'two words' must be one word (no spaces)",
        "inbound_routes[2].to[0]: '16501112345' is not a number or prefix ('+' then 1-15 digits)",
        "inbound_routes[2].from[1]: must be a valid string",
        "inbound_routes[2].callback_url: must be an absolute http:// or https:// URL",
        "inbound_routes[2].url: unknown key",
        "inbound_routes[3].callback_url: required key is missing",
    ]
