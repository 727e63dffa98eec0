"""Redis memory per message record: what N messages leave in Redis once drained.

Usage: python bench/memory.py [--n 20000] [--sample 2000] [--key after] [--ids short]
                              [--text 0]
Two runs, each on a fresh Redis: N plain-text jobs (as the other benches: ids
`mem-<i>`, "Hello from the bench") drained through the peer kit's SMPP sink (window
100, one transceiver), once without receipts (records end `sent`) and once with a
receipt each (records end `delivered`). `--ids uuid`: 32-digit job ids, as the doors
make them when the producer names none (longer keys than `mem-<i>`); `--text N`: a text
of N characters (an SMS holds up to 160; Redis keeps a hash compact only while each
value fits `hash-max-listpack-value`, 64 bytes by default).
For each run: `used_memory` after the drain minus before the preload, and a breakdown
by key class from SCAN + MEMORY USAGE (every key of a class when it has fewer than
`--sample`, else a sample scaled up): message records, job locators (versions before
37ea5bc wrote one per job), the provider-id index, the awaiting-reports set, early
reports, the work stream (what is left of it), and the event stream, which is trimmed
by length (a fixed cost once full, not a per-message one: reported apart, and left out
of the bytes per message). Writes the figures under `--key` in
bench/results/memory.json (other keys kept): run it with PYTHONPATH at a `git worktree`
of an older commit (and from a directory outside this tree: the daemon is `python -m
router`) and `--key before` for that code's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    RESULTS,
    RedisServer,
    free_port,
    router_config,
    save,
    start_daemon,
    start_sink,
    stop,
)
from redis.asyncio import Redis

from router import Client
from router.store import keys

PEERS = Path(__file__).resolve().parents[2] / "shared" / "bench-peers"
PROFILE = "bench"
# Job ids: `short` as the other benches (mem-<i>), or `uuid`: 32 hex digits, as the doors
# make them (uuid4().hex) when the producer gives none (set by --ids).
IDS = "short"
TEXT = "Hello from the bench"  # --text N: N characters instead (an SMS is up to 160)


def job_id(tag: str, i: int) -> str:
    """The id of the bench's job `i` (the same every time it is asked)."""
    if IDS == "uuid":
        return hashlib.md5(f"{tag}-{i}".encode()).hexdigest()
    return f"{tag}-{i}"


# Key class -> how its name begins (the first that matches wins; order matters).
CLASSES: list[tuple[str, str]] = [
    ("record", keys.record(PROFILE, "")),
    ("locator", keys.locator("")),
    ("provider_id_index", keys.provider_id(PROFILE, "")),
    ("awaiting_reports", keys.awaiting_reports(PROFILE)),
    ("early_reports", keys.early_reports(PROFILE)),
    ("events", keys.events(PROFILE)),
    ("work_stream", keys.queue(PROFILE)),
    # The recipient index (keys.recipient_index: a set per day; before 0b6d142, a set
    # per recipient). Spelled out: an older tree's keys.py has no such function.
    ("recipient_index", f"sms:{{{PROFILE}}}:to:"),
]
FIXED = {"events"}  # bounded by length: not a per-message cost


def key_class(name: str) -> str:
    for label, prefix in CLASSES:
        if name.startswith(prefix):
            return label
    return "other"


async def used_memory(redis: Redis) -> int:
    info: Any = await redis.info("memory")
    return int(info["used_memory"])


async def breakdown(redis: Redis, sample: int) -> dict[str, dict[str, float]]:
    """Per key class: keys, bytes (MEMORY USAGE, scaled up from a sample when the class
    is larger) and bytes per key."""
    names: dict[str, list[bytes]] = {}
    async for raw in redis.scan_iter(count=1000):
        names.setdefault(key_class(raw.decode()), []).append(raw)
    rng = random.Random(7)
    out: dict[str, dict[str, float]] = {}
    for label, found in sorted(names.items()):
        picked = found if len(found) <= sample else rng.sample(found, sample)
        async with redis.pipeline(transaction=False) as pipe:
            for name in picked:
                pipe.memory_usage(name, samples=0)
            sizes = [int(s or 0) for s in await pipe.execute()]
        total = sum(sizes) * len(found) / max(1, len(picked))
        out[label] = {
            "keys": len(found),
            "bytes": round(total),
            "bytes_per_key": round(total / max(1, len(found)), 1),
        }
    return out


async def record_example(redis: Redis, tag: str) -> dict[str, Any]:
    """One record's encoding and fields (no text worth hiding: the bench's own)."""
    name = keys.record(PROFILE, job_id(tag, 0))
    encoding: Any = await redis.object("encoding", name)
    fields: Any = await redis.hgetall(name)
    return {
        "encoding": encoding.decode() if encoding else "",
        "fields": {k.decode(): v.decode() for k, v in fields.items()},
    }


async def count_status(url: str, n: int, tag: str, status: bytes) -> int:
    redis = Redis.from_url(url)
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(n):
                pipe.hget(keys.record(PROFILE, job_id(tag, i)), "status")
            rows = await pipe.execute()
    finally:
        await redis.aclose()
    return sum(1 for r in rows if r == status)


async def measure(url: str, before: int, n: int, sample: int, tag: str) -> dict[str, Any]:
    redis = Redis.from_url(url)
    try:
        after = await used_memory(redis)
        classes = await breakdown(redis, sample)
        example = await record_example(redis, tag)
    finally:
        await redis.aclose()
    fixed = sum(int(v["bytes"]) for k, v in classes.items() if k in FIXED)
    per_message_keys = sum(int(v["bytes"]) for k, v in classes.items() if k not in FIXED)
    return {
        "used_memory_delta": after - before,
        "fixed_bytes": fixed,
        # used_memory counts what MEMORY USAGE does not (the expires table, allocator
        # rounding): the per-message figure is the delta less the fixed classes.
        "bytes_per_message": round((after - before - fixed) / n, 1),
        "keys_bytes_per_message": round(per_message_keys / n, 1),
        "classes": classes,
        "record_example": example,
    }


def sink_submits(path: Path) -> int:
    """Submits the sink counted so far (its stats file, rewritten every 0.1 s)."""
    try:
        return int(json.loads(path.read_text()).get("submits", 0))
    except (OSError, ValueError):
        return 0


async def preload(url: str, n: int, tag: str, batch: int = 2000) -> None:
    """Enqueue `n` jobs through `Client.send_many`, as the other benches do."""
    redis = Redis.from_url(url)
    client = Client(redis, default_profile=PROFILE)
    for start in range(0, n, batch):
        jobs = [
            {"id": job_id(tag, i), "to": f"+4915100{i % 1_000_000:06d}",
             "text": TEXT}
            for i in range(start, min(n, start + batch))
        ]  # fmt: skip
        await client.send_many(jobs)
    await redis.aclose()


async def baseline(url: str) -> int:
    redis = Redis.from_url(url)
    try:
        return await used_memory(redis)
    finally:
        await redis.aclose()


def run(n: int, sample: int, dlr: bool) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="sms-mem-"))
    tag = "mem"
    server = RedisServer(appendonly=False, folder=scratch / "redis")
    port = free_port()
    stats = scratch / "sink.json"
    daemon = sink = None
    try:
        before = asyncio.run(baseline(server.url))
        asyncio.run(preload(server.url, n, tag))
        path = router_config(
            scratch / "router.toml", server.url, registered_delivery=int(dlr), port=port
        )
        daemon = start_daemon(path, scratch / "router.log")
        sink = start_sink(stats, scratch / "sink.log", dlr="requested" if dlr else "off", port=port)
        want = b"delivered" if dlr else b"sent"
        deadline = time.monotonic() + 600
        while sink_submits(stats) < n:
            if time.monotonic() > deadline:
                raise SystemExit("the drain did not finish")
            time.sleep(0.2)
        while asyncio.run(count_status(server.url, n, tag, want)) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"not every message reached {want.decode()}")
            time.sleep(0.5)
        time.sleep(1.0)
        result = asyncio.run(measure(server.url, before, n, sample, tag))
    finally:
        if daemon is not None:
            stop(daemon)
        if sink is not None:
            sink.terminate()
            sink.wait(10)
        server.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--key", default="after", help="where the figures go in the file")
    parser.add_argument("--ids", choices=("short", "uuid"), default="short")
    parser.add_argument("--text", type=int, default=0, help="characters of text (0: 20)")
    args = parser.parse_args()
    global IDS, TEXT
    IDS = args.ids
    if args.text:
        TEXT = ("Your code is 482913. " * 10)[: args.text]
    out: dict[str, Any] = {"n": args.n, "ids": args.ids, "text_chars": len(TEXT)}
    for name, dlr in (("sent", False), ("delivered", True)):
        got = run(args.n, args.sample, dlr)
        out[name] = got
        print(f"{name}: {got['bytes_per_message']:.0f} bytes per message "
              f"(used_memory +{got['used_memory_delta'] / 1e6:.1f} MB for {args.n}, "
              f"of which {got['fixed_bytes'] / 1e6:.1f} MB the event stream)")  # fmt: skip
        for label, c in got["classes"].items():
            print(f"  {label:<20}{c['keys']:>8} keys {c['bytes_per_key']:>10.1f} B/key "
                  f"{c['bytes'] / args.n:>8.1f} B/msg")  # fmt: skip
        print(f"  record: {got['record_example']['encoding']}, "
              f"{len(got['record_example']['fields'])} fields")  # fmt: skip
    try:
        kept = json.loads((RESULTS / "memory.json").read_text())
    except (OSError, ValueError):
        kept = {}
    kept.pop("recorded_at", None)
    kept.pop("machine", None)
    kept[args.key] = out
    save("memory", kept)


if __name__ == "__main__":
    main()
