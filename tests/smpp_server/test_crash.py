"""kill -9 of a daemon taking SMPP submits: nothing a client was told is accepted is lost.

A real `sms-router run` process (its [smpp_server] on a free port, Redis with an
append-only file, our SMSC simulator behind it) takes 2,000 messages from PyPI's
smpplib (GSM, UCS2, long ones with a UDH or SAR, which the server holds in Redis
until whole). Part-way, with the SMPP server answering and the worker sending, the
daemon is killed with SIGKILL and started again; the client reconnects, as clients
do, and submits again every message not answered in full. Every submit_sm_resp OK
(status 0, message_id M) must have a record M that reaches a final status, delivered
or undelivered; a message reaches the SMSC twice only if the daemon counted it as a
possible duplicate.
Run: pytest -s tests/smpp_server/test_crash.py (figures printed)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import smpplib.client
import smpplib.exceptions
from redis.asyncio import Redis

from router.store import keys
from router.store.ledger import Ledger
from sims.smscsim import SmscSimulator

from ..conftest import RedisServer, free_port, wait_for
from ..daemon.test_process import start_daemon, write_config
from .conftest import door_config
from .mix import Message, message

pytestmark = pytest.mark.slow

COUNT = 2000
WINDOW = 50  # the client's (and the account's) unanswered submits
PROFILE_WINDOW = 50  # door_config's: what the daemon has on the wire to the SMSC
KILL_AT = COUNT // 3  # messages acknowledged before the kill
SENT_AT_KILL = 100  # and segments the worker has sent to the SMSC by then
FINAL = ("delivered", "undelivered")
# Answers a client sends again later (the server's window, Redis unreachable).
TRY_AGAIN = (0x58, 0x14)  # ESME_RTHROTTLED, ESME_RMSGQFUL
DROPPED = (smpplib.exceptions.ConnectionError, smpplib.exceptions.PDUError, OSError)


@dataclass
class Tally:
    """What the client saw, written by its thread and read by the test."""

    submitted: int = 0  # submit_sm PDUs sent, parts and resubmissions included
    ok_ids: set[str] = field(default_factory=set)  # every message_id answered with status 0
    acked: dict[int, str] = field(default_factory=dict)  # message whose parts all got OK
    refused: dict[int, list[int]] = field(default_factory=dict)  # message -> parts' statuses
    retried: Counter[int] = field(default_factory=Counter)  # TRY_AGAIN answers, by status
    unanswered: int = 0  # submits outstanding when a connection dropped
    drops: int = 0  # connections that ended without an unbind
    stop: threading.Event = field(default_factory=threading.Event)  # the test gave up


def _session(port: int, tally: Tally, messages: list[Message], todo: deque[int]) -> None:
    """One connection: bind, submit every part of the messages `todo` holds with at
    most WINDOW unanswered, unbind. Raises one of DROPPED when the connection ends
    first; a message with a part unanswered then goes back to `todo` whole, as a
    client sends a long message again."""
    client = smpplib.client.Client("127.0.0.1", port, timeout=10, allow_unknown_opt_params=True)
    outstanding: dict[int, tuple[int, int]] = {}  # sequence -> (message, part)
    answers: dict[int, list[tuple[int, str] | None]] = {}  # message -> its parts' answers

    def answered(pdu: Any, **_: Any) -> None:
        m, p = outstanding.pop(pdu.sequence)
        raw = pdu.message_id
        message_id = raw.decode() if isinstance(raw, bytes) else str(raw or "")
        status = int(pdu.status)
        if status == 0:
            tally.ok_ids.add(message_id)
        got = answers[m]
        got[p] = (status, message_id)
        if any(a is None for a in got):
            return
        del answers[m]
        statuses = [a[0] for a in got if a is not None]
        ids = {a[1] for a in got if a is not None}
        if statuses == [0] * len(got) and len(ids) == 1:
            tally.acked[m] = ids.pop()
        elif set(statuses) <= {0, *TRY_AGAIN}:
            for code in statuses:
                tally.retried[code] += code != 0
            todo.append(m)
        else:
            tally.refused[m] = statuses

    client.set_message_sent_handler(answered)
    client.set_error_pdu_handler(lambda pdu: None)  # an error status is an answer
    try:
        client.connect()
        client.bind_transceiver(system_id="acme", password="secret1")
        while todo or outstanding:
            parts = messages[todo[0]].parts if todo else []
            if todo and len(outstanding) + len(parts) <= WINDOW:
                m = todo.popleft()
                answers[m] = [None] * len(parts)
                for p, part in enumerate(parts):
                    pdu = client.send_message(**part)
                    outstanding[pdu.sequence] = (m, p)
                    tally.submitted += 1
            else:
                client.read_once()
        client.unbind()
    except DROPPED:
        tally.drops += 1
        tally.unanswered += len(outstanding)
        todo.extendleft(sorted(answers, reverse=True))
        raise
    finally:
        client.disconnect()


def submit_through_crash(port: int, tally: Tally, messages: list[Message], until: float) -> None:
    """Submit `messages` until each is answered; across a dead server, reconnect every
    0.2 s (blocking: run it in a thread)."""
    todo = deque(range(len(messages)))
    while todo and time.monotonic() < until and not tally.stop.is_set():
        try:
            _session(port, tally, messages, todo)
        except DROPPED:
            time.sleep(0.2)


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own with an append-only file."""
    server = RedisServer(tmp_path / "redis", free_port(), appendonly=True)
    server.start()
    yield server
    server.stop()


async def _statuses(ledger: Ledger, ids: list[str]) -> Counter[str]:
    """How many of `ids` have each status ("missing": no record)."""
    return Counter(r["status"] if r else "missing" for r in await ledger.find(ids))


async def test_kill_9_mid_submit_loses_no_acknowledged_message(
    durable_redis: RedisServer, smsc: SmscSimulator, tmp_path: Path
) -> None:
    port = free_port()
    data = door_config(durable_redis.url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    data["smpp_server"]["listen"] = f"127.0.0.1:{port}"
    data["accounts"]["acme"]["window"] = WINDOW
    data["router"]["shutdown_grace"] = 10
    config = write_config(tmp_path / "router.toml", data)
    log = tmp_path / "daemon.log"
    redis = Redis.from_url(durable_redis.url)
    ledger = Ledger(redis, retention=3600, events_maxlen=1000)
    smsc.submits = deque()  # every submit the SMSC takes, not only the last 1,000
    tally = Tally()
    messages = [message(i) for i in range(COUNT)]
    proc = await start_daemon(config, log)
    client = asyncio.create_task(
        asyncio.to_thread(submit_through_crash, port, tally, messages, time.monotonic() + 60)
    )
    try:
        await wait_for(
            lambda: len(tally.acked) >= KILL_AT and smsc.counters["segments"] >= SENT_AT_KILL,
            30,
            "submits acknowledged and sent to the SMSC",
        )
        proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGKILL
        acked_at_kill, sent_at_kill = len(tally.acked), smsc.counters["segments"]
        assert acked_at_kill < COUNT, "killed too late to prove anything"
        proc = await start_daemon(config, log)
        await asyncio.wait_for(client, 60)
        acked = dict(tally.acked)
        ids = sorted(tally.ok_ids)  # every message_id a submit_sm_resp OK carried

        async def all_final() -> bool:
            found = await _statuses(ledger, ids)
            return sum(found[s] for s in FINAL) == len(ids)

        try:
            await wait_for(all_final, 40, "every acknowledged message final")
        except AssertionError:
            pass  # counted and asserted below, with the figures
        records = await ledger.find(ids)
        found = Counter(r["status"] if r else "missing" for r in records)
        found_acked = await ledger.find(list(acked.values()))
        texts = {m: r["text"] for m, r in zip(acked, found_acked, strict=True) if r is not None}
        # Every record, those stored but never acknowledged too, sent before counting
        # what the SMSC took twice.
        pattern = keys.record("sms", "*")
        stored = [
            k.decode().partition(":msg:")[2] async for k in redis.scan_iter(pattern, count=1000)
        ]
        expected: Counter[str] = Counter()  # segments recorded, by destination
        for record in await ledger.find(stored):
            if record is not None:
                expected[record["to"].lstrip("+")] += int(record["segments"])
        segments = expected.total()
        try:
            await wait_for(lambda: smsc.counters["segments"] >= segments, 20, "all sent")
        except AssertionError:
            pass  # asserted below
        # Each message goes to its own number: one whose number took more segments
        # than its records hold reached the SMSC twice.
        took = Counter(submit["destination"] for submit in smsc.submits)
        twice = sorted(to for to in took if took[to] > expected[to])
        counted = int(await redis.hget(keys.stats("sms"), "possible_duplicates") or 0)
    finally:
        tally.stop.set()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        await redis.aclose()
    finals = sum(found[s] for s in FINAL)
    lost = len(ids) - finals
    print(
        f"\nSMPP kill -9: {COUNT} messages (GSM, UCS2, long with UDH or SAR) as "
        f"{tally.submitted} submit_sm, resubmissions included; acknowledged {len(acked)} "
        f"messages ({acked_at_kill} before the kill, {sent_at_kill} segments sent by "
        f"then) under {len(ids)} message_ids; refused {len(tally.refused)}; answered "
        f"'try again' {dict(tally.retried)}; unanswered at the kill {tally.unanswered} "
        f"submit_sm (sent again); records stored {len(stored)} ({len(stored) - len(ids)} "
        f"stored but never acknowledged); finals {finals} {dict(found)}; lost {lost}; "
        f"SMSC took {smsc.counters['segments']} segments for {segments} recorded "
        f"({len(twice)} messages twice; {counted} counted as possible duplicates)"
    )
    assert code == 0, log.read_text()[-3000:]
    assert tally.refused == {}
    assert len(acked) == COUNT, f"only {len(acked)} of {COUNT} acknowledged"
    assert len(set(acked.values())) == COUNT, "one message_id answered for two messages"
    assert tally.drops >= 1, "the client never saw the kill"
    assert lost == 0, f"{lost} acknowledged messages not final: {dict(found)}"
    assert texts == {m: messages[m].text for m in acked}
    # The only records beyond the acknowledged ones are messages stored when the
    # daemon died and never answered in full (the client sent them again).
    assert 0 <= len(stored) - len(ids) <= tally.unanswered
    # A message reaches the SMSC twice only if it was on the wire or not yet recorded
    # when the daemon died (recorded `sending` at most the window + unsettled_max, at
    # least 64, ahead), and each such message is counted.
    assert sum(took.values()) == smsc.counters["segments"] >= segments
    assert len(twice) <= counted <= 2 * PROFILE_WINDOW + max(2 * PROFILE_WINDOW, 64)
