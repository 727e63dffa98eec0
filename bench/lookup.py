"""The cost of finding a message record by job id alone (`Ledger.get` / `Ledger.find`).

Usage: python bench/lookup.py [--n 5000] [--rounds 5] [--key after]
On a fresh Redis: N jobs enqueued in each of 10 profiles (p0..p9, through
`Ledger.enqueue`, as the doors do), then, per round, interleaved:
`get` of a known id with the configured profiles being 1 (p0) or 10 (p0..p9, the id in
p9, the last probed), `get` of an unknown id (the API's 404: the probe, then the older
versions' locator read), and `find` of 100 known ids with 1 and 10 profiles. Each case
is 1,000 calls (100 for `find`) one after the other (the client's latency: round trips
and redis-py's work) and Redis' own time for them (INFO commandstats, microseconds per
call). Medians over the rounds. Run it with PYTHONPATH at a `git worktree` of an older
commit (from a directory outside this tree) and `--key before` for that code's figures
(which wrote a locator per job and read it first). Writes bench/results/lookup.json
(other keys kept).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from harness import RESULTS, RedisServer, save
from redis.asyncio import Redis

from router.policy.jobs import encode_job
from router.store.ledger import Ledger

PROFILES = [f"p{i}" for i in range(10)]
CALLS = 1000  # per case and round (a tenth of that for the `find` of 100 ids)


async def redis_micros(redis: Redis) -> float:
    """Microseconds Redis spent in commands since the last CONFIG RESETSTAT."""
    stats: Any = await redis.info("commandstats")
    return sum(float(v["usec"]) for k, v in stats.items() if k != "cmdstat_config" and "usec" in v)


async def timed(
    redis: Redis, call: Callable[[int], Awaitable[Any]], calls: int
) -> tuple[float, float]:
    """(client microseconds per call, Redis microseconds per call) over `calls` calls."""
    await redis.config_resetstat()
    began = time.perf_counter()
    for i in range(calls):
        await call(i)
    elapsed = time.perf_counter() - began
    return elapsed / calls * 1e6, await redis_micros(redis) / calls


async def main(n: int, rounds: int) -> dict[str, dict[str, float]]:
    server = RedisServer()
    redis = Redis.from_url(server.url)
    try:
        ledger = Ledger(redis, retention=3600, events_maxlen=1000)
        for profile in PROFILES:
            for start in range(0, n, 500):
                await ledger.enqueue(
                    [
                        (f"{profile}-{i}", profile, encode_job({"to": "+447911100001"}), {})
                        for i in range(start, min(n, start + 500))
                    ]
                )
        one, ten = PROFILES[:1], PROFILES

        async def get_one(i: int) -> None:
            assert await ledger.get(f"p0-{i % n}", profiles=one) is not None

        async def get_ten(i: int) -> None:
            assert await ledger.get(f"p9-{i % n}", profiles=ten) is not None

        async def unknown_one(i: int) -> None:
            assert await ledger.get(f"nosuch-{i}", profiles=one) is None

        async def unknown_ten(i: int) -> None:
            assert await ledger.get(f"nosuch-{i}", profiles=ten) is None

        async def find100_one(i: int) -> None:
            ids = [f"p0-{(i * 100 + k) % n}" for k in range(100)]
            assert all(await ledger.find(ids, profiles=one))

        async def find100_ten(i: int) -> None:
            ids = [f"p9-{(i * 100 + k) % n}" for k in range(100)]
            assert all(await ledger.find(ids, profiles=ten))

        cases: dict[str, Callable[[int], Awaitable[Any]]] = {
            "get_1_profile": get_one,
            "get_10_profiles": get_ten,
            "get_unknown_1_profile": unknown_one,
            "get_unknown_10_profiles": unknown_ten,
            "find_100_ids_1_profile": find100_one,
            "find_100_ids_10_profiles": find100_ten,
        }
        seen: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        for _round in range(rounds):
            for name, call in cases.items():
                calls = CALLS // 10 if name.startswith("find") else CALLS
                seen[name].append(await timed(redis, call, calls))
        info: Any = await redis.info("memory")
        print(f"used_memory {int(info['used_memory']) / 1e6:.1f} MB for {10 * n} jobs")
        out: dict[str, dict[str, float]] = {}
        for name, got in seen.items():
            client = statistics.median(c for c, _r in got)
            server_us = statistics.median(r for _c, r in got)
            out[name] = {
                "client_us_per_call": round(client, 1),
                "redis_us_per_call": round(server_us, 1),
            }
            print(f"  {name:<26} {client:>8.1f} us per call   Redis {server_us:>7.1f} us")
        return out
    finally:
        await redis.aclose()
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="jobs per profile")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--key", default="after", help="where the figures go in the file")
    args = parser.parse_args()
    figures = asyncio.run(main(args.n, args.rounds))
    path = RESULTS / "lookup.json"
    kept: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    kept[args.key] = {"n_per_profile": args.n, "rounds": args.rounds, "calls": CALLS, **figures}
    save("lookup", kept)
