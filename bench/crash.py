"""Crash test at scale: `sms-router enqueue` 10,000 jobs, kill -9 the daemon in the
middle, restart it, and check that every job ends `sent`, none is lost, and the
only messages that reached the provider twice were in flight at the kill (at most
`window` per bind, each counted by the daemon as a possible duplicate).

Usage: python bench/crash.py [--jobs 10000] [--window 32] [--kill-at 0.3]
Writes bench/results/crash.json.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

from harness import Stack, cli, save, start_daemon, status_counts, stop, write_jobs
from redis.asyncio import Redis

from router.store import keys


async def final_counts(url: str, ids: list[str]) -> dict[str, int]:
    redis = Redis.from_url(url)
    counts = await status_counts(redis, "bench", ids)
    possible = await redis.hget(keys.stats("bench"), "possible_duplicates")
    counts["possible_duplicates_counted"] = int(possible or 0)
    await redis.aclose()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--kill-at", type=float, default=0.3)
    args = parser.parse_args()
    stack = Stack(latency=0.002)
    try:
        config = stack.config(window=args.window)
        ids = [f"crash-{i}" for i in range(args.jobs)]
        jobs_file = write_jobs(stack.dir / "jobs.jsonl", args.jobs, "crash")
        print(cli("enqueue", "-c", str(config), str(jobs_file)).strip())
        log = stack.dir / "daemon.log"
        began = time.perf_counter()
        daemon = start_daemon(config, log)
        while stack.sim_stats()["accepted"] < args.jobs * args.kill_at:
            time.sleep(0.005)
        code = stop(daemon, signal.SIGKILL)
        at_kill = stack.sim_stats()["accepted"]
        print(f"kill -9 after {at_kill} accepted (exit {code}); restarting")
        daemon = start_daemon(config, log)
        while True:
            counts = asyncio.run(final_counts(stack.redis_url, ids))
            if counts.get("sent", 0) == args.jobs:
                break
            time.sleep(0.2)
        elapsed = time.perf_counter() - began
        assert stop(daemon) == 0
        sim = stack.sim_stats()
    finally:
        stack.close()
    duplicates = len(sim["duplicates"])
    result = {
        "jobs": args.jobs,
        "window": args.window,
        "accepted_at_kill": at_kill,
        "final_statuses": counts,
        "provider_unique": sim["unique"],
        "provider_duplicates": duplicates,
        "elapsed_s": round(elapsed, 2),
        "lost": args.jobs - sim["unique"],
        "ok": sim["unique"] == args.jobs
        and duplicates <= 2 * args.window  # window + unsettled_max (one window by default)
        and duplicates <= counts["possible_duplicates_counted"],
    }
    print(result)
    print(f"written {save('crash', result)}")
    if not result["ok"]:
        raise SystemExit("FAILED: lost or unexplained duplicate messages")


if __name__ == "__main__":
    main()
