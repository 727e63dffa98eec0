"""The router on a 3-master Redis Cluster: 1 vs 2 instances, beside Kannel.

Usage: python bench/cluster.py [--n 20000] [--rounds 3]

Each round, interleaved, through the peer kit's SMPP sink (window 100 per bind):
- kannel: Kannel 1.4.5's drain of N (its file store), as in bench/versus_kannel.py;
- single: one router instance on one Redis (append-only file), two profiles;
- cluster1: one instance on a 3-master Redis Cluster (tests/cluster.py; append-only
  files), the same two profiles, whose keys live on different masters;
- cluster2: two instances (two processes, their own binds) sharing that work.
N messages (half per profile) are queued while the sink is down, then the sink
starts; rate = the sink's first to last submit. Medians of the rounds, and each
router case's ratio to Kannel's run of the same round (median of the per-round
ratios). Writes bench/results/cluster.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import NUMBERS, ROOT, RedisServer, campaign_toml, save, start_daemon, stop
from versus_kannel import SINK_PORT, ensure_tools, kannel, start_sink, waited, waiter

sys.path.insert(0, str(ROOT))
from router import Client, load_settings
from router.store.connections import open_redis
from tests.cluster import RedisClusterSet

PROFILES = ("otp", "promo")  # slots 3408 and 9726: different masters of three
CASES = ("kannel", "single", "cluster1", "cluster2")


def config(path: Path, redis_url: str, instance: str) -> Path:
    """Two SMPP profiles to the sink, one number each."""
    profiles = ""
    for i, name in enumerate(PROFILES):
        profiles += f"""
[profiles.{name}]
global = {"true" if i == 0 else "false"}
protocol = "smpp"
window = 100
numbers = ["{NUMBERS[i]}"]
[profiles.{name}.smpp]
host = "127.0.0.1"
port = {SINK_PORT}
system_id = "bench"
password = "bench"
bind = "transceiver"
reconnect_max = 1
"""
    path.write_text(
        f"""
[router]
redis = "{redis_url}"
instance = "{instance}"
log_format = "json"
log_level = "warning"
[queue]
batch = 500
{profiles}
{campaign_toml(NUMBERS[:2])}"""
    )
    return path


async def preload(config_path: Path, n: int, tag: str) -> None:
    settings = load_settings(config_path)
    async with open_redis(settings) as redis:
        client = Client.from_settings(redis, settings)
        for start in range(0, n, 2000):
            await client.send_many(
                [
                    {"id": f"{tag}-{i}", "to": f"+4915100{i:06d}", "text": "Hello from the bench",
                     "profile": PROFILES[i % 2]}
                    for i in range(start, min(n, start + 2000))
                ]
            )  # fmt: skip


def drain(n: int, scratch: Path, tag: str, url: str, instances: int) -> dict[str, Any]:
    """Preload, start the instances, then the sink; the sink's rate."""
    configs = [config(scratch / f"{tag}-{i}.toml", url, f"{tag}{i}") for i in range(instances)]
    asyncio.run(preload(configs[0], n, tag))
    daemons = [start_daemon(c, scratch / f"{c.stem}.log") for c in configs]
    stats = scratch / f"sink-{tag}.json"
    sink = None
    try:
        time.sleep(1.5)  # started and trying to bind
        pids = {f"router{i}": d.pid for i, d in enumerate(daemons, 1)}
        wait = waiter(n, stats, tag, pids)
        time.sleep(0.5)
        sink = start_sink(stats, scratch / f"sink-{tag}.log")
        result = waited(wait)
    finally:
        for daemon in daemons:
            stop(daemon)
        if sink is not None:
            sink.terminate()
            sink.wait(10)
    cpu = {k: v["cpu_pct"] for k, v in result.get("cpu", {}).items() if k != "loader"}
    return {
        "rate": result.get("sink_rate", 0.0),
        "complete": result.get("complete", False),
        "cpu_pct": cpu,
    }


def one_round(n: int, scratch: Path, index: int) -> dict[str, dict[str, Any]]:
    row: dict[str, dict[str, Any]] = {"kannel": kannel(n, scratch)}
    single = RedisServer(appendonly=True, folder=scratch / f"single-{index}")
    try:
        row["single"] = drain(n, scratch, f"s{index}", single.url, 1)
    finally:
        single.close()
    for instances in (1, 2):
        nodes = RedisClusterSet(scratch / f"cluster-{index}-{instances}", appendonly=True)
        try:
            nodes.start()
            row[f"cluster{instances}"] = drain(
                n, scratch, f"c{instances}r{index}", nodes.url, instances
            )
        finally:
            nodes.stop()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ensure_tools()
    rounds: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        for index in range(args.rounds):
            row = one_round(args.n, Path(tmp), index)
            rounds.append(row)
            print(
                f"round {index + 1}: "
                + ", ".join(f"{case} {row[case]['rate']:,.0f}" for case in CASES),
                flush=True,
            )
    medians = {case: statistics.median(r[case]["rate"] for r in rounds) for case in CASES}
    ratios = {
        case: statistics.median(
            r[case]["rate"] / r["kannel"]["rate"] for r in rounds if r["kannel"]["rate"]
        )
        for case in CASES[1:]
        if any(r["kannel"]["rate"] for r in rounds)
    }
    complete = all(r[case]["complete"] for r in rounds for case in CASES)
    print(f"\nmedians of {args.rounds} rounds, {args.n} messages (msg/s at the sink):")
    for case in CASES:
        ratio = f"  {ratios[case]:.2f}x Kannel" if case in ratios else ""
        print(f"  {case:9} {medians[case]:>9,.0f}{ratio}")
    print(f"  cluster2 / cluster1: {medians['cluster2'] / max(medians['cluster1'], 1e-9):.2f}")
    print(f"  every run complete: {complete}")
    save(
        "cluster",
        {"n": args.n, "rounds": rounds, "medians": medians, "ratios_to_kannel": ratios,
         "complete": complete},
    )  # fmt: skip


if __name__ == "__main__":
    main()
