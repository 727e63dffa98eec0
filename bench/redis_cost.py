"""What one message costs Redis on the drain path: commands (those run inside Lua
scripts included) and microseconds of Redis CPU per message, from INFO commandstats.

Usage: python bench/redis_cost.py [--n 20000] [--dlr] [--out NAME]
Preloads N jobs (not counted: the statistics are reset after), drains them through
the peer kit's sink (window 100; with --dlr a receipt per message, to `delivered`),
then prints each command's calls and usec per message. Writes
bench/results/redis_cost.json (redis_cost_dlr.json with --dlr; NAME.json with --out).
The daemon runs the router on the Python path: PYTHONPATH at a `git worktree` of
another commit measures that code (A/B).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import RedisServer, free_port, save, start_daemon, stop
from memory import config, preload, sink_submits, start_sink
from redis.asyncio import Redis

from router.store import keys


async def commandstats(url: str) -> dict[str, dict[str, float]]:
    redis = Redis.from_url(url)
    try:
        info: Any = await redis.info("commandstats")
    finally:
        await redis.aclose()
    return {name.removeprefix("cmdstat_"): value for name, value in info.items()}


async def reset(url: str) -> None:
    redis = Redis.from_url(url)
    await redis.config_resetstat()
    await redis.aclose()


async def delivered(url: str, n: int, tag: str) -> int:
    redis = Redis.from_url(url)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(n):
                pipe.hget(keys.record("bench", f"{tag}-{i}"), "status")
            rows = await pipe.execute()
    finally:
        await redis.aclose()
    return sum(1 for r in rows if r == b"delivered")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dlr", action="store_true")
    parser.add_argument("--out", default="", help="results file name (no .json)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="sms-rcost-"))
    # An append-only file, as production runs it.
    server = RedisServer(appendonly=True, folder=scratch / "redis")
    port = free_port()
    stats_file = scratch / "sink.json"
    daemon = sink = None
    try:
        asyncio.run(preload(server.url, args.n, "cost"))
        asyncio.run(reset(server.url))
        path = config(scratch / "router.toml", server.url, port, 1 if args.dlr else 0)
        daemon = start_daemon(path, scratch / "router.log")
        sink = start_sink(port, stats_file, scratch / "sink.log", args.dlr)
        deadline = time.monotonic() + 600
        while sink_submits(stats_file) < args.n:
            if time.monotonic() > deadline:
                raise SystemExit("the drain did not finish")
            time.sleep(0.2)
        if args.dlr:
            while asyncio.run(delivered(server.url, args.n, "cost")) < args.n:
                if time.monotonic() > deadline:
                    raise SystemExit("not every message reached delivered")
                time.sleep(0.5)
        time.sleep(1.5)  # the last outcomes flushed
        stats = asyncio.run(commandstats(server.url))
    finally:
        if daemon is not None:
            stop(daemon)
        if sink is not None:
            sink.terminate()
            sink.wait(10)
        server.close()
        shutil.rmtree(scratch, ignore_errors=True)
    rows = sorted(stats.items(), key=lambda kv: -kv[1]["calls"])
    scripts = {"evalsha", "eval", "script|load"}
    ours = {"info", "config|resetstat"}
    calls = sum(v["calls"] for name, v in rows if name not in scripts | ours)
    # EVALSHA's time includes the commands it runs (they are counted on their own too).
    total_usec = sum(v["usec"] for name, v in rows if name in scripts)
    top_level = {"xreadgroup", "incrby", "xautoclaim", "xpending", "xlen", "zcard", "ping"}
    total_usec += sum(v["usec"] for name, v in rows if name in top_level)
    print(f"{'command':<18}{'calls/msg':>10}{'usec/msg':>10}")
    for name, value in rows:
        print(f"{name:<18}{value['calls'] / args.n:>10.2f}{value['usec'] / args.n:>10.2f}")
    per_call = calls / args.n
    per_usec = total_usec / args.n
    print(f"commands per message (inside scripts included, EVALSHA itself not): {per_call:.2f}")
    print(f"Redis usec per message (scripts, inner commands included, + top-level): {per_usec:.1f}")
    save(
        args.out or "redis_cost" + ("_dlr" if args.dlr else ""),
        {"n": args.n, "dlr": args.dlr, "commands_per_message": round(per_call, 2),
         "redis_usec_per_message": round(per_usec, 1), "stats": dict(rows)},
    )  # fmt: skip


if __name__ == "__main__":
    main()
