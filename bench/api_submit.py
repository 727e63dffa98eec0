"""The API's submit throughput (`POST /v1/messages`) beside Kannel's sendsms.

Usage: python bench/api_submit.py [--n 20000] [--rounds 3] [--batch 1000]
           [--batch-clients 4] [--concurrency 50]

Rounds interleaved (Kannel, router batches, router single requests, ...), the same
SMPP sink, one transceiver, window 100, N messages each run:
- kannel: the peer kit's live mode (`run_kannel.sh` through versus_kannel's helpers):
  the kit's raw keep-alive loader sends N sendsms requests (50 in flight, one
  message each) while Kannel (file store) forwards them.
- batch: the daemon with `[api] listen` and a `send` key on Redis with an append-only
  file, bound to the sink; `--batch-clients` connections each POST
  ``{"messages": [...]}`` of `--batch` jobs, one request in flight per connection.
- single: the same daemon, one job per POST, `--concurrency` keep-alive connections
  with one request in flight each (Kannel's loader does the same).
- workers: single, with `[api] workers = --workers`: that many processes serve the
  API's port (SO_REUSEPORT) while the daemon's process sends; router CPU is the
  daemon's plus its workers' (`router.1`, ...).
Two rates per run: accepted = messages answered 202 / (last answer - first request);
end-to-end = N / (N-th submit at the sink - first request), as the live case of
versus_kannel.py. The client is the kit's raw HTTP/1.1 protocol (loadgen.RawHTTP) on
uvloop, in this process; its CPU is reported over its own load time, so a reader sees
whether the loader was the bottleneck. Router, Redis and Kannel CPU over the
end-to-end window (from the kit's loader sampling /proc).

Ratios are router / Kannel, the median of per-round ratios; single requests against
sendsms is the like-for-like pair (one message per HTTP request on both sides).
Writes bench/results/api_submit.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness import (
    PEERS,
    SINK_PORT,
    Rig,
    Stack,
    ensure_tools,
    free_port,
    jobs,
    kannel,
    round_ratio,
    save,
    sink_stats,
    spied,
    spy,
    waited,
    waiter,
)
from harness import row_median as median

CASES = ("kannel", "batch", "single", "workers")


def _raw_http() -> Any:
    """The peer kit's minimal keep-alive HTTP/1.1 client protocol (loadgen.RawHTTP)."""
    spec = importlib.util.spec_from_file_location("loadgen", PEERS / "loadgen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RawHTTP


def api_toml(port: int, token_file: Path, workers: int | None = None) -> str:
    """The `[api]` tables: a listener on `port` (`workers` processes sharing it when
    given), one key with the `send` scope."""
    more = f"workers = {workers}\n" if workers is not None else ""
    return (
        f'\n[api]\nlisten = "127.0.0.1:{port}"\n{more}'
        f'[api.keys.bench]\ntoken = "file:{token_file}"\nscopes = ["send"]\n'
    )


def requests(tag: str, n: int, per: int, port: int, token: str) -> list[bytes]:
    """N jobs as HTTP requests of `per` jobs each (per = 1: a bare job, else a batch).
    Built before the clock starts: the client's cost is the sending, as with Kannel's
    loader formatting a URL."""
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
    )
    built: list[bytes] = []
    for start in range(0, n, per):
        chunk = jobs(tag, start, min(n, start + per))
        body = json.dumps(chunk[0] if per == 1 else {"messages": chunk}).encode()
        built.append(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return built


async def load(port: int, built: list[bytes], connections: int, per: int) -> dict[str, Any]:
    """Send `built` over `connections` keep-alive connections, one request in flight
    each; count messages accepted (202, all of a batch queued)."""
    raw_http = _raw_http()
    loop = asyncio.get_running_loop()
    counts = {"ok": 0, "messages": 0, "fail": 0}
    statuses: dict[str, int] = {}
    samples: dict[str, str] = {}
    last = [0.0]

    def done(status: Any, body: bytes) -> None:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        last[0] = time.time()
        if status != 202:
            counts["fail"] += 1
            samples.setdefault(str(status), body[:200].decode(errors="replace"))
            return
        counts["ok"] += 1
        # a batch is all or none: its `queued` says none was a duplicate
        counts["messages"] += json.loads(body)["queued"] if per > 1 else 1

    shared: dict[str, Any] = {
        "next": 0,
        "n": len(built),
        "make": built.__getitem__,
        "done": done,
    }

    async def connection() -> None:
        while shared["next"] < shared["n"]:
            try:
                _transport, proto = await loop.create_connection(
                    lambda: raw_http(shared), "127.0.0.1", port
                )
            except OSError as exc:
                done(type(exc).__name__, b"")
                await asyncio.sleep(0.05)
                continue
            await proto.closed

    cpu0, t0 = os.times(), time.time()
    await asyncio.gather(*(connection() for _ in range(connections)))
    cpu1, ended = os.times(), time.time()
    t1 = last[0] or ended
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "t0": t0,
        "load_s": t1 - t0,
        # to the last connection closed, as the kit's loader times sendsms (its http_rate)
        "loader_s": ended - t0,
        "requests_ok": counts["ok"],
        "accepted": counts["messages"],
        "failed": counts["fail"],
        "statuses": statuses,
        "errors": samples,
        "client_cpu_s": cpu,
    }


def run_client(main: Callable[[], Any]) -> Any:
    """Run the client on uvloop (as the kit's loader runs with --uvloop)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def router_api(
    n: int,
    scratch: Path,
    tag: str,
    per: int,
    connections: int,
    *,
    sink_port: int,
    profile: Path | None = None,
    api_workers: int | None = None,
    code: Path | None = None,
) -> dict[str, Any]:
    """One run: daemon with the API bound to a fresh sink; N jobs through the API;
    `profile`: py-spy the daemon (raw folded stacks there) during the load;
    `api_workers`: `[api] workers` (else the router's default). Router CPU includes
    the processes the daemon started (API workers); `code`: the daemon runs the router
    package found there (an A/B against another checkout)."""
    rig = Rig(scratch, tag, sink_port=sink_port)
    port, token = free_port(), secrets.token_urlsafe(24)
    token_file = scratch / f"token-{tag}"
    token_file.write_text(token)
    with rig.config.open("a") as handle:
        handle.write(api_toml(port, token_file, api_workers))
    built = requests(tag, n, per, port, token)
    try:
        rig.start_sink()
        with python_path(code):
            rig.start_daemon()
        rig.wait_bound()
        Stack._wait_port(port)
        time.sleep(0.5)  # the worker is reading its stream
        wait = waiter(n, rig.stats, tag, {**rig.pids(), "client": os.getpid()})
        time.sleep(0.3)  # loadgen has its first CPU readings
        # The daemon, and each API worker in a file of its own (FILE.router.1, ...).
        samplers: dict[Path, subprocess.Popen[bytes]] = {}
        for name, pid in rig.pids().items():
            if profile is not None and name.startswith("router"):
                output = (
                    profile if name == "router" else profile.with_name(f"{profile.name}.{name}")
                )
                samplers[output] = spy(pid, output)
        got = run_client(lambda: load(port, built, connections, per))
        for output, sampler in samplers.items():
            spied(sampler, output)
        result = waited(wait)
        last = sink_stats(rig.stats).get("last_ts")
        span = last - got["t0"] if last else 0.0
        cpu = result.get("cpu", {})
        row: dict[str, Any] = {
            "rate": round(n / span, 1) if span > 0 else 0.0,
            "http_rate": round(got["accepted"] / got["load_s"], 1) if got["load_s"] else 0.0,
            # the same over the kit loader's span (to its last connection closed): the
            # figure that compares with its sendsms http_rate
            "loader_rate": round(got["accepted"] / got["loader_s"], 1) if got["loader_s"] else 0.0,
            "requests_per_s": round(got["requests_ok"] / got["load_s"], 1)
            if got["load_s"]
            else 0.0,
            "accepted": got["accepted"],
            "failed": got["failed"],
            "statuses": got["statuses"],
            "complete": result.get("complete", False) and got["accepted"] == n,
            "foreign_cpu_pct": result.get("foreign_cpu_pct"),  # other load on the machine
            # over the end-to-end window, as the Kannel side reports
            "cpu_pct": {
                k: round(100 * v["cpu_s"] / span, 1) if span > 0 else 0.0
                for k, v in cpu.items()
                if k.startswith("router") or k == "redis"
            },
            # the loader over its own load time: near 100 % would make it the limit
            "client_cpu_pct": round(100 * got["client_cpu_s"] / got["load_s"], 1),
            "client_us_per_request": round(1e6 * got["client_cpu_s"] / max(1, len(built)), 1),
        }
        if got["errors"]:
            row["errors"] = got["errors"]
    finally:
        rig.close()
    return row


@contextlib.contextmanager
def python_path(code: Path | None) -> Iterator[None]:
    """Processes started inside import the router from `code` (None: this checkout)."""
    if code is None:
        yield
        return
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(code)
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def us_per_message(row: dict[str, Any]) -> dict[str, float]:
    """CPU microseconds per message over the end-to-end window: the gateway's processes
    summed (router and its workers; Kannel's bearerbox and smsbox) and Redis."""
    rate = row.get("rate") or 0.0
    cpu = row.get("cpu_pct", {})
    gateway = sum(v for k, v in cpu.items() if k.startswith(("router", "bearerbox", "smsbox")))
    if rate <= 0:
        return {}
    out = {"gateway": round(gateway / 100 / rate * 1e6, 1)}
    if "redis" in cpu:
        out["redis"] = round(cpu["redis"] / 100 / rate * 1e6, 1)
    return out


def kannel_live(n: int, scratch: Path, sink_port: int = SINK_PORT) -> dict[str, Any]:
    """Kannel's live run; its loader's CPU over the load time like the router's client."""
    row = kannel(n, scratch, "live", sink_port=sink_port)
    # kannel() gives the loader's CPU over the end-to-end window; the load ends first,
    # so the share over the load time is at least this.
    row["client_cpu_pct"] = row["cpu_pct"].pop("producer", 0.0)
    return row


def cpu_median(rows: list[dict[str, Any]]) -> dict[str, float]:
    names = [k for k in rows[0]["cpu_pct"] if k not in ("sink", "sink_self")]
    return {k: round(statistics.median(r["cpu_pct"].get(k, 0.0) for r in rows), 1) for k in names}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1000, help="jobs per batch request")
    parser.add_argument("--batch-clients", type=int, default=4, help="batch connections")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="single requests in flight (Kannel's: 50)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the router (and its API workers) in single and workers runs: "
        "raw folded stacks in FILE.<case>.r<round>",
    )
    parser.add_argument("--sink-port", type=int, help="the SMPP sink's port (default: a free one)")
    parser.add_argument(
        "--workers",
        default="2",
        help="[api] workers in the workers case; several (1,2) make a case each (workers=N)",
    )
    parser.add_argument(
        "--code",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="run the single and batch cases once per checkout (PATH: where its router "
        "package is, e.g. a git worktree of an older commit), interleaved; named case@NAME",
    )
    parser.add_argument("--cases", help=f"comma-separated, of {','.join(CASES)} (default: all)")
    args = parser.parse_args()
    cases = args.cases.split(",") if args.cases else list(CASES)
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    # A free port: other benchmarks on the machine may hold the default one.
    sink_port = args.sink_port or free_port()
    ensure_tools(kannel="kannel" in cases)
    scratch = Path(tempfile.mkdtemp(prefix="sms-apisubmit-"))
    codes: list[tuple[str, Path | None]] = [("", None)]
    if args.code:
        codes = [(f"@{n}", Path(p).resolve()) for n, _, p in (c.partition("=") for c in args.code)]
    # single and batch once per checkout; Kannel, and workers (older checkouts have no
    # [api] workers), once a round.
    counts = [int(n) for n in args.workers.split(",")]
    plan: list[tuple[str, str, Path | None, int | None]] = []
    for c in cases:
        if c in ("single", "batch"):
            plan += [(c, suffix, code, None) for suffix, code in codes]
        elif c == "workers":
            plan += [(c, f"={n}" if len(counts) > 1 else "", None, n) for n in counts]
        else:
            plan.append((c, "", None, None))
    runs: dict[str, list[dict[str, Any]]] = {c + suffix: [] for c, suffix, _, _ in plan}
    try:
        for r in range(args.rounds):
            line = [f"round {r + 1}:"]
            for case, suffix, code, count in plan:
                name = case + suffix
                tag = f"{case[0]}{r}{suffix.replace('@', '-').replace('=', '')}"
                if case == "kannel":
                    row = kannel_live(args.n, scratch, sink_port)
                elif case == "batch":
                    row = router_api(
                        args.n,
                        scratch,
                        tag,
                        args.batch,
                        args.batch_clients,
                        sink_port=sink_port,
                        code=code,
                    )
                else:
                    profile = args.profile
                    if profile is not None:
                        profile = profile.with_name(f"{profile.name}.{name}.r{r + 1}")
                    row = router_api(
                        args.n,
                        scratch,
                        tag,
                        1,
                        args.concurrency,
                        sink_port=sink_port,
                        profile=profile,
                        api_workers=count,
                        code=code,
                    )
                row["us_per_msg"] = us_per_message(row)
                runs[name].append(row)
                line.append(
                    f"{name} {row['http_rate']:.0f} accepted / {row['rate']:.0f} e2e"
                    f" (foreign CPU {row.get('foreign_cpu_pct') or 0:.0f} %)"
                )
            print(" ".join(line[:1]) + " " + "; ".join(line[1:]) + " msg/s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table: dict[str, Any] = {}
    print(
        "\n| case | accepted msg/s | end-to-end msg/s | accepted / Kannel | e2e / Kannel "
        "| gateway CPU % | CPU µs/msg | client CPU % | foreign CPU % | complete |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    labels = {
        "kannel": "Kannel sendsms (1 msg/request, 50 in flight)",
        "batch": f"router batches ({args.batch}/request, {args.batch_clients} clients)",
        "single": f"router single (1 msg/request, {args.concurrency} in flight)",
        "workers": "router single, [api] workers = {n}",
    }
    for name, rows in runs.items():
        case, _, code_name = name.partition("@")
        case, _, workers = case.partition("=")
        per_msg = {
            k: round(statistics.median(r["us_per_msg"].get(k, 0.0) for r in rows), 1)
            for k in rows[0]["us_per_msg"]
        }
        entry: dict[str, Any] = {
            "label": labels[case].format(n=workers or args.workers)
            + (f" ({code_name})" if code_name else ""),
            "accepted_rate": median(rows, "http_rate"),
            "e2e_rate": median(rows, "rate"),
            "cpu_pct": cpu_median(rows),
            # CPU per message (end-to-end window): gateway processes summed, Redis
            "us_per_msg": per_msg,
            "client_cpu_pct": median(rows, "client_cpu_pct"),
            "complete": all(r["complete"] for r in rows),
            # CPU of other work on the machine during the runs (100 = one core)
            "foreign_cpu_pct": statistics.median(r.get("foreign_cpu_pct") or 0.0 for r in rows),
        }
        if "kannel" in runs and case != "kannel":
            entry["accepted_ratio"] = round_ratio(runs["kannel"], rows, "http_rate")
            entry["e2e_ratio"] = round_ratio(runs["kannel"], rows, "rate")
        table[name] = entry
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in entry["cpu_pct"].items())
        us = ", ".join(f"{k} {v:.0f}" for k, v in per_msg.items())
        print(
            f"| {entry['label']} | {entry['accepted_rate']:,.0f} | {entry['e2e_rate']:,.0f} "
            f"| {entry.get('accepted_ratio', '-')} | {entry.get('e2e_ratio', '-')} | {cpu} "
            f"| {us} | {entry['client_cpu_pct']:.0f} | {entry['foreign_cpu_pct']:.0f} "
            f"| {entry['complete']} |"
        )
    result = {
        "n": args.n,
        "rounds": args.rounds,
        "batch": args.batch,
        "batch_clients": args.batch_clients,
        "concurrency": args.concurrency,
        "workers": args.workers,
        "code": args.code,
        "cases": table,
        "runs": runs,
    }
    print("written", save("api_submit", result))


if __name__ == "__main__":
    main()
