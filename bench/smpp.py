"""SMPP throughput: messages/s at the SMSC, with delivery reports, for sync and async windows.

Usage: python bench/smpp.py [--jobs 5000] [--runs 3] [--big 100000] [--disconnect-every 5000]
Each case starts the SMSC simulator (`sms-router smsc-sim`) and the daemon as
subprocesses on a private redis-server, enqueues `--jobs` messages and times until
every one has its final status (delivery report applied). Prints medians with the
daemon's CPU per 1,000 messages and peak RSS. Then the endurance run: `--big`
messages through ONE transceiver session, window 100, while the simulator drops the
connection every `--disconnect-every` PDUs; checks none is lost.
Writes bench/results/smpp.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from harness import (
    NUMBERS,
    RESULTS,
    Stack,
    campaign_toml,
    cpu_seconds,
    median,
    peak_rss_mb,
    save,
    smsc_sim,
    start_daemon,
    status_counts,
    stop,
)
from redis.asyncio import Redis

from router import Client

FINAL = (b"delivered", b"undelivered", b"failed")


def smsc_stats(http: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/stats", timeout=10) as reply:
        return dict(json.loads(reply.read()))


def config(stack: Stack, port: int, window: int, processing: str) -> Path:
    path = stack.dir / f"smpp-{processing}-{window}.toml"
    path.write_text(
        f"""
[router]
redis = "{stack.redis_url}"
instance = "bench"
log_format = "json"
log_level = "warning"
[queue]
batch = 500
[profiles.bench]
global = true
protocol = "smpp"
direction = "both"
callback_url = "http://127.0.0.1:9/unused"
processing = "{processing}"
window = {window}
numbers = {json.dumps(NUMBERS)}
[profiles.bench.smpp]
host = "127.0.0.1"
port = {port}
system_id = "smppclient1"
password = "password"
bind = "transceiver"
binds = 1
response_timeout = 5
reconnect_max = 1
{campaign_toml(NUMBERS)}"""
    )
    return path


async def enqueue(url: str, count: int, prefix: str) -> list[str]:
    redis = Redis.from_url(url)
    client = Client(redis, default_profile="bench")
    ids: list[str] = []
    for start in range(0, count, 2000):
        jobs = [
            {"id": f"{prefix}-{i}", "to": "+447911123456", "text": f"bench message {i}"}
            for i in range(start, min(count, start + 2000))
        ]
        ids += await client.send_many(jobs)
    await redis.aclose()
    return ids


async def finished(url: str, ids: list[str]) -> dict[str, int]:
    redis = Redis.from_url(url)
    counts = await status_counts(redis, "bench", ids, chunk=5000)
    await redis.aclose()
    return counts


def one_run(
    stack: Stack,
    processing: str,
    window: int,
    jobs: int,
    tag: str,
    disconnect_every: int = 0,
    limit: float = 600,
) -> dict[str, Any]:
    sim, port, http = smsc_sim("--disconnect-every", str(disconnect_every))
    daemon = start_daemon(config(stack, port, window, processing), stack.dir / "daemon.log")
    try:
        time.sleep(1.5)
        cpu0 = cpu_seconds(daemon.pid)
        began = time.perf_counter()
        ids = asyncio.run(enqueue(stack.redis_url, jobs, tag))
        counts: dict[str, int] = {}
        while time.perf_counter() - began < limit:
            counts = asyncio.run(finished(stack.redis_url, ids))
            if sum(counts.get(s.decode(), 0) for s in FINAL) == jobs:
                break
            time.sleep(0.25)
        elapsed = time.perf_counter() - began
        cpu = cpu_seconds(daemon.pid) - cpu0
        rss = peak_rss_mb(daemon.pid)
        at_smsc = smsc_stats(http)
    finally:
        stop(daemon)
        sim.terminate()
        sim.wait(10)
    done = sum(counts.get(s.decode(), 0) for s in FINAL)
    return {
        "rate": done / elapsed,
        "cpu_per_1000": cpu / max(done, 1) * 1000,
        "cpu_share": cpu / elapsed,
        "rss_mb": rss,
        "statuses": counts,
        "lost": jobs - done,
        "smsc": at_smsc,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--disconnect-every", type=int, default=5000)
    parser.add_argument("--only-big", action="store_true", help="Skip the window cases.")
    args = parser.parse_args()
    stack = Stack()
    results: dict[str, Any] = {"jobs": args.jobs, "runs": args.runs, "cases": {}}
    try:
        cases = [] if args.only_big else [("sync", 1), ("async", 10), ("async", 100)]
        for processing, window in cases:
            runs = [
                one_run(stack, processing, window, args.jobs, f"{processing}{window}-{n}")
                for n in range(args.runs)
            ]
            row = {
                k: median([r[k] for r in runs])
                for k in ("rate", "cpu_per_1000", "cpu_share", "rss_mb")
            }
            row["lost"] = sum(r["lost"] for r in runs)
            results["cases"][f"{processing}-w{window}"] = row
            print(
                f"{processing:5} window {window:3}: {row['rate']:7.0f} msg/s to final status  "
                f"cpu {row['cpu_per_1000']:.2f}s/1000 msgs ({row['cpu_share']:.0%} of a core)  "
                f"peak rss {row['rss_mb']:.0f} MB  lost {row['lost']}  (median of {args.runs})",
                flush=True,
            )
        base = results["cases"].get("async-w10", {}).get("rate", 1.0)
        for row in results["cases"].values():
            row["ratio_to_async_w10"] = round(row["rate"] / base, 2)
        if args.big:
            big = one_run(stack, "async", 100, args.big, "big", args.disconnect_every, 1800)
            results["endurance"] = {
                "jobs": args.big,
                "disconnect_every": args.disconnect_every,
                **big,
            }
            print(
                f"endurance: {args.big} msgs, one transceiver, window 100, disconnect every "
                f"{args.disconnect_every} PDUs: {big['rate']:.0f} msg/s, lost {big['lost']}, "
                f"statuses {big['statuses']}, disconnects {big['smsc']['disconnects']}, "
                f"rss {big['rss_mb']:.0f} MB",
                flush=True,
            )
    finally:
        stack.close()
    previous = RESULTS / "smpp.json"
    if previous.exists():  # keep what this run skipped from the last run that did it
        before = json.loads(previous.read_text())
        if args.only_big:
            results["cases"] = before.get("cases", {})
        if not args.big and "endurance" in before:
            results["endurance"] = before["endurance"]
    print("written", save("smpp", results))


if __name__ == "__main__":
    main()
