"""The router beside Kannel 1.4.5 on this machine, through the same SMPP sink.

Usage: python bench/versus_kannel.py [--n 20000] [--rounds 3]
           [--cases drain,live,latency5,sync,dlr] [--endurance [N]] [--latency [--rate R]]

Cases (rounds interleaved: peer, router, peer, router, ...; window 100, one transceiver):
- drain: N messages queued while the SMSC is down (Kannel: its file store, through
  sendsms; the router: Redis with an append-only file, through `Client`), then the
  sink starts; rate = the sink's first to last submit.
- live: a producer enqueues N while the gateway is bound and sending (Kannel: HTTP
  sendsms from the kit's loader; the router: this process through `Client.send_many`
  in batches, at full speed); rate = N / (N-th submit - first enqueue).
- latency5: drain against a sink that answers every submit after 5 ms; also the share
  of the window / latency bound (100 / 0.005 s = 20,000 msg/s) each side reaches.
- sync: the router with `processing = "sync"` (one submit outstanding) against the
  raw asyncio SMPP pump at window 1 (`smpp_blast.py`), the plain-Python ceiling.
- dlr: the router's drain with `registered_delivery = 1` and a sink that sends a
  receipt for each; rate = N / (last record `delivered` - first submit). No peer: its
  ratio is to the router's plain drain of the same round.
Ratios are the median of the per-round ratios (each round pairs runs made side by side).

Opt-in, outside the rounds (with neither `--cases` given, only these run):
- `--endurance N`: N messages through the sink, enqueued in chunks while the router
  sends (a bounded backlog; records expire after 60 s), the daemon's RSS every 5 s;
  growth from the end of warm-up (the first 100,000) to the end.
- `--latency`: enqueue -> `sending` latency from each record's history, with a
  producer paced at half the maximum rate (`--rate`, else a drain of N measures it).
  Also how long after the producer stopped the last submit came (the router kept up
  when that is about 0).

Needs Kannel (`apt-get install kannel`, done here when missing and run as root) and
the peer kit in ../shared/bench-peers (its README says what each tool measures).
Prints medians and ratios; writes bench/results/versus_kannel.json (sections a run
did not produce are kept from the previous file).
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import (
    NUMBERS,
    RESULTS,
    RedisServer,
    Stack,
    campaign_toml,
    cpu_seconds,
    peak_rss_mb,
    round_ratio,
    rss_mb,
    save,
    start_daemon,
    stop,
)
from redis.asyncio import Redis

from router import Client, load_settings
from router.store.ledger import Ledger

PEERS = Path(__file__).resolve().parents[2] / "shared" / "bench-peers"
SINK_PORT = 27775
CASES = ("drain", "live", "latency5", "sync", "dlr")
WINDOW = int(os.environ.get("BENCH_WINDOW", "100"))
PROCESSES = 1  # router daemons per run (--processes)
LATENCY_MS = 5.0
# Outcomes a record can end in once its delivery report is applied.
REPORTED = frozenset({"delivered", "undelivered", "failed", "rejected", "expired"})


def ensure_tools(*, kannel: bool = True) -> None:
    """Kannel from Debian's packages (never started by the package), uvloop for the sink."""
    if not PEERS.is_dir():
        sys.exit(f"the peer kit is missing: {PEERS}")
    if kannel and shutil.which("bearerbox") is None:
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


def start_sink(
    stats: Path, log: Path, *, latency_ms: float = 0.0, dlr: str = "off"
) -> subprocess.Popen[bytes]:
    """A fresh sink (rates come from its first and last submit); `dlr`: off | requested."""
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            peer(
                "smsc_sink.py",
                *("--port", str(SINK_PORT), "--quiet", "--dlr", dlr, "--uvloop"),
                *("--latency-ms", f"{latency_ms:g}", "--stats-file", str(stats)),
            ),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    Stack._wait_port(SINK_PORT)
    return proc


def sink_stats(path: Path) -> dict[str, Any]:
    """The sink's stats file (rewritten every 0.1 s; {} before its first write)."""
    for _ in range(5):
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            time.sleep(0.02)
    return {}


def kannel(n: int, scratch: Path, mode: str = "drain", latency_ms: float = 0.0) -> dict[str, Any]:
    """One Kannel run (drain or live) through the kit's runner; its loadgen result line."""
    out = scratch / "kannel.jsonl"
    env = {
        **os.environ,
        "N": str(n),
        "RUNS": "1",
        "MODES": mode,
        "WINDOWS": str(WINDOW),
        "STORES": "file",
        "PY": sys.executable,
        "SCRATCH": str(scratch),
        "RESULTS": str(scratch),
        "OUT": str(out),
        "SINK_PORT": str(SINK_PORT),
    }
    env.pop("SINK_LATENCY_MS", None)
    if latency_ms:
        env["SINK_LATENCY_MS"] = f"{latency_ms:g}"
    subprocess.run(
        ["bash", str(PEERS / "run_kannel.sh")],
        env=env,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    text = out.read_text() if out.exists() else ""  # no line: the run failed
    out.unlink(missing_ok=True)
    lines = [json.loads(x) for x in text.splitlines() if x.strip()]
    result = lines[-1] if lines else {}
    cpu = {k: v["cpu_pct"] for k, v in result.get("cpu", {}).items()}
    loader = cpu.pop("loader", 0.0)
    if mode == "live":  # the kit's HTTP loader is the producer there; idle in a drain
        cpu["producer"] = loader
    return {
        "rate": result.get("e2e_rate" if mode == "live" else "sink_rate", 0.0),
        # live: the rate sendsms answered the loader at (HTTP 202s / load time)
        "http_rate": result.get("http_rate") or 0.0,
        "foreign_cpu_pct": result.get("foreign_cpu_pct"),  # other load on the machine
        "complete": result.get("complete", False),
        "cpu_pct": cpu,
    }


def router_config(
    path: Path,
    redis_url: str,
    *,
    window: int = WINDOW,
    processing: str = "async",
    registered_delivery: int = 0,
    retention: float | None = None,
) -> Path:
    """One SMPP profile to the sink; `retention` (seconds) also trims the event stream."""
    short = f"retention = {retention:g}\nevents_maxlen = 1000" if retention else ""
    path.write_text(
        f"""
[router]
redis = "{redis_url}"
instance = "versus"
log_format = "json"
log_level = "warning"
[queue]
batch = 500
{short}
[profiles.bench]
global = true
protocol = "smpp"
processing = "{processing}"
window = {window}
numbers = {json.dumps(NUMBERS)}
[profiles.bench.smpp]
host = "127.0.0.1"
port = {SINK_PORT}
system_id = "bench"
password = "bench"
bind = "transceiver"
registered_delivery = {registered_delivery}
reconnect_max = 1
{campaign_toml(NUMBERS)}"""
    )
    return path


class Rig:
    """A private Redis (append-only file unless told), the router's configuration, then
    the daemon and a sink as a run starts them; `close` stops what was started."""

    def __init__(self, scratch: Path, tag: str, *, appendonly: bool = True, **config: Any) -> None:
        self.scratch, self.tag = scratch, tag
        self.server = RedisServer(appendonly=appendonly, folder=scratch / f"redis-{tag}")
        self.config = router_config(scratch / f"router-{tag}.toml", self.server.url, **config)
        self.stats = scratch / f"sink-{tag}.json"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.more: list[subprocess.Popen[bytes]] = []  # daemons 2..PROCESSES
        self.sink: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def router_pid(self) -> int:
        return self.daemon.pid if self.daemon is not None else 0

    def pids(self) -> dict[str, int]:
        """The processes whose CPU a run reports."""
        more = {f"router{i}": d.pid for i, d in enumerate(self.more, 2)}
        redis = self.server.proc.pid if self.server.proc else 0
        return {"router": self.router_pid, **more, "redis": redis}

    def start_daemon(self) -> None:
        self.daemon = start_daemon(self.config, self.scratch / f"router-{self.tag}.log")
        # More daemons of the same profile: same consumer group, their own instance
        # names (and binds), as several hosts would run it.
        for i in range(2, PROCESSES + 1):
            config = self.scratch / f"router-{self.tag}-{i}.toml"
            text = self.config.read_text().replace('instance = "versus"', f'instance = "versus{i}"')
            config.write_text(text)
            self.more.append(start_daemon(config, self.scratch / f"router-{self.tag}-{i}.log"))

    def start_sink(self, *, latency_ms: float = 0.0, dlr: str = "off") -> None:
        self.stats.unlink(missing_ok=True)
        self.sink = start_sink(
            self.stats, self.scratch / f"sink-{self.tag}.log", latency_ms=latency_ms, dlr=dlr
        )

    def wait_bound(self, timeout: float = 30.0) -> None:
        """Until the daemon has bound to the sink."""
        deadline = time.monotonic() + timeout
        while sink_stats(self.stats).get("binds", 0) < 1:
            if time.monotonic() > deadline:
                sys.exit(f"the router did not bind within {timeout:.0f} s (see its log)")
            time.sleep(0.05)

    def close(self) -> None:
        for daemon in self.more:
            stop(daemon)
        if self.daemon is not None:
            stop(self.daemon)
        if self.sink is not None:
            self.sink.terminate()
            self.sink.wait(10)
        self.server.close()


def waiter(n: int, stats: Path, label: str, pids: dict[str, int]) -> subprocess.Popen[bytes]:
    """The kit's loadgen waiting for `n` submits at the sink, sampling each pid's CPU."""
    flags = [x for name, pid in pids.items() for x in ("--pid", f"{name}={pid}")]
    return subprocess.Popen(
        peer(
            "loadgen.py",
            *("--mode", "drain", "--n", str(n), "--sink-stats", str(stats), "--label", label),
            *flags,
        ),
        stdout=subprocess.PIPE,
    )


def waited(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    return json.loads((proc.communicate(timeout=900)[0] or b"{}").decode())  # type: ignore[no-any-return]


def jobs(tag: str, start: int, stop: int) -> list[dict[str, Any]]:
    return [
        {"id": f"{tag}-{i}", "to": f"+4915100{i % 1_000_000:06d}", "text": "Hello from the bench"}
        for i in range(start, stop)
    ]


async def preload(url: str, n: int, tag: str, batch: int = 2000) -> None:
    """Enqueue `n` jobs through `Client.send_many`, one batch after the other."""
    redis = Redis.from_url(url)
    client = Client(redis, default_profile="bench")
    for start in range(0, n, batch):
        await client.send_many(jobs(tag, start, min(n, start + batch)))
    await redis.aclose()


def chunked(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def first_at(record: dict[str, Any] | None, statuses: frozenset[str]) -> float | None:
    """When a record first reached one of `statuses`, from its history."""
    for step in (record or {}).get("history", []):
        if step["status"] in statuses:
            return float(step["at"])
    return None


async def read_records(url: str, ids: list[str]) -> list[dict[str, Any] | None]:
    """The records of `ids` (None where missing), in chunks of 1000 per round trip."""
    redis = Redis.from_url(url)
    # Client writes records but reads none; the CLI reads them through the Ledger too.
    ledger = Ledger(redis, retention=60, events_maxlen=1000)
    found: list[dict[str, Any] | None] = []
    try:
        for chunk in chunked(ids, 1000):
            found += await ledger.find(chunk)
    finally:
        await redis.aclose()
    return found


async def wait_reported(url: str, ids: list[str], stall: float = 30.0) -> tuple[int, float]:
    """Poll the records until each has its report's outcome (or none comes for `stall`
    seconds): (how many are `delivered`, when the last outcome was recorded)."""
    redis = Redis.from_url(url)
    ledger = Ledger(redis, retention=60, events_maxlen=1000)
    pending, delivered, last = list(ids), 0, 0.0
    swept, progress = time.monotonic(), time.monotonic()
    try:
        while pending and time.monotonic() - progress < stall:
            # A cheap probe first: the newest job is about the last to finish, so the
            # full sweep (which loads Redis) runs when it has, or every 2 s.
            probe = await ledger.get(pending[-1])
            if first_at(probe, REPORTED) is None and time.monotonic() - swept < 2:
                await asyncio.sleep(0.05)
                continue
            still: list[str] = []
            for chunk in chunked(pending, 1000):
                for job_id, record in zip(chunk, await ledger.find(chunk), strict=True):
                    at = first_at(record, REPORTED)
                    if at is None:
                        still.append(job_id)
                        continue
                    last = max(last, at)
                    if record is not None and record.get("status") == "delivered":
                        delivered += 1
            if len(still) < len(pending):
                progress = time.monotonic()
            pending, swept = still, time.monotonic()
    finally:
        await redis.aclose()
    return delivered, last


def router_drain(
    n: int,
    scratch: Path,
    tag: str,
    *,
    window: int = WINDOW,
    processing: str = "async",
    latency_ms: float = 0.0,
    dlr: bool = False,
) -> dict[str, Any]:
    """Preload while the sink is down, start the daemon, then the sink; time the drain
    (with `dlr`: until every record is `delivered`)."""
    rig = Rig(scratch, tag, window=window, processing=processing, registered_delivery=int(dlr))
    try:
        asyncio.run(preload(rig.url, n, tag))
        rig.start_daemon()
        time.sleep(1.5)  # started and trying to bind
        pids = rig.pids()
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        wait = waiter(n, rig.stats, tag, pids)
        time.sleep(0.5)
        rig.start_sink(latency_ms=latency_ms, dlr="requested" if dlr else "off")
        result = waited(wait)
        row: dict[str, Any] = {
            "rate": result.get("sink_rate", 0.0),
            "complete": result.get("complete", False),
            "cpu_pct": {k: v["cpu_pct"] for k, v in result.get("cpu", {}).items()},
        }
        row["cpu_pct"].pop("loader", None)  # loadgen only waits here
        if dlr:
            first = sink_stats(rig.stats).get("first_ts") or time.time()
            ids = [f"{tag}-{i}" for i in range(n)]
            delivered, last = asyncio.run(wait_reported(rig.url, ids))
            span = max(last - first, 1e-6)
            # The window ends with the last report, not the last submit: CPU over it.
            row["cpu_pct"] = {
                name: round(100 * (cpu_seconds(pid) - cpu0[name]) / span, 1)
                for name, pid in pids.items()
            } | {"sink_self": row["cpu_pct"].get("sink_self", 0.0)}
            row.update(
                submit_rate=row["rate"],
                rate=round(delivered / span, 1),
                delivered=delivered,
                complete=row["complete"] and delivered == n,
            )
        row["rss_mb"] = round(peak_rss_mb(rig.router_pid), 1)
    finally:
        rig.close()
    return row


def router_live(n: int, scratch: Path, tag: str, batch: int) -> dict[str, Any]:
    """The daemon bound and idle; this process enqueues `n` as fast as `Client` goes."""
    rig = Rig(scratch, tag)
    try:
        rig.start_sink()
        rig.start_daemon()
        rig.wait_bound()
        time.sleep(0.5)  # the worker is reading its stream
        wait = waiter(n, rig.stats, tag, {**rig.pids(), "producer": os.getpid()})
        time.sleep(0.3)  # loadgen has its first CPU readings
        asyncio.run(preload(rig.url, n, tag, batch))
        result = waited(wait)
        [record] = asyncio.run(read_records(rig.url, [f"{tag}-0"]))
        first = first_at(record, frozenset({"queued"}))
        last = sink_stats(rig.stats).get("last_ts")
        span = last - first if first and last else 0.0
        cpu = result.get("cpu", {})
        row: dict[str, Any] = {
            "rate": round(n / span, 1) if span > 0 else 0.0,
            "sink_rate": result.get("sink_rate", 0.0),
            "complete": result.get("complete", False),
            # loadgen divides by the submit span; the live window starts at the first enqueue
            "cpu_pct": {
                k: round(100 * v["cpu_s"] / span, 1) if span > 0 else 0.0
                for k, v in cpu.items()
                if k.startswith("router") or k in ("redis", "producer")
            },
            "rss_mb": round(peak_rss_mb(rig.router_pid), 1),
        }
        row["cpu_pct"]["sink_self"] = cpu.get("sink_self", {}).get("cpu_pct", 0.0)
    finally:
        rig.close()
    return row


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
    return {
        "rate": result.get("sink_rate") or result["rate"],
        "complete": result.get("n") == n,
        "cpu_pct": {"pump": result.get("client_cpu_pct", 0.0)},
        "raw": result,
    }


async def endure(
    rig: Rig, n: int, warmup: int, every: float, backlog: int = 20_000, chunk: int = 2000
) -> dict[str, Any]:
    """Keep at most `backlog` jobs ahead of the sink until it has `n`; the daemon's RSS
    every `every` seconds."""
    redis = Redis.from_url(rig.url)
    # from_settings: the records get the configuration's short retention
    client = Client.from_settings(redis, load_settings(rig.config))
    samples: list[dict[str, float]] = []
    sent = submits = 0
    start = time.monotonic()
    next_sample, moved = start, start
    try:
        while submits < n:
            now = time.monotonic()
            if now >= next_sample:
                samples.append(
                    {"t": round(now - start, 1), "submits": submits, "rss_mb": rss_of(rig)}
                )
                next_sample += every
            if sent < n and sent - submits < backlog:
                await client.send_many(jobs("e", sent, min(n, sent + chunk)))
                sent = min(n, sent + chunk)
            else:
                await asyncio.sleep(0.05)
            count = sink_stats(rig.stats).get("submits", 0)
            if count != submits:
                submits, moved = count, time.monotonic()
            elif time.monotonic() - moved > 60:
                break  # stalled: reported as incomplete
    finally:
        await redis.aclose()
    elapsed = time.monotonic() - start
    samples.append({"t": round(elapsed, 1), "submits": submits, "rss_mb": rss_of(rig)})
    warm = next((s for s in samples if s["submits"] >= warmup), samples[-1])
    return {
        "n": n,
        "complete": submits >= n,
        "submits": submits,
        "seconds": round(elapsed, 1),
        "rate": round(submits / elapsed, 1),
        "warmup": warmup,
        "rss_warm_mb": warm["rss_mb"],
        "rss_end_mb": samples[-1]["rss_mb"],
        "growth_mb": round(samples[-1]["rss_mb"] - warm["rss_mb"], 1),
        "rss_peak_mb": round(peak_rss_mb(rig.router_pid), 1),
        "samples": samples,
    }


def rss_of(rig: Rig) -> float:
    return round(rss_mb(rig.router_pid), 1)


def router_endurance(n: int, scratch: Path, every: float = 5.0) -> dict[str, Any]:
    """N messages through the sink with a bounded backlog; the daemon's RSS over time.
    No append-only file: what is measured is the daemon's memory, and the disk stays free."""
    rig = Rig(scratch, "endurance", appendonly=False, retention=60)
    try:
        rig.start_sink()
        rig.start_daemon()
        rig.wait_bound()
        return asyncio.run(endure(rig, n, min(100_000, n // 10), every))
    finally:
        rig.close()


async def paced(url: str, rate: float, seconds: float, tag: str) -> int:
    """Enqueue at `rate` msg/s for `seconds`, a few jobs every 5 ms; how many in all."""
    redis = Redis.from_url(url)
    client = Client(redis, default_profile="bench")
    loop = asyncio.get_running_loop()
    start, sent = loop.time(), 0
    try:
        while (elapsed := loop.time() - start) < seconds:
            due = int(elapsed * rate) + 1 - sent
            if due > 0:
                await client.send_many(jobs(tag, sent, sent + due))
                sent += due
            await asyncio.sleep(0.005)
    finally:
        await redis.aclose()
    return sent


def router_latency(rate: float, seconds: float, scratch: Path) -> dict[str, Any]:
    """Enqueue -> `sending` per message with the producer paced at `rate`."""
    rig = Rig(scratch, "latency")
    try:
        rig.start_sink()
        rig.start_daemon()
        rig.wait_bound()
        time.sleep(0.5)
        began = time.monotonic()
        sent = asyncio.run(paced(rig.url, rate, seconds, "lat"))
        elapsed, ended = time.monotonic() - began, time.time()
        deadline = time.monotonic() + 60
        while (stats := sink_stats(rig.stats)).get("submits", 0) < sent:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        # Seconds the last submit came after the producer stopped: more than a few ms
        # means the router did not keep up and the latencies measure its backlog.
        behind = (stats.get("last_ts") or ended) - ended
        waits: list[float] = []
        for record in asyncio.run(read_records(rig.url, [f"lat-{i}" for i in range(sent)])):
            queued = first_at(record, frozenset({"queued"}))
            sending = first_at(record, frozenset({"sending"}))
            if queued is not None and sending is not None:
                waits.append(1000 * (sending - queued))
        rss = round(peak_rss_mb(rig.router_pid), 1)
    finally:
        rig.close()
    cuts = statistics.quantiles(waits, n=100) if len(waits) > 1 else [0.0] * 99
    return {
        "target_rate": round(rate, 1),
        "rate": round(sent / elapsed, 1),
        "seconds": round(elapsed, 1),
        "enqueued": sent,
        "measured": len(waits),
        "p50_ms": round(cuts[49], 2),
        "p99_ms": round(cuts[98], 2),
        "max_ms": round(max(waits, default=0.0), 2),
        "behind_s": round(behind, 3),
        "rss_mb": rss,
    }


def median(rows: list[dict[str, Any]], key: str = "rate") -> float:
    return statistics.median(r[key] for r in rows) if rows else 0.0


def cpu_text(rows: list[dict[str, Any]]) -> str:
    """Each process's median CPU % over the runs (the sink's own left to the JSON)."""
    names = [k for k in rows[0].get("cpu_pct", {}) if k not in ("sink", "sink_self")]
    return ", ".join(
        f"{k} {statistics.median(r['cpu_pct'].get(k, 0.0) for r in rows):.0f}" for k in names
    )


def run_rounds(args: argparse.Namespace, cases: list[str], scratch: Path) -> dict[str, Any]:
    """The interleaved rounds; prints each round's figures, then the table."""
    runs: dict[str, list[dict[str, Any]]] = {}

    def add(name: str, row: dict[str, Any]) -> float:
        runs.setdefault(name, []).append(row)
        return float(row["rate"])

    for r in range(args.rounds):
        if "drain" in cases or "dlr" in cases:
            # the dlr case's reference is the router's plain drain of the same round
            theirs = add("kannel-drain", kannel(args.n, scratch)) if "drain" in cases else 0.0
            ours = add("router-drain", router_drain(args.n, scratch, f"drain{r}"))
            print(f"round {r + 1}: drain kannel {theirs:.0f} router {ours:.0f} msg/s")
        if "live" in cases:
            theirs = add("kannel-live", kannel(args.n, scratch, "live"))
            ours = add("router-live", router_live(args.n, scratch, f"live{r}", args.live_batch))
            print(f"round {r + 1}: live kannel {theirs:.0f} router {ours:.0f} msg/s")
        if "latency5" in cases:
            theirs = add("kannel-latency5", kannel(args.n, scratch, latency_ms=LATENCY_MS))
            ours = add(
                "router-latency5",
                router_drain(args.n, scratch, f"lat5-{r}", latency_ms=LATENCY_MS),
            )
            print(f"round {r + 1}: SMSC 5 ms kannel {theirs:.0f} router {ours:.0f} msg/s")
        if "sync" in cases:
            theirs = add("pump-w1", pump_w1(args.sync_n, scratch))
            ours = add(
                "router-sync",
                router_drain(args.sync_n, scratch, f"sync{r}", window=1, processing="sync"),
            )
            print(f"round {r + 1}: window 1 pump {theirs:.0f} router sync {ours:.0f} msg/s")
        if "dlr" in cases:
            ours = add("router-dlr", router_drain(args.n, scratch, f"dlr{r}", dlr=True))
            print(f"round {r + 1}: to delivered {ours:.0f} msg/s")
    table: dict[str, Any] = {}
    pairs = [
        ("drain", "kannel-drain", "router-drain"),
        ("live", "kannel-live", "router-live"),
        ("SMSC 5 ms", "kannel-latency5", "router-latency5"),
        ("sync w1", "pump-w1", "router-sync"),
        ("to delivered", "router-drain", "router-dlr"),
    ]
    print(
        "\n| case (peer) | peer msg/s | router msg/s | router/peer | peer CPU % "
        "| router-side CPU % | router RSS MB | complete |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, peer_key, our_key in pairs:
        if peer_key not in runs or our_key not in runs:
            continue
        row: dict[str, Any] = {
            "peer": peer_key,
            "peer_rate": median(runs[peer_key]),
            "router_rate": median(runs[our_key]),
            "ratio": round_ratio(runs[peer_key], runs[our_key]),
            "peer_cpu": cpu_text(runs[peer_key]),
            "router_cpu": cpu_text(runs[our_key]),
            "router_rss_mb": median(runs[our_key], "rss_mb"),
            "complete": all(r["complete"] for r in runs[our_key] + runs[peer_key]),
        }
        if name == "SMSC 5 ms":
            bound = WINDOW / (LATENCY_MS / 1000)
            row["bound"] = bound
            row["peer_of_bound_pct"] = round(100 * row["peer_rate"] / bound, 1)
            row["router_of_bound_pct"] = round(100 * row["router_rate"] / bound, 1)
        table[name] = row
        print(
            f"| {name} ({peer_key}) | {row['peer_rate']:,.0f} | {row['router_rate']:,.0f} "
            f"| {row['ratio']} | {row['peer_cpu']} | {row['router_cpu']} "
            f"| {row['router_rss_mb']:.0f} | {row['complete']} |"
        )
    if "SMSC 5 ms" in table:
        row = table["SMSC 5 ms"]
        print(
            f"\nSMSC answering after {LATENCY_MS:g} ms, window {WINDOW}: bound "
            f"{row['bound']:,.0f} msg/s; Kannel reaches {row['peer_of_bound_pct']} %, "
            f"the router {row['router_of_bound_pct']} %"
        )
    return {"n": args.n, "sync_n": args.sync_n, "rounds": args.rounds, "cases": table, "runs": runs}


def previous_results() -> dict[str, Any]:
    try:
        return json.loads((RESULTS / "versus_kannel.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--sync-n", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--processes", type=int, default=1, help="router daemons sharing the profile's queue"
    )
    parser.add_argument("--cases", help=f"comma-separated, of {','.join(CASES)} (default: all)")
    parser.add_argument("--live-batch", type=int, default=500, help="jobs per send_many, live")
    parser.add_argument(
        "--endurance",
        type=int,
        nargs="?",
        const=1_000_000,
        metavar="N",
        help="N messages (default 1,000,000) with the daemon's RSS sampled every 5 s",
    )
    parser.add_argument("--latency", action="store_true", help="p50/p99 enqueue -> sending")
    parser.add_argument("--rate", type=float, help="maximum rate for --latency (else measured)")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    args = parser.parse_args()
    global PROCESSES
    PROCESSES = args.processes
    opt_in = args.endurance is not None or args.latency
    cases = args.cases.split(",") if args.cases else ([] if opt_in else list(CASES))
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    ensure_tools(kannel=bool(cases))
    scratch = Path(tempfile.mkdtemp(prefix="sms-versus-"))
    result = previous_results()
    for name in ("recorded_at", "machine"):
        result.pop(name, None)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        if cases:
            result.update(run_rounds(args, cases, scratch))
        if args.endurance is not None:
            run = router_endurance(args.endurance, scratch)
            verdict = "ok" if run["growth_mb"] < 30 else "over"
            print(
                f"\nendurance: {run['submits']:,} of {run['n']:,} in {run['seconds']:.0f} s "
                f"({run['rate']:,.0f} msg/s); router RSS after {run['warmup']:,}: "
                f"{run['rss_warm_mb']:.1f} MB, at the end {run['rss_end_mb']:.1f} MB, "
                f"growth {run['growth_mb']:.1f} MB (target < 30 MB: {verdict})"
            )
            result["endurance"] = {**run, "recorded_at": stamp}
        if args.latency:
            top = args.rate
            if top is None:
                top = float(router_drain(args.n, scratch, "max")["rate"])
                print(f"\nmaximum drain rate (N = {args.n:,}): {top:,.0f} msg/s")
            run = router_latency(top / 2, args.latency_seconds, scratch)
            verdict = "ok" if run["p99_ms"] < 20 else "over"
            print(
                f"\nlatency at half of {top:,.0f} msg/s ({run['rate']:,.0f} msg/s for "
                f"{run['seconds']:.0f} s, {run['measured']:,} messages): enqueue -> sending "
                f"p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms, max "
                f"{run['max_ms']:.1f} ms (target p99 < 20 ms: {verdict}); last submit "
                f"{run['behind_s']:.3f} s after the producer stopped"
            )
            result["latency"] = {**run, "max_rate": top, "recorded_at": stamp}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("written", save("versus_kannel", result))


if __name__ == "__main__":
    main()
