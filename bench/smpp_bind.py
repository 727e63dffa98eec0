"""One SmppBind on its own against the raw SMPP pump, through the same sink.

Usage: PYTHONPATH=. python bench/smpp_bind.py [--n 100000] [--sync-n 20000] [--rounds 3]
       [--uvloop] [--via send|submit] [--label after] [--profile DIR]

Each round (rounds interleaved, a fresh sink for every run, as its README asks):
- bind w100: `SmppBind.send` (or `submit`, `--via submit`) with window 100 carries N
  single-part messages to ../shared/bench-peers/smsc_sink.py; the driver keeps two
  windows' worth handed to the bind, topping up from the outcome callback.
- pump w100: ../shared/bench-peers/smpp_blast.py --window 100, N messages.
- bind sync: the same bind with ``sync = true`` (one submit outstanding), sync-N messages.
- pump w1: smpp_blast.py --window 1, sync-N messages.
Figures: msg/s (the sink's first to last submit) and µs of the sending process's CPU per
message (time.process_time from the first send to the last outcome; the pump's own
getrusage figure over the same span). Medians are printed and written to
bench/results/smpp_bind.json under "<label>-<loop>", so runs with and without uvloop
(and before/after a change) sit side by side. `--profile DIR` adds one py-spy run of
the bind (window 100) after the rounds and prints where its CPU goes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import structlog
from harness import RESULTS, ROOT, Stack, free_port, save

from binds.base import Accepted, OutboundMessage, Outcome
from binds.smpp import SmppBind, SmppSpec

PEERS = ROOT.parent / "shared" / "bench-peers"
PY = Path(sys.executable)
PY_SPY = PY.parent / "py-spy"
TEXT = "Hello from smpp_blast benchmark"  # the pump's default text: same PDU sizes


# -- the bind's side, run in a child process -------------------------------------------


async def drive(port: int, n: int, window: int, sync: bool, via: str, hold: bool) -> dict[str, Any]:
    """Carry `n` messages through one SmppBind; rate and CPU from first send to last outcome."""
    spec = SmppSpec(
        host="127.0.0.1",
        port=port,
        system_id="bench",
        password="bench",
        mode="transmitter",
        window=window,
        sync=sync,
        registered_delivery=0,
        response_timeout=30,
    )
    bind = SmppBind("bench", spec)
    await bind.start()
    if not await bind.wait_bound(10):
        raise SystemExit(f"no bind to the sink on port {port}: {bind.last_error}")
    messages = [OutboundMessage(f"m{i}", "12345", f"+4915100{i:06d}", TEXT) for i in range(n)]
    # The router makes each message just before sending it; made all up front here, they
    # must not make every full collection of the garbage collector walk them.
    gc.freeze()
    others: list[Outcome] = []  # anything but Accepted (none expected)
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    if hold:  # the parent attaches a profiler now: only the sending is sampled
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
    ahead = 2 * bind.window
    handed = completed = 0
    refilling = False

    def done(outcome: Outcome) -> None:
        nonlocal completed
        completed += 1
        if outcome.__class__ is not Accepted:
            others.append(outcome)
        if completed == n:
            finished.set_result(None)
        elif not refilling:
            refill()  # at once, as the pump tops its window up (send may call back inside)

    def refill() -> None:
        nonlocal handed, refilling
        refilling = True
        while handed < n and handed - completed < ahead:
            message = messages[handed]
            handed += 1
            bind.send(message, done)
        refilling = False

    async def worker() -> None:
        nonlocal handed
        while handed < n:
            message = messages[handed]
            handed += 1
            done(await bind.submit(message))

    cpu0, t0 = time.process_time(), time.perf_counter()
    if via == "send":
        refill()
        await finished
    else:
        await asyncio.gather(*(worker() for _ in range(ahead)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = bind.peak_outstanding
    await bind.close()
    return {
        "n": n,
        "rate": round(n / elapsed, 1),
        "cpu_us_per_msg": round(1e6 * cpu / n, 2),
        "cpu_s": round(cpu, 3),
        "peak_outstanding": peak,
        "outcomes": {
            "Accepted": n - len(others),
            **Counter(f"{type(o).__name__} {getattr(o, 'code', '')}" for o in others),
        },
        "loop": type(loop).__module__,
    }


def child(args: argparse.Namespace) -> None:
    # The bind's logs (warnings only) go to stderr: stdout carries the result line.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    coro = drive(args.port, args.n, args.window, args.sync, args.via, args.hold)
    if args.uvloop:
        import uvloop

        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    print(json.dumps(result), flush=True)


# -- the orchestration ----------------------------------------------------------------------


class Sink:
    """A fresh smsc_sink.py on a free port (rates come from its first and last submit)."""

    def __init__(self, scratch: Path, tag: str) -> None:
        self.port = free_port()
        self.stats = scratch / f"sink-{tag}.json"
        self.proc = subprocess.Popen(
            [
                *(str(PY), str(PEERS / "smsc_sink.py"), "--port", str(self.port), "--quiet"),
                *("--dlr", "off", "--uvloop", "--stats-file", str(self.stats)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        Stack._wait_port(self.port)

    def close(self) -> dict[str, Any]:
        time.sleep(0.3)  # it rewrites the stats file every 0.1 s
        self.proc.terminate()
        self.proc.wait(10)
        try:
            return dict(json.loads(self.stats.read_text()))
        except (OSError, ValueError):
            return {}


def last_json(text: str) -> dict[str, Any]:
    lines = [x for x in text.splitlines() if x.startswith("{")]
    if not lines:
        raise SystemExit(f"no result line in:\n{text}")
    return dict(json.loads(lines[-1]))


def run_bind(
    scratch: Path, n: int, window: int, sync: bool, opts: argparse.Namespace, spy: Path | None
) -> dict[str, Any]:
    sink = Sink(scratch, "bind")
    command = [str(PY), __file__, "--child", "--port", str(sink.port), "--n", str(n)]
    command += ["--window", str(window), "--via", opts.via]
    command += ["--sync"] * sync + ["--uvloop"] * opts.uvloop
    if spy is not None:
        command.append("--hold")
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        recorder = None
        if spy is not None:
            assert proc.stdout is not None and proc.stdin is not None
            while (line := proc.stdout.readline()) and line.strip() != "ready":
                pass
            if not line:
                raise SystemExit("the bind did not get ready")
            recorder = subprocess.Popen(
                [
                    *(str(PY_SPY), "record", "--pid", str(proc.pid), "-f", "raw"),
                    *("-o", str(spy), "--rate", "1000", "--nonblocking"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # py-spy attaches
        out, _ = proc.communicate("go\n", timeout=900)
        if recorder is not None:
            recorder.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stats = sink.close()
    result = last_json(out)
    result["sink_rate"] = round(stats.get("rate_first_to_last", 0.0), 1)
    return result


def run_pump(scratch: Path, n: int, window: int, opts: argparse.Namespace) -> dict[str, Any]:
    sink = Sink(scratch, "pump")
    command = [str(PY), str(PEERS / "smpp_blast.py"), "--port", str(sink.port), "--n", str(n)]
    command += ["--window", str(window), "--sink-stats", str(sink.stats)]
    command += ["--uvloop"] * opts.uvloop
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    finally:
        sink.close()
    raw = last_json(done.stdout)
    return {
        "n": raw["n"],
        "rate": raw["rate"],
        "sink_rate": raw.get("sink_rate", raw["rate"]),
        "cpu_us_per_msg": round(1e6 * raw["client_cpu_s"] / max(1, raw["n"]), 2),
        "errors": raw["errors"],
    }


def frame_name(frame: str) -> str:
    """``name (path/file.py:12)`` → ``name (file.py)``."""
    name, _, where = frame.rpartition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rsplit('/', 1)[-1]})" if name else frame


def where_cpu_goes(raw: Path, top: int = 18) -> dict[str, Any]:
    """py-spy raw samples → the share of samples per leaf function, per file of the leaf
    function, and per function on the stack (inclusive), our code and the loop's alike.

    py-spy samples the running thread at wall-clock intervals: a frame that made a system
    call waking the sink (a socket write) keeps being sampled while the sink has the CPU,
    so socket writes and the loop's select weigh more here than in CPU time."""
    leaf: Counter[str] = Counter()
    files: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [frame_name(f) for f in stack.split(";")]
        leaf[frames[-1]] += count
        files[frames[-1].rpartition(" (")[2].rstrip(")")] += count
        for frame in set(frames):
            inclusive[frame] += count
    share = (lambda c: round(100 * c / total, 1)) if total else (lambda c: 0.0)
    return {
        "samples": total,
        "self_pct": {name: share(c) for name, c in leaf.most_common(top)},
        "self_by_file_pct": {name: share(c) for name, c in files.most_common(top)},
        "inclusive_pct": {name: share(c) for name, c in inclusive.most_common(top + 12)},
    }


def show(profile: dict[str, Any]) -> None:
    print(f"\nwhere the bind's CPU goes ({profile['samples']} py-spy samples), self %:")
    for name, pct in profile["self_pct"].items():
        print(f"  {pct:5.1f}  {name}")
    print("self % by file:")
    for name, pct in profile["self_by_file_pct"].items():
        print(f"  {pct:5.1f}  {name}")
    print("inclusive %:")
    for name, pct in profile["inclusive_pct"].items():
        print(f"  {pct:5.1f}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--sync-n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uvloop", action="store_true", help="our process and the pump on uvloop")
    parser.add_argument("--via", choices=("send", "submit"), default="send")
    parser.add_argument("--label", default="after", help="results key prefix (before/after)")
    parser.add_argument("--profile", default="", help="directory for one py-spy run (raw)")
    parser.add_argument("--cases", default="w100,sync")
    parser.add_argument("--summarize", default="", help="only summarize this py-spy raw file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--window", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--sync", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.summarize:
        show(where_cpu_goes(Path(args.summarize)))
        return
    cases = args.cases.split(",")
    loop = "uvloop" if args.uvloop else "asyncio"
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="sms-smpp-bind-") as folder:
        scratch = Path(folder)
        for r in range(args.rounds):
            line = []
            if "w100" in cases:
                runs.setdefault("bind w100", []).append(
                    run_bind(scratch, args.n, 100, False, args, None)
                )
                runs.setdefault("pump w100", []).append(run_pump(scratch, args.n, 100, args))
                line += [f"w100 bind {runs['bind w100'][-1]['sink_rate']:,.0f}",
                         f"pump {runs['pump w100'][-1]['sink_rate']:,.0f} msg/s"]  # fmt: skip
            if "sync" in cases:
                runs.setdefault("bind sync", []).append(
                    run_bind(scratch, args.sync_n, 1, True, args, None)
                )
                runs.setdefault("pump w1", []).append(run_pump(scratch, args.sync_n, 1, args))
                line += [f"sync bind {runs['bind sync'][-1]['sink_rate']:,.0f}",
                         f"pump w1 {runs['pump w1'][-1]['sink_rate']:,.0f} msg/s"]  # fmt: skip
            print(f"round {r + 1} ({loop}, via {args.via}):", ", ".join(line), flush=True)
        profile = None
        if args.profile:
            folder_out = Path(args.profile)
            folder_out.mkdir(parents=True, exist_ok=True)
            raw = folder_out / f"{args.label}-{loop}-w100.txt"
            run_bind(scratch, args.n, 100, False, args, raw)
            profile = where_cpu_goes(raw) if raw.exists() else None
    table: dict[str, Any] = {}
    print(f"\n| {loop}, via {args.via} | msg/s (sink) | µs CPU/msg | runs |")
    print("| --- | --- | --- | --- |")
    for name, rows in runs.items():
        table[name] = {
            "rate": statistics.median(r["sink_rate"] for r in rows),
            "cpu_us_per_msg": statistics.median(r["cpu_us_per_msg"] for r in rows),
        }
        print(
            f"| {name} | {table[name]['rate']:,.0f} | {table[name]['cpu_us_per_msg']:.1f} "
            f"| {len(rows)} |"
        )
    for ours, pump in (("bind w100", "pump w100"), ("bind sync", "pump w1")):
        if ours in table and pump in table:
            table[ours]["rate_vs_pump"] = round(table[ours]["rate"] / table[pump]["rate"], 3)
            table[ours]["cpu_vs_pump"] = round(
                table[ours]["cpu_us_per_msg"] / table[pump]["cpu_us_per_msg"], 2
            )
            print(
                f"{ours}: {table[ours]['rate_vs_pump']}x the pump's rate, "
                f"{table[ours]['cpu_vs_pump']}x its CPU per message"
            )
    if profile is not None:
        show(profile)
    path = RESULTS / "smpp_bind.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    variants = dict(previous.get("variants", {}))
    variants[f"{args.label}-{loop}"] = {
        "via": args.via,
        "n": args.n,
        "sync_n": args.sync_n,
        "rounds": args.rounds,
        "medians": table,
        "runs": runs,
        **({"profile": profile} if profile is not None else {}),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print("written", save("smpp_bind", {"variants": variants}))


if __name__ == "__main__":
    main()
