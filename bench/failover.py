"""Redis Sentinel fail-over at scale, and what `replicas_ack = 1` costs.

A master, one replica and three sentinels on loopback (tests/sentinels.py); the
daemon (a subprocess) on ``redis+sentinel://``; the provider simulator counts what
it received by job id.

1. Fail-over: enqueue `--jobs`, start the daemon with `replicas_ack = 1`, kill -9
   the master once `--kill-at` of them reached the provider, wait for the sentinels
   to promote the replica, start the old master again as a replica of the new one.
   Prints lost jobs, duplicates (and how many were counted as possible), the
   sentinels' switch time, the daemon's outage and the time until every job is sent.
2. Cost: drain `--drain` jobs with `replicas_ack` 0 and 1 (the replica attached in
   both), `--runs` times each alternately; medians of messages per second.
3. Cost per step: median time of one outcome flush (`Ledger.finish`, 32 outcomes)
   without and with ``WAIT 1``.

Usage: python bench/failover.py [--jobs 20000] [--drain 20000] [--runs 3]
Writes bench/results/failover.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    NUMBERS,
    ROOT,
    Stack,
    campaign_toml,
    cli,
    free_port,
    median,
    save,
    start_daemon,
    status_counts,
    stop,
    write_jobs,
)
from redis.asyncio import Redis

sys.path.insert(0, str(ROOT))
from router.daemon.daemon import health_key
from router.store import keys
from router.store.ledger import Finished, Ledger
from tests.sentinels import SentinelSet


class Provider:
    """The provider simulator (`sms-router http-sim`) on a free port."""

    def __init__(self, latency: float) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "http-sim", "--port", str(self.port),
             "--latency", str(latency)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        Stack._wait_port(self.port)

    def stats(self) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def reset(self) -> None:
        import urllib.request

        url = f"http://127.0.0.1:{self.port}/reset"
        urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10).close()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def write_config(folder: Path, url: str, provider: Provider, window: int, replicas: int) -> Path:
    path = folder / f"router-ack{replicas}.toml"
    path.write_text(
        f"""
[router]
redis = "{url}"
instance = "bench"
log_format = "json"
log_level = "warning"
replicas_ack = {replicas}
[queue]
batch = 200
claim_idle = 5
[profiles.bench]
global = true
protocol = "http"
window = {window}
numbers = {json.dumps(NUMBERS)}
[profiles.bench.http]
url = "http://127.0.0.1:{provider.port}/send"
form = {{ from = "{{from}}", to = "{{to}}", text = "{{text}}", ref = "{{id}}" }}
message_id = "json:id"
{campaign_toml(NUMBERS)}"""
    )
    return path


async def final_counts(port: int, ids: list[str]) -> dict[str, int]:
    redis = Redis(port=port)
    try:
        counts = await status_counts(redis, "bench", ids)
        stats = await redis.hgetall(keys.stats("bench"))
        for name in ("possible_duplicates", "replica_ack_short"):
            counts[name] = int(stats.get(name.encode(), 0))
        health = await redis.get(health_key("bench"))
        if health:
            counts["outage_s"] = json.loads(health).get("redis_last_outage_seconds")
    finally:
        await redis.aclose()
    return counts


def failover(
    topology: SentinelSet, provider: Provider, folder: Path, jobs: int, window: int, at: float
) -> dict[str, Any]:
    config = write_config(folder, topology.url, provider, window, 1)
    ids = [f"fo-{i}" for i in range(jobs)]
    print(cli("enqueue", "-c", str(config), str(write_jobs(folder / "fo.jsonl", jobs, "fo"))))
    log = folder / "failover.log"
    daemon = start_daemon(config, log)
    while provider.stats()["accepted"] < jobs * at:
        time.sleep(0.005)
    old = topology.master_port()
    killed = time.monotonic()
    at_kill = provider.stats()["accepted"]
    node = topology.kill_master()
    switch = asyncio.run(topology.wait_failover(old))
    topology.rejoin(node)
    while True:
        counts = asyncio.run(final_counts(topology.master_port(), ids))
        if counts.get("sent", 0) == jobs:
            break
        time.sleep(0.2)
    all_sent = time.monotonic() - killed
    time.sleep(3)  # one more health beat: the outage's length
    counts = asyncio.run(final_counts(topology.master_port(), ids))
    code = stop(daemon)
    sim = provider.stats()
    duplicates = sim["accepted"] - sim["unique"]  # copies beyond the first
    return {
        "jobs": jobs,
        "window": window,
        "replicas_ack": 1,
        "accepted_at_kill": at_kill,
        "sentinel_switch_s": round(switch, 2),
        "daemon_outage_s": counts.get("outage_s"),
        "all_sent_after_kill_s": round(all_sent, 2),
        "lost": jobs - sim["unique"],
        "provider_duplicates": duplicates,
        "possible_duplicates_counted": counts["possible_duplicates"],
        "replica_ack_short": counts["replica_ack_short"],
        "daemon_exit": code,
        "tracebacks_in_log": log.read_text().count("Traceback"),
    }


def drain(
    topology: SentinelSet, provider: Provider, folder: Path, jobs: int, window: int, ack: int
) -> float:
    """Messages per second of one drain of `jobs` queued jobs."""
    master = topology.master_port()
    asyncio.run(_flush(master))
    provider.reset()
    config = write_config(folder, topology.url, provider, window, ack)
    ids = [f"d{ack}-{i}" for i in range(jobs)]
    cli("enqueue", "-c", str(config), str(write_jobs(folder / f"d{ack}.jsonl", jobs, f"d{ack}")))
    daemon = start_daemon(config, folder / f"drain{ack}.log")
    while provider.stats()["accepted"] == 0:
        time.sleep(0.002)
    began = time.monotonic()
    while provider.stats()["accepted"] < jobs:
        time.sleep(0.01)
    elapsed = time.monotonic() - began
    while asyncio.run(final_counts(master, ids)).get("sent", 0) < jobs:
        time.sleep(0.1)
    assert stop(daemon, signal.SIGTERM) == 0
    return jobs / elapsed


async def step_latency(port: int, steps: int, items: int) -> dict[str, float]:
    """Median milliseconds of one `Ledger.finish` of `items` outcomes, without and with
    ``WAIT 1`` (the replica attached): what replicas_ack adds to each flush."""
    redis = Redis(port=port)
    stream = keys.queue("step")
    await redis.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
    out: dict[str, float] = {}
    try:
        for ack in (0, 1, 0, 1):  # twice each, alternately; the second pair is kept
            ledger = Ledger(redis, retention=60, events_maxlen=1000, replicas_ack=ack)
            times: list[float] = []
            for n in range(steps):
                batch = [
                    Finished(f"s{ack}-{n}-{i}", "0-1", 2, "sent", "", "", "+447911123456",
                             "+16501112345", "", 1, "", "", "", [f"p{ack}-{n}-{i}"], [], "", 0.0)
                    for i in range(items)
                ]  # fmt: skip
                began = time.perf_counter()
                await ledger.finish("step", stream, batch)
                times.append((time.perf_counter() - began) * 1000)
            out[f"replicas_ack_{ack}_ms"] = round(median(times), 3)
    finally:
        await redis.aclose()
    return out


async def _flush(port: int) -> None:
    redis = Redis(port=port)
    await redis.flushall()
    await redis.wait(1, 5000)
    await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--drain", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--kill-at", type=float, default=0.3)
    parser.add_argument("--latency", type=float, default=0.002)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sms-failover-"))
    topology = SentinelSet(folder / "sentinel-set")
    provider = Provider(args.latency)
    try:
        topology.start()
        result: dict[str, Any] = {
            "failover": failover(topology, provider, folder, args.jobs, args.window, args.kill_at)
        }
        print(result["failover"])
        rates: dict[int, list[float]] = {0: [], 1: []}
        for run in range(args.runs):
            for ack in (0, 1):
                rates[ack].append(drain(topology, provider, folder, args.drain, args.window, ack))
                print(f"drain run {run + 1} replicas_ack={ack}: {rates[ack][-1]:.0f} msg/s")
        zero, one = median(rates[0]), median(rates[1])
        result["drain"] = {
            "jobs": args.drain,
            "window": args.window,
            "provider_latency_s": args.latency,
            "replica_attached": True,
            "replicas_ack_0_msg_s": [round(r) for r in rates[0]],
            "replicas_ack_1_msg_s": [round(r) for r in rates[1]],
            "median_0_msg_s": round(zero),
            "median_1_msg_s": round(one),
            "cost_pct": round(100 * (1 - one / zero), 1) if zero else None,
        }
        print(result["drain"])
        asyncio.run(_flush(topology.master_port()))
        result["finish_step"] = {
            "items": 32,
            "steps": 500,
            **asyncio.run(step_latency(topology.master_port(), 500, 32)),
        }
        print(result["finish_step"])
    finally:
        topology.stop()
        provider.close()
    print(f"written {save('failover', result)}")
    fo = result["failover"]
    if fo["lost"] or fo["provider_duplicates"] > fo["possible_duplicates_counted"]:
        raise SystemExit("FAILED: lost or uncounted duplicate messages")


if __name__ == "__main__":
    main()
