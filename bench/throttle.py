"""Throttling: how fast the router gets through an SMSC that pushes back.

Usage: python bench/throttle.py [--jobs 20000] [--runs 3] [--capacity-jobs 2000] [--max-rate 15]

(a) `--jobs` messages through one transceiver session (window 10, tps = 0) to the
    SMSC simulator, unthrottled and with `--throttle-ratio 0.3` (30 % of submits
    answered ESME_RTHROTTLED whatever the rate), alternating, `--runs` times each;
    prints the medians and their ratio (the goal: >= 0.5).
(b) `--capacity-jobs` mixed messages (every 10th one long: 3 parts) to an SMSC that
    takes `--max-rate` submits/s and answers ESME_RMSGQFUL beyond; every message must
    end `delivered`, none `failed`.
Each run starts `sms-router smsc-sim` and the daemon as subprocesses on a private
redis-server, like bench/smpp.py. Writes bench/results/throttle.json.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from harness import Stack, median, save, smsc_sim, start_daemon, stop
from redis.asyncio import Redis
from smpp import FINAL, config, finished, smsc_stats

from router import Client

LONG = "A long message in three parts. " * 12  # 372 GSM characters: 3 segments


async def enqueue(url: str, count: int, prefix: str, long_every: int) -> list[str]:
    redis = Redis.from_url(url)
    client = Client(redis, default_profile="bench")
    ids: list[str] = []
    for start in range(0, count, 2000):
        jobs = [
            {
                "id": f"{prefix}-{i}",
                "to": "+447911123456",
                "text": LONG if long_every and i % long_every == 0 else f"bench message {i}",
            }
            for i in range(start, min(count, start + 2000))
        ]
        ids += await client.send_many(jobs)
    await redis.aclose()
    return ids


def one_run(
    stack: Stack, jobs: int, tag: str, flags: list[str], long_every: int = 0, limit: float = 1800
) -> dict[str, Any]:
    sim, port, http = smsc_sim(*flags)
    daemon = start_daemon(config(stack, port, 10, "async"), stack.dir / "daemon.log")
    try:
        time.sleep(1.5)
        began = time.perf_counter()
        ids = asyncio.run(enqueue(stack.redis_url, jobs, tag, long_every))
        counts: dict[str, int] = {}
        while time.perf_counter() - began < limit:
            counts = asyncio.run(finished(stack.redis_url, ids))
            if sum(counts.get(s.decode(), 0) for s in FINAL) == jobs:
                break
            time.sleep(0.5)
        elapsed = time.perf_counter() - began
        at_smsc = smsc_stats(http)
    finally:
        stop(daemon)
        sim.terminate()
        sim.wait(10)
    done = sum(counts.get(s.decode(), 0) for s in FINAL)
    return {
        "rate": done / elapsed,
        "seconds": round(elapsed, 1),
        "statuses": counts,
        "lost": jobs - done,
        "smsc": {
            k: at_smsc.get(k)
            for k in ("submits", "segments", "throttled", "queue_full", "max_outstanding")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--capacity-jobs", type=int, default=2000)
    parser.add_argument("--max-rate", type=float, default=15.0)
    args = parser.parse_args()
    stack = Stack()
    results: dict[str, Any] = {"jobs": args.jobs, "runs": args.runs}
    try:
        plain: list[dict[str, Any]] = []
        throttled: list[dict[str, Any]] = []
        for n in range(args.runs):
            plain.append(one_run(stack, args.jobs, f"plain-{n}", []))
            throttled.append(one_run(stack, args.jobs, f"thr-{n}", ["--throttle-ratio", "0.3"]))
            print(
                f"run {n + 1}: unthrottled {plain[-1]['rate']:.0f} msg/s, "
                f"30 % throttled {throttled[-1]['rate']:.0f} msg/s "
                f"({throttled[-1]['smsc']['throttled']} throttle answers)",
                flush=True,
            )
        base, slow = median([r["rate"] for r in plain]), median([r["rate"] for r in throttled])
        results["random_throttle"] = {
            "unthrottled_rate": round(base, 1),
            "throttled_rate": round(slow, 1),
            "ratio": round(slow / base, 2),
            "unthrottled_runs": plain,
            "throttled_runs": throttled,
        }
        print(
            f"(a) {args.jobs} msgs, throttle ratio 0.3: {slow:.0f} msg/s vs {base:.0f} unthrottled "
            f"= {slow / base:.0%} (median of {args.runs}); lost "
            f"{sum(r['lost'] for r in plain + throttled)}",
            flush=True,
        )
        if args.capacity_jobs:
            cap = one_run(
                stack,
                args.capacity_jobs,
                "cap",
                ["--max-rate", str(args.max_rate)],
                long_every=10,
            )
            results["queue_full"] = {
                "jobs": args.capacity_jobs,
                "max_rate": args.max_rate,
                **cap,
                "segments_per_s": round(cap["smsc"]["segments"] / cap["seconds"], 1),
            }
            print(
                f"(b) {args.capacity_jobs} mixed msgs (every 10th: 3 parts) to an SMSC taking "
                f"{args.max_rate:g} submits/s: statuses {cap['statuses']}, "
                f"{cap['smsc']['segments']} segments in {cap['seconds']}s "
                f"({cap['smsc']['segments'] / cap['seconds']:.1f}/s), "
                f"{cap['smsc']['queue_full']} queue-full answers",
                flush=True,
            )
    finally:
        stack.close()
    print("written", save("throttle", results))


if __name__ == "__main__":
    main()
