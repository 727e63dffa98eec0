"""An account's limits hold across router instances: two `sms-router run` processes
(instances `one` and `two`, one Redis, each with its own [smpp_server] port) each take
an smpplib client of the same account submitting as fast as its window allows.

- `tps`: once the account's one-second burst is spent (the first ESME_RTHROTTLED),
  the submits both instances accept together come to `tps` per second (±10 %), not
  twice that; every other answer is ESME_RTHROTTLED. Over the whole run the total is
  `tps` x elapsed plus that burst (±10 %): over 5 s, 1.2 x tps per second.
- `daily_quota`: both instances together accept exactly its number; every submit
  past it is answered ESME_RSUBMITFAIL and counts nothing.
Run: pytest -s tests/smpp_server/test_limits_two_instances.py (figures printed)."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import smpplib.client
from redis.asyncio import Redis

from router.store import keys
from router.store.limits import used_today
from sims.smscsim import SmscSimulator

from ..conftest import free_port, wait_for
from ..daemon.test_process import start_daemon, write_config
from .conftest import door_config

pytestmark = pytest.mark.slow

TPS = 200
FLOOD = 5.0  # seconds each client submits for
QUOTA = 500
WINDOW = 20
ESME_RTHROTTLED = 0x58
ESME_RSUBMITFAIL = 0x45
ACCOUNTS: dict[str, dict[str, Any]] = {
    "rated": {"smpp_password": "rated1", "tps": TPS, "window": WINDOW},
    "daily": {"smpp_password": "daily1", "daily_quota": QUOTA, "window": WINDOW},
}


@dataclass
class Answers:
    """One client's submit_sm_resp statuses with the monotonic time each was read."""

    times: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def count(self, status: int) -> int:
        return self.statuses.count(status)


def flood(port: int, account: str, *, seconds: float = 0, count: int = 0) -> Answers:
    """Bind as `account`, submit with WINDOW unanswered for `seconds` (or `count`
    submits), read every answer, unbind. Blocking: run it in a thread."""
    client = smpplib.client.Client("127.0.0.1", port, timeout=10, allow_unknown_opt_params=True)
    answers = Answers()
    outstanding: set[int] = set()

    def answered(pdu: Any, **_: Any) -> None:
        outstanding.discard(pdu.sequence)
        answers.times.append(time.monotonic())
        answers.statuses.append(int(pdu.status))

    client.set_message_sent_handler(answered)
    client.set_error_pdu_handler(lambda pdu: None)  # refusals are what is measured
    client.connect()
    try:
        client.bind_transceiver(system_id=account, password=ACCOUNTS[account]["smpp_password"])
        end = time.monotonic() + seconds
        sent = 0
        while (time.monotonic() < end) if seconds else (sent < count):
            while len(outstanding) >= WINDOW:
                client.read_once()
            pdu = client.send_message(
                source_addr_ton=0,
                source_addr="",
                dest_addr_ton=1,
                dest_addr_npi=1,
                destination_addr=f"4479111{sent % 100_000:05d}",
                short_message=b"limit %d" % sent,
                data_coding=0,
            )
            outstanding.add(pdu.sequence)
            sent += 1
        while outstanding:
            client.read_once()
        client.unbind()
    finally:
        client.disconnect()
    return answers


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


@dataclass
class Instances:
    """Two daemons on one Redis: their SMPP servers' ports."""

    ports: list[int]
    redis: Redis


@pytest.fixture
async def instances(
    redis: Redis, redis_url: str, smsc: SmscSimulator, tmp_path: Path
) -> AsyncIterator[Instances]:
    ports, procs = [free_port(), free_port()], []
    log = tmp_path / "daemons.log"
    for name, port in zip(("one", "two"), ports, strict=True):
        data = door_config(redis_url, tmp_path / name, smsc.port)  # type: ignore[attr-defined]
        data["router"]["instance"] = name
        data["smpp_server"]["listen"] = f"127.0.0.1:{port}"
        data["accounts"] = {k: dict(v) for k, v in ACCOUNTS.items()}
        (tmp_path / name).mkdir()
        procs.append(await start_daemon(write_config(tmp_path / f"{name}.toml", data), log))
    try:
        await wait_for(lambda: all(map(_listening, ports)), 30, "both SMPP servers listening")
        yield Instances(ports, redis)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(proc.wait(), 30) for proc in procs]
        assert codes == [0, 0], log.read_text()[-3000:]


async def test_tps_holds_across_two_instances(instances: Instances) -> None:
    one, two = await asyncio.gather(
        *(asyncio.to_thread(flood, port, "rated", seconds=FLOOD) for port in instances.ports)
    )
    both = list(zip(one.times + two.times, one.statuses + two.statuses, strict=True))
    # The account's bucket holds one second's worth: the steady rate is measured from
    # the first refusal (the burst spent) to the end of the shorter client run.
    start = min(t for t, s in both if s == ESME_RTHROTTLED)
    end = min(one.times[-1], two.times[-1])
    steady = sum(1 for t, s in both if s == 0 and start < t <= end)
    rate = steady / (end - start)
    statuses = Counter(s for _, s in both)
    # Over the whole run the total is the rate's worth plus the one-second burst.
    elapsed = max(one.times[-1], two.times[-1]) - min(one.times[0], two.times[0])
    expected = TPS * (elapsed + 1)
    per_instance = [a.count(0) for a in (one, two)]
    print(
        f"\ntps {TPS} over two instances: {len(both)} submits in {FLOOD:g} s, accepted "
        f"{statuses[0]} (per instance {per_instance}, {statuses[0] - steady} in the burst "
        f"and after), steady {steady} in {end - start:.2f} s = {rate:.1f}/s "
        f"({rate / TPS - 1:+.1%}); in all {statuses[0]} in {elapsed:.2f} s = "
        f"{statuses[0] / elapsed:.1f}/s, {statuses[0] / expected - 1:+.1%} from tps x "
        f"(elapsed + 1 s of burst); answers {dict(statuses)}"
    )
    assert set(statuses) == {0, ESME_RTHROTTLED}, statuses
    assert len(both) > 3 * TPS * FLOOD, "the clients did not submit faster than the rate"
    assert all(per_instance), "an instance accepted nothing"
    assert abs(rate - TPS) <= 0.1 * TPS, f"{rate:.1f}/s accepted, the account's tps is {TPS}"
    assert abs(statuses[0] - expected) <= 0.1 * expected, (statuses[0], expected)


async def test_daily_quota_stops_at_exactly_its_number_across_two_instances(
    instances: Instances,
) -> None:
    each = QUOTA * 4 // 5  # both together ask for 1.6 times the quota
    one, two = await asyncio.gather(
        *(asyncio.to_thread(flood, port, "daily", count=each) for port in instances.ports)
    )
    statuses = Counter(one.statuses + two.statuses)
    counted = await used_today(instances.redis, "daily")
    stored = len([k async for k in instances.redis.scan_iter(keys.record("sms", "*"), count=1000)])
    print(
        f"\ndaily_quota {QUOTA} over two instances: {2 * each} submits, answers "
        f"{dict(statuses)} (per instance {[one.count(0), two.count(0)]}), counted "
        f"{counted!r}, records {stored}"
    )
    assert statuses == {0: QUOTA, ESME_RSUBMITFAIL: 2 * each - QUOTA}
    assert all(a.count(0) for a in (one, two)), "an instance accepted nothing"
    assert counted == QUOTA
    assert stored == QUOTA
    # The day is over for this account on both instances.
    for port in instances.ports:
        assert (await asyncio.to_thread(flood, port, "daily", count=1)).statuses == [
            ESME_RSUBMITFAIL
        ]
