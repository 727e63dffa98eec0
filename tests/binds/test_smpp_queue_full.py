"""An SMSC whose queue stays full for a while, then has room for a batch, over and over.

Real daemon, real Redis, our SMSC simulator over real sockets, its fault set through
its control API as an operator would (`POST /faults`). The periods are scaled down
(half a second full, room for 200) so the test takes seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from binds.base import Accepted, OutboundMessage
from binds.flow import QueueProbe
from binds.smpp import SmppBind
from binds.smpp.session import SmppSpec
from router import Client
from router.store.ledger import Ledger
from sims.smscsim import SmscSimulator

from ..conftest import free_port, wait_for
from .test_smpp_flow import FINAL, Start, all_in, smpp_settings, statuses
from .test_smpp_throttle import with_attempts

MESSAGES = 1000
ROOM = 200
FULL_FOR = 0.5


async def test_a_queue_that_stays_full_is_probed_not_flooded(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    run_daemon: Start,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: the refusals looked rate-independent to the rate controller, which
    ignored them and sent 500-1,000 submits a second into the full queue (5,709
    refused for 3,000 accepted). Now: after a few queue-full answers in a row, one
    submit at a time, doubling on success; refusals stay a small share."""
    control = await smsc.start_http()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{control}") as http:
        answer = await http.post("/faults", json={"queue_full_for": FULL_FOR, "queue_room": ROOM})
        assert answer.status == 200, await answer.text()
    # One attempt per message: a queue-full refusal must not use it up (the session
    # holds the message and sends it again itself).
    settings = with_attempts(
        smpp_settings(redis_url, tmp_path, smsc.port, smpp={"response_timeout": 10}),  # type: ignore[attr-defined]
        1,
    )
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": f"m{i}"} for i in range(MESSAGES)]
    )
    running = run_daemon(settings)
    await wait_for(lambda: all_in(redis, ids, FINAL), 45, "final statuses")

    found = await statuses(redis, ids)
    assert found["delivered"] == MESSAGES, found  # nothing lost, nothing failed
    stats = smsc.stats()
    assert stats["segments"] == MESSAGES  # each accepted once
    # The queue was full several times (the test tested something) ...
    assert stats["queue_full"] >= MESSAGES // ROOM - 1, stats
    # ... and refused submits stay at most 10 % of the accepted ones.
    assert stats["queue_full"] <= MESSAGES // 10, stats
    bind = running.daemon.workers[0].binds[0]
    assert isinstance(bind, SmppBind)
    assert bind.queue_probes >= 2
    # No attempt burned: every message sent once, never handed back for a retry.
    records = await Ledger(redis, retention=60, events_maxlen=10).find(ids)
    assert all(r is not None and r["attempts"] == 1 for r in records)
    assert not [
        r["id"] for r in records if r and any(h["status"] == "queued" for h in r["history"][1:])
    ]
    # The slow-downs and the speed-ups are logged once per change, not per message.
    out = capsys.readouterr()
    lines = (out.out + out.err).splitlines()
    probing = [x for x in lines if "probing with one submit at a time" in x]
    full_window = [x for x in lines if "SMSC queue takes the full window" in x]
    assert probing and len(probing) == bind.queue_probes, probing
    assert len(full_window) >= len(probing) - 1, full_window


def test_the_probe_doubles_then_returns_to_the_window() -> None:
    """The probe's allowance: 1 in flight while the queue is full (a pause between
    refusals, doubling), then 1, 2, 4, ... up to the window once it has room."""
    probe = QueueProbe()
    window = 10
    for _ in range(QueueProbe.TRIGGER - 1):
        assert probe.full(0.0, window) == 0.0 and probe.limit == 0
    probe.full(0.0, window)
    assert probe.limit == 1 and probe.not_before == pytest.approx(QueueProbe.FIRST_PAUSE)
    # Still full: one refusal per pause counts, the pause doubles.
    probe.full(0.05, window)  # in flight with the first: no new pause
    assert probe.not_before == pytest.approx(QueueProbe.FIRST_PAUSE)
    probe.full(0.2, window)
    assert probe.not_before == pytest.approx(0.2 + 2 * QueueProbe.FIRST_PAUSE)
    allowed = [probe.limit]
    while probe.limit:
        probe.accepted(probe.limit, window)  # a round trip: all in flight accepted
        allowed.append(probe.limit)
    assert allowed == [1, 2, 4, 8, 0]  # 8 + 8 >= 10: the full window again


async def test_faults_api_refuses_a_bad_queue_setting(smsc: SmscSimulator) -> None:
    control = await smsc.start_http()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{control}") as http:
        answer = await http.post("/faults", json={"queue_room": -5})
        assert answer.status == 400
        error = json.loads(await answer.text())["error"]
        assert error == "queue_room: must be a whole number >= 0"
        answer = await http.post("/faults", json={"queue_full_for": "soon"})
        assert answer.status == 400
        assert "queue_full_for: must be a number" in await answer.text()
    assert smsc.config.queue_room == 0 and smsc.config.queue_full_for == 0


async def test_smsc_sim_command_runs_the_congested_queue() -> None:
    """`sms-router smsc-sim --queue-full-for S --queue-room N`, run as an operator would,
    against a real session: room for N, then refusals until S has passed."""
    port, control = free_port(), free_port()
    command = ["-m", "router", "smsc-sim", "--port", str(port), "--http-port", str(control)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *command, "--queue-full-for", "0.3", "--queue-room", "5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    bind = SmppBind("sim", SmppSpec(host="127.0.0.1", port=port, system_id="smppclient1",
                                    password="password"))  # fmt: skip
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert b"SMSC simulator" in first, first
        await bind.start()
        assert await bind.wait_bound(10)
        outcomes = await asyncio.gather(
            *(bind.submit(OutboundMessage(f"m{i}", "+15550100", "+447911123456", "hi"))
              for i in range(12))
        )  # fmt: skip
        assert all(isinstance(o, Accepted) for o in outcomes), outcomes
        async with aiohttp.ClientSession(f"http://127.0.0.1:{control}") as http:
            stats = await (await http.get("/stats")).json()
            config = await (await http.post("/faults", json={})).json()
        assert stats["segments"] == 12 and stats["queue_full"] >= 2, stats
        assert config["queue_full_for"] == 0.3 and config["queue_room"] == 5
    finally:
        await bind.close()
        proc.terminate()
        await proc.wait()


async def test_smsc_sim_command_wants_both_queue_options() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "smsc-sim", "--queue-room", "5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"--queue-full-for and --queue-room go together" in err
