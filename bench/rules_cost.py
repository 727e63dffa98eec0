"""What issue 8's rules cost: the router's drain (bench/versus_kannel.py) with the rules
off and on, rounds interleaved (off, on, off, on, ...).

Usage: python bench/rules_cost.py [--n 20000] [--rounds 3]

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

Kannel is not needed. Prints each round, the medians and the ratio on/off (median of
the per-round ratios); writes bench/results/rules_cost.json.
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

from harness import NUMBERS, cpu_seconds, peak_rss_mb, save
from redis.asyncio import Redis
from versus_kannel import SINK_PORT, WINDOW, Rig, ensure_tools, read_records, waited, waiter

from router import Client, keys

AREAS = ("650", "408", "415", "212")
TEXT = "Hello from the bench, it\u2019s your daily update"
OPTED_OUT = 10_000


def config_text(redis_url: str, *, rules: bool) -> str:
    """The bench profile with the rules off (today's) or all on."""
    profile = ""
    campaign = 'tier = "StandardVolume"\n'
    templates = ""
    if rules:
        profile = (
            'sender = "sticky+geomatch"\n'
            'default_use_case = "ACCOUNT_NOTIFICATION"\n'
            "smart_encoding = true\n"
            'blocklist = ["+1900", "+1976", "+4490"]\n'
        )
        campaign += 'daily_cap = 10000000\nuse_cases = ["2FA", "ACCOUNT_NOTIFICATION"]\n'
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


def jobs(tag: str, start: int, stop: int, *, rules: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(start, stop):
        job: dict[str, Any] = {"id": f"{tag}-{i}", "to": recipient(i)}
        if rules and i % 2:
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


async def preload(url: str, n: int, tag: str, *, rules: bool, batch: int = 2000) -> None:
    """The opt-out set (rules on), then `n` jobs through `Client.send_many`."""
    redis = Redis.from_url(url)
    if rules:
        # Numbers of an area code no recipient has: none of them is ever sent to.
        opted = [f"+1303{5_000_000 + i:07d}" for i in range(OPTED_OUT)]
        await redis.sadd(keys.opt_outs("bench"), *opted)
    client = Client(redis, default_profile="bench")
    for start in range(0, n, batch):
        await client.send_many(jobs(tag, start, min(n, start + batch), rules=rules))
    await redis.aclose()


def drain(n: int, scratch: Path, tag: str, *, rules: bool) -> dict[str, Any]:
    """versus_kannel's router drain with this configuration; checks every job was sent."""
    rig = Rig(scratch, tag)
    rig.config.write_text(config_text(rig.url, rules=rules))
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
    finally:
        rig.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ensure_tools(kannel=False)
    scratch = Path(tempfile.mkdtemp(prefix="sms-rules-"))
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for r in range(args.rounds):
        for name in ("off", "on"):
            row = drain(args.n, scratch, f"{name}{r}", rules=name == "on")
            runs[name].append(row)
            print(
                f"round {r + 1}: rules {name} {row['rate']:,.0f} msg/s "
                f"(complete {row['complete']}, cpu {row['cpu_pct']}, "
                f"sample {row['sample_statuses']})",
                flush=True,
            )
    off = statistics.median(x["rate"] for x in runs["off"])
    on = statistics.median(x["rate"] for x in runs["on"])
    ratios = [
        b["rate"] / a["rate"] for a, b in zip(runs["off"], runs["on"], strict=True) if a["rate"]
    ]
    ratio = round(statistics.median(ratios), 3) if ratios else None
    print(f"\nrules off {off:,.0f} msg/s, rules on {on:,.0f} msg/s, on/off {ratio}")
    print(f"sample texts (on): {runs['on'][-1]['sample_texts']}")
    path = save(
        "rules_cost",
        {
            "n": args.n,
            "rounds": args.rounds,
            "window": WINDOW,
            "off_rate": off,
            "on_rate": on,
            "ratio": ratio,
            "complete": all(x["complete"] for x in runs["off"] + runs["on"]),
            "runs": runs,
        },
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
