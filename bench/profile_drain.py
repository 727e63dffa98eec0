"""Profile the router's drain with py-spy: N jobs preloaded, the daemon started, py-spy
attached, then the sink started. Prints the hottest functions (self and inclusive).

Usage: python bench/profile_drain.py [--n 30000] [--seconds 8] [--dlr] [--out /tmp/drain.raw]
Needs py-spy (pip install py-spy) and the peer kit's sink (see versus_kannel.py).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from harness import RedisServer, start_daemon, stop
from versus_kannel import preload, router_config, start_sink


def summarise(raw: Path, top: int = 35) -> None:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        for name in set(frames):
            inclusive[name] += n
        own[frames[-1]] += n
    print(f"{total} samples")
    print("-- inclusive --")
    for name, n in inclusive.most_common(top):
        print(f"{100 * n / total:5.1f}%  {name}")
    print("-- self --")
    for name, n in own.most_common(top):
        print(f"{100 * n / total:5.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--dlr", action="store_true")
    parser.add_argument("--sync", action="store_true", help="processing = sync, window 1")
    parser.add_argument("--out", type=Path, default=Path("/tmp/drain.raw"))
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="sms-profile-"))
    server = RedisServer(appendonly=True, folder=scratch / "redis")
    config = router_config(
        scratch / "router.toml",
        server.url,
        registered_delivery=1 if args.dlr else 0,
        **({"window": 1, "processing": "sync"} if args.sync else {}),
    )
    asyncio.run(preload(server.url, args.n, "p"))
    daemon = start_daemon(config, scratch / "router.log")
    sink = None
    try:
        time.sleep(1.5)
        spy = subprocess.Popen(
            [shutil.which("py-spy") or "py-spy", "record", "--pid", str(daemon.pid), "-f", "raw",
             "-o", str(args.out), "-d", str(args.seconds), "-r", "200", "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
        dlr = "requested" if args.dlr else "off"
        sink = start_sink(scratch / "sink.json", scratch / "sink.log", dlr=dlr)
        spy.wait(args.seconds + 30)
    finally:
        stop(daemon)
        if sink is not None:
            sink.terminate()
            sink.wait(10)
        server.close()
        shutil.rmtree(scratch, ignore_errors=True)
    summarise(args.out)


if __name__ == "__main__":
    main()
