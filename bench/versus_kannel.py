"""The router beside Kannel 1.4.5 on this machine, through the same SMPP sink.

Usage: python bench/versus_kannel.py [--n 20000] [--rounds 3] [--cases drain,sync]

Cases (rounds interleaved: Kannel, router, Kannel, router, ...):
- drain: N messages queued while the SMSC is down (Kannel: its file store, through
  sendsms; the router: Redis with an append-only file, through `Client`), then the
  sink starts; rate = the sink's first to last submit. Window 100, one transceiver.
- sync: the router with `processing = "sync"` (one submit outstanding) against the
  raw asyncio SMPP pump at window 1 (`smpp_blast.py`), the plain-Python ceiling.
Needs Kannel (`apt-get install kannel`, done here when missing and run as root) and
the peer kit in ../shared/bench-peers (its README says what each tool measures).
Prints medians and ratios; writes bench/results/versus_kannel.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import RedisServer, Stack, peak_rss_mb, save, start_daemon, stop
from redis.asyncio import Redis

from router import Client

PEERS = Path(__file__).resolve().parents[2] / "shared" / "bench-peers"
SINK_PORT = 27775


def ensure_tools() -> None:
    """Kannel from Debian's packages (never started by the package), uvloop for the sink."""
    if not PEERS.is_dir():
        sys.exit(f"the peer kit is missing: {PEERS}")
    if shutil.which("bearerbox") is None:
        if os.geteuid() != 0:
            sys.exit("Kannel is missing: run as root, or apt-get install kannel")
        policy = Path("/usr/sbin/policy-rc.d")
        if not policy.exists():  # keep Debian from starting Kannel on its default ports
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "kannel"], check=True, env=env)
    try:
        import uvloop  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "uvloop"], check=True)


def peer(script: str, *args: str) -> list[str]:
    """A command line running one of the peer kit's Python tools."""
    return [sys.executable, str(PEERS / script), *args]


def start_sink(stats: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            peer(
                "smsc_sink.py",
                *("--port", str(SINK_PORT), "--quiet", "--dlr", "off", "--uvloop"),
                *("--stats-file", str(stats)),
            ),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    Stack._wait_port(SINK_PORT)
    return proc


def kannel_drain(n: int, scratch: Path) -> dict[str, Any]:
    """One Kannel drain run through the kit's runner; its loadgen result line."""
    out = scratch / "kannel.jsonl"
    env = {
        **os.environ,
        "N": str(n),
        "RUNS": "1",
        "MODES": "drain",
        "WINDOWS": "100",
        "STORES": "file",
        "PY": sys.executable,
        "SCRATCH": str(scratch),
        "RESULTS": str(scratch),
        "OUT": str(out),
        "SINK_PORT": str(SINK_PORT),
    }
    subprocess.run(
        ["bash", str(PEERS / "run_kannel.sh")],
        env=env,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    out.unlink()
    result = lines[-1]
    return {
        "rate": result.get("sink_rate", 0.0),
        "complete": result.get("complete", False),
        "cpu_pct": {k: v["cpu_pct"] for k, v in result.get("cpu", {}).items()},
    }


def router_config(path: Path, redis_url: str, window: int, processing: str) -> Path:
    path.write_text(
        f"""
[router]
redis = "{redis_url}"
instance = "versus"
log_format = "json"
log_level = "warning"
[queue]
batch = 500
[profiles.bench]
global = true
protocol = "smpp"
processing = "{processing}"
window = {window}
numbers = ["+16501112345", "+14082223333", "+14155552671"]
[profiles.bench.smpp]
host = "127.0.0.1"
port = {SINK_PORT}
system_id = "bench"
password = "bench"
bind = "transceiver"
registered_delivery = 0
reconnect_max = 1
"""
    )
    return path


async def preload(url: str, n: int, tag: str) -> None:
    redis = Redis.from_url(url)
    client = Client(redis, default_profile="bench")
    for start in range(0, n, 2000):
        await client.send_many(
            [
                {"id": f"{tag}-{i}", "to": f"+4915100{i:06d}", "text": "Hello from the bench"}
                for i in range(start, min(n, start + 2000))
            ]
        )
    await redis.aclose()


def router_drain(n: int, scratch: Path, tag: str, window: int, processing: str) -> dict[str, Any]:
    """Preload while the sink is down, start the daemon, then the sink; time the drain."""
    server = RedisServer(appendonly=True, folder=scratch / f"redis-{tag}")
    config = router_config(scratch / f"router-{tag}.toml", server.url, window, processing)
    asyncio.run(preload(server.url, n, tag))
    daemon = start_daemon(config, scratch / f"router-{tag}.log")
    stats, sink = scratch / f"sink-{tag}.json", None
    try:
        time.sleep(1.5)  # started and trying to bind
        waiter = subprocess.Popen(
            peer(
                "loadgen.py",
                *("--mode", "drain", "--n", str(n), "--sink-stats", str(stats), "--label", tag),
                *("--pid", f"router={daemon.pid}"),
                *("--pid", f"redis={server.proc.pid if server.proc else 0}"),
            ),
            stdout=subprocess.PIPE,
        )
        time.sleep(0.5)
        sink = start_sink(stats, scratch / f"sink-{tag}.log")
        result = json.loads((waiter.communicate(timeout=900)[0] or b"{}").decode())
        rss = peak_rss_mb(daemon.pid)
    finally:
        stop(daemon)
        if sink is not None:
            sink.terminate()
            sink.wait(10)
        server.close()
    return {
        "rate": result.get("sink_rate", 0.0),
        "complete": result.get("complete", False),
        "cpu_pct": {k: v["cpu_pct"] for k, v in result.get("cpu", {}).items()},
        "rss_mb": round(rss, 1),
    }


def pump_w1(n: int, scratch: Path) -> dict[str, Any]:
    """The raw asyncio SMPP pump at window 1 into a fresh sink."""
    stats = scratch / "sink-pump.json"
    sink = start_sink(stats, scratch / "sink-pump.log")
    try:
        done = subprocess.run(
            peer(
                "smpp_blast.py",
                *("--port", str(SINK_PORT), "--n", str(n), "--window", "1"),
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
    line = [x for x in done.stdout.splitlines() if x.startswith("{")][-1]
    result = json.loads(line)
    return {"rate": result.get("sink_rate") or result["rate"], "raw": result}


def median(rows: list[dict[str, Any]], key: str = "rate") -> float:
    return statistics.median(r[key] for r in rows) if rows else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--sync-n", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default="drain,sync")
    args = parser.parse_args()
    ensure_tools()
    cases = args.cases.split(",")
    scratch = Path(tempfile.mkdtemp(prefix="sms-versus-"))
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        for r in range(args.rounds):
            if "drain" in cases:
                runs.setdefault("kannel-drain", []).append(kannel_drain(args.n, scratch))
                runs.setdefault("router-drain", []).append(
                    router_drain(args.n, scratch, f"drain{r}", 100, "async")
                )
                print(
                    f"round {r + 1}: drain kannel {runs['kannel-drain'][-1]['rate']:.0f} "
                    f"router {runs['router-drain'][-1]['rate']:.0f} msg/s",
                    flush=True,
                )
            if "sync" in cases:
                runs.setdefault("pump-w1", []).append(pump_w1(args.sync_n, scratch))
                runs.setdefault("router-sync", []).append(
                    router_drain(args.sync_n, scratch, f"sync{r}", 1, "sync")
                )
                print(
                    f"round {r + 1}: window 1 pump {runs['pump-w1'][-1]['rate']:.0f} "
                    f"router sync {runs['router-sync'][-1]['rate']:.0f} msg/s",
                    flush=True,
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table: dict[str, Any] = {}
    pairs = [("drain", "kannel-drain", "router-drain"), ("sync w1", "pump-w1", "router-sync")]
    print("\n| case | peer msg/s | router msg/s | router/peer | router CPU % | Redis CPU % |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, peer, ours in pairs:
        if peer not in runs:
            continue
        peer_rate, our_rate = median(runs[peer]), median(runs[ours])
        cpu = [r["cpu_pct"].get("router", 0.0) for r in runs[ours]]
        redis_cpu = [r["cpu_pct"].get("redis", 0.0) for r in runs[ours]]
        row = {
            "peer": peer,
            "peer_rate": peer_rate,
            "router_rate": our_rate,
            "ratio": round(our_rate / peer_rate, 3) if peer_rate else None,
            "router_cpu_pct": statistics.median(cpu),
            "redis_cpu_pct": statistics.median(redis_cpu),
            "router_rss_mb": median(runs[ours], "rss_mb"),
            "complete": all(r["complete"] for r in runs[ours]),
        }
        table[name] = row
        print(
            f"| {name} ({peer}) | {peer_rate:,.0f} | {our_rate:,.0f} | {row['ratio']} "
            f"| {row['router_cpu_pct']:.0f} | {row['redis_cpu_pct']:.0f} |"
        )
    print(
        "written",
        save("versus_kannel", {"n": args.n, "rounds": args.rounds, "cases": table, "runs": runs}),
    )


if __name__ == "__main__":
    main()
