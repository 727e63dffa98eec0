"""The compose stage's tracked links (router/engine/shorten.py) through the planner:
`Planner.pick` shortens a batch's URLs in its own round trip, on the real Redis."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from binds.smpp.codec import count_segments
from router.config import LINKS_MAX_RETENTION, ConfigError, Settings, parse_settings
from router.engine.callbacks import kannel_url
from router.engine.plan import Plan, Planner
from router.links import (
    BUCKET_CHARS,
    BUCKET_SECONDS,
    CODE_LENGTH,
    MAX_CODE_LENGTH,
    MAX_RETENTION,
    MIN_CODE_LENGTH,
    TAG_LENGTH,
    Links,
    bucket,
    find_urls,
    link_key,
    tag,
)
from router.policy.jobs import Job, encode_job
from router.store.queue import Entry

from ..conftest import Provider, config_dict

BASE = "https://s.example.com/l"
TO = "+447911123456"
RETENTION = 7200.0


def settings_of(
    redis_url: str,
    provider: Provider,
    tmp: Path,
    *,
    links: dict[str, Any] | None = None,
    **profile: Any,
) -> Settings:
    data = config_dict(redis_url, provider.url, **profile)
    data["queue"]["retention"] = RETENTION
    if links is not None:
        data["links"] = links
    return parse_settings(data, env={}, base_dir=tmp)


@pytest.fixture
def shortening(redis_url: str, provider: Provider, tmp_path: Path) -> Settings:
    return settings_of(
        redis_url,
        provider,
        tmp_path,
        links={"base_url": BASE},
        shorten=True,
        status_callback_url="https://app.example.com/status",
    )


def jobs_of(planner: Planner, *wires: dict[str, Any]) -> list[Job]:
    jobs = []
    for i, wire in enumerate(wires):
        _, job, plan, _ = planner.plan(Entry(f"1-{i}", {"job": encode_job(wire)}, 1))
        assert plan is Plan.SEND and isinstance(job, Job)
        jobs.append(job)
    return jobs


def codes(text: str) -> list[str]:
    return [text[a:b].removeprefix(BASE + "/") for a, b in find_urls(text)]


async def sets_run(redis: Redis) -> int:
    """HSET commands the server ran so far (it serves the whole session)."""
    stats: Any = await redis.info("commandstats")
    return int(stats.get("cmdstat_hset", {}).get("calls", 0))


async def test_pick_shortens_the_batch_in_its_round_trip(
    redis: Redis, shortening: Settings
) -> None:
    planner = Planner(redis=redis, name="alerts", settings=shortening)
    long_url = "https://shop.example.com/orders/12345?tab=tracking&ref=" + "x" * 120
    jobs = jobs_of(
        planner,
        {"id": "m1", "to": TO, "text": f"Your order: {long_url}. Thanks!"},
        {"id": "m2", "to": TO, "text": "No link here"},
        {
            "id": "m3",
            "to": TO,
            "text": "a http://a.example.com b",
            "status_callback_url": "https://x.example.com/cb",
        },
    )
    assert count_segments(jobs[0].text or "") == 2
    sets = await sets_run(redis)
    picks, _ = await planner.pick(jobs)
    assert all(isinstance(p, str) for p in picks)  # the picks are unchanged by the links
    (one,) = codes(jobs[0].text or "")
    assert jobs[0].text == f"Your order: {BASE}/{one}. Thanks!"
    assert count_segments(jobs[0].text or "") == 1  # counted on the short text
    assert jobs[1].text == "No link here"
    (three,) = codes(jobs[2].text or "")
    assert len(one) == TAG_LENGTH + BUCKET_CHARS + CODE_LENGTH
    links = Links(redis, profiles=shortening.profiles)
    first, third = await links.resolve(one), await links.resolve(three)
    assert first is not None and third is not None
    assert (first.url, first.message_id, first.profile) == (long_url, "m1", "alerts")
    assert first.callback_url == "https://app.example.com/status"  # the profile's
    assert (third.url, third.callback_url) == ("http://a.example.com", "https://x.example.com/cb")
    # The link lives as long as the record: [queue] retention (after its hour ends).
    now = time.time()
    left = (now // BUCKET_SECONDS + 1) * BUCKET_SECONDS - now
    ttl = await redis.ttl(link_key("alerts", one))
    assert RETENTION + left - 2 <= ttl <= RETENTION + left + 1
    # One HSET for the batch's links, in the pick's pipeline.
    assert await sets_run(redis) - sets == 1


async def test_a_profile_without_shorten_keeps_its_urls(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path
) -> None:
    # [links] configured, the profile does not shorten.
    settings = settings_of(redis_url, provider, tmp_path, links={"base_url": BASE})
    planner = Planner(redis=redis, name="alerts", settings=settings)
    assert planner.shortener is None
    text = "Read https://example.com/page now"
    jobs = jobs_of(planner, {"id": "p1", "to": TO, "text": text})
    await planner.pick(jobs)
    assert jobs[0].text == text
    assert [k async for k in redis.scan_iter(match="sms:*:links:*")] == []


async def test_a_retried_text_keeps_its_links(redis: Redis, shortening: Settings) -> None:
    planner = Planner(redis=redis, name="alerts", settings=shortening)
    (job,) = jobs_of(planner, {"id": "r1", "to": TO, "text": "go https://example.com/x"})
    await planner.pick([job])
    short = job.text
    # A retry carries the short text: planned again, nothing is shortened twice.
    (again,) = jobs_of(planner, {"id": "r1", "to": TO, "text": short})
    sets = await sets_run(redis)
    await planner.pick([again])
    assert again.text == short and await sets_run(redis) == sets


async def test_a_taken_code_is_drawn_again(redis: Redis, shortening: Settings) -> None:
    planner = Planner(redis=redis, name="alerts", settings=shortening)
    assert planner.shortener is not None
    real = planner.shortener.links

    class Scripted(Links):
        """Draws `TakenCde22` first (already taken), then at random."""

        draws = ["TakenCde22"]

        def new_codes(self, count: int) -> list[str]:
            drawn = super().new_codes(count)
            return [(self.draws.pop(0) if self.draws else "") or c for c in drawn]

    planner.shortener.links = Scripted(redis, base_url=real.base_url, profiles=real.profiles)
    code = "TakenCde22"
    taken = tag("alerts") + bucket(time.time()) + code
    await redis.hset(link_key("alerts", taken), taken, '{"u":"https://other","i":"x"}')
    jobs = jobs_of(
        planner,
        {"id": "t1", "to": TO, "text": "a https://a.example.com"},
        {"id": "t2", "to": TO, "text": "b https://b.example.com"},
    )
    await planner.pick(jobs)
    assert Scripted.draws == []  # drawn, found taken, drawn again
    other = await real.resolve(taken)
    assert other is not None and other.url == "https://other"  # put back as it was
    for job, url in zip(jobs, ["https://a.example.com", "https://b.example.com"], strict=True):
        (got,) = codes(job.text or "")
        assert not got.endswith(code)
        found = await real.resolve(got)
        assert found is not None and (found.url, found.message_id) == (url, job.id)


async def test_a_kannel_dlr_url_asks_for_no_click(redis: Redis, shortening: Settings) -> None:
    planner = Planner(redis=redis, name="alerts", settings=shortening)
    dlr = kannel_url("http://app.example.com/dlr?id=%i&type=%d", 31)
    (job,) = jobs_of(
        planner,
        {"id": "k1", "to": TO, "text": "x https://e.example.com", "status_callback_url": dlr},
    )
    await planner.pick([job])
    (code,) = codes(job.text or "")
    found = await Links(redis, profiles=shortening.profiles).resolve(code)
    assert found is not None and found.callback_url == ""


async def test_a_short_text_that_no_longer_fits_is_sent_as_written(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path
) -> None:
    # A one-part profile and a URL shorter than its short link, at the part's limit.
    settings = settings_of(
        redis_url, provider, tmp_path, links={"base_url": BASE}, shorten=True, max_segments=1
    )
    planner = Planner(redis=redis, name="alerts", settings=settings)
    text = "x" * 140 + " http://a.io"
    assert count_segments(text) == 1
    (job,) = jobs_of(planner, {"id": "f1", "to": TO, "text": text})
    await planner.pick([job])
    assert job.text == text


def test_links_live_at_most_130_days(redis_url: str, provider: Provider, tmp_path: Path) -> None:
    assert LINKS_MAX_RETENTION == MAX_RETENTION
    data = config_dict(redis_url, provider.url, shorten=True)
    data["links"] = {"base_url": BASE}
    data["queue"]["retention"] = MAX_RETENTION + 1
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, env={}, base_dir=tmp_path)
    assert any(p.startswith("queue.retention: at most") for p in caught.value.problems)
    data["queue"]["retention"] = MAX_RETENTION
    parse_settings(data, env={}, base_dir=tmp_path)
    data["queue"]["retention"] = MAX_RETENTION + 1
    data["profiles"]["alerts"]["shorten"] = False
    parse_settings(data, env={}, base_dir=tmp_path)  # no profile shortens: no limit


def test_shorten_needs_a_base_url(redis_url: str, provider: Provider, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_of(redis_url, provider, tmp_path, shorten=True)
    assert any(
        p.startswith("profiles.alerts.shorten: needs [links] base_url")
        for p in caught.value.problems
    )
    with pytest.raises(ConfigError) as caught:
        settings_of(redis_url, provider, tmp_path, links={"code_length": 12}, shorten=True)
    assert any(p.startswith("profiles.alerts.shorten:") for p in caught.value.problems)


@pytest.mark.parametrize(
    ("links", "problem"),
    [
        ({"base_url": "s.example.com/l"}, "links.base_url"),
        ({"base_url": "https://s.example.com/l?x=1"}, "links.base_url"),
        ({"base_url": BASE, "code_length": MIN_CODE_LENGTH - 1}, "links.code_length"),
        ({"base_url": BASE, "code_length": MAX_CODE_LENGTH + 1}, "links.code_length"),
        ({"base_url": BASE, "colour": 1}, "links.colour"),
    ],
)
def test_links_section_is_checked(
    redis_url: str, provider: Provider, tmp_path: Path, links: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_of(redis_url, provider, tmp_path, links=links)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_code_length_and_base_url_reach_the_links(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path
) -> None:
    settings = settings_of(
        redis_url,
        provider,
        tmp_path,
        links={"base_url": BASE + "/", "code_length": 16},
        shorten=True,
    )
    planner = Planner(redis=redis, name="alerts", settings=settings)
    assert planner.shortener is not None
    assert (planner.shortener.links.base_url, planner.shortener.links.code_length) == (BASE, 16)
