"""What a delivery report per message costs: the router's drain with a receipt for each
message beside its plain drain, in interleaved rounds (no Kannel).

Usage: python bench/receipts.py [--n 20000] [--rounds 3] [--tree NAME=PATH ...]

Each run: N jobs preloaded while the SMSC is down, the daemon started, then the peer
kit's sink (on a free port, so it runs beside other benchmarks); window 100, one
transceiver, Redis with an append-only file — the `dlr` case of versus_kannel.py.
- drain: rate = the sink's first to last submit (as versus_kannel.py's drain);
- dlr: `registered_delivery = 1`, the sink sends a receipt for each submit; rate = N /
  (last record `delivered` - first submit) (as versus_kannel.py's dlr).
Router CPU per message: the daemon's CPU from the sink's start until every record is
`sent` (drain) or `delivered` (dlr), over N.

`--tree NAME=PATH` (repeatable) runs the daemon and this script's reads of each code tree
(PYTHONPATH=PATH, e.g. a `git worktree` of an older commit) in the same rounds:
drain and dlr of each tree side by side, trees alternating. Without it: this tree.
Prints each run, then medians per tree: both rates, their ratio (median of per-round
ratios), CPU per message. Writes bench/results/receipts.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    NUMBERS,
    RedisServer,
    cpu_seconds,
    free_port,
    router_config,
    save,
    sink_stats,
    start_daemon,
    start_sink,
    stop,
)
from redis.asyncio import Redis

from router import Client
from router.store.ledger import Ledger

HERE = Path(__file__).resolve()
PEERS = HERE.parents[2] / "shared" / "bench-peers"
WINDOW = 100
# What a record can end in once its report is applied; a plain drain ends at `sent`.
REPORTED = frozenset({"delivered", "undelivered", "failed", "rejected", "expired"})
SENT = REPORTED | {"sent"}


async def preload(url: str, n: int, tag: str, batch: int = 2000) -> None:
    """Enqueue `n` jobs through `Client.send_many` (versus_kannel.py's jobs)."""
    redis = Redis.from_url(url)
    client = Client(redis, default_profile="bench")
    text = "Hello from the bench"
    for start in range(0, n, batch):
        stop_at = min(n, start + batch)
        jobs = [
            {"id": f"{tag}-{i}", "to": f"+4915100{i % 1_000_000:06d}", "text": text}
            for i in range(start, stop_at)
        ]
        await client.send_many(jobs)
    await redis.aclose()


def first_at(record: dict[str, Any] | None, statuses: frozenset[str]) -> float | None:
    """When a record first reached one of `statuses`, from its history."""
    for step in (record or {}).get("history", []):
        if step["status"] in statuses:
            return float(step["at"])
    return None


async def settled(url: str, ids: list[str], statuses: frozenset[str], stall: float) -> float:
    """Poll until every record of `ids` has reached one of `statuses` (or nothing moved
    for `stall` seconds); the time of the last one to get there (0.0 if some did not)."""
    redis = Redis.from_url(url)
    ledger = Ledger(redis, retention=60, events_maxlen=1000)
    pending, last, progress = list(ids), 0.0, time.monotonic()
    try:
        while pending and time.monotonic() - progress < stall:
            # The newest job is about the last to get there: a cheap probe first.
            if first_at(await ledger.get(pending[-1]), statuses) is None:
                await asyncio.sleep(0.05)
                continue
            still: list[str] = []
            for start in range(0, len(pending), 1000):
                chunk = pending[start : start + 1000]
                for job_id, record in zip(chunk, await ledger.find(chunk), strict=True):
                    at = first_at(record, statuses)
                    if at is None:
                        still.append(job_id)
                    else:
                        last = max(last, at)
            if len(still) < len(pending):
                progress = time.monotonic()
            pending = still
            if pending:
                await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
    return last if not pending else 0.0


async def commands(url: str, *, reset: bool = False) -> dict[str, int]:
    """Calls of each Redis command so far (INFO commandstats); `reset` zeroes them."""
    redis = Redis.from_url(url)
    try:
        if reset:
            await redis.config_resetstat()
            return {}
        info: dict[str, Any] = await redis.info("commandstats")
    finally:
        await redis.aclose()
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in info.items()
        if name not in ("cmdstat_info", "cmdstat_config|resetstat")
    }


def syscalls(pid: int) -> tuple[int, int]:
    """(read, write) system calls a process has made so far (/proc/PID/io)."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"]), int(fields["syscw"])


def one_run(
    n: int, tag: str, dlr: bool, sink_port: int, scratch: Path, spy: Path | None
) -> dict[str, Any]:
    """One drain (with `dlr`: a receipt per message, to `delivered`) in this process's
    code tree; its row."""
    server = RedisServer(appendonly=True, folder=scratch / "redis")
    path = router_config(
        scratch / "router.toml", server.url, window=WINDOW, registered_delivery=int(dlr),
        port=sink_port,
    )  # fmt: skip
    daemon: subprocess.Popen[bytes] | None = None
    sink: subprocess.Popen[bytes] | None = None
    profiler: subprocess.Popen[bytes] | None = None
    stats = scratch / "sink.json"
    try:
        asyncio.run(preload(server.url, n, tag))
        daemon = start_daemon(path, scratch / "router.log")
        time.sleep(1.5)  # started and trying to bind
        if spy is not None:
            profiler = subprocess.Popen(
                [shutil.which("py-spy") or "py-spy", "record", "--pid", str(daemon.pid),
                 "-f", "raw", "-o", str(spy), "-r", "1000", "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)
        redis_pid = server.proc.pid if server.proc is not None else 0
        asyncio.run(commands(server.url, reset=True))
        cpu0, redis0 = cpu_seconds(daemon.pid), cpu_seconds(redis_pid)
        calls0 = syscalls(daemon.pid)
        started = time.time()
        sink = start_sink(
            stats, scratch / "sink.log", dlr="requested" if dlr else "off", port=sink_port
        )
        ids = [f"{tag}-{i}" for i in range(n)]
        last = asyncio.run(settled(server.url, ids, REPORTED if dlr else SENT, stall=30.0))
        cpu = cpu_seconds(daemon.pid) - cpu0
        redis_cpu = cpu_seconds(redis_pid) - redis0
        syscalls_made = [b - a for a, b in zip(calls0, syscalls(daemon.pid), strict=True)]
        calls = {k: round(v / n, 3) for k, v in asyncio.run(commands(server.url)).items()}
        time.sleep(0.2)  # the sink's last stats written
        got = sink_stats(stats)
        first = float(got.get("first_ts") or started)
        if dlr:
            rate = n / max(last - first, 1e-6) if last else 0.0
        else:
            rate = float(got.get("rate_first_to_last") or 0.0)
        return {
            "rate": round(rate, 1),
            "submits": got.get("submits", 0),
            "complete": bool(last) and got.get("submits", 0) >= n,
            "router_cpu_ms_per_msg": round(1000 * cpu / n, 4),
            "redis_cpu_ms_per_msg": round(1000 * redis_cpu / n, 4),
            # The router's reads and writes (sockets: SMPP and Redis) per message.
            "reads_per_msg": round(syscalls_made[0] / n, 3),
            "writes_per_msg": round(syscalls_made[1] / n, 3),
            # Redis commands per message (scripts' inner ones included), by name.
            "redis_calls_per_msg": calls,
        }
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
            profiler.wait(60)
        if daemon is not None:
            stop(daemon)
        if sink is not None:
            sink.terminate()
            sink.wait(10)
        server.close()


# -- the receipt path alone: the router's session and report handling in this process,
# a small SMSC sending receipts in a process of its own ---------------------------------


def smsc(port: int, n: int, window: int) -> None:
    """Bind anyone, then send `n` receipts (the sink's layout, ids 1..n in decimal) with at
    most `window` unanswered; print the seconds from the first to the last answer."""

    async def serve() -> None:
        done = asyncio.get_running_loop().create_future()

        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await serve_one(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                writer.close()

        async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readexactly(16)
            length, command, _, sequence = struct.unpack("!IIII", head)
            await reader.readexactly(length - 16)
            writer.write(struct.pack("!IIII", 21, command | 0x80000000, 0, sequence) + b"smsc\0")
            room = asyncio.Semaphore(window)
            answered = 0
            began = time.perf_counter()

            async def answers() -> None:
                nonlocal answered
                while answered < n:
                    head = await reader.readexactly(16)
                    length, command, _, _ = struct.unpack("!IIII", head)
                    await reader.readexactly(length - 16)
                    if command == 0x80000005:
                        answered += 1
                        room.release()
                done.set_result(time.perf_counter() - began)

            task = asyncio.create_task(answers())
            for i in range(1, n + 1):
                await room.acquire()
                writer.write(receipt_pdu(i))
                if i % 50 == 0:
                    await writer.drain()
            await task
            writer.close()

        server = await asyncio.start_server(session, "127.0.0.1", port)
        print("listening", flush=True)
        print(json.dumps({"seconds": await done}), flush=True)
        server.close()

    asyncio.run(serve())


def receipt_pdu(i: int) -> bytes:
    """A deliver_sm receipt for provider id `i`, as the peer kit's sink writes one."""
    mid = str(i).encode()
    text = (
        b"id:%s sub:001 dlvr:001 submit date:2312061010 done date:2312061010 stat:DELIVRD "
        b"err:000 text:Hello from the bench" % mid
    )
    body = b"".join((
        b"\0", b"\1\1", b"4915100000001\0", b"\1\1", b"16501112345\0", b"\4\0\0\0\0",
        b"\0\0\0\0", bytes((len(text),)), text,
        struct.pack(">HH", 0x001E, len(mid) + 1), mid, b"\0", struct.pack(">HHB", 0x0427, 1, 2),
    ))  # fmt: skip
    return struct.pack("!IIII", 16 + len(body), 0x00000005, 0, i) + body


async def sent_records(redis: Redis, ledger: Ledger, n: int) -> list[str]:
    """`n` messages recorded `sent` over connector ``bench``, provider ids 1..n indexed."""
    from router.store import keys

    ids = await Client(redis, default_profile="bench").send_many(
        [{"to": f"+4915100{i:06d}", "text": "Hello from the bench"} for i in range(n)]
    )
    owners = [(await redis.hget(keys.record("bench", job), "owner") or b"").decode() for job in ids]

    async def send(i: int, job: str, owner: str) -> None:
        await ledger.transition(job, owner, "sending", profile="bench")
        await ledger.transition(
            job, owner, "sent", profile="bench", connector="bench",
            fields={"from": NUMBERS[i % len(NUMBERS)]},
            indexes=[keys.provider_id("bench", str(i + 1))],
        )  # fmt: skip

    for start in range(0, n, 50):  # within the client's connection pool
        chunk = range(start, min(n, start + 50))
        await asyncio.gather(*(send(i, ids[i], owners[i]) for i in chunk))
    return ids


async def receipt_path(n: int, window: int, late: bool = False) -> dict[str, Any]:
    """The router's side of `n` receipts: an SMPP session and the profile's reports, the
    daemon's deliver_sm handler (the batch one where this tree has it), Redis with an
    append-only file; its CPU per receipt. No record exists: every report is kept early
    (the SMSC answered before `sent` was recorded); with `late`, every message is
    recorded `sent` first, and each report makes its message `delivered` and is counted
    (quality, number health), as a real SMSC's receipts, seconds later, do."""
    from binds.smpp import SmppBind, SmppSpec
    from router import logs
    from router.daemon import runtime
    from router.engine.inbound import Inbound
    from router.engine.receipts import Reports
    from router.store.outages import RedisOutages

    logs.configure("json", "warning")  # as the benchmark daemons run
    port = free_port()
    peer = await asyncio.create_subprocess_exec(
        *(sys.executable, str(HERE), "--smsc", str(port), "--n", str(n), "--window", str(window)),
        stdout=subprocess.PIPE,
    )
    assert peer.stdout is not None
    server = RedisServer(appendonly=True)
    redis = Redis.from_url(server.url)
    try:
        ledger = Ledger(redis, retention=600, events_maxlen=1000)
        reports = Reports(redis, ledger, "bench", id_format="auto")
        inbound = Inbound(redis, "bench", forward=False, reassembly_timeout=60)
        outages = RedisOutages()
        one = runtime.deliver_handler(reports, inbound, outages)
        extra: dict[str, Any] = {}
        many = getattr(runtime, "deliver_many_handler", None)
        if many is not None:
            extra["on_deliver_many"] = many(reports, inbound, outages)
        spec = SmppSpec(host="127.0.0.1", port=port, system_id="b", password="b", window=10)
        ids: list[str] = []
        if late:
            ledger.expect_reports("bench", 600)
            ids = await sent_records(redis, ledger, n)
        await peer.stdout.readline()  # listening
        cpu0 = time.process_time()
        bind = SmppBind("bench/smpp0", spec, one, **extra)
        await bind.start()
        line = await peer.stdout.readline()
        cpu = time.process_time() - cpu0
        await bind.close()
        seconds = float(json.loads(line)["seconds"])
        if late:  # each made `delivered`
            done = 0
            for start in range(0, n, 1000):
                records = await ledger.find(ids[start : start + 1000])
                done += sum(1 for r in records if r is not None and r["status"] == "delivered")
        else:  # each kept early (one hash, or one per time bucket: both layouts)
            done = 0
            async for key in redis.scan_iter(match="sms:{bench}:early*"):
                if await redis.type(key) == b"hash":
                    done += await redis.hlen(key)
        return {
            "rate": round(n / seconds, 1),
            "router_cpu_us_per_receipt": round(1e6 * cpu / n, 2),
            "batched": many is not None,
            "late": late,
            "complete": done == n,
        }
    finally:
        if peer.returncode is None:
            peer.kill()
        await peer.wait()
        await redis.aclose()
        server.close()


def child(
    tree: str, n: int, tag: str, dlr: bool, sink_port: int, spy: Path | None
) -> dict[str, Any]:
    """`one_run` in a process of its own, with `tree`'s code ('' = this tree)."""
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = tree
    args = [sys.executable, str(HERE), "--one", "dlr" if dlr else "drain", "--n", str(n)]
    args += ["--tag", tag, "--sink-port", str(sink_port)]
    if spy is not None:
        args += ["--py-spy", str(spy)]
    done = subprocess.run(args, env=env, check=True, stdout=subprocess.PIPE)
    return json.loads(done.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def path_rounds(args: argparse.Namespace, trees: list[tuple[str, ...]]) -> None:
    """`--path`: the receipt path of each tree, interleaved; medians."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    for r in range(args.rounds):
        for name, path in trees if r % 2 == 0 else trees[::-1]:
            env = dict(os.environ)
            if path:
                env["PYTHONPATH"] = path
            command = [sys.executable, str(HERE), "--one", "path", "--n", str(args.n)]
            command += ["--window", str(args.window)] + (["--late"] if args.late else [])
            done = subprocess.run(
                command, env=env, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
            row = json.loads(done.stdout.decode().strip().splitlines()[-1])
            runs[name].append(row)
            print(
                f"round {r + 1} {name}: {row['rate']:,.0f} receipts/s, router "
                f"{row['router_cpu_us_per_receipt']:.1f} us/receipt, complete {row['complete']}"
            )
    summary = {
        name: {
            "rate": statistics.median(row["rate"] for row in rows),
            "router_cpu_us_per_receipt": statistics.median(
                row["router_cpu_us_per_receipt"] for row in rows
            ),
            "complete": all(row["complete"] for row in rows),
        }
        for name, rows in runs.items()
    }
    print("\n| tree | receipts/s | router us/receipt |\n| --- | --- | --- |")
    for name, row in summary.items():
        print(f"| {name} | {row['rate']:,.0f} | {row['router_cpu_us_per_receipt']:.1f} |")
    result = {"n": args.n, "window": args.window, "late": args.late, "rounds": args.rounds}
    name = "receipt_path_late" if args.late else "receipt_path"
    print("written", save(name, {**result, "summary": summary, "trees": dict(trees), "runs": runs}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--sink-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--py-spy", type=Path, help="one --one run: py-spy raw output here")
    parser.add_argument(
        "--path", action="store_true", help="the receipt path alone (see receipt_path)"
    )
    parser.add_argument("--window", type=int, default=100, help="--path: the SMSC's window")
    parser.add_argument(
        "--late", action="store_true", help="--path: messages recorded sent before (see above)"
    )
    parser.add_argument("--smsc", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one", choices=("drain", "dlr", "path"), help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="r", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sink_port = args.sink_port or free_port()
    if args.smsc:
        smsc(args.smsc, args.n, args.window)
        return
    if args.one == "path":
        try:
            import uvloop  # the daemon's loop

            row = uvloop.run(receipt_path(args.n, args.window, args.late))
        except ImportError:
            row = asyncio.run(receipt_path(args.n, args.window, args.late))
        print(json.dumps(row))
        return
    if args.one:
        scratch = Path(tempfile.mkdtemp(prefix="sms-receipts-"))
        try:
            row = one_run(args.n, args.tag, args.one == "dlr", sink_port, scratch, args.py_spy)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        print(json.dumps(row))
        return
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    trees = [tuple(t.split("=", 1)) for t in args.tree] or [("this", "")]
    if args.path:
        path_rounds(args, trees)
        return
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name, _ in trees}
    for r in range(args.rounds):
        # Alternate which tree goes first, so neither always runs on a warmer machine.
        order = trees if r % 2 == 0 else trees[::-1]
        for name, path in order:
            for case in ("drain", "dlr"):
                row = child(path, args.n, f"{case}{r}", case == "dlr", sink_port, None)
                runs[name].setdefault(case, []).append(row)
                print(
                    f"round {r + 1} {name} {case}: {row['rate']:,.0f} msg/s, router "
                    f"{row['router_cpu_ms_per_msg']:.3f} ms/msg, redis "
                    f"{row['redis_cpu_ms_per_msg']:.3f} ms/msg, complete {row['complete']}"
                )
    summary: dict[str, Any] = {}
    print("\n| tree | drain msg/s | dlr msg/s | dlr/drain | router ms/msg drain | dlr "
          "| receipt's share | redis ms/msg drain | dlr |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, cases in runs.items():
        drain, dlr = cases["drain"], cases["dlr"]

        def med(rows: list[dict[str, Any]], key: str) -> float:
            return float(statistics.median(row[key] for row in rows))

        ratio = statistics.median(b["rate"] / a["rate"] for a, b in zip(drain, dlr, strict=True))
        cpu_drain, cpu_dlr = med(drain, "router_cpu_ms_per_msg"), med(dlr, "router_cpu_ms_per_msg")
        row = {
            "drain_rate": med(drain, "rate"),
            "dlr_rate": med(dlr, "rate"),
            "ratio": round(ratio, 3),
            "router_cpu_ms_per_msg": {"drain": cpu_drain, "dlr": cpu_dlr},
            # What a receipt adds to a message's router CPU, as a share of the send path.
            "receipt_share": round((cpu_dlr - cpu_drain) / cpu_drain, 3),
            "redis_cpu_ms_per_msg": {
                "drain": med(drain, "redis_cpu_ms_per_msg"),
                "dlr": med(dlr, "redis_cpu_ms_per_msg"),
            },
            "complete": all(x["complete"] for x in drain + dlr),
        }
        summary[name] = row
        print(
            f"| {name} | {row['drain_rate']:,.0f} | {row['dlr_rate']:,.0f} | {ratio:.2f}x "
            f"| {cpu_drain:.3f} | {cpu_dlr:.3f} | {row['receipt_share']:.2f} "
            f"| {row['redis_cpu_ms_per_msg']['drain']:.3f} "
            f"| {row['redis_cpu_ms_per_msg']['dlr']:.3f} |"
        )
    result = {"n": args.n, "rounds": args.rounds, "trees": dict(trees), "summary": summary}
    print("written", save("receipts", {**result, "runs": runs}))


if __name__ == "__main__":
    main()
