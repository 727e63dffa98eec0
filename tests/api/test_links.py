"""Tracked links: shortening against the real Redis fixture, ``GET /l/<code>`` on a
real aiohttp server, the click event on the profile's stream and the websocket, and
the status callback posted by the real `StatusPoster` to a real endpoint."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from binds.smpp.codec import count_segments
from router import Client
from router.api import events as api_events
from router.api import links as api_links
from router.api.common import CONTEXT, ApiContext, middleware
from router.config import Settings, parse_settings
from router.engine.callbacks import StatusPoster
from router.links import (
    ALPHABET,
    BUCKET_CHARS,
    BUCKET_SECONDS,
    CODE_LENGTH,
    TAG_LENGTH,
    Link,
    Links,
    ToShorten,
    bucket,
    click_stats,
    find_urls,
    is_preview,
    link_key,
    message_clicks,
    tag,
    valid_code,
)
from router.store import keys
from router.store.connections import as_text, open_redis
from router.store.ledger import Ledger

from ..cluster import cluster_running, cluster_unsupported
from ..conftest import Receiver, config_dict, serve_app, wait_for
from .test_api import TOKENS, api_settings

BASE = "https://s.example.com/l"
DAY = 86_400.0
READER = {"Authorization": f"Bearer {TOKENS['reader']}"}


@pytest.fixture
def links(redis: Redis) -> Links:
    return Links(redis, base_url=BASE, profiles=["alerts", "bulk"], events_maxlen=1000)


def _codes(text: str) -> list[str]:
    return [text[a:b].removeprefix(BASE + "/") for a, b in find_urls(text)]


def _hour_left() -> float:
    """Seconds until this hour's links hash starts its retention countdown."""
    now = time.time()
    return (now // BUCKET_SECONDS + 1) * BUCKET_SECONDS - now


def _is(found: Link | None, expected: Link) -> None:
    """`found` is `expected`, its TTL the link's ttl after this hour ends (a second's
    slack for the clock)."""
    assert found is not None
    assert dataclasses.replace(found, ttl=0) == dataclasses.replace(expected, ttl=0)
    left = _hour_left()
    assert expected.ttl + left - 2 <= found.ttl <= expected.ttl + left + 1, (found.ttl, left)


@pytest.mark.parametrize(
    ("text", "urls"),
    [
        ("no link here", []),
        ("See https://example.com/a.", ["https://example.com/a"]),
        (
            "https://x.io/a, https://y.io/b; and http://z.io!",
            ["https://x.io/a", "https://y.io/b", "http://z.io"],
        ),
        ("(see https://example.com/page)", ["https://example.com/page"]),
        (
            "wiki https://en.wikipedia.org/wiki/Foo_(bar) ok",
            ["https://en.wikipedia.org/wiki/Foo_(bar)"],
        ),
        ("(https://en.wikipedia.org/wiki/Foo_(bar))", ["https://en.wikipedia.org/wiki/Foo_(bar)"]),
        ('href "https://x.io/q?a=1&b=2#frag" done', ["https://x.io/q?a=1&b=2#frag"]),
        ("<https://x.io/a>", ["https://x.io/a"]),
        ("HTTPS://X.IO/Up?", ["HTTPS://X.IO/Up"]),
        ("Ünïcode https://例え.jp/パス. end", ["https://例え.jp/パス"]),
        ("not a link: https:// nor ftp://x.io", []),
        ("glued:https://x.io/a...", ["https://x.io/a"]),
    ],
)
def test_find_urls(text: str, urls: list[str]) -> None:
    assert [text[a:b] for a, b in find_urls(text)] == urls


async def test_shorten_keeps_the_text_around(redis: Redis, links: Links) -> None:
    text = "Your order shipped: https://shop.example.com/orders/12345?tab=tracking. Thanks!"
    short = await links.shorten(text, message_id="m1", profile="alerts", ttl=DAY)
    (code,) = _codes(short.text)
    assert short.text == f"Your order shipped: {BASE}/{code}. Thanks!"
    assert short.links == ((code, "https://shop.example.com/orders/12345?tab=tracking"),)
    assert len(code) == TAG_LENGTH + BUCKET_CHARS + CODE_LENGTH
    assert code.startswith(tag("alerts") + bucket(time.time()))
    assert set(code) <= set(ALPHABET) and valid_code(code)
    _is(
        await links.resolve(code),
        Link("https://shop.example.com/orders/12345?tab=tracking", "m1", "alerts", "", int(DAY)),
    )


async def test_several_urls_and_punctuation(redis: Redis, links: Links) -> None:
    text = (
        "Docs (https://docs.example.com/start), status https://status.example.com, "
        f"again https://docs.example.com/start and {BASE}/Already2go!"
    )
    short = await links.shorten(text, message_id="m2", profile="alerts", ttl=DAY)
    first, second, third, mine = _codes(short.text)
    assert first == third != second  # the same URL twice: one code
    assert mine == "Already2go"  # a link of ours is left alone
    assert short.text == (
        f"Docs ({BASE}/{first}), status {BASE}/{second}, again {BASE}/{first} and "
        f"{BASE}/Already2go!"
    )
    assert dict(short.links) == {
        first: "https://docs.example.com/start",
        second: "https://status.example.com",
    }
    (hour,) = await redis.keys("sms:{alerts}:links:*")
    assert await redis.hlen(hour) == 2


async def test_a_text_without_urls_writes_nothing(redis: Redis, links: Links) -> None:
    short = await links.shorten("Hello, no links.", message_id="m", profile="alerts", ttl=DAY)
    assert short.text == "Hello, no links." and short.links == ()
    assert await redis.dbsize() == 0


async def test_segments_are_counted_on_the_short_text(redis: Redis, links: Links) -> None:
    url = "https://shop.example.com/" + "x" * 150
    text = f"Track it: {url}"
    assert count_segments(text) == 2
    short = await links.shorten(text, message_id="m3", profile="alerts", ttl=DAY)
    assert count_segments(short.text) == 1


async def test_a_batch_is_one_round_trip_and_keeps_each_ttl(redis: Redis, links: Links) -> None:
    before = int((await redis.info("stats"))["total_commands_processed"])
    out = await links.shorten_many(
        [
            ToShorten("a https://a.example.com/1 b https://a.example.com/2", "m4", "alerts", 3600),
            ToShorten("c https://c.example.com/3", "m5", "bulk", 7200.5, "https://app/cb"),
            ToShorten("nothing", "m6", "bulk", 60),
        ]
    )
    after = int((await redis.info("stats"))["total_commands_processed"])
    # Three commands per profile's hash of the hour (HMGET, HSET, EXPIREAT), whatever
    # the number of links; the INFO itself.
    assert after - before == 2 * 3 + 1
    (a1, a2), (c3,) = _codes(out[0].text), _codes(out[1].text)
    assert out[2].text == "nothing"
    assert link_key("alerts", a1) == link_key("alerts", a2)
    assert await redis.hlen(link_key("alerts", a1)) == 2
    left = _hour_left()
    assert 3600 + left - 2 <= await redis.ttl(link_key("alerts", a1)) <= 3600 + left + 1
    assert 7201 + left - 2 <= await redis.ttl(link_key("bulk", c3)) <= 7201 + left + 1
    found = await links.resolve(c3)
    assert found is not None and (found.profile, found.callback_url) == ("bulk", "https://app/cb")


async def test_a_code_taken_is_drawn_again(redis: Redis) -> None:
    class Scripted(Links):
        """Draws the codes given first (the first one already taken), then at random."""

        def __init__(self, redis: Redis, draws: list[str]) -> None:
            super().__init__(redis, base_url=BASE, profiles=["alerts", "bulk"])
            self.draws = draws

        def new_codes(self, count: int) -> list[str]:
            drawn = super().new_codes(count)
            return [(self.draws.pop(0) if self.draws else "") or c for c in drawn]

    taken = tag("alerts") + bucket(time.time()) + "TakenCde22"
    await redis.hset(link_key("alerts", taken), taken, '{"u":"https://other","i":"x"}')
    links = Scripted(redis, ["TakenCde22"])
    short = await links.shorten(
        "go https://mine.example.com", message_id="m", profile="alerts", ttl=60
    )
    (code,) = _codes(short.text)
    assert links.draws == [] and code != taken  # drawn, found taken, drawn again
    found = await links.resolve(code)
    assert found is not None and found.url == "https://mine.example.com"
    other = await links.resolve(taken)
    assert other is not None and other.url == "https://other"  # untouched
    # In a batch, only the text with the taken code is made again, in its place.
    links.draws = ["", "", "TakenCde22"]  # "": drawn at random
    batch = [
        ToShorten("a https://a.example.com", "ma", "alerts", 60),
        ToShorten("b https://b.example.com c https://c.example.com", "mb", "alerts", 60),
        ToShorten("d https://d.example.com", "md", "bulk", 60),
    ]
    out = await links.shorten_many(batch)
    assert links.draws == []
    for item, short in zip(batch, out, strict=True):
        assert [u for _, u in short.links] == [item.text[a:b] for a, b in find_urls(item.text)]
        for code, url in short.links:
            found = await links.resolve(code)
            assert found is not None and (found.url, found.message_id) == (url, item.message_id)
        assert taken not in short.text


async def test_codes_expire_with_the_ttl(redis: Redis, links: Links) -> None:
    # Made in the last second of the previous hour, to live until half a second from
    # now (EXPIREAT rounds up to the second: at most 1.5 s).
    now = time.time()
    then = now - now % BUCKET_SECONDS - 0.5
    item = ToShorten("x https://e.example.com", "m", "alerts", now % BUCKET_SECONDS + 0.5)
    prepared = links.prepare([item], now=then)
    await links.write(prepared.writes)
    (code,) = _codes(prepared.texts[0].text)
    assert await links.resolve(code) is not None
    await asyncio.sleep(1.7)
    assert await links.resolve(code) is None


async def test_resolve_refuses_what_is_no_code(redis: Redis, links: Links) -> None:
    assert await links.resolve("unknown2x") is None
    for bad in ("short", "has space x", "0O1lI0O1lI", "x" * 37, "../../etc"):
        assert not valid_code(bad)
        assert await links.resolve(bad) is None


@pytest.fixture
async def api(redis: Redis, make_settings: Callable[..., Settings]) -> AsyncIterator[str]:
    """The link handler (and the event websocket) on a real aiohttp server."""
    settings = api_settings(make_settings)
    context = ApiContext(
        settings=settings,
        redis=redis,
        ledger=Ledger(redis, retention=60, events_maxlen=1000),
        client=Client.from_settings(redis, settings),
    )
    app = web.Application(middlewares=[middleware])
    app[CONTEXT] = context
    api_links.add_routes(app)
    api_events.add_routes(app)
    runner, base = await serve_app(app)
    yield base
    await runner.cleanup()


async def _events(redis: Redis, profile: str = "alerts") -> list[dict[str, str]]:
    rows: Any = await redis.xrange(keys.events(profile))
    return [{as_text(k): as_text(v) for k, v in fields.items()} for _, fields in rows]


async def test_get_redirects_and_records_the_click(
    redis: Redis, links: Links, api: str, receiver: Receiver
) -> None:
    target = "https://shop.example.com/o/1?x=é"
    short = await links.shorten(
        f"see {target}", message_id="job-1", profile="alerts", ttl=DAY, callback_url=receiver.url
    )
    (code,) = _codes(short.text)
    stopping = asyncio.Event()
    poster = StatusPoster(redis, consumer="t", profiles=["alerts"], base_delay=0.05)
    posting = asyncio.create_task(poster.run(stopping))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{api}/v1/events", headers=READER) as ws:
                await ws.send_json({"profile": "alerts"})
                assert (await ws.receive_json(timeout=10))["type"] == "subscribed"
                async with http.get(
                    f"{api}/l/{code}",
                    allow_redirects=False,
                    headers={"User-Agent": "Phone/1.0"},
                ) as response:
                    assert response.status == 302
                    assert response.headers["Location"] == "https://shop.example.com/o/1?x=%C3%A9"
                    assert response.headers["Cache-Control"] == "no-store"
                seen = await ws.receive_json(timeout=10)
        (event,) = await _events(redis)
        assert set(event) == {"id", "profile", "status", "at", "link", "user_agent"}
        assert event["id"] == "job-1" and event["status"] == "click"
        assert (event["link"], event["user_agent"], event["profile"]) == (
            target,
            "Phone/1.0",
            "alerts",
        )
        # The websocket: a `click` event, the stream's `link` named `url`.
        assert seen["type"] == "click" and "link" not in seen
        assert {k: seen[k] for k in ("id", "status", "url", "user_agent", "profile")} == {
            "id": "job-1",
            "status": "click",
            "url": target,
            "user_agent": "Phone/1.0",
            "profile": "alerts",
        }
        assert seen["at"] == float(event["at"])
        await wait_for(lambda: receiver.got, 10, "the status callback")
        (posted,) = receiver.got
        assert posted["id"] == "job-1" and posted["status"] == "click"
        assert posted["url"] == target and posted["at"] == float(event["at"])
        assert "link" not in posted
    finally:
        stopping.set()
        await posting
    assert await message_clicks(redis, "alerts", ["job-1", "job-2"]) == [1, 0]
    (stats,) = await click_stats(redis, ["alerts"])
    assert (stats.total, stats.top) == (1, [("job-1", 1)])


async def test_head_answers_without_a_click(redis: Redis, links: Links, api: str) -> None:
    short = await links.shorten(
        "x https://e.example.com/a", message_id="j", profile="alerts", ttl=DAY
    )
    (code,) = _codes(short.text)
    async with aiohttp.ClientSession() as http:
        async with http.head(f"{api}/l/{code}", allow_redirects=False) as response:
            assert response.status == 302
            assert response.headers["Location"] == "https://e.example.com/a"
    assert await _events(redis) == []
    assert (await click_stats(redis, ["alerts"]))[0].total == 0


async def test_unknown_codes_are_404(redis: Redis, api: str) -> None:
    async with aiohttp.ClientSession() as http:
        for code in (tag("alerts") + "23456789ab", "Unknown234", "bad", "0O0O0O0O0O"):
            assert valid_code(code) == code.startswith(tag("alerts"))
            async with http.get(f"{api}/l/{code}", allow_redirects=False) as response:
                assert response.status == 404
                assert response.content_type == "text/plain"
                assert await response.text() == api_links.NOT_FOUND
                assert response.headers["Cache-Control"] == "no-store"
    assert await redis.dbsize() == 0


async def test_clicks_count_per_message_and_profile(redis: Redis, links: Links) -> None:
    made = await links.shorten_many(
        [
            ToShorten("a https://a.example.com", "hot", "alerts", DAY),
            ToShorten("b https://b.example.com c https://c.example.com", "warm", "alerts", DAY),
            ToShorten("d https://d.example.com", "other", "bulk", DAY),
        ]
    )
    codes = [code for short in made for code, _ in short.links]
    for code, times in zip(codes, (3, 1, 1, 2), strict=True):
        link = await links.resolve(code)
        assert link is not None
        for _ in range(times):
            await links.click(link, user_agent="ua")
    alerts, bulk = await click_stats(redis, ["alerts", "bulk"], top=5)
    assert (alerts.total, alerts.top) == (5, [("hot", 3), ("warm", 2)])
    assert (bulk.total, bulk.top) == (2, [("other", 2)])
    assert (await click_stats(redis, ["alerts"], top=1))[0].top == [("hot", 3)]
    assert (await click_stats(redis, ["alerts"], day="2000-01-01"))[0].top == []
    assert await message_clicks(redis, "alerts", ["hot", "warm"]) == [3, 2]
    # A message's counter lives as long as its link.
    left = _hour_left()
    counter = keys.message_clicks("alerts", "hot")
    assert DAY + left - 10 <= await redis.ttl(counter) <= DAY + left + 1
    # /metrics reads the profile's stats hash: the clicks are there.
    assert await redis.hget(keys.stats("alerts"), "clicks") == b"5"
    # No callback url: nothing on the callbacks stream.
    assert await redis.xlen(keys.callbacks("alerts")) == 0
    assert len(await _events(redis)) == 5


async def test_a_long_user_agent_is_cut(redis: Redis, links: Links) -> None:
    link = Link("https://e.example.com", "m", "alerts", ttl=60)
    await links.click(link, user_agent="U" * 5000, at=1_700_000_000.5)
    (event,) = await _events(redis)
    assert event["user_agent"] == "U" * 256 and event["at"] == "1700000000.500000"
    stored = json.dumps(event)
    assert len(stored) < 600


def test_codes_have_8_characters_or_more(redis: Redis) -> None:
    with pytest.raises(ValueError, match="code_length"):
        Links(redis, base_url=BASE, code_length=7)


async def test_shortening_needs_a_base_url(redis: Redis) -> None:
    with pytest.raises(ValueError, match="base_url"):
        await Links(redis).shorten("https://x.io", message_id="m", profile="p", ttl=1)


def test_codes_use_the_whole_alphabet_and_differ(redis: Redis, links: Links) -> None:
    codes = {links.new_code() for _ in range(2000)}
    assert len(codes) == 2000
    assert {len(code) for code in codes} == {CODE_LENGTH}
    assert set("".join(codes)) == set(ALPHABET)  # 20,000 letters: each of 56 appears


@pytest.mark.cluster
@pytest.mark.skipif(cluster_unsupported() is not None, reason=str(cluster_unsupported()))
async def test_links_on_a_redis_cluster(tmp_path: Path) -> None:
    """Links of one batch land on several masters (one pipeline across the nodes); a
    click's MULTI stays in its profile's slot."""
    with cluster_running(tmp_path / "cluster") as nodes:
        settings = parse_settings(config_dict(nodes.url, "http://127.0.0.1:9/send"), env={})
        async with open_redis(settings) as redis:
            home = nodes.index_of(keys.events("alerts"))
            names = ("bulk", "otp", "promo", "news", "billing", "alarms")
            other = next(p for p in names if nodes.index_of(keys.events(p)) != home)
            links = Links(redis, base_url=BASE, profiles=["alerts", other])
            text = " ".join(f"https://e.example.com/{n}" for n in range(12))
            alerts, bulk = await links.shorten_many(
                [ToShorten(text, "m", "alerts", DAY), ToShorten(text, "b", other, DAY)]
            )
            codes = [code for code, _ in alerts.links]
            # Each profile's links in its slot: the batch spans two masters.
            for profile, short in (("alerts", alerts), (other, bulk)):
                homes = {nodes.index_of(link_key(profile, code)) for code, _ in short.links}
                assert homes == {nodes.index_of(keys.events(profile))}
            found = await links.resolve(bulk.links[0][0])
            assert found is not None and (found.profile, found.message_id) == (other, "b")
            for code in codes[:3]:
                link = await links.resolve(code)
                assert link is not None
                await links.click(link, user_agent="ua")
            (stats,) = await click_stats(redis, ["alerts"])
            assert (stats.total, stats.top) == (3, [("m", 3)])
            assert await message_clicks(redis, "alerts", ["m"]) == [3]
            assert await redis.xlen(keys.events("alerts")) == 3


async def test_any_url_and_id_come_back_as_they_were(redis: Redis, links: Links) -> None:
    url = "https://例え.jp/パス?q=a\\b&r=%20{x}|y"
    short = await links.shorten(
        f"→ {url} ←", message_id='id"é\\1', profile="alerts", ttl=60, callback_url="https://c/?a=é"
    )
    (code,) = _codes(short.text)
    assert short.text == f"→ {BASE}/{code} ←"
    _is(await links.resolve(code), Link(url, 'id"é\\1', "alerts", "https://c/?a=é", 60))


def test_a_tag_is_two_letters_and_stays() -> None:
    assert tag("alerts") == tag("alerts") and len(tag("alerts")) == TAG_LENGTH
    assert set(tag("alerts")) <= set(ALPHABET)
    assert len({tag(f"profile-{n}") for n in range(1000)}) > 800  # spread over 3,136


async def test_profiles_sharing_a_tag_both_resolve(redis: Redis) -> None:
    seen: dict[str, str] = {}
    for n in range(100_000):  # a pair of names with one tag (birthday: ~70 names)
        name = f"p{n}"
        if tag(name) in seen:
            first, second = seen[tag(name)], name
            break
        seen[tag(name)] = name
    links = Links(redis, base_url=BASE, profiles=[first, "alerts", second])
    made = await links.shorten_many(
        [
            ToShorten("x https://1.example.com", "j1", first, 60),
            ToShorten("y https://2.example.com", "j2", second, 60),
        ]
    )
    for short, profile, job in zip(made, (first, second), ("j1", "j2"), strict=True):
        ((code, url),) = short.links
        assert code.startswith(tag(profile))
        _is(await links.resolve(code), Link(url, job, profile, "", 60))


async def test_a_profile_no_longer_configured_has_no_links(redis: Redis, links: Links) -> None:
    short = await links.shorten("x https://e.example.com", message_id="m", profile="gone", ttl=60)
    ((code, _),) = short.links
    assert await links.resolve(code) is None
    assert await Links(redis, profiles=["gone"]).resolve(code) is not None


@pytest.mark.parametrize(
    ("agent", "preview"),
    [
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15", False),
        ("Mozilla/5.0 (Linux; Android 14) Chrome/120.0 Mobile Safari/537.36", False),
        ("", False),
        ("facebookexternalhit/1.1 Facebot Twitterbot/1.0", True),  # iMessage's preview
        ("WhatsApp/2.23.20.0 A", True),
        ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", True),
        ("TelegramBot (like TwitterBot)", True),
    ],
)
def test_link_previews_are_told_apart(agent: str, preview: bool) -> None:
    assert is_preview(agent) is preview


async def test_a_preview_redirects_without_a_click(redis: Redis, links: Links, api: str) -> None:
    short = await links.shorten(
        "x https://e.example.com/a", message_id="j", profile="alerts", ttl=DAY
    )
    (code,) = _codes(short.text)
    preview = {"User-Agent": "facebookexternalhit/1.1 Facebot Twitterbot/1.0"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{api}/l/{code}", allow_redirects=False, headers=preview) as response:
            assert response.status == 302
            assert response.headers["Location"] == "https://e.example.com/a"
    assert await _events(redis) == []
    stats = await redis.hgetall(keys.stats("alerts"))
    assert stats == {b"link_previews": b"1"}
