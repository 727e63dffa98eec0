"""The SMPP server's ingest rate beside the drain rate and Kannel's sendsms, one run.

Usage: python bench/smpp_ingest.py [--n 20000] [--rounds 3] [--window 100]
           [--cases ingest,queued,drain,kannel] [--profile FILE]

Rounds interleaved (ingest, drain, Kannel, ingest, ...), N messages each run, the
peer kit's SMPP sink as the profile's SMSC (one transceiver, window 100), Redis with
an append-only file:
- ingest: the daemon with `[smpp_server] listen` and one account, bound to the sink
  and sending while the client submits; a raw asyncio SMPP client in a process of its
  own (tests/smpp_server/ingest_client.py) binds one session and sends N submit_sm
  keeping `--window` unanswered. The server answers each submit_sm only once its job
  is in Redis, so rate = submit_sm_resp OK / (last response - first submit), from the
  client. The run also waits until the sink has all N (`complete`), and gives the
  router's and Redis' CPU over the sink's span.
- queued: the same ingest with the profile's SMSC down (the sink not started): every
  job is stored and none sent, so this is the server's own rate from submit_sm to
  durably queued, what a client gets while the SMSC takes less than it sends (the
  queue takes the difference). The router's and Redis' CPU from /proc over the
  client's run.
- drain: the same daemon configuration (SMPP server included, idle), N jobs preloaded
  through `Client` while the sink is down, then the sink starts; rate = the sink's
  first to last submit (versus_kannel.py's drain).
- kannel: Kannel's sendsms as api_submit.py measures it (the kit's live mode: its raw
  keep-alive loader, 50 requests in flight, one message each; Kannel's file store);
  its accept rate = HTTP 202s / load time.
`--profile FILE`: py-spy (PY_SPY, default /tmp/tools/bin/py-spy) samples the router
during each ingest run's submits (and each queued run's: FILE.queued.rN), as raw
folded stacks (FILE, one per round: FILE.r1, ...),
and prints the functions that took the most samples (self and with callees).
Ratios ingest / drain and ingest / Kannel sendsms are the median of per-round ratios.
Writes bench/results/smpp_ingest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from api_submit import kannel_live
from harness import (
    ROOT,
    Rig,
    Stack,
    ensure_tools,
    free_port,
    preload,
    round_ratio,
    save,
    spied,
    spy,
    waited,
    waiter,
)

CASES = ("ingest", "queued", "drain", "kannel")
ACCOUNT, PASSWORD = "bench", "bench1"


def server_toml(port: int, window: int) -> str:
    """The SMPP server's listener and the one account the client binds as."""
    return (
        f'\n[smpp_server]\nlisten = "127.0.0.1:{port}"\n'
        f'[accounts.{ACCOUNT}]\nsmpp_password = "{PASSWORD}"\n'
        f'profiles = ["bench"]\nmax_binds = 1\nwindow = {window}\n'
    )


def rig(scratch: Path, tag: str, window: int) -> tuple[Rig, int]:
    """versus_kannel's rig (Redis with an append-only file, one profile to the sink) with
    the SMPP server added: the same daemon configuration for ingest and drain."""
    made, port = Rig(scratch, tag), free_port()
    with made.config.open("a") as handle:
        handle.write(server_toml(port, window))
    return made, port


def cpu_over(result: dict[str, Any]) -> dict[str, float]:
    """The router's and Redis' CPU % (100 = one core) from the kit's loadgen sampling."""
    return {k: v["cpu_pct"] for k, v in result.get("cpu", {}).items() if k in ("router", "redis")}


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU seconds so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def queued(
    n: int, scratch: Path, tag: str, window: int, profile: Path | None = None
) -> dict[str, Any]:
    """One ingest run with the SMSC down: every job stored, none sent."""
    made, port = rig(scratch, tag, window)
    try:
        made.start_daemon()
        Stack._wait_port(port)
        time.sleep(1.0)  # started, its bind trying to connect
        pids = made.pids()
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        sampler = spy(made.router_pid, profile) if profile is not None else None
        done = subprocess.run(
            [
                *(sys.executable, "-m", "tests.smpp_server.ingest_client"),
                *(str(port), str(n), str(window), ACCOUNT, PASSWORD),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if done.returncode != 0:
            sys.exit(f"the ingest client failed:\n{done.stderr[-2000:]}")
        if sampler is not None and profile is not None:
            spied(sampler, profile)
        report = json.loads(done.stdout.splitlines()[-1])
        seconds = report["seconds"]
        cpu = {
            name: round(100 * (cpu_seconds(pid) - before[name]) / seconds, 1)
            for name, pid in pids.items()
        }
        return {
            "rate": round(report["ok"] / seconds, 1),
            "ok": report["ok"],
            "seconds": round(seconds, 3),
            "complete": report["ok"] == n,
            "foreign_cpu_pct": None,
            "cpu_pct": {k: v for k, v in cpu.items() if k in ("router", "redis")},
        }
    finally:
        made.close()


def ingest(
    n: int, scratch: Path, tag: str, window: int, profile: Path | None = None
) -> dict[str, Any]:
    """One ingest run: daemon bound to a fresh sink, the raw client submitting N."""
    made, port = rig(scratch, tag, window)
    try:
        made.start_sink()
        made.start_daemon()
        made.wait_bound()
        Stack._wait_port(port)
        time.sleep(0.5)  # the worker is reading its stream
        wait = waiter(n, made.stats, tag, made.pids())
        time.sleep(0.3)  # loadgen has its first CPU readings
        sampler = spy(made.router_pid, profile) if profile is not None else None
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            [
                *(sys.executable, "-m", "tests.smpp_server.ingest_client"),
                *(str(port), str(n), str(window), ACCOUNT, PASSWORD),
            ],
            cwd=ROOT,  # the client lives in the test package
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if done.returncode != 0:
            wait.kill()
            sys.exit(f"the ingest client failed:\n{done.stderr[-2000:]}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if sampler is not None and profile is not None:
            spied(sampler, profile)
        client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        report = json.loads(done.stdout.splitlines()[-1])
        result = waited(wait)
        return {
            "rate": round(report["ok"] / report["seconds"], 1),
            "ok": report["ok"],
            "seconds": round(report["seconds"], 3),
            # the daemon sent all N to the sink while (and after) they came in
            "complete": report["ok"] == n and result.get("complete", False),
            "sink_rate": result.get("sink_rate", 0.0),
            "foreign_cpu_pct": result.get("foreign_cpu_pct"),
            "cpu_pct": cpu_over(result),
            # the client's CPU over its submit time (its start and bind included): near
            # 100 % would make it the limit; the kit counts it as foreign CPU
            "client_cpu_pct": round(100 * client_cpu / report["seconds"], 1),
        }
    finally:
        made.close()


def drain(n: int, scratch: Path, tag: str, window: int) -> dict[str, Any]:
    """versus_kannel's drain on this benchmark's daemon configuration."""
    made, _port = rig(scratch, tag, window)
    try:
        asyncio.run(preload(made.url, n, tag))
        made.start_daemon()
        time.sleep(1.5)  # started and trying to bind
        wait = waiter(n, made.stats, tag, made.pids())
        time.sleep(0.5)
        made.start_sink()
        result = waited(wait)
        return {
            "rate": result.get("sink_rate", 0.0),
            "complete": result.get("complete", False),
            "foreign_cpu_pct": result.get("foreign_cpu_pct"),
            "cpu_pct": cpu_over(result),
        }
    finally:
        made.close()


def kannel_sendsms(n: int, scratch: Path) -> dict[str, Any]:
    """api_submit's Kannel run; `rate` here is sendsms' accept rate (its `http_rate`)."""
    row = kannel_live(n, scratch)
    return {**row, "e2e_rate": row["rate"], "rate": row["http_rate"]}


def med(rows: list[dict[str, Any]], key: str = "rate") -> float:
    return round(statistics.median(r[key] for r in rows), 1) if rows else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=100, help="client's submits unanswered")
    parser.add_argument("--cases", help=f"comma-separated, of {','.join(CASES)} (default: all)")
    parser.add_argument("--profile", type=Path, help="py-spy the router during ingest (raw)")
    args = parser.parse_args()
    cases = args.cases.split(",") if args.cases else list(CASES)
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    ensure_tools(kannel="kannel" in cases)
    scratch = Path(tempfile.mkdtemp(prefix="sms-smppingest-"))
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in cases}
    try:
        for r in range(args.rounds):
            line = []
            for case in cases:
                if case == "ingest":
                    profile = args.profile
                    if profile is not None and args.rounds > 1:
                        profile = profile.with_name(f"{profile.name}.r{r + 1}")
                    row = ingest(args.n, scratch, f"i{r}", args.window, profile)
                elif case == "queued":
                    spied_as = args.profile
                    if spied_as is not None:
                        spied_as = spied_as.with_name(f"{spied_as.name}.queued.r{r + 1}")
                    row = queued(args.n, scratch, f"q{r}", args.window, spied_as)
                elif case == "drain":
                    row = drain(args.n, scratch, f"d{r}", args.window)
                else:
                    row = kannel_sendsms(args.n, scratch)
                runs[case].append(row)
                line.append(
                    f"{case} {row['rate']:,.0f}/s (complete {row['complete']}, "
                    f"foreign CPU {row.get('foreign_cpu_pct') or 0:.0f} %)"
                )
            print(f"round {r + 1}: " + "; ".join(line))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    labels = {
        "ingest": f"SMPP ingest while sending (submit_sm/s, window {args.window}, one session)",
        "queued": f"SMPP ingest, SMSC down (submit_sm/s, window {args.window}, one session)",
        "drain": "drain (preloaded, sink submits/s)",
        "kannel": "Kannel sendsms accepted (1 msg/request, 50 in flight)",
    }
    table: dict[str, Any] = {}
    print("\n| case | msg/s (median) | min-max | router CPU % | Redis CPU % | complete |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case in cases:
        rows = runs[case]
        entry: dict[str, Any] = {
            "label": labels[case],
            "rate": med(rows),
            "min": min(r["rate"] for r in rows),
            "max": max(r["rate"] for r in rows),
            "complete": all(r["complete"] for r in rows),
            "foreign_cpu_pct": statistics.median(r.get("foreign_cpu_pct") or 0.0 for r in rows),
        }
        if case == "ingest":
            entry["client_cpu_pct"] = med(rows, "client_cpu_pct")
        if case != "kannel":
            entry["cpu_pct"] = {
                k: round(statistics.median(r["cpu_pct"].get(k, 0.0) for r in rows), 1)
                for k in ("router", "redis")
            }
        table[case] = entry
        cpu = entry.get("cpu_pct", {})
        print(
            f"| {entry['label']} | {entry['rate']:,.0f} | {entry['min']:,.0f}-{entry['max']:,.0f} "
            f"| {cpu.get('router', '-')} | {cpu.get('redis', '-')} | {entry['complete']} |"
        )
    ratios: dict[str, float | None] = {}
    if "ingest" in runs and "drain" in runs:
        ratios["ingest_over_drain"] = round_ratio(runs["drain"], runs["ingest"])
    if "queued" in runs and "drain" in runs:
        ratios["queued_over_drain"] = round_ratio(runs["drain"], runs["queued"])
    if "ingest" in runs and "kannel" in runs:
        ratios["ingest_over_kannel_sendsms"] = round_ratio(runs["kannel"], runs["ingest"])
    for name, value in ratios.items():
        print(f"{name}: {value} (median of per-round ratios)")
    for name in ("ingest_over_drain", "queued_over_drain"):
        if name in ratios:
            value = ratios[name]
            verdict = "met" if value is not None and value >= 1 else "not met"
            print(f"{name.replace('_over_', ' >= ')}: {verdict}")
    result = {
        "n": args.n,
        "rounds": args.rounds,
        "window": args.window,
        "command": " ".join(["python", "bench/smpp_ingest.py", *sys.argv[1:]]),
        "cases": table,
        "ratios": ratios,
        "runs": runs,
    }
    print("written", save("smpp_ingest", result))


if __name__ == "__main__":
    main()
