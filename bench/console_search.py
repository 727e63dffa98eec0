"""The console's message pages against a store of 1,000,000 messages: how long the
search by recipient, a message's page and the SMS log's pages take.

Usage: python bench/console_search.py [--n 1000000] [--recipients 200000] [--tries 20]

A private Redis is filled with N delivered message records of profile ``bench`` in the
router's compact shape (lua/common.lua: `created_at`, `owner`, `status`, `n`, the
four history steps queued, sending (+0.1 s), sent over connector ``smsc`` (+0.2 s),
delivered with its report note (+0.3 s), `to`, `from`, `text`, `pmid`), each with its
recipient index member (``<to>|<time>|<id>`` in ``sms:{bench}:to:<YYYYMMDD>``, its
UTC day's set, as enqueue.lua writes it) and its `delivered` event on the profile's
event stream (trimmed to `queue.events_maxlen`, 1,000,000 by default) — by a Lua
script, 1000 records a call, created a millisecond apart. The recipients get N /
`recipients` messages each (5 by default); one more recipient has 1,000 messages
(paging through a long index).

Then the daemon's real HTTP application (`router.api.app.build_app`, aiohttp on a free
port, signed in with an admin key) is asked `tries` times each (after one warm-up):
``/console/messages?to=<recipient>`` (the recipient index), the same for the recipient
with 1,000 messages, ``/console/messages/<id>`` (a message's page), ``/console/messages``
(the plain page: the newest 50 of the SMS log), ``?status=delivered&profile=bench`` and
``?from=<sender>&since=1h`` (the log with a filter), and ``?status=failed`` (no record
matches: the page reads as many events as a page may, router/console/messages.py's
`LOG_SCAN`). Prints the median and the 95th percentile wall time per page (ms) and
Redis' used memory; writes bench/results/console_search.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import tomllib
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

import aiohttp
from aiohttp import web
from harness import RedisServer, router_config, save
from redis.asyncio import Redis

from router.api.app import build_app
from router.api.common import ApiContext
from router.client import Client
from router.config import Settings, parse_settings
from router.store import keys
from router.store.ledger import Ledger

ADMIN = "a" * 32
PROFILE = "bench"
RETENTION = 7 * 86_400
BATCH = 1000

# One call writes ARGV[1] records: ids `m-<first + k>`, created ARGV[3] + k ms, to the
# recipient (first + k) % ARGV[4] (ARGV[5]: the heavy recipient's, for every record when
# not ''), each with its index member (in ARGV[8], the day's set, or ARGV[10], the next
# day's, from ARGV[9], the next day's first microsecond) and its `delivered` event.
FILL = """
local count, first, start = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local recipients, heavy = tonumber(ARGV[4]), ARGV[5]
local digits = '0123456789abcdefghijklmnopqrstuvwxyz'
local function stamp(us)  -- keys.recipient_stamp: 11 base-36 digits of microseconds
  local out = ''
  while us > 0 do
    local d = us % 36
    out = string.sub(digits, d + 1, d + 1) .. out
    us = (us - d) / 36
  end
  return string.rep('0', 11 - #out) .. out
end
for k = 0, count - 1 do
  local i = first + k
  local id = 'm-' .. i
  local created = string.format('%.6f', start + k / 1000)
  local to = heavy
  if to == '' then to = string.format('+447911%06d', i % recipients) end
  local rec = 'sms:{bench}:msg:' .. id
  redis.call('HSET', rec, 'created_at', created, 'owner', start * 1000 + k .. '-0',
    'status', 'delivered', 'n', 4, '1', 'q0', '2', 'g255s', '3', 's4abk|smsc',
    '4', 'd6fhc||stat DELIVRD err 000', 'to', to, 'from', '+16501112345',
    'text', 'Hello from the bench', 'pmid', string.format('%016x', i))
  redis.call('EXPIRE', rec, ARGV[6])
  local us = math.floor(tonumber(created) * 1000000 + 0.5)
  local index = ARGV[8]
  if us >= tonumber(ARGV[9]) then index = ARGV[10] end
  redis.call('ZADD', index, 0, to .. '|' .. stamp(us) .. '|' .. id)
  redis.call('EXPIREAT', index, ARGV[11])
  -- (the event's time is the delivered step's to the microsecond: the log lists a
  -- record at its latest change)
  local at = math.floor(tonumber(created) * 1000000 + 0.5) + 300000
  local at_text = string.format('%d.%06d', math.floor(at / 1000000), at % 1000000)
  redis.call('XADD', 'sms:{bench}:events', 'MAXLEN', '~', ARGV[7], '*', 'id', id,
    'profile', 'bench', 'status', 'delivered', 'at', at_text)
end
return count
"""


def settings_for(url: str, scratch: Path) -> Settings:
    """The benchmarks' profile (harness.router_config) with an admin API key."""
    path = router_config(scratch / "router.toml", url)
    data: dict[str, Any] = tomllib.loads(path.read_text())
    data["api"] = {"listen": "127.0.0.1:0", "keys": {"ops": {"token": ADMIN, "scopes": ["admin"]}}}
    data["router"]["state_dir"] = str(scratch / "var")
    return parse_settings(data, env={}, base_dir=scratch)


def days_of(start: float) -> list[str | int]:
    """FILL's ARGV[8:12] for records created from `start` on (within a day): the day's
    index, the next day's first microsecond, the next day's index, when they expire."""
    day = int(start // 86_400) * 86_400
    return [
        keys.recipient_index(PROFILE, keys.recipient_day(start)),
        (day + 86_400) * 1_000_000,
        keys.recipient_index(PROFILE, keys.recipient_day(day + 86_400)),
        day + 2 * 86_400 + RETENTION,
    ]


async def fill(redis: Redis, n: int, recipients: int, maxlen: int) -> float:
    """N records (and 1,000 to the heavy recipient after them); seconds taken."""
    script = redis.register_script(FILL)
    began = time.perf_counter()
    start = time.time() - 3600  # the last hour, a millisecond apart per batch
    for first in range(0, n, BATCH):
        count = min(BATCH, n - first)
        args: list[str | int] = [
            count,
            first,
            f"{start + first / 1000:.3f}",
            recipients,
            "",
            RETENTION,
            maxlen,
            *days_of(start + first / 1000),
        ]
        await script(keys=[], args=args)
    heavy: list[str | int] = [
        1000,
        n,
        f"{start + n / 1000:.3f}",
        recipients,
        "+447912000000",
        RETENTION,
        maxlen,
        *days_of(start + n / 1000),
    ]
    await script(keys=[], args=heavy)
    return time.perf_counter() - began


async def timed(
    http: aiohttp.ClientSession, path: str, cookie: str, tries: int, expect: str
) -> dict[str, float]:
    """Median and 95th percentile (ms) of `tries` GETs of `path` (after a warm-up)."""
    times = []
    for n in range(tries + 1):
        began = time.perf_counter()
        async with http.get(path, headers={"Cookie": f"sms_console={cookie}"}) as answer:
            text = await answer.text()
        spent = (time.perf_counter() - began) * 1000
        if answer.status != 200 or expect not in text:
            raise SystemExit(f"{path}: {answer.status}, {expect!r} not in the page")
        if n:
            times.append(spent)
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 2),
    }


async def run(n: int, recipients: int, tries: int) -> dict[str, Any]:
    scratch = Path(mkdtemp(prefix="sms-console-search-"))
    server = RedisServer(appendonly=False, folder=scratch / "redis")
    redis = Redis.from_url(server.url)
    runner: web.AppRunner | None = None
    try:
        settings = settings_for(server.url, scratch)
        seconds = await fill(redis, n, recipients, settings.queue.events_maxlen)
        memory = int((await redis.info("memory"))["used_memory"])
        print(f"filled {n:,} records in {seconds:.0f} s; used_memory {memory / 2**20:,.0f} MiB")
        context = ApiContext(
            settings=settings,
            redis=redis,
            ledger=Ledger(redis, retention=RETENTION, events_maxlen=settings.queue.events_maxlen),
            client=Client.from_settings(redis, settings),
        )
        runner = web.AppRunner(build_app(context))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(base_url=base) as http:
            async with http.post(
                "/console/login", data={"token": ADMIN}, allow_redirects=False
            ) as answer:
                cookie = answer.cookies["sms_console"].value
            some = n // 2
            to = f"+447911{some % recipients:06d}"
            pages = {
                "search by recipient (5 messages)": (
                    f"/console/messages?to=%2B{to[1:]}",
                    f"m-{some}",
                ),
                "search by recipient (1,000 messages, first page)": (
                    "/console/messages?to=%2B447912000000",
                    f"m-{n + 999}",
                ),
                "message page": (f"/console/messages/m-{some}", "DELIVRD"),
                "plain search page (newest 50)": ("/console/messages", f"m-{n + 999}"),
                "by status and profile (SMS log)": (
                    "/console/messages?status=delivered&profile=bench",
                    f"m-{n + 999}",
                ),
                "by status, none match (SMS log, reads its page's limit of events)": (
                    "/console/messages?status=failed",
                    "No message matches",
                ),
                "by sender, last hour (SMS log)": (
                    "/console/messages?from=%2B16501112345&since=1h",
                    f"m-{n + 999}",
                ),
            }
            figures = {}
            for name, (path, expect) in pages.items():
                figures[name] = await timed(http, path, cookie, tries, expect)
                print(f"{name:50} {figures[name]['median_ms']:8.2f} ms median, "
                      f"p95 {figures[name]['p95_ms']:.2f} ms  ({path})")  # fmt: skip
    finally:
        if runner is not None:
            await runner.cleanup()
        await redis.aclose()
        server.close()
    return {
        "n": n,
        "recipients": recipients,
        "tries": tries,
        "fill_seconds": round(seconds, 1),
        "used_memory_mib": round(memory / 2**20, 1),
        "pages": figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--tries", type=int, default=20)
    args = parser.parse_args()
    result = asyncio.run(run(args.n, args.recipients, args.tries))
    path = save("console_search", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
