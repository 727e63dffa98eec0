"""One measured drain of versus_kannel's router row, shared by the benchmarks that
compare the drain with a feature on and off (links_cost, console_overhead).

`drain_row` runs it: a Rig (private Redis, the router's configuration, the sink),
`edit` changing the configuration text first, `preload` queuing the N jobs while the
sink is down, the daemon started, then the sink, and the drain timed from the sink's
first to last submit; `during` (a context manager given the Rig) runs around the
drain (consoles polling, say); `spy` seconds of py-spy on the router, raw stacks to
`spy_out`. The row: rate, completeness, CPU shares, the router's CPU per message, its
peak RSS, and a sample of the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import Rig, cpu_seconds, peak_rss_mb, round_ratio
from versus_kannel import read_records, waited, waiter


def spy(pid: int, out: Path, seconds: int) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` (raw stacks to `out`)."""
    binary = shutil.which("py-spy") or "/tmp/tools/bin/py-spy"
    return subprocess.Popen(
        [binary, "record", "--pid", str(pid), "-f", "raw", "-o", str(out),
         "-d", str(seconds), "-r", "200", "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def drain_row(
    n: int,
    scratch: Path,
    tag: str,
    *,
    preload: Callable[[str, int, str], Awaitable[None]],
    edit: Callable[[str], str] | None = None,
    during: Callable[[Rig], AbstractContextManager[Any]] | None = None,
    spy_seconds: int = 0,
    spy_out: Path | None = None,
    extra: Callable[[str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One drain (see the module docstring); `extra(redis_url)` adds fields to the row
    before the Rig's Redis goes."""
    rig = Rig(scratch, tag)
    if edit is not None:
        rig.config.write_text(edit(rig.config.read_text()))
    try:
        asyncio.run(preload(rig.url, n, tag))
        rig.start_daemon()
        time.sleep(1.5)  # started and trying to bind
        pids = rig.pids()
        wait = waiter(n, rig.stats, tag, pids)
        recording = None
        if spy_seconds:
            assert spy_out is not None
            recording = spy(rig.router_pid, spy_out, spy_seconds)
            time.sleep(1.0)
        with during(rig) if during is not None else contextlib.nullcontext():
            time.sleep(0.5)
            cpu0 = cpu_seconds(rig.router_pid)
            rig.start_sink()
            result = waited(wait)
            router_cpu = cpu_seconds(rig.router_pid) - cpu0
        if recording is not None:
            recording.wait(spy_seconds + 30)
        row: dict[str, Any] = {
            "rate": result.get("sink_rate", 0.0),
            "complete": result.get("complete", False),
            "cpu_pct": {k: v["cpu_pct"] for k, v in result.get("cpu", {}).items()},
            "router_cpu_s": round(router_cpu, 2),
            "foreign_cpu_pct": result.get("foreign_cpu_pct"),
        }
        row["cpu_pct"].pop("loader", None)
        row["router_us_per_msg"] = round(row["router_cpu_s"] / n * 1e6, 1)
        row["rss_mb"] = round(peak_rss_mb(rig.router_pid), 1)
        sample = asyncio.run(read_records(rig.url, [f"{tag}-{i}" for i in range(4)]))
        row["sample_statuses"] = sorted({str((r or {}).get("status")) for r in sample})
        row["sample_text"] = str((sample[0] or {}).get("text", ""))
        if extra is not None:
            row.update(extra(rig.url))
    finally:
        rig.close()
    return row


@dataclass
class Compared:
    """Interleaved rounds of a base and a variant: each one's rows, median rate and
    router CPU per message; the variant's rate over the base's (median of the per-round
    ratios) and the router CPU per message base/variant (what the rate would be on a
    core of its own: less swayed by the machine's other load than the rate)."""

    runs: dict[str, list[dict[str, Any]]]
    rates: dict[str, float]
    cpu: dict[str, float]
    ratio: float
    cpu_ratio: float

    @property
    def complete(self) -> bool:
        return all(row["complete"] for rows in self.runs.values() for row in rows)


def interleaved(
    rounds: int,
    base: str,
    variant: str,
    run: Callable[[str, int], dict[str, Any]],
    shown: Callable[[dict[str, Any]], str],
) -> Compared:
    """`rounds` of `run(name, round)` for `base` and `variant`, the order turning each
    round; each row printed with `shown(row)` beside its rate and router CPU."""
    runs: dict[str, list[dict[str, Any]]] = {base: [], variant: []}
    for r in range(rounds):
        for name in (base, variant) if r % 2 == 0 else (variant, base):
            row = run(name, r)
            runs[name].append(row)
            print(
                f"round {r + 1}: {name:8} {row['rate']:8,.0f} msg/s router "
                f"{row['router_us_per_msg']} us/msg (complete {row['complete']}, cpu "
                f"{row['cpu_pct']}, other load {row['foreign_cpu_pct']}, {shown(row)})",
                flush=True,
            )
    return Compared(
        runs,
        {n: statistics.median(x["rate"] for x in rows) for n, rows in runs.items()},
        {n: statistics.median(x["router_us_per_msg"] for x in rows) for n, rows in runs.items()},
        round_ratio(runs[base], runs[variant]),
        round_ratio(runs[variant], runs[base], key="router_us_per_msg"),
    )
