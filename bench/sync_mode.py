"""Sync mode (one submit outstanding) against the raw asyncio SMPP pump at window 1.

Usage: python bench/sync_mode.py [--n 5000] [--rounds 3] [--old PATH] [--port 27791]
           [--code NAME=PATH ...] [--py-spy FOLDER] [--async-window W]

The `sync` row of bench/versus_kannel.py without Kannel, on a sink port of its own (so
that it can run beside that benchmark): each round the peer kit's raw pump
(smpp_blast.py, window 1) into a fresh sink, then the router with ``window = 1`` and
``processing = "sync"``: N messages queued while the sink is down (Redis with an
append-only file), the daemon started, then a fresh sink; rate = the sink's first to
last submit, CPU per process sampled by the kit's loadgen over that span. With
`--old PATH` (a `git worktree` of an older commit) each round also drains with that
code (its daemon runs with PYTHONPATH=PATH): an A/B in interleaved rounds, the order
rotating; `--code NAME=PATH` adds sides (``new=PATH`` replaces this checkout, for
clean worktrees while others edit it). Prints each round and the medians (rate, the
ratio to the pump of the same round, router and Redis CPU and Redis calls per
message); writes bench/results/sync_mode.json. `--async-window W` drains in async mode
at window W instead (a regression check of the same pipeline; results in
sync_mode_asyncW.json); `--py-spy FOLDER` records each drain's daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    ROOT,
    RedisServer,
    peer,
    router_config,
    save,
    start_daemon,
    start_sink,
    stop,
)
from redis.asyncio import Redis

from router import Client

PEERS = ROOT.parent / "shared" / "bench-peers"
PY_SPY = os.environ.get("PY_SPY", "py-spy")
SPY_FLAGS = ("-f", "raw", "-r", "500", "--nonblocking")


def pump(n: int, port: int, scratch: Path) -> dict[str, Any]:
    """The raw asyncio SMPP pump at window 1 into a fresh sink (versus_kannel.pump_w1)."""
    stats = scratch / "sink-pump.json"
    stats.unlink(missing_ok=True)
    sink = start_sink(stats, scratch / "sink-pump.log", port=port)
    try:
        done = subprocess.run(
            peer(
                "smpp_blast.py",
                *("--port", str(port), "--n", str(n), "--window", "1"),
                *("--sink-stats", str(stats)),
            ),
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
    finally:
        sink.terminate()
        sink.wait(10)
    result = json.loads([x for x in done.stdout.splitlines() if x.startswith("{")][-1])
    return {
        "rate": result.get("sink_rate") or result["rate"],
        "complete": result.get("n") == n,
        "cpu_pct": {"pump": result.get("client_cpu_pct", 0.0)},
    }


async def commands(url: str) -> dict[str, int]:
    """Redis' calls per command so far (INFO commandstats)."""
    redis = Redis.from_url(url)
    try:
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def preload(url: str, n: int, tag: str, batch: int = 2000) -> None:
    """Enqueue `n` jobs through `Client.send_many`, one batch after the other."""
    redis = Redis.from_url(url)
    client = Client(redis, default_profile="bench")
    for start in range(0, n, batch):
        await client.send_many(
            [
                {"id": f"{tag}-{i}", "to": f"+4915100{i:06d}", "text": "Hello from the bench"}
                for i in range(start, min(n, start + batch))
            ]
        )
    await redis.aclose()


def drain(
    n: int,
    port: int,
    scratch: Path,
    tag: str,
    code: Path,
    spy: Path | None = None,
    mode: tuple[str, int] = ("sync", 1),
) -> dict[str, Any]:
    """Preload while the sink is down, start the daemon (running the code at `code`),
    then the sink; the drain's rate and CPU per process (with `spy`: py-spy's raw
    samples of the daemon over the drain written there)."""
    server = RedisServer(appendonly=True, folder=scratch / f"redis-{tag}")
    daemon: subprocess.Popen[bytes] | None = None
    sink: subprocess.Popen[bytes] | None = None
    profiler: subprocess.Popen[bytes] | None = None
    stats = scratch / f"sink-{tag}.json"
    try:
        asyncio.run(preload(server.url, n, tag))
        before, cwd = os.environ.get("PYTHONPATH"), Path.cwd()
        # `python -m router` puts the current directory first: start it elsewhere.
        os.environ["PYTHONPATH"] = str(code)
        os.chdir(tempfile.gettempdir())
        try:
            processing, window = mode
            cfg = router_config(
                scratch / f"router-{tag}.toml", server.url, processing=processing,
                window=window, port=port,
            )  # fmt: skip
            daemon = start_daemon(cfg, scratch / f"router-{tag}.log")
        finally:
            os.chdir(cwd)
            if before is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = before
        time.sleep(1.5)  # started and trying to bind
        calls0 = asyncio.run(commands(server.url))
        if spy is not None:
            profiler = subprocess.Popen(
                [PY_SPY, "record", "-p", str(daemon.pid), "-o", str(spy), *SPY_FLAGS],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        pids = {"router": daemon.pid, "redis": server.proc.pid if server.proc else 0}
        flags = [x for name, pid in pids.items() for x in ("--pid", f"{name}={pid}")]
        wait = subprocess.Popen(
            peer(
                "loadgen.py",
                *("--mode", "drain", "--n", str(n), "--sink-stats", str(stats)),
                *("--label", tag, *flags),
            ),
            stdout=subprocess.PIPE,
        )
        time.sleep(0.5)
        stats.unlink(missing_ok=True)
        sink = start_sink(stats, scratch / f"sink-{tag}.log", port=port)
        result = json.loads((wait.communicate(timeout=900)[0] or b"{}").decode())
        cpu = {k: v["cpu_pct"] for k, v in result.get("cpu", {}).items() if k in pids}
        rate = float(result.get("sink_rate", 0.0))
        calls = asyncio.run(commands(server.url))
        # Redis commands per message over the drain (scripts are EVALSHA calls).
        per_msg = {k: round((v - calls0.get(k, 0)) / n, 3) for k, v in calls.items()}
        return {
            "rate": rate,
            "complete": result.get("complete", False),
            "cpu_pct": cpu,
            # Milliseconds of CPU per message: the process's share of a core over the rate.
            "ms_per_msg": {k: round(10 * v / rate, 4) if rate else 0.0 for k, v in cpu.items()},
            "redis_calls_per_msg": {k: v for k, v in per_msg.items() if v >= 0.001},
        }
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            profiler.wait(30)
        if daemon is not None:
            stop(daemon)
        if sink is not None:
            sink.terminate()
            sink.wait(10)
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old", type=Path, help="a worktree of older code to A/B against")
    parser.add_argument(
        "--code",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="more sides: the code at PATH (a worktree) drains too, as NAME; 'new=PATH' "
        "replaces this checkout",
    )
    parser.add_argument("--port", type=int, default=27791, help="the sink's port")
    parser.add_argument(
        "--async-window",
        type=int,
        default=0,
        help="drain in async mode at this window instead (a regression check of the same "
        "code paths; the pump stays at window 1)",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        help="a folder for py-spy's raw samples of each router drain (py-spy: $PY_SPY or PATH)",
    )
    args = parser.parse_args()
    if not PEERS.is_dir():
        sys.exit(f"the peer kit is missing: {PEERS}")
    sides = {"new": ROOT} | ({"old": args.old.resolve()} if args.old else {})
    for code in args.code:
        name, _, path = code.partition("=")
        sides[name] = Path(path).resolve()
    runs: dict[str, list[dict[str, Any]]] = {"pump": [], **{s: [] for s in sides}}
    with tempfile.TemporaryDirectory(prefix="sync-mode-") as tmp:
        scratch = Path(tmp)
        for r in range(args.rounds):
            runs["pump"].append(pump(args.n, args.port, scratch))
            names = list(sides)
            for side in names[r % len(names) :] + names[: r % len(names)]:
                tag = f"{side}{r}"
                spy = args.py_spy / f"sync-{tag}.txt" if args.py_spy else None
                mode = ("async", args.async_window) if args.async_window else ("sync", 1)
                runs[side].append(drain(args.n, args.port, scratch, tag, sides[side], spy, mode))
            line = f"round {r + 1}: pump {runs['pump'][-1]['rate']:.0f} msg/s"
            for side in sides:
                row = runs[side][-1]
                line += f" | {side} {row['rate']:.0f} msg/s, CPU ms/msg {row['ms_per_msg']}"
                calls = row["redis_calls_per_msg"]
                line += f", EVALSHA/msg {calls.get('evalsha', 0.0)}"
                line += "" if row["complete"] else " (INCOMPLETE)"
            print(line, flush=True)
    summary: dict[str, Any] = {"pump_rate": statistics.median(r["rate"] for r in runs["pump"])}
    for side in sides:
        rows = runs[side]
        summary[side] = {
            "rate": statistics.median(r["rate"] for r in rows),
            "ratio_to_pump": round(
                statistics.median(
                    o["rate"] / p["rate"] for p, o in zip(runs["pump"], rows, strict=True)
                ),
                3,
            ),
            "ms_per_msg": {
                k: statistics.median(r["ms_per_msg"].get(k, 0.0) for r in rows)
                for k in ("router", "redis")
            },
            "redis_calls_per_msg": rows[-1]["redis_calls_per_msg"],
        }
    for side in sides:
        if side != "old" and "old" in sides:
            pairs = zip(runs[side], runs["old"], strict=True)
            summary[f"{side}_over_old"] = round(
                statistics.median(n["rate"] / o["rate"] for n, o in pairs), 3
            )
    print(json.dumps(summary, indent=2))
    name = f"sync_mode_async{args.async_window}" if args.async_window else "sync_mode"
    path = save(name, {"n": args.n, "rounds": args.rounds, "summary": summary, "runs": runs})
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
