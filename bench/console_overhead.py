"""What open web consoles cost the daemon: versus_kannel's router drain (bench/
drain_row.py) with no console and with `--consoles` consoles open, rounds interleaved.

Usage: python bench/console_overhead.py [--n 20000] [--rounds 5] [--consoles 10]
                                         [--page overview|events]

Both runs listen on `[api]` (an admin key for the consoles). A console is a real HTTP
client of the daemon's console: it signs in (`POST /console/login`, its own session)
and then, for `overview` (the console's first page), polls the overview's live part
every 2 s as htmx does (`GET /console/overview/live`, the cookie, `HX-Request`); for
`events`, it holds the live events page's websocket (`/console/events/ws`, subscribed
to every event, reading them all). The consoles start before the sink, so the whole
drain runs with them. Prints each round, the medians, the ratio with/without (median
of the per-round ratios) and the router's CPU per message; writes
bench/results/console_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from drain_row import drain_row, interleaved
from harness import Rig, ensure_tools, free_port, save
from links_cost import preload

TOKEN = "console-bench-" + "k" * 24
POLL = 2.0  # seconds, as the overview's htmx poll


def with_api(port: int) -> Any:
    def edit(config: str) -> str:
        return config + (
            f'\n[api]\nlisten = "127.0.0.1:{port}"\n'
            f'[api.keys.ops]\ntoken = "{TOKEN}"\nscopes = ["admin"]\n'
        )

    return edit


async def console(base: str, page: str, stop: asyncio.Event, seen: list[int]) -> None:
    """One console: sign in, then poll the overview or hold the events socket."""
    jar = aiohttp.CookieJar(unsafe=True)  # a cookie for 127.0.0.1
    async with aiohttp.ClientSession(base_url=base, cookie_jar=jar) as http:
        async with http.post(
            "/console/login", data={"token": TOKEN}, headers={"Origin": base},
            allow_redirects=False,
        ) as answer:  # fmt: skip
            assert answer.status == 303, answer.status
        if page == "overview":
            while not stop.is_set():
                async with http.get("/console/overview/live", headers={"HX-Request": "true"}) as a:
                    await a.read()
                    seen[0] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL)
            return
        async with http.ws_connect("/console/events/ws", headers={"Origin": base}) as ws:
            await ws.send_json({"type": "subscribe", "heartbeat": 15})
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    message = await ws.receive(timeout=0.5)
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    seen[0] += 1


@contextlib.contextmanager
def consoles(base: str, count: int, page: str, seen: list[int]) -> Iterator[None]:
    """`count` consoles in a thread of their own while the block runs."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()

    async def run() -> None:
        tasks = [asyncio.create_task(console(base, page, stop, seen)) for _ in range(count)]
        ready.set()
        await asyncio.gather(*tasks)

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


def drain(n: int, scratch: Path, tag: str, count: int, page: str) -> dict[str, Any]:
    port = free_port()
    seen = [0]

    def during(rig: Rig) -> contextlib.AbstractContextManager[None]:
        if not count:
            return contextlib.nullcontext()
        return consoles(f"http://127.0.0.1:{port}", count, page, seen)

    row = drain_row(n, scratch, tag, preload=preload, edit=with_api(port), during=during)
    row["console_reads"] = seen[0]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--consoles", type=int, default=10)
    parser.add_argument("--page", choices=["overview", "events"], default="overview")
    args = parser.parse_args()
    ensure_tools(kannel=False)
    scratch = Path(tempfile.mkdtemp(prefix="sms-console-"))
    names = {"none": 0, "consoles": args.consoles}
    found = interleaved(
        args.rounds,
        "none",
        "consoles",
        lambda name, r: drain(args.n, scratch, f"{name}{r}", names[name], args.page),
        lambda row: f"console reads {row['console_reads']}",
    )
    rates, cpu = found.rates, found.cpu
    print(
        f"\nno console {rates['none']:,.0f} msg/s ({cpu['none']} us router CPU/msg), "
        f"{args.consoles} consoles on {args.page} {rates['consoles']:,.0f} msg/s "
        f"({cpu['consoles']} us/msg): ratio {found.ratio}; router CPU per message "
        f"without/with {found.cpu_ratio}"
    )
    path = save(
        f"console_overhead_{args.page}",
        {
            "n": args.n,
            "rounds": args.rounds,
            "consoles": args.consoles,
            "page": args.page,
            "rates": rates,
            "ratio": found.ratio,
            "cpu_ratio": found.cpu_ratio,
            "router_us_per_msg": cpu,
            "complete": found.complete,
            "runs": found.runs,
        },
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
