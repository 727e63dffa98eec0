"""The server's ingest rate, printed for the closing note (not asserted): submit_sm/s
from a raw asyncio client (tests/smpp_server/ingest_client.py, a process of its own)
keeping 100 submits unanswered, each answered only once its job is durably in Redis.
Run: pytest -s tests/smpp_server/test_ingest.py"""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from router.store import keys

from .conftest import MakeDoor

pytestmark = pytest.mark.slow

COUNT = 20_000
WINDOW = 100


async def test_ingest_rate(make_door: MakeDoor) -> None:
    door = await make_door(accounts={"acme": {"window": WINDOW}})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.smpp_server.ingest_client",
        str(door.port),
        str(COUNT),
        str(WINDOW),
        "acme",
        "secret1",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode == 0
    report = json.loads(out)
    assert report["ok"] == COUNT
    assert await door.redis.xlen(keys.queue("sms")) == COUNT
    rate = COUNT / report["seconds"]
    print(
        f"\nSMPP ingest: {COUNT} submit_sm in {report['seconds']:.2f} s = {rate:,.0f}/s "
        f"(window {WINDOW}, one session, durable before each submit_sm_resp)"
    )
