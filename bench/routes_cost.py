"""What issue 19's routing costs: the router's drain (bench/versus_kannel.py) through a
single inline profile and through a 200-route table over connectors with 1,000-prefix
price lists, rounds interleaved (inline, routed, inline, routed, ...).

Usage: python bench/routes_cost.py [--n 20000] [--rounds 3] [--breakdown]

Every run: the peer kit's SMPP sink (../shared/bench-peers), window 100, N jobs queued
while the sink is down, then drained; rate = the sink's first to last submit (the same
measure as versus_kannel's drain). The jobs are the same in all: 10,000 distinct
German mobile numbers (+4915x, +4916x, +4917x), sent from three US long codes.

- inline: today's configuration, one profile with ``protocol = "smpp"`` (a connector
  of its own, its only route).
- routed: the profile has no protocol; ``[connectors.main]`` is the same SMSC with a
  ``prices`` table of 1,000 prefixes (3 to 7 characters, "+49" among them, and
  ``default``), ``[connectors.backup]`` a second session to the same sink with the same
  prefixes 20 % dearer; 200 ``[[routes]]``: 199 that do not match these messages
  (other countries' prefixes, ``countries``, ``senders = ["alphanumeric"]``,
  ``use_cases``), then ``to = ["+4915", "+4916", "+4917"]`` over [main, backup] with
  ``strategy = "least_cost"``. Every message goes out over main (checked on a sample
  of records).

`--breakdown` also runs, each round:
- routed-w1: routed, but backup's window is 1. A profile may have as many messages
  unsettled as its connectors' windows together: 200 in routed (main's bind queues
  the 100 beyond its window), 101 here, about inline's 100; this separates what
  routing costs from what the extra room does.
- unpriced: routed without the price tables: the same 200 routes (least_cost then
  keeps route order, main first), every price look-up finds an empty table and no
  spend is recorded.

Prints each round, the medians, the router's CPU per 1,000 messages and the ratio to
inline (median of the per-round ratios); writes bench/results/routes_cost.json. The
rates move with other load on the machine (each run records the 1-minute load
average before it); the CPU per 1,000 messages moves much less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import NUMBERS, campaign_toml, cpu_seconds, peak_rss_mb, round_ratio, save
from redis.asyncio import Redis
from versus_kannel import SINK_PORT, WINDOW, Rig, ensure_tools, read_records, waited, waiter

from router import Client

VARIANTS = ("inline", "routed")
BREAKDOWN = ("routed-w1", "unpriced")
ROUTES = 200
PRICES = 1_000
RECIPIENTS = 10_000
TEXT = "Hello from the bench"
# German mobile network prefixes (after +49): the recipients' and the matching route's.
NETWORKS = ("151", "152", "157", "159", "160", "162", "163", *(f"17{d}" for d in range(10)))
# Country codes of the price lists and the routes that do not match (49 only in prices).
CODES = (
    "1", "7", "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44",
    "45", "46", "47", "48", "51", "52", "54", "55", "56", "57", "60", "61", "62", "63", "64",
    "65", "66", "81", "82", "84", "86", "90", "91", "92", "234", "254", "351", "353", "358",
    "420", "971", "972",
)  # fmt: skip
COUNTRIES = (
    "FR", "ES", "IT", "NL", "BE", "AT", "CH", "PL", "SE", "NO", "DK", "FI", "PT", "IE", "GR",
    "CZ", "HU", "RO", "US", "CA", "BR", "MX", "IN", "JP", "AU", "ZA", "NG", "KE", "AE", "IL",
)  # fmt: skip


def prefix(rng: random.Random, code: str) -> str:
    """A prefix of 3 to 7 characters ('+', the country code, more digits) in `code`."""
    size = rng.randint(3, 7)
    digits = "".join(rng.choice("0123456789") for _ in range(max(0, size - 1 - len(code))))
    return f"+{code}{digits}"


def price_list(rng: random.Random) -> dict[str, float]:
    """`PRICES` prefixes with a price each (German ones among them, so a recipient's
    longest match varies), and ``default``."""
    prices: dict[str, float] = {"+49": 0.075, "default": 0.09}
    while len(prices) < PRICES:
        code = "49" if rng.random() < 0.1 else rng.choice(CODES)
        prices.setdefault(prefix(rng, code), round(rng.uniform(0.005, 0.08), 4))
    return prices


def routes(rng: random.Random) -> list[dict[str, Any]]:
    """`ROUTES` - 1 routes that none of the jobs matches, then the one they take."""
    out: list[dict[str, Any]] = []
    for i in range(ROUTES - 1):
        route: dict[str, Any] = {"connectors": ["backup", "main"] if i % 3 else ["main"]}
        kind = i % 4
        if kind == 0:
            route["to"] = sorted({prefix(rng, rng.choice(CODES)) for _ in range(3)})
        elif kind == 1:
            route["countries"] = sorted(set(rng.sample(COUNTRIES, 2)))
        elif kind == 2:  # German numbers, but only from alphanumeric senders
            route.update(to=["+49"], senders=["alphanumeric"])
        else:  # German numbers, but only for a use case the jobs do not name
            route.update(to=["+49"], use_cases=[f"CASE_{i}"])
        route["strategy"] = "least_cost" if i % 2 else "failover"
        out.append(route)
    out.append(
        {
            "to": ["+4915", "+4916", "+4917"],
            "connectors": ["main", "backup"],
            "strategy": "least_cost",
        }
    )
    return out


def toml_value(value: Any) -> str:
    return json.dumps(value)  # strings, numbers and lists of them: TOML reads JSON's


def smpp_table(name: str) -> str:
    return f"""[connectors.{name}.smpp]
host = "127.0.0.1"
port = {SINK_PORT}
system_id = "{name}"
password = "bench"
bind = "transceiver"
registered_delivery = 0
reconnect_max = 1
"""


def routed_config(
    redis_url: str, *, backup_window: int = WINDOW, priced: bool = True, seed: int = 19
) -> str:
    """The routed variant's configuration (the same seed: the same tables each run);
    without `priced`, the connectors have no ``prices``."""
    rng = random.Random(seed)
    main = price_list(rng)
    backup = {p: round(v * 1.2, 4) for p, v in main.items()}
    parts = [
        f"""
[router]
redis = "{redis_url}"
instance = "versus"
log_format = "json"
log_level = "warning"
[queue]
batch = 500
[profiles.bench]
global = true
window = {WINDOW}
numbers = {json.dumps(NUMBERS)}
"""
    ]
    for name, prices, window in (("main", main, WINDOW), ("backup", backup, backup_window)):
        parts.append(f'[connectors.{name}]\nprotocol = "smpp"\nwindow = {window}\n')
        parts.append(smpp_table(name))
        if priced:
            parts.append(f"[connectors.{name}.prices]\n")
            parts += [f'"{p}" = {v}\n' for p, v in prices.items()]
    for route in routes(rng):
        parts.append("[[routes]]\n")
        parts += [f"{key} = {toml_value(value)}\n" for key, value in route.items()]
    parts.append(campaign_toml(NUMBERS))
    return "".join(parts)


def recipients(seed: int = 49) -> list[str]:
    """`RECIPIENTS` distinct German mobile numbers over `NETWORKS`."""
    rng = random.Random(seed)
    return [
        f"+49{NETWORKS[i % len(NETWORKS)]}{n:07d}"
        for i, n in enumerate(rng.sample(range(10_000_000), RECIPIENTS))
    ]


async def preload(url: str, n: int, tag: str, batch: int = 2000) -> None:
    """`n` jobs through `Client.send_many`, the recipients in turn."""
    to = recipients()
    redis = Redis.from_url(url)
    client = Client(redis, default_profile="bench")
    for start in range(0, n, batch):
        await client.send_many(
            [
                {"id": f"{tag}-{i}", "to": to[i % len(to)], "text": TEXT}
                for i in range(start, min(n, start + batch))
            ]
        )
    await redis.aclose()


def drain(n: int, scratch: Path, tag: str, variant: str) -> dict[str, Any]:
    """versus_kannel's router drain with this variant's configuration."""
    load = os.getloadavg()[0]  # other work on the machine moves the rate (see --help)
    rig = Rig(scratch, tag)  # its configuration is the inline variant
    if variant != "inline":
        backup_window = 1 if variant == "routed-w1" else WINDOW
        text = routed_config(rig.url, backup_window=backup_window, priced=variant != "unpriced")
        rig.config.write_text(text)
    try:
        asyncio.run(preload(rig.url, n, tag))
        rig.start_daemon()
        time.sleep(1.5)  # started and trying to bind
        pids = rig.pids()
        wait = waiter(n, rig.stats, tag, pids)
        time.sleep(0.5)
        rig.start_sink()
        result = waited(wait)
        row: dict[str, Any] = {
            "rate": result.get("sink_rate", 0.0),
            "complete": result.get("complete", False),
            "cpu_pct": {k: v["cpu_pct"] for k, v in result.get("cpu", {}).items()},
            "router_cpu_s": round(cpu_seconds(rig.router_pid), 2),
            "load_before": round(load, 2),
        }
        row["cpu_pct"].pop("loader", None)  # loadgen only waits here
        # CPU seconds per 1,000 messages over the drain (loadgen's share of the span)
        rate, router = row["rate"], row["cpu_pct"].get("router", 0.0)
        row["router_cpu_per_1k"] = round(10 * router / rate, 3) if rate else 0.0
        row["rss_mb"] = round(peak_rss_mb(rig.router_pid), 1)
        # A sample of records (and the last one): sent, and over which connector.
        ids = [f"{tag}-{i}" for i in (*range(0, n, max(1, n // 50)), n - 1)]
        sample = asyncio.run(read_records(rig.url, ids))
        row["sample_statuses"] = sorted({str((r or {}).get("status")) for r in sample})
        row["sample_connectors"] = sorted({str((r or {}).get("connector")) for r in sample})
    finally:
        rig.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also run routed-w1 (backup's window 1) and unpriced (no price tables)",
    )
    args = parser.parse_args()
    ensure_tools(kannel=False)
    scratch = Path(tempfile.mkdtemp(prefix="sms-routes-"))
    variants = (*VARIANTS, *BREAKDOWN) if args.breakdown else VARIANTS
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name in variants:
            row = drain(args.n, scratch, f"{name}{r}", name)
            runs[name].append(row)
            print(
                f"round {r + 1}: {name} {row['rate']:,.0f} msg/s (complete {row['complete']}, "
                f"cpu {row['cpu_pct']}, {row['router_cpu_per_1k']} CPU s per 1,000, "
                f"sample {row['sample_statuses']} over {row['sample_connectors']}, "
                f"load {row['load_before']})",
                flush=True,
            )
    summary: dict[str, dict[str, Any]] = {}
    for name, rows in runs.items():
        summary[name] = {
            "rate": statistics.median(x["rate"] for x in rows),
            "ratio": round_ratio(runs["inline"], rows) if name != "inline" else 1.0,
            "router_cpu_per_1k": statistics.median(x["router_cpu_per_1k"] for x in rows),
            "cpu_pct": {
                k: statistics.median(x["cpu_pct"].get(k, 0.0) for x in rows)
                for k in ("router", "redis")
            },
            "rss_mb": statistics.median(x["rss_mb"] for x in rows),
        }
    print()
    for name, row in summary.items():
        print(
            f"{name}: {row['rate']:,.0f} msg/s, /inline {row['ratio']}, router "
            f"{row['router_cpu_per_1k']:.3f} CPU s per 1,000 messages, CPU % {row['cpu_pct']}"
        )
    routed = summary["routed"]["ratio"]
    verdict = "ok" if (routed or 0) >= 0.9 else "below"
    print(f"routed/inline {routed} (target >= 0.9: {verdict})")
    path = save(
        "routes_cost",
        {
            "n": args.n,
            "rounds": args.rounds,
            "window": WINDOW,
            "routes": ROUTES,
            "prices": PRICES,
            "recipients": RECIPIENTS,
            "inline_rate": summary["inline"]["rate"],
            "routed_rate": summary["routed"]["rate"],
            "ratio": routed,
            "variants": summary,
            "complete": all(x["complete"] for rows in runs.values() for x in rows),
            "runs": runs,
        },
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
