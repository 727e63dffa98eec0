"""The router beside Kannel 1.4.5 on this machine, through the same SMPP sink: the
table of issue 21, every row in one run.

Usage: python bench/versus_kannel.py [--n 20000] [--rounds 3]
           [--cases drain,drain2,live,http,latency5,sync,dlr] [--sync-n N] [--http-n N]
           [--api-workers N] [--endurance [N]] [--latency [--rate R]]
       python bench/versus_kannel.py --markdown   (the last results file's table)

Each round runs every case's reference and then the router, side by side (window 100,
one transceiver unless said; each run a fresh sink on a free port, Redis with an
append-only file everysec against Kannel's file store):
- drain: N messages queued while the SMSC is down (Kannel: its file store, through
  sendsms; the router: Redis, through `Client`), then the sink starts; rate = the
  sink's first to last submit.
- drain2: the router's drain with `binds = 2` against the same Kannel drain.
- live: a producer enqueues N while the gateway is bound and sending (Kannel: HTTP
  sendsms from the kit's raw loader, 50 in flight; the router: this process XADDing
  through `Client.send_many` in batches, at full speed); rate = N / (N-th submit -
  first enqueue).
- http: `POST /v1/messages`, one message per request, 50 in flight, the kit's raw
  HTTP/1.1 client (api_submit.router_api) against the same Kannel live run's sendsms;
  rate = messages answered 202 / load time (both sides); end to end kept beside it.
  `[api] workers` = `--api-workers`, by default cores - 2 as docs/operations.md advises.
- latency5: drain against a sink that answers every submit after 5 ms; also the share
  of the window / latency bound (100 / 0.005 s = 20,000 msg/s) each side reaches.
- sync: the router with `processing = "sync"` (one submit outstanding) against the
  raw asyncio SMPP pump at window 1 (`smpp_blast.py --uvloop`), the plain-Python ceiling.
- dlr: the router's drain with `registered_delivery = 1` and a sink that sends a
  receipt for each; rate = N / (last record `delivered` - first submit). No peer: its
  ratio is to the router's plain drain of the same round.
Ratios are the median of the per-round ratios (each round pairs runs made side by side).
CPU: % of one core over each run's window, medians; `router` sums the daemon and the
processes it started; Redis; Kannel's bearerbox and smsbox (and its loader in live).

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from api_submit import router_api
from harness import (
    RESULTS,
    WINDOW,
    Rig,
    cpu_seconds,
    ensure_tools,
    free_port,
    jobs,
    kannel,
    peak_rss_mb,
    peer,
    preload,
    round_ratio,
    row_median,
    rss_mb,
    save,
    settle,
    sink_stats,
    start_sink,
    waited,
    waiter,
)

# Re-exported: the other SMPP benchmarks (cluster, rules_cost, routes_cost, redis_cost,
# profile_drain, smpp_ingest) import these from here; they live in harness.
from harness import SINK_PORT as SINK_PORT
from harness import router_config as router_config
from redis.asyncio import Redis

from router import Client, load_settings
from router.store.ledger import Ledger

CASES = ("drain", "drain2", "live", "http", "latency5", "sync", "dlr")
PROCESSES = 1  # router daemons per run (--processes)
LATENCY_MS = 5.0
# Outcomes a record can end in once its delivery report is applied.
TIMES = "\u00d7"  # the multiplication sign of ratios in the table
REPORTED = frozenset({"delivered", "undelivered", "failed", "rejected", "expired"})


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
            found += await ledger.find(chunk, profiles=["bench"])
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
            probe = await ledger.get(pending[-1], profile="bench")
            if first_at(probe, REPORTED) is None and time.monotonic() - swept < 2:
                await asyncio.sleep(0.05)
                continue
            still: list[str] = []
            for chunk in chunked(pending, 1000):
                records = await ledger.find(chunk, profiles=["bench"])
                for job_id, record in zip(chunk, records, strict=True):
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
    binds: int = 1,
) -> dict[str, Any]:
    """Preload while the sink is down, start the daemon, then the sink; time the drain
    (with `dlr`: until every record is `delivered`). The sink takes a free port, so an
    A/B of another branch may run beside it."""
    rig = Rig(
        scratch,
        tag,
        sink_port=free_port(),
        processes=PROCESSES,
        window=window,
        processing=processing,
        registered_delivery=int(dlr),
        binds=binds,
    )
    try:
        asyncio.run(preload(rig.url, n, tag))
        rig.start_daemon()
        settle(rig.router_pid)  # started and trying to bind
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
            "foreign_cpu_pct": result.get("foreign_cpu_pct"),  # other load on the machine
        }
        row["cpu_pct"].pop("loader", None)  # loadgen only waits here
        if dlr:
            first = sink_stats(rig.stats).get("first_ts") or time.time()
            ids = [f"{tag}-{i}" for i in range(n)]
            delivered, last = asyncio.run(wait_reported(rig.url, ids))
            span = last - first if delivered else 0.0
            if span > 0:  # the window ends with the last report: CPU over it
                row["cpu_pct"] = {
                    name: round(100 * (cpu_seconds(pid) - cpu0[name]) / span, 1)
                    for name, pid in pids.items()
                } | {"sink_self": row["cpu_pct"].get("sink_self", 0.0)}
            row.update(
                submit_rate=row["rate"],
                rate=round(delivered / span, 1) if span > 0 else 0.0,
                delivered=delivered,
                complete=row["complete"] and delivered == n,
            )
        row["rss_mb"] = round(peak_rss_mb(rig.router_pid), 1)
    finally:
        rig.close()
    return row


def router_live(n: int, scratch: Path, tag: str, batch: int) -> dict[str, Any]:
    """The daemon bound and idle; this process enqueues `n` as fast as `Client` goes
    (`send_many` of `batch` jobs: one XADD script call per batch)."""
    rig = Rig(scratch, tag, sink_port=free_port(), processes=PROCESSES)
    try:
        rig.start_sink()
        rig.start_daemon()
        rig.wait_bound()
        time.sleep(0.5)  # the worker is reading its stream
        wait = waiter(n, rig.stats, tag, {**rig.pids(), "producer": os.getpid()})
        time.sleep(0.3)  # loadgen has its first CPU readings
        first = time.time()  # the first enqueue starts now (the same clock as the sink's)
        asyncio.run(preload(rig.url, n, tag, batch))
        result = waited(wait)
        last = sink_stats(rig.stats).get("last_ts")
        span = last - first if last else 0.0
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
            "foreign_cpu_pct": result.get("foreign_cpu_pct"),
            "rss_mb": round(peak_rss_mb(rig.router_pid), 1),
        }
        row["cpu_pct"]["sink_self"] = cpu.get("sink_self", {}).get("cpu_pct", 0.0)
    finally:
        rig.close()
    return row


def pump_w1(n: int, scratch: Path) -> dict[str, Any]:
    """The raw asyncio SMPP pump (uvloop) at window 1 into a fresh sink."""
    stats, port = scratch / "sink-pump.json", free_port()
    sink = start_sink(stats, scratch / "sink-pump.log", port=port)
    try:
        done = subprocess.run(
            peer(
                "smpp_blast.py",
                *("--port", str(port), "--n", str(n), "--window", "1", "--uvloop"),
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
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}  # no line: the pump failed
    return {
        "rate": result.get("sink_rate") or result.get("rate", 0.0),
        "complete": result.get("n") == n,
        "cpu_pct": {"pump": result.get("client_cpu_pct", 0.0)},
        "foreign_cpu_pct": None,
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
    rig = Rig(scratch, "endurance", appendonly=False, retention=60, sink_port=free_port())
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
    rig = Rig(scratch, "latency", sink_port=free_port())
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


class Row(NamedTuple):
    """One row of the table: the run it is measured against and the goal."""

    case: str
    label: str
    reference: str  # the run name of the left-hand figure
    router: str  # the run name of the router's figure
    goal: str
    key: str = "rate"  # which figure of each run


def rows_of(args: argparse.Namespace) -> list[Row]:
    """The table of issue 21, in its order."""
    bound = WINDOW / (LATENCY_MS / 1000)
    return [
        Row(
            "drain",
            f"drain, window {WINDOW}, 1 bind",
            "kannel-drain",
            "router-drain",
            f"≥ 1.2{TIMES}",
        ),
        Row("drain2", "drain, 2 binds", "kannel-drain", "router-drain2", "—"),
        Row(
            "live", "live, producer XADD vs sendsms", "kannel-live", "router-live", f"≥ 1.5{TIMES}"
        ),
        Row(
            "latency5",
            f"SMSC answering in {LATENCY_MS:g} ms, window {WINDOW} (bound {bound:,.0f})",
            "kannel-latency5",
            "router-latency5",
            "≥ 90 % of bound",
        ),
        Row(
            "sync",
            "sync (window 1) vs a raw asyncio SMPP pump (uvloop)",
            "pump-w1",
            "router-sync",
            f"≥ 0.8{TIMES}",
        ),
        Row(
            "dlr",
            "to `delivered` with a receipt each vs own drain",
            "router-drain",
            "router-dlr",
            f"≥ 0.8{TIMES}",
        ),
        Row(
            "http",
            f"`POST /v1/messages`, one message per request, {args.concurrency} in flight, "
            "the same raw HTTP loader as sendsms (accepted"
            + (f"; [api] workers = {args.api_workers})" if args.api_workers else ")"),
            "kannel-live",
            "router-http",
            f"≥ 1.0{TIMES}",
            key="accepted_rate",
        ),
    ]


def cpu_medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Each process's median CPU % over runs (100 = one core); `router` sums every
    router process (daemons, their API workers); the sink's own is left out."""
    names: list[str] = []
    for run in runs:
        names += [k for k in run.get("cpu_pct", {}) if k not in names]
    totals: dict[str, list[float]] = {}
    for run in runs:
        cpu = run.get("cpu_pct", {})
        router = sum(v for k, v in cpu.items() if k.startswith("router"))
        for name in names:
            if name.startswith("router") or name in ("sink", "sink_self"):
                continue
            totals.setdefault(name, []).append(cpu.get(name, 0.0))
        if any(k.startswith("router") for k in cpu):
            totals.setdefault("router", []).append(router)
    return {k: round(statistics.median(v), 1) for k, v in sorted(totals.items())}


def cpu_text(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f} %" for k, v in cpu.items()) or "—"


def summarise(row: Row, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """One row's medians, per-round ratio and CPU, from the runs (None: not run)."""
    ref, ours = runs.get(row.reference), runs.get(row.router)
    if not ref or not ours:
        return None
    entry: dict[str, Any] = {
        "label": row.label,
        "goal": row.goal,
        "reference": row.reference,
        "router": row.router,
        "figure": row.key,
        "reference_rate": row_median(ref, row.key),
        "router_rate": row_median(ours, row.key),
        "ratio": round_ratio(ref, ours, row.key),
        # each round's figures, to see outliers: a median hides one bad round
        "reference_rates": [r.get(row.key, 0.0) for r in ref],
        "router_rates": [r.get(row.key, 0.0) for r in ours],
        "reference_cpu_pct": cpu_medians(ref),
        "router_cpu_pct": cpu_medians(ours),
        "router_rss_mb": row_median(ours, "rss_mb") if all("rss_mb" in r for r in ours) else None,
        "rounds": len(ours),
        "complete": all(r.get("complete") for r in ref + ours),
        "incomplete_runs": sum(not r.get("complete") for r in ref + ours),
        # other load on the machine (loadgen's reading; the pump's runs have none)
        "foreign_cpu_pct": row_median(
            [r for r in ref + ours if r.get("foreign_cpu_pct") is not None], "foreign_cpu_pct"
        ),
    }
    if row.case == "latency5":
        bound = WINDOW / (LATENCY_MS / 1000)
        entry["bound"] = bound
        entry["reference_of_bound_pct"] = round(100 * entry["reference_rate"] / bound, 1)
        entry["router_of_bound_pct"] = round(100 * entry["router_rate"] / bound, 1)
    if row.case == "http":  # end to end too: N / (N-th submit at the sink - first request)
        entry["reference_e2e_rate"] = row_median(ref, "rate")
        entry["router_e2e_rate"] = row_median(ours, "rate")
        entry["e2e_ratio"] = round_ratio(ref, ours, "rate")
    return entry


def markdown(table: dict[str, Any]) -> str:
    """The table in the issue's shape, ready to paste."""
    lines = [
        "| case | Kannel / reference | sms-router | ratio | goal | router CPU | Redis CPU "
        "| reference CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in table.values():
        ref, ours = f"{entry['reference_rate']:,.0f}", f"{entry['router_rate']:,.0f}"
        ratio = "—" if entry["ratio"] is None else f"{entry['ratio']:.2f}{TIMES}"
        if "bound" in entry:
            ref += f" ({entry['reference_of_bound_pct']:.0f} %)"
            ratio = f"{entry['router_of_bound_pct']:.0f} % of bound ({ratio})"
        if "e2e_ratio" in entry and entry["e2e_ratio"] is not None:
            ratio += f"; end to end {entry['e2e_ratio']:.2f}{TIMES}"
        if not entry["complete"]:
            ours += f" ({entry['incomplete_runs']} run(s) incomplete)"
        mine = dict(entry["router_cpu_pct"])
        theirs = entry["reference_cpu_pct"]
        redis = mine.pop("redis", None)
        own = {k: v for k, v in mine.items() if k != "router"}  # producer, client
        router = f"{mine.get('router', 0.0):.0f} %" + (f" ({cpu_text(own)})" if own else "")
        reference = cpu_text(theirs)
        if entry["reference"].startswith("kannel"):
            reference = "Kannel: " + reference
        lines.append(
            f"| {entry['label']} | {ref} | {ours} | {ratio} | {entry['goal']} | {router} "
            f"| {'—' if redis is None else f'{redis:.0f} %'} | {reference} |"
        )
    return "\n".join(lines)


def run_rounds(args: argparse.Namespace, cases: list[str], scratch: Path) -> dict[str, Any]:
    """The interleaved rounds (each round runs every case's reference beside the
    router); prints each round's figures, then the table."""
    runs: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}

    def add(
        name: str, make: Callable[..., dict[str, Any]], *args: Any, **kw: Any
    ) -> dict[str, Any]:
        began = time.monotonic()
        row = make(*args, **kw)
        row["seconds"] = round(time.monotonic() - began, 1)
        seconds[name] = round(seconds.get(name, 0.0) + row["seconds"], 1)
        runs.setdefault(name, []).append(row)
        if not row.get("complete"):
            print(f"  {name}: incomplete run ({row.get('rate', 0):.0f} msg/s)")
        return row

    def say(r: int, case: str, pairs: list[tuple[str, dict[str, Any], str]]) -> None:
        text = ", ".join(f"{who} {row.get(key, 0.0):,.0f}" for who, row, key in pairs)
        print(f"round {r + 1}: {case}: {text} msg/s")

    n, sync_n, http_n = args.n, args.sync_n or args.n, args.http_n or args.n
    for r in range(args.rounds):
        if {"drain", "drain2", "dlr"} & set(cases):
            pairs = []
            if {"drain", "drain2"} & set(cases):
                pairs.append(
                    (
                        "kannel",
                        add("kannel-drain", kannel, n, scratch, sink_port=free_port()),
                        "rate",
                    )
                )
            # also the reference of the dlr case: the router's plain drain of the same round
            ours = add("router-drain", router_drain, n, scratch, f"drain{r}")
            pairs.append(("router", ours, "rate"))
            if "drain2" in cases:
                two = add("router-drain2", router_drain, n, scratch, f"dr2-{r}", binds=2)
                pairs.append(("router 2 binds", two, "rate"))
            say(r, "drain", pairs)
        if {"live", "http"} & set(cases):
            theirs = add("kannel-live", kannel, n, scratch, "live", sink_port=free_port())
            # sendsms answered 202 / the kit loader's span (first request to its last
            # connection closed); the router's `accepted_rate` is timed the same way
            theirs["accepted_rate"] = theirs["http_rate"]
            pairs = [("kannel", theirs, "rate")]
            if "live" in cases:
                live = add("router-live", router_live, n, scratch, f"live{r}", args.live_batch)
                pairs.append(("router", live, "rate"))
            say(r, "live (end to end)", pairs)
            if "http" in cases:
                http = add(
                    "router-http",
                    router_api,
                    http_n,
                    scratch,
                    f"http{r}",
                    1,
                    args.concurrency,
                    sink_port=free_port(),
                    api_workers=args.api_workers,
                )
                http["accepted_rate"] = http["loader_rate"]
                say(
                    r,
                    "one message per HTTP request (accepted)",
                    [
                        ("kannel sendsms", theirs, "accepted_rate"),
                        ("router API", http, "accepted_rate"),
                    ],
                )
        if "latency5" in cases:
            theirs = add(
                "kannel-latency5", kannel, n, scratch, latency_ms=LATENCY_MS, sink_port=free_port()
            )
            ours = add(
                "router-latency5",
                router_drain,
                n,
                scratch,
                f"lat5-{r}",
                latency_ms=LATENCY_MS,
            )
            say(
                r, f"SMSC {LATENCY_MS:g} ms", [("kannel", theirs, "rate"), ("router", ours, "rate")]
            )
        if "sync" in cases:
            theirs = add("pump-w1", pump_w1, sync_n, scratch)
            ours = add(
                "router-sync",
                router_drain,
                sync_n,
                scratch,
                f"sync{r}",
                window=1,
                processing="sync",
            )
            say(r, "window 1", [("pump", theirs, "rate"), ("router sync", ours, "rate")])
        if "dlr" in cases:
            ours = add("router-dlr", router_drain, n, scratch, f"dlr{r}", dlr=True)
            say(r, "to delivered", [("router", ours, "rate")])
    table: dict[str, Any] = {}
    for row in rows_of(args):
        if row.case in cases and (entry := summarise(row, runs)) is not None:
            table[row.case] = entry
    print(
        f"\nN = {n:,} (sync {sync_n:,}, HTTP {http_n:,}), window {WINDOW}, medians of "
        f"{args.rounds} interleaved round(s); ratio = median of the per-round ratios; "
        "CPU % of one core (router: every router process), medians:\n"
    )
    print(markdown(table))
    print(
        "\nother load on the machine during the runs (CPU % of one core, of "
        f"{100 * (os.cpu_count() or 1)}; median): "
        + ", ".join(f"{k} {v['foreign_cpu_pct']:.0f}" for k, v in table.items())
    )
    total = sum(seconds.values())
    print(
        "\nseconds per case (all rounds): "
        + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
        + f"; in all {total:.0f} s"
    )
    return {
        "n": n,
        "sync_n": sync_n,
        "http_n": http_n,
        "window": WINDOW,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "api_workers": args.api_workers,
        "cases": table,
        "seconds": seconds,
        "total_seconds": round(total, 1),
        "runs": runs,
    }


def code_version() -> str:
    """The commit of the router package these runs imported (`+dirty`: with changes)."""
    import router

    here = Path(router.__file__).resolve().parent
    head = subprocess.run(
        ["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(here), "status", "--porcelain", "--", "."], capture_output=True, text=True
    ).stdout.strip()
    return (head or "unknown") + ("+dirty" if dirty else "")


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
    parser.add_argument("--sync-n", type=int, help="messages in the sync case (default: --n)")
    parser.add_argument("--http-n", type=int, help="messages in the http case (default: --n)")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="HTTP requests in flight (Kannel's: 50)"
    )
    parser.add_argument(
        "--api-workers",
        type=int,
        # docs/operations.md, API workers: only spare cores, about cores - 2 (0 on 2 cores)
        default=max(0, (os.cpu_count() or 1) - 2),
        help="[api] workers for the http case (default: cores - 2, as the docs advise)",
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print the table of bench/results/versus_kannel.json and exit",
    )
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
    if args.markdown:
        table = previous_results().get("cases", {})
        if not table or "label" not in next(iter(table.values())):
            sys.exit("bench/results/versus_kannel.json has no table of this version: run first")
        print(markdown(table))
        return
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
            result.update(run_rounds(args, cases, scratch), code=code_version())
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
