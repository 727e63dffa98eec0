"""Throughput of the HTTP path: jobs/s through the daemon to the provider simulator.

Usage: python bench/throughput.py [--jobs 5000] [--runs 3]
For each processing mode and window it starts the daemon (a subprocess), enqueues
`--jobs` messages, and times until the simulator has accepted all of them. Prints
the median of the runs, the daemon's CPU seconds per 1,000 messages and peak RSS,
and writes bench/results/throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from harness import Stack, cpu_seconds, median, peak_rss_mb, save, start_daemon, stop
from redis.asyncio import Redis

from router import Client

CASES = [("sync", 1), ("async", 10), ("async", 32), ("async", 100)]


async def enqueue(url: str, count: int, prefix: str) -> None:
    redis = Redis.from_url(url)
    client = Client(redis, default_profile="bench")
    for start in range(0, count, 1000):
        jobs = [
            {"id": f"{prefix}-{i}", "to": "+447911123456", "text": f"bench {i}"}
            for i in range(start, min(count, start + 1000))
        ]
        await client.send_many(jobs)
    await redis.aclose()


def one_run(stack: Stack, processing: str, window: int, jobs: int, tag: str) -> dict[str, float]:
    config = stack.config(window=window, processing=processing)
    stack.sim_reset()
    daemon = start_daemon(config, stack.dir / "daemon.log")
    time.sleep(1.0)  # startup is not what we measure
    cpu0 = cpu_seconds(daemon.pid)
    began = time.perf_counter()
    asyncio.run(enqueue(stack.redis_url, jobs, tag))
    while stack.sim_stats()["accepted"] < jobs:
        time.sleep(0.02)
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds(daemon.pid) - cpu0
    rss = peak_rss_mb(daemon.pid)
    assert stop(daemon) == 0
    return {
        "rate": jobs / elapsed,
        "cpu_per_1000": cpu / jobs * 1000,
        "rss_mb": rss,
        "cpu_share": cpu / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    stack = Stack()
    results = {}
    try:
        for processing, window in CASES:
            jobs = args.jobs // 5 if processing == "sync" else args.jobs
            runs = [
                one_run(stack, processing, window, jobs, f"{processing}{window}r{r}")
                for r in range(args.runs)
            ]
            row = {k: round(median([run[k] for run in runs]), 2) for k in runs[0]}
            row["jobs"] = jobs
            row["runs"] = args.runs
            results[f"{processing}-w{window}"] = row
            print(
                f"{processing:5} window {window:3}: {row['rate']:7.0f} msg/s  "
                f"cpu {row['cpu_per_1000']:.2f}s/1000 msgs ({row['cpu_share']:.0%} of a core)  "
                f"peak rss {row['rss_mb']:.0f} MB  (median of {args.runs})",
                flush=True,
            )
        base = results["async-w10"]["rate"]
        for row in results.values():
            row["ratio_to_async_w10"] = round(row["rate"] / base, 2)
    finally:
        stack.close()
    print(f"written {save('throughput', {'cases': results})}")


if __name__ == "__main__":
    main()
