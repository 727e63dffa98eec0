"""What tracked links cost the drain: the router's drain (bench/versus_kannel.py's) with
``shorten`` off and on, rounds interleaved (off, on, off, on, ...), every message
carrying one URL.

Usage: python bench/links_cost.py [--n 20000] [--rounds 5]
       python bench/links_cost.py --profile on|off [--n 60000] [--seconds 8]
       python bench/links_cost.py --micro

Both runs: one SMPP transceiver to the peer kit's sink (../shared/bench-peers), window
100, N jobs queued while the sink is down, then drained; rate = the sink's first to
last submit (the same measure as versus_kannel's drain). Every text is "Your order
<i> shipped: https://shop.example.com/orders/<i>?tab=tracking" (63-68 characters).

- off: ``[links]`` unset, the profile without ``shorten``: the URL is sent as it is.
- on: ``[links] base_url = "https://s.example.com/l"`` and ``shorten = true``: each URL
  becomes a short link (a ``SET NX EX`` per message in the planner's round trip).

`--micro`: the compose stage's links alone, on a private Redis: the router CPU
(process time) per message with one URL of `Links.prepare`, and of prepare plus the
batch's three commands (`write_commands`, `Links.taken`), batches of 500, the least of
30 tries.

`--profile`: one drain (shortening on or off) with py-spy attached (as
bench/profile_drain.py: 200 Hz, raw stacks in /tmp/links-<on|off>.raw), then the hottest
functions and the share of the samples in the links' code. Kannel is not needed.
Prints each round, the medians and the ratio on/off (median of
the per-round ratios) and the router's CPU per message off/on (per round, median: the
rate the router would reach on a core of its own; the machine's other load sways it
less than the rate); writes bench/results/links_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from drain_row import drain_row, interleaved
from harness import RedisServer, ensure_tools, save
from profile_drain import summarise
from redis.asyncio import Redis

from router import Client
from router.links import Links, ToShorten, write_commands
from router.store import roundtrip

BASE_URL = "https://s.example.com/l"


def text(i: int) -> str:
    return f"Your order {i} shipped: https://shop.example.com/orders/{i}?tab=tracking"


async def preload(url: str, n: int, tag: str, batch: int = 2000) -> None:
    """`n` jobs with one URL each, through `Client.send_many`."""
    redis = Redis.from_url(url)
    client = Client(redis, default_profile="bench")
    for start in range(0, n, batch):
        await client.send_many(
            [
                {"id": f"{tag}-{i}", "to": f"+4915100{i % 1_000_000:06d}", "text": text(i)}
                for i in range(start, min(n, start + batch))
            ]
        )
    await redis.aclose()


async def link_count(url: str) -> int:
    redis = Redis.from_url(url)
    try:
        return len([k async for k in redis.scan_iter(match="sms:{bench}:links:*")])
    finally:
        await redis.aclose()


async def micro(url: str, batch: int = 500, tries: int = 30) -> dict[str, float]:
    """Least process time per message of prepare, and of prepare + the writes."""
    redis = Redis.from_url(url)
    links = Links(redis, base_url=BASE_URL, profiles=["bench"])
    items = [ToShorten(text(i), f"m-{i}", "bench", 86_400) for i in range(batch)]
    best = {"prepare": 1e9, "prepare+write": 1e9}
    try:
        for _ in range(tries):
            began = time.process_time()
            links.prepare(items)
            best["prepare"] = min(best["prepare"], time.process_time() - began)
            began = time.process_time()
            prepared = links.prepare(items)
            replies = await roundtrip.execute(redis, write_commands(prepared.writes))
            await links.taken(prepared.writes, replies)
            best["prepare+write"] = min(best["prepare+write"], time.process_time() - began)
    finally:
        await redis.aclose()
    return {k: round(v / batch * 1e6, 2) for k, v in best.items()}


def drain(n: int, scratch: Path, tag: str, on: bool, *, profile: int = 0) -> dict[str, Any]:
    """versus_kannel's router drain with shortening `on` or off; checks every job was sent."""

    def edit(config: str) -> str:
        if not on:
            return config
        config = config.replace("global = true\n", "global = true\nshorten = true\n", 1)
        return config + f'\n[links]\nbase_url = "{BASE_URL}"\n'

    return drain_row(
        n,
        scratch,
        tag,
        preload=preload,
        edit=edit,
        spy_seconds=profile,
        spy_out=Path(f"/tmp/links-{tag}.raw"),
        extra=lambda url: {"links": asyncio.run(link_count(url))},
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", choices=["on", "off"], help="one drain under py-spy")
    parser.add_argument("--seconds", type=int, default=8, help="py-spy's recording time")
    parser.add_argument("--micro", action="store_true", help="the compose stage's links alone")
    args = parser.parse_args()
    if args.micro:
        server = RedisServer()
        try:
            print(asyncio.run(micro(server.url)), "us of router CPU per message with a URL")
        finally:
            server.close()
        return
    ensure_tools(kannel=False)
    scratch = Path(tempfile.mkdtemp(prefix="sms-links-"))
    if args.profile:
        row = drain(args.n, scratch, args.profile, args.profile == "on", profile=args.seconds)
        print(f"links {args.profile}: {row['rate']:,.0f} msg/s, complete {row['complete']}")
        raw = Path(f"/tmp/links-{args.profile}.raw")
        summarise(raw)
        total = mine = 0
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            total += int(count)
            if "links.py" in stack or "shorten.py" in stack:
                mine += int(count)
        print(f"samples in router/links.py or router/engine/shorten.py: {mine / max(total, 1):.1%}")
        return
    found = interleaved(
        args.rounds,
        "off",
        "on",
        lambda name, r: drain(args.n, scratch, f"{name}{r}", name == "on"),
        lambda row: f"links {row['links']}, {row['sample_statuses']}",
    )
    rates, cpu, runs = found.rates, found.cpu, found.runs
    print(
        f"\nlinks off {rates['off']:,.0f} msg/s ({cpu['off']} us router CPU/msg), "
        f"on {rates['on']:,.0f} msg/s ({cpu['on']} us/msg), on/off {found.ratio}; "
        f"router CPU per message off/on {found.cpu_ratio}"
    )
    print(f"sample text (on): {runs['on'][-1]['sample_text']}")
    path = save(
        "links_cost",
        {
            "n": args.n,
            "rounds": args.rounds,
            "off_rate": rates["off"],
            "on_rate": rates["on"],
            "ratio": found.ratio,
            "cpu_ratio": found.cpu_ratio,
            "router_us_per_msg": cpu,
            "complete": found.complete,
            "runs": runs,
        },
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
