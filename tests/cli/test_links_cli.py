"""``sms-router links stats``: clicks per profile and the most clicked messages of a
UTC day, read from the real Redis the clicks were recorded in (`Links.click`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from redis.asyncio import Redis

from router.links import Link, Links
from router.store import keys

from ..conftest import Provider, config_dict
from ..daemon.test_process import cli, write_config


async def test_links_stats(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path
) -> None:
    data = config_dict(redis_url, provider.url, shorten=True)
    data["links"] = {"base_url": "https://s.example.com/l"}
    config = str(write_config(tmp_path / "router.toml", data))
    links = Links(redis, profiles=["alerts", "bulk"], events_maxlen=1000)
    yesterday = time.time() - 86_400
    for message, count in (("m-1", 3), ("m-2", 1)):
        for _ in range(count):
            await links.click(Link("https://e.example.com", message, "alerts", "", 600))
    await links.click(Link("https://e.example.com", "m-0", "alerts", "", 600), at=yesterday)

    code, out, errors = await cli("links", "stats", "-c", config)
    assert code == 0, errors
    lines = out.splitlines()
    assert lines[0] == "alerts: 5 clicks"
    assert lines[1] == f"  most clicked on {keys.utc_day()}:"
    assert [line.split() for line in lines[2:4]] == [["m-1", "3"], ["m-2", "1"]]
    assert "bulk: 0 clicks (shorten off)" in lines

    day = keys.utc_day(yesterday)
    code, out, errors = await cli(
        "links", "stats", "-c", config, "--profile", "alerts", "--day", day, "--json"
    )
    assert code == 0, errors
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row == {
        "profile": "alerts",
        "shorten": True,
        "clicks": 5,
        "day": day,
        "top": [{"id": "m-0", "clicks": 1}],
    }
    code, out, _ = await cli("links", "stats", "-c", config, "--profile", "alerts", "--top", "0")
    assert code == 0 and out.splitlines() == ["alerts: 5 clicks"]

    code, _, errors = await cli("links", "stats", "-c", config, "--profile", "nope")
    assert code == 1 and "unknown profile 'nope'" in errors
    code, _, errors = await cli("links", "stats", "-c", config, "--day", "yesterday")
    assert code == 2 and "YYYY-MM-DD" in errors
