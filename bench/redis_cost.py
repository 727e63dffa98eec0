"""What one message costs Redis on the drain path: commands (those run inside Lua
scripts included) and microseconds of Redis CPU per message, from INFO commandstats.

Usage: python bench/redis_cost.py [--n 20000] [--dlr] [--out NAME]
       python bench/redis_cost.py --direct [--early 0.5] [--n 20000] [--out NAME]
Preloads N jobs (not counted: the statistics are reset after), drains them through
the peer kit's sink (window 100; with --dlr a receipt per message, to `delivered`),
then prints each command's calls and usec per message. Writes
bench/results/redis_cost.json (redis_cost_dlr.json with --dlr; NAME.json with --out).
The daemon runs the router on the Python path: PYTHONPATH at a `git worktree` of
another commit measures that code (A/B).

`--direct`: the ledger's scripts alone, no daemon and no SMSC, so the machine's noise
(the daemon's and the sink's CPU beside Redis) stays out: batches of 100 recorded
`sending`, then `sent` (finish), then a delivery report each (reports), as the pipeline
and the receipts do; with `--early F`, that fraction of each batch's reports comes
before `sent` (kept early, applied by finish), as with an SMSC faster than the flush.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import RedisServer, free_port, router_config, save, start_daemon, start_sink, stop
from memory import preload, sink_submits
from redis.asyncio import Redis

from router.store import keys
from router.store.ledger import Finished, Ledger, Report, Sending


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


async def direct(url: str, n: int, early: float) -> None:
    """The scripts of N messages' sending, sent and report steps (see the docstring);
    the statistics are reset after the preload."""
    redis = Redis.from_url(url)
    profile, tag, batch = "bench", "cost", 100
    try:
        await preload(url, n, tag)
        ids = [f"{tag}-{i}" for i in range(n)]
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keys.record(profile, job_id), "owner")
            owners = [o.decode() for o in await pipe.execute()]
        ledger = Ledger(redis, retention=7 * 86_400, events_maxlen=1_000_000)
        ledger.expect_reports(profile, 172_800)
        await reset(url)
        for start in range(0, n, batch):
            end = start + batch
            chunk = list(zip(ids[start:end], owners[start:end], strict=True))
            sending = [
                Sending(job_id, owner, "", "+16501112345", "+4915100000000",
                        "Hello from the bench", "", "", "", 0)
                for job_id, owner in chunk
            ]  # fmt: skip
            steps = [t.step for t in await ledger.sending(profile, sending)]
            pmids = [f"{start + i:014d}" for i in range(len(chunk))]
            reports = [Report("delivered", "DELIVRD", "000", [p]) for p in pmids]
            first = int(len(chunk) * early)
            if first:
                await ledger.reports(profile, reports[:first], keep_for=600)
            finished = [
                Finished(job_id, owner, step + 1, "sent", "", "", "+4915100000000",
                         "+16501112345", "", 1, "", "", "", [pmid], [pmid, pmid],
                         "bench", 0.0)
                for (job_id, owner), step, pmid in zip(chunk, steps, pmids, strict=True)
            ]  # fmt: skip
            await ledger.finish(profile, keys.queue(profile), finished)
            if first < len(chunk):
                await ledger.reports(profile, reports[first:], keep_for=600)
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dlr", action="store_true")
    parser.add_argument("--out", default="", help="results file name (no .json)")
    parser.add_argument("--direct", action="store_true", help="the ledger's scripts alone")
    parser.add_argument("--early", type=float, default=0.0, help="--direct: reports before sent")
    args = parser.parse_args()
    if args.direct:
        args.dlr = True
        server = RedisServer(appendonly=True, folder=Path(tempfile.mkdtemp(prefix="sms-rc-")))
        try:
            asyncio.run(direct(server.url, args.n, args.early))
            stats = asyncio.run(commandstats(server.url))
        finally:
            server.close()
            shutil.rmtree(server.dir, ignore_errors=True)
        report(args, stats)
        return
    scratch = Path(tempfile.mkdtemp(prefix="sms-rcost-"))
    # An append-only file, as production runs it.
    server = RedisServer(appendonly=True, folder=scratch / "redis")
    port = free_port()
    stats_file = scratch / "sink.json"
    daemon = sink = None
    try:
        asyncio.run(preload(server.url, args.n, "cost"))
        asyncio.run(reset(server.url))
        path = router_config(
            scratch / "router.toml", server.url, registered_delivery=int(args.dlr), port=port
        )
        daemon = start_daemon(path, scratch / "router.log")
        sink = start_sink(
            stats_file, scratch / "sink.log", dlr="requested" if args.dlr else "off", port=port
        )
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
    report(args, stats)


def report(args: argparse.Namespace, stats: dict[str, dict[str, float]]) -> None:
    """Print each command's calls and usec per message; write the results file."""
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
        {"n": args.n, "dlr": args.dlr, "direct": args.direct, "early": args.early,
         "commands_per_message": round(per_call, 2),
         "redis_usec_per_message": round(per_usec, 1), "stats": dict(rows)},
    )  # fmt: skip


if __name__ == "__main__":
    main()
