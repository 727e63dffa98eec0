"""What the recipient index (``sms:{P}:to:<YYYYMMDD>``: one sorted set per profile and
UTC day, one member ``<to>|<time>|<id>`` per message, written by the step that creates
its record) costs: checkouts of the router measured alike, rounds interleaved (the order
turns each round).

Usage: python bench/index_cost.py --before /tmp/m-before --after /tmp/m-after
       [--off /tmp/m-off] [--n 20000] [--rounds 3]

Each tree is a clean checkout (``git worktree add --detach``); its code runs with
PYTHONPATH set to it (the daemon and the door's producer are subprocesses started in
the tree). `--off`: a tree whose daemon and doors take ``[queue] recipient_index``
(its run writes ``recipient_index = false`` in ``[queue]`` and sets the door's
`Ledger.recipient_index` to False). Per round and tree:

- door: `Client.send_many` of N jobs in batches of 2000 (enqueue.lua: the record, the
  work entry, the event and, with the index, its members): the producer's wall time
  and Redis' CPU per message.
- drain: N plain ``XADD`` jobs (no record yet) drained to the peer kit's SMPP sink
  (../shared/bench-peers; bench/versus_kannel.py's drain): sending.lua creates each
  record (and its index member). Rate (the sink's first to last submit), the router's
  and Redis' CPU per message.

After each run: the index's keys and members (`index_keys`, `index_members`) and their
bytes (MEMORY USAGE). Prints each round and the medians; writes
bench/results/index_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
from harness import Rig, cpu_seconds, ensure_tools, save, waited, waiter
from redis.asyncio import Redis

DOOR = """
import asyncio, sys, time
from redis.asyncio import Redis
from router import Client
async def main(url, n, tag, off):
    redis = Redis.from_url(url)
    client = Client(redis, default_profile="bench")
    if off:
        client.ledger.recipient_index = False
    began = time.perf_counter()
    for start in range(0, n, 2000):
        await client.send_many([
            {"id": f"{tag}-{i}", "to": f"+4915100{i % 1_000_000:06d}", "text": "Hello"}
            for i in range(start, min(n, start + 2000))])
    print(time.perf_counter() - began)
    await redis.aclose()
asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "off"))
"""


def in_tree(tree: Path) -> dict[str, str]:
    """The environment that makes Python import the router from `tree`."""
    return {**os.environ, "PYTHONPATH": str(tree)}


async def xadd_jobs(url: str, n: int, tag: str, batch: int = 2000) -> None:
    """`n` plain XADD jobs (the wire format; no record), as a producer in any language
    would enqueue them."""
    redis = Redis.from_url(url)
    try:
        for start in range(0, n, batch):
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(start, min(n, start + batch)):
                    wire = {"id": f"{tag}-{i}", "to": f"+4915100{i:06d}", "text": "Hello"}
                    pipe.xadd("sms:{bench}:q", {"job": msgpack.packb(wire, use_bin_type=True)})
                await pipe.execute()
    finally:
        await redis.aclose()


async def index_entries(url: str) -> dict[str, int]:
    """The recipient index's keys, members and bytes (MEMORY USAGE) in Redis."""
    redis = Redis.from_url(url)
    try:
        names = [k async for k in redis.scan_iter(match="sms:{bench}:to:*", count=5000)]
        members = sizes = 0
        for name in names:
            members += int(await redis.zcard(name))
            sizes += int(await redis.memory_usage(name, samples=0) or 0)
        return {"index_keys": len(names), "index_members": members, "index_bytes": sizes}
    finally:
        await redis.aclose()


def door(tree: Path, n: int, scratch: Path, tag: str, off: bool) -> dict[str, Any]:
    """The door's enqueue of `n` jobs with `tree`'s code (`off`: no recipient index)."""
    rig = Rig(scratch, tag)
    try:
        redis_pid = rig.server.proc.pid if rig.server.proc else 0
        cpu0 = cpu_seconds(redis_pid)
        done = subprocess.run(
            [sys.executable, "-c", DOOR, rig.url, str(n), tag, "off" if off else "on"],
            env=in_tree(tree), cwd=tree, capture_output=True, text=True, check=True,
        )  # fmt: skip
        redis_cpu = cpu_seconds(redis_pid) - cpu0
        seconds = float(done.stdout.strip())
        indexed = asyncio.run(index_entries(rig.url))
    finally:
        rig.close()
    return {
        "rate": round(n / seconds),
        "redis_us_per_msg": round(redis_cpu / n * 1e6, 1),
        **indexed,
    }


def drain(tree: Path, n: int, scratch: Path, tag: str, off: bool) -> dict[str, Any]:
    """Plain XADD jobs drained by `tree`'s daemon (`off`: ``recipient_index = false``)."""
    rig = Rig(scratch, tag)
    if off:
        text = rig.config.read_text().replace("[queue]\n", "[queue]\nrecipient_index = false\n")
        rig.config.write_text(text)
    here = Path.cwd()
    saved = os.environ.get("PYTHONPATH")
    try:
        asyncio.run(xadd_jobs(rig.url, n, tag))
        os.environ["PYTHONPATH"] = str(tree)
        os.chdir(tree)  # `python -m router` imports from its working directory first
        rig.start_daemon()
        os.chdir(here)
        time.sleep(1.5)
        pids = rig.pids()
        wait = waiter(n, rig.stats, tag, pids)
        time.sleep(0.5)
        cpu0, redis0 = cpu_seconds(rig.router_pid), cpu_seconds(pids["redis"])
        rig.start_sink()
        result = waited(wait)
        router_cpu = cpu_seconds(rig.router_pid) - cpu0
        redis_cpu = cpu_seconds(pids["redis"]) - redis0
        indexed = asyncio.run(index_entries(rig.url))
    finally:
        os.chdir(here)
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
        rig.close()
    return {
        "rate": round(result.get("sink_rate", 0.0)),
        "complete": result.get("complete", False),
        "router_us_per_msg": round(router_cpu / n * 1e6, 1),
        "redis_us_per_msg": round(redis_cpu / n * 1e6, 1),
        "foreign_cpu_pct": result.get("foreign_cpu_pct"),
        **indexed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True, help="checkout without the index")
    parser.add_argument("--after", type=Path, required=True, help="checkout with it")
    parser.add_argument("--off", type=Path, help="checkout run with recipient_index = false")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ensure_tools(kannel=False)
    scratch = Path(tempfile.mkdtemp(prefix="sms-index-"))
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    if args.off is not None:
        trees["off"] = args.off.resolve()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {"door": [], "drain": []} for name in trees
    }
    names = list(trees)
    for r in range(args.rounds):
        # (each round starts with the next tree, and every other round goes backwards)
        turned = names[r % len(names) :] + names[: r % len(names)]
        for name in turned if r % 2 == 0 else turned[::-1]:
            tree, off = trees[name], name == "off"
            enq = door(tree, args.n, scratch, f"d{name}{r}", off)
            runs[name]["door"].append(enq)
            row = drain(tree, args.n, scratch, f"x{name}{r}", off)
            runs[name]["drain"].append(row)
            print(f"round {r + 1} {name:6} door {enq} drain {row}", flush=True)
    summary: dict[str, Any] = {}
    for name, rows in runs.items():
        summary[name] = {
            "door_rate": statistics.median(x["rate"] for x in rows["door"]),
            "door_redis_us_per_msg": statistics.median(x["redis_us_per_msg"] for x in rows["door"]),
            "drain_rate": statistics.median(x["rate"] for x in rows["drain"]),
            "drain_router_us_per_msg": statistics.median(
                x["router_us_per_msg"] for x in rows["drain"]
            ),
            "drain_redis_us_per_msg": statistics.median(
                x["redis_us_per_msg"] for x in rows["drain"]
            ),
            "index_bytes_per_msg": round(
                statistics.median(x["index_bytes"] for x in rows["drain"]) / args.n, 1
            ),
        }
        print(name, summary[name])
    save("index_cost", {"n": args.n, "rounds": args.rounds, "median": summary, "runs": runs})


if __name__ == "__main__":
    main()
