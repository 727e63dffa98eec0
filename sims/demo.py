"""`sms-router demo`: the whole path on one machine, in one command.

Starts an embedded Redis (under a scratch state directory), the SMSC simulator
and the daemon, all in this process except Redis; enqueues sample messages
(plain, Unicode, long); shows progress until every message has a final status
with its delivery report; prints a summary and exits 0 when every message got its
delivery report (1 if one did not by the time limit, or ended otherwise).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from router.client import Client
from router.config import Settings, parse_settings
from router.daemon.daemon import Daemon
from router.store.connections import open_redis
from router.store.ledger import Ledger
from sims.smscsim import SimConfig, SmscSimulator

FINAL = {"delivered", "undelivered", "failed", "rejected", "expired"}
SAMPLES = [
    "Your code is {n}. It expires in 10 minutes.",
    "Grüße aus Köln! Ihr Paket {n} ist unterwegs. ✓",
    "Заказ {n} доставлен. Спасибо! 😊",
    (
        "Reminder {n}: your appointment is tomorrow at 10:00. Please bring your card and "
        "arrive ten minutes early; reply STOP to opt out. This text is long enough to need "
        "two parts, so the router sends it concatenated with a UDH and counts segments."
    ),
]
NUMBERS = ["+16501112345", "+14082223333", "+14155552671"]
# The simulator reports this share of messages delivered and fails the rest on purpose,
# so the demo shows failure reports too.
DELIVERED_RATIO = 0.97


def demo_settings(state_dir: Path, smsc_port: int, window: int) -> Settings:
    """An embedded-Redis configuration with one SMPP transceiver profile."""
    data: dict[str, Any] = {
        "router": {
            "redis": "embedded",
            "state_dir": str(state_dir),
            "instance": "demo",
            "log_format": "json",
            "log_level": "warning",
        },
        "queue": {"batch": 200, "schedule_poll": 0.1, "block_ms": 200, "retry_base": 0.2},
        # US long codes send only on a Confirmed 10DLC campaign; the demo texts UK numbers.
        "campaigns": {"demo": {"brand": "Demo", "status": "Confirmed", "tier": "StandardVolume"}},
        "numbers": {
            number: {"campaign": "demo", "features": ["SmsSender", "InternationalSmsSender"]}
            for number in NUMBERS
        },
        "profiles": {
            "demo": {
                "global": True,
                "protocol": "smpp",
                "processing": "async",
                "window": window,
                "numbers": NUMBERS,
                "smpp": {
                    "host": "127.0.0.1",
                    "port": smsc_port,
                    "system_id": "smppclient1",
                    "password": "password",
                    "bind": "transceiver",
                    "response_timeout": 5,
                },
            }
        },
    }
    return parse_settings(data, env={})


async def run_demo(count: int, window: int, limit: float, console: Console) -> int:
    """Run the demo; returns the exit code."""
    scratch = Path(tempfile.mkdtemp(prefix="sms-router-demo-"))
    sim = SmscSimulator(SimConfig(receipt_delay=0.05, delivered_ratio=DELIVERED_RATIO, seed=7))
    port = await sim.start(port=0)
    settings = demo_settings(scratch / "var", port, window)
    daemon = Daemon(settings)
    try:
        async with open_redis(settings) as redis:
            runner = asyncio.create_task(daemon.run(install_signals=False))
            client = Client.from_settings(redis, settings)
            jobs = [
                {"to": f"+4479111{n:05d}", "text": SAMPLES[n % len(SAMPLES)].format(n=n)}
                for n in range(count)
            ]
            began = time.perf_counter()
            ids = await client.send_many(jobs)
            ledger = Ledger(redis, retention=3600, events_maxlen=1000)
            statuses: Counter[str] = Counter()
            segments = 0
            columns = (
                TextColumn("[bold]messages"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>7.0f} msg/s"),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console) as progress:
                task = progress.add_task("final", total=count, rate=0.0)
                while time.perf_counter() - began < limit:
                    records = await ledger.get_many([("demo", i) for i in ids])
                    statuses = Counter(r["status"] if r else "missing" for r in records)
                    segments = sum(int(r.get("segments", 0)) for r in records if r)
                    done = sum(n for s, n in statuses.items() if s in FINAL)
                    elapsed = time.perf_counter() - began
                    progress.update(task, completed=done, rate=done / max(elapsed, 1e-6))
                    if done == count:
                        break
                    await asyncio.sleep(0.2)
            elapsed = time.perf_counter() - began
            daemon.request_stop()
            await runner
    finally:
        await sim.close()
        shutil.rmtree(scratch, ignore_errors=True)
    print_summary(console, statuses, sim.config.delivered_ratio)
    done = sum(n for s, n in statuses.items() if s in FINAL)
    console.print(
        f"{count} messages ({segments} segments) in {elapsed:.1f}s: "
        f"{done / elapsed:.0f} messages/s to a final status with delivery reports; "
        f"SMSC saw {sim.stats().get('submits', 0)} submit_sm",
        markup=False,
    )
    # The demo shows messages reaching their delivery reports: anything else (a rule
    # refusing them, say) is a failed demo.
    reported = statuses.get("delivered", 0) + statuses.get("undelivered", 0)
    return 0 if reported == count else 1


def print_summary(console: Console, statuses: Counter[str], delivered_ratio: float) -> None:
    """The demo's count per status, saying that the simulator's `undelivered` share is
    made up on purpose (its delivered ratio), not a fault of the router."""
    failed_share = 1.0 - delivered_ratio
    table = Table("status", "messages", "", title="sms-router demo")
    for status, n in sorted(statuses.items()):
        note = "simulated (see below)" if status == "undelivered" else ""
        table.add_row(status, str(n), note)
    console.print(table)
    console.print(
        f"The SMSC simulator reports about {failed_share:.0%} of messages undelivered on "
        f"purpose (delivered ratio {delivered_ratio:g}) to show failure receipts; "
        "a real SMSC reports its own.",
        markup=False,
    )
