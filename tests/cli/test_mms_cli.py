"""``sms-router send --media URL`` (repeatable) enqueues an MMS, refused with the wire
decoder's words naming ``media[i]`` before anything is enqueued; ``status`` and ``log``
show its ``num_media`` and URLs. The real command in a subprocess, on real Redis (no
daemon: the record stays ``queued``)."""

from __future__ import annotations

import json
from pathlib import Path

from redis.asyncio import Redis

from router.store import keys

from ..conftest import Provider, config_dict
from ..daemon.test_process import cli, write_config

PNG = "https://media.example.com/a/cat.png"
JPG = "https://cdn.example.org/b/dog.jpg"
TO = "+447911123456"


async def test_send_media_then_status_and_log_show_it(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path
) -> None:
    config = str(write_config(tmp_path / "router.toml", config_dict(redis_url, provider.url)))
    send = ("send", "-c", config, "--to", TO)

    code, out, errors = await cli(*send, "--text", "look", "--media", PNG, "--media", JPG)
    assert code == 0, errors
    mms = out.strip()
    code, out, errors = await cli(*send, "--media", PNG, "--id", "alone")  # no text
    assert (code, out.strip()) == (0, "alone"), errors
    code, out, errors = await cli(*send, "--text", "plain", "--id", "sms")
    assert code == 0, errors

    # Refused before Redis is touched, naming the URL as every door does.
    code, out, errors = await cli(*send, "--media", PNG, "--media", "ftp://x/y.png")
    assert code == 1 and out == ""
    assert errors.strip() == "error: media[1]: must be an absolute http:// or https:// URL"
    eleven = [arg for i in range(11) for arg in ("--media", f"https://m.example.com/{i}.png")]
    code, _, errors = await cli(*send, *eleven)
    assert code == 1 and "media: must hold 1 to 10 URLs, not 11" in errors
    assert await redis.xlen(keys.queue("alerts")) == 3

    code, out, errors = await cli("status", "-c", config, mms)
    assert code == 0, errors
    rows = [line.split(None, 1) for line in out.splitlines() if line.strip()]
    fields = {row[0]: row[1].strip() for row in rows if len(row) == 2}
    assert fields["num_media"] == "2" and fields["media"] == PNG
    assert JPG in [line.strip() for line in out.splitlines()]  # the second URL, a line of its own
    code, out, errors = await cli("status", "-c", config, mms, "--json")
    record = json.loads(out)
    assert (record["media"], record["num_media"]) == ([PNG, JPG], 2)
    code, out, _ = await cli("status", "-c", config, "sms")
    assert "media" not in out

    code, out, errors = await cli("log", "-c", config, columns=250)
    assert code == 0, errors
    lines = out.splitlines()
    assert lines[0].split()[-1] == "media"
    (first,) = [line for line in lines if mms in line]
    assert first.rstrip().endswith(PNG)
    assert JPG in lines[lines.index(first) + 1]  # the next URL on the line below
    (sms,) = [line for line in lines if " sms " in line]
    assert "https://" not in sms
    # No MMS in the page: no media column.
    code, out, _ = await cli("log", "-c", config, "--limit", "1", columns=250)
    assert "media" not in out.splitlines()[0]
    code, out, _ = await cli("log", "-c", config, "--json")
    logged = {r["id"]: r for r in map(json.loads, out.splitlines())}
    assert logged[mms]["num_media"] == 2 and logged["alone"]["media"] == [PNG]
    assert "media" not in logged["sms"]
