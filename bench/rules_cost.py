"""What issue 8's rules cost: the router's drain (bench/versus_kannel.py) with the rules
off and on, rounds interleaved (off, on, off, on, ...).

Usage: python bench/rules_cost.py [--n 20000] [--rounds 3] [--breakdown]

Both runs: one SMPP transceiver to the peer kit's sink (../shared/bench-peers), window
100, N jobs queued while the sink is down, then drained; rate = the sink's first to
last submit (the same measure as versus_kannel's drain). Recipients are US numbers
spread over four area codes (caps count only US/CA destinations).

- off: today's configuration: three US numbers on a Confirmed StandardVolume campaign
  without a daily cap, round robin, plain text.
- on: sender = "sticky+geomatch" (each recipient is new: every message writes its
  sticky mapping), a StandardVolume campaign with daily_cap = 10,000,000 (never
  reached, but the caps script runs for every batch), use_cases with a
  default_use_case (half the jobs name "2FA"), an opt-out set of 10,000 numbers none
  of which is a recipient, three blocklist prefixes, smart_encoding = true (the text
  has a curly apostrophe), and half the jobs a template with vars and lang (es, or
  pt-BR falling back to the default en).

`--breakdown` also runs, each round, every rule but one group (sender: sticky+geomatch;
caps: the daily cap; audience: opt-outs and blocklist; compose: templates, smart
encoding, use cases) to show what each costs. Kannel is not needed. Prints each round,
the medians and the ratio on/off (median of the per-round ratios); writes
bench/results/rules_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import NUMBERS, cpu_seconds, peak_rss_mb, round_ratio, save
from redis.asyncio import Redis
from versus_kannel import SINK_PORT, WINDOW, Rig, ensure_tools, read_records, waited, waiter

from router import Client
from router.store import keys
from router.summary import today

AREAS = ("650", "408", "415", "212")
TEXT = "Hello from the bench, it\u2019s your daily update"
OPTED_OUT = 10_000
# The rules in four groups, so --breakdown can leave each out in turn.
GROUPS = ("sender", "caps", "audience", "compose")
ALL = frozenset(GROUPS)


def config_text(redis_url: str, rules: frozenset[str]) -> str:
    """The bench profile with the given rule groups on (none: today's configuration)."""
    profile = ""
    campaign = 'tier = "StandardVolume"\n'
    templates = ""
    if "sender" in rules:
        profile += 'sender = "sticky+geomatch"\n'
    if "caps" in rules:
        campaign += "daily_cap = 10000000\n"
    if "audience" in rules:
        profile += 'blocklist = ["+1900", "+1976", "+4490"]\n'
    if "compose" in rules:
        profile += 'default_use_case = "ACCOUNT_NOTIFICATION"\nsmart_encoding = true\n'
        campaign += 'use_cases = ["2FA", "ACCOUNT_NOTIFICATION"]\n'
        templates = (
            "[templates.code]\n"
            'text.en = "Hi {name}, your code is {code}"\n'
            'text.es = "Hola {name}, tu codigo es {code}"\n'
            'default_lang = "en"\n'
        )
    numbers = "".join(
        f'[numbers."{n}"]\ncampaign = "bench"\nfeatures = ["SmsSender", "A2PSmsSender"]\n'
        for n in NUMBERS
    )
    return f"""
[router]
redis = "{redis_url}"
instance = "versus"
log_format = "json"
log_level = "warning"
[queue]
batch = 500
[campaigns.bench]
brand = "Bench"
status = "Confirmed"
{campaign}
{numbers}
{templates}
[profiles.bench]
global = true
protocol = "smpp"
window = {WINDOW}
numbers = {json.dumps(NUMBERS)}
{profile}
[profiles.bench.smpp]
host = "127.0.0.1"
port = {SINK_PORT}
system_id = "bench"
password = "bench"
bind = "transceiver"
registered_delivery = 0
reconnect_max = 1
"""


def recipient(i: int) -> str:
    return f"+1{AREAS[i % len(AREAS)]}{2_000_000 + i // len(AREAS):07d}"


def jobs(tag: str, start: int, stop: int, *, rules: frozenset[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(start, stop):
        job: dict[str, Any] = {"id": f"{tag}-{i}", "to": recipient(i)}
        if "compose" in rules and i % 2:
            job.update(
                template="code",
                vars={"name": f"user{i}", "code": f"{i % 1_000_000:06d}"},
                lang="es" if i % 4 == 1 else "pt-BR",
                use_case="2FA",
            )
        else:
            job["text"] = TEXT
        out.append(job)
    return out


async def preload(url: str, n: int, tag: str, *, rules: frozenset[str], batch: int = 2000) -> None:
    """The opt-out set (audience rules on), then `n` jobs through `Client.send_many`."""
    redis = Redis.from_url(url)
    if "audience" in rules:
        # Numbers of an area code no recipient has: none of them is ever sent to.
        opted = [f"+1303{5_000_000 + i:07d}" for i in range(OPTED_OUT)]
        await redis.sadd(keys.opt_outs("bench"), *opted)
    client = Client(redis, default_profile="bench")
    for start in range(0, n, batch):
        await client.send_many(jobs(tag, start, min(n, start + batch), rules=rules))
    await redis.aclose()


async def rules_state(url: str) -> tuple[int, int]:
    """Proof the rules ran: today's count of the campaign and the sticky mappings made."""
    redis = Redis.from_url(url)
    try:
        counted = await redis.hget(keys.campaign_counts(today()), "bench")
        mappings = [k async for k in redis.scan_iter(match=keys.sticky("bench", "*"), count=1000)]
    finally:
        await redis.aclose()
    return int(counted or 0), len(mappings)


def drain(n: int, scratch: Path, tag: str, rules: frozenset[str]) -> dict[str, Any]:
    """versus_kannel's router drain with this configuration; checks every job was sent."""
    rig = Rig(scratch, tag)
    rig.config.write_text(config_text(rig.url, rules))
    try:
        asyncio.run(preload(rig.url, n, tag, rules=rules))
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
        }
        row["cpu_pct"].pop("loader", None)
        row["rss_mb"] = round(peak_rss_mb(rig.router_pid), 1)
        # A sample of records: sent, and a templated one rendered.
        sample = asyncio.run(read_records(rig.url, [f"{tag}-{i}" for i in range(8)]))
        row["sample_statuses"] = sorted({str((r or {}).get("status")) for r in sample})
        row["sample_texts"] = [str((r or {}).get("text", "")) for r in sample[:2]]
        row["counted"], row["sticky_mappings"] = asyncio.run(rules_state(rig.url))
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
        help="also run, each round, all rules but one group (" + ", ".join(GROUPS) + ")",
    )
    args = parser.parse_args()
    ensure_tools(kannel=False)
    scratch = Path(tempfile.mkdtemp(prefix="sms-rules-"))
    variants: dict[str, frozenset[str]] = {"off": frozenset(), "on": ALL}
    if args.breakdown:
        variants |= {f"on-{g}": ALL - {g} for g in GROUPS}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, rules in variants.items():
            row = drain(args.n, scratch, f"{name}{r}", rules)
            runs[name].append(row)
            print(
                f"round {r + 1}: rules {name} {row['rate']:,.0f} msg/s "
                f"(complete {row['complete']}, cpu {row['cpu_pct']}, "
                f"sample {row['sample_statuses']}, counted {row['counted']}, "
                f"sticky {row['sticky_mappings']})",
                flush=True,
            )
    rates = {name: statistics.median(x["rate"] for x in rows) for name, rows in runs.items()}
    ratios = {name: round_ratio(runs["off"], rows) for name, rows in runs.items() if name != "off"}
    print(
        f"\nrules off {rates['off']:,.0f} msg/s, rules on {rates['on']:,.0f} msg/s, "
        f"on/off {ratios['on']}"
    )
    for name in variants:
        if name.startswith("on-"):
            print(f"all rules but {name[3:]}: {rates[name]:,.0f} msg/s, /off {ratios[name]}")
    print(f"sample texts (on): {runs['on'][-1]['sample_texts']}")
    path = save(
        "rules_cost",
        {
            "n": args.n,
            "rounds": args.rounds,
            "window": WINDOW,
            "off_rate": rates["off"],
            "on_rate": rates["on"],
            "ratio": ratios["on"],
            "rates": rates,
            "ratios": ratios,
            "complete": all(x["complete"] for rows in runs.values() for x in rows),
            "runs": runs,
        },
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
