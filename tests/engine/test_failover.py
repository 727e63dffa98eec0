"""Failover between connectors (issue 19), counted at the carriers.

The real daemon, a real Redis and two SMSCs: our simulator (`CountingSmsc`, which
counts per message what it received and what it accepted) and, in one test, the npm
SMPP peer. What the issue asks of failover:

- a connector without a bound session (after `failover_after`) or with its breaker
  open is skipped; its messages move to the route's next connector without using an
  attempt (the record's `attempts` stays 1);
- a submit refused at the route level (ESME_RSYSERR...) moves to the next connector;
- a message that may have gone out (no answer, a connection lost before the
  submit_sm_resp) is never re-sent on another connector until its first attempt is
  settled as for retries: it takes the retry path and is counted in
  ``possible_duplicates``;
- nothing is accepted twice across connectors (counted at the SMSCs).

Run with ``-s`` to see the figures the at-scale test measures.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from binds.smpp import pdu
from router import Client
from router.config import Settings, parse_settings
from router.engine.connectors import ConnectorRuntime
from router.store import keys
from router.store.ledger import Ledger
from sims.smscsim import SimConfig, SmscSimulator, _Session

from ..binds.test_smpp_flow import Start, statuses
from ..conftest import RunningDaemon, wait_for
from ..peers.peer import NodeSmsc
from .test_routes import recipients, routed_config

SUBMIT_SM_RESP = pdu.SUBMIT_SM | pdu.RESPONSE


class CountingSmsc(SmscSimulator):
    """Our SMSC simulator, counting at the SMSC side, per message (by destination:
    every test message has its own): `received` (submit_sm read) and `accepted`
    (answered ESME_ROK on a live connection), every one of them, with their times.

    The simulator's own `submits` keeps only the last 1,000 and does not say which
    were answered; this wraps each session's `send` to see the submit_sm_resp."""

    def __init__(self, config: SimConfig) -> None:
        super().__init__(config)
        self.port = 0
        self.received: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        # Wall-clock times (as records have them), per destination.
        self.received_at: dict[str, list[float]] = {}
        self.accepted_at: dict[str, list[float]] = {}
        self._asked: dict[tuple[int, int], str] = {}  # (session, sequence) -> destination
        self._watched: set[int] = set()
        self._goal = 0
        self.reached = asyncio.Event()  # set once `goal` messages were accepted

    async def listen(self, port: int = 0) -> int:
        """Start (again, on `port` if given) and remember the port."""
        self.port = await self.start(port=port)
        return self.port

    def goal(self, accepted: int) -> None:
        """Set `reached` as soon as `accepted` messages were accepted here."""
        self._goal = accepted
        self.reached.clear()

    @property
    def total_accepted(self) -> int:
        return sum(self.accepted.values())

    async def _handle(self, session: _Session, frame: pdu.Pdu) -> None:
        self._watch(session)
        if frame.command_id == pdu.SUBMIT_SM and session.mode in ("transmitter", "transceiver"):
            try:
                destination = pdu.decode_short_message(frame.body).destination
            except pdu.PduError:
                destination = ""
            if destination:
                self._asked[(session.number, frame.sequence)] = destination
                self.received[destination] += 1
                self.received_at.setdefault(destination, []).append(time.time())
        await super()._handle(session, frame)

    def _watch(self, session: _Session) -> None:
        if session.number in self._watched:
            return
        self._watched.add(session.number)
        send = session.send

        def counted(command_id: int, status: int, sequence: int, body: bytes = b"") -> None:
            if command_id == SUBMIT_SM_RESP:
                destination = self._asked.pop((session.number, sequence), "")
                if destination and status == pdu.ESME_ROK and not session.writer.is_closing():
                    self.accepted[destination] += 1
                    self.accepted_at.setdefault(destination, []).append(time.time())
                    if self._goal and self.total_accepted >= self._goal:
                        self.reached.set()
            send(command_id, status, sequence, body)

        session.send = counted  # type: ignore[method-assign]


@pytest.fixture
async def counted() -> AsyncIterator[dict[str, CountingSmsc]]:
    """Two counting simulators, `a` and `b`, each on its own port (`port`)."""
    sims = {
        name: CountingSmsc(SimConfig(seed=seed, receipt_delay=0.01))
        for name, seed in (("a", 1), ("b", 2))
    }
    for sim in sims.values():
        await sim.listen()
    yield sims
    for sim in sims.values():
        await sim.close()


def pair_config(
    redis_url: str, tmp: Path, sims: dict[str, CountingSmsc], **connector: Any
) -> dict[str, Any]:
    """Route ``+44`` -> [a, b], strategy failover (`routed_config`), with `connector`
    settings for both connectors."""
    carriers: dict[str, SmscSimulator] = dict(sims)
    route = {"to": ["+44"], "connectors": ["a", "b"]}
    return routed_config(redis_url, tmp, carriers, [route], **connector)


def failover_settings(
    redis_url: str, tmp: Path, sims: dict[str, CountingSmsc], **connector: Any
) -> Settings:
    """`pair_config`, parsed."""
    return parse_settings(pair_config(redis_url, tmp, sims, **connector), env={})


def connector(running: RunningDaemon, name: str) -> ConnectorRuntime:
    """The daemon's connector `name` (its state, its breaker)."""
    return next(c for c in running.daemon.connectors if c.name == name)


async def settle(redis: Redis, ids: list[str], wanted: set[str], timeout: float) -> None:  # noqa: ASYNC109
    """Wait until every record of `ids` is in `wanted` (polled every half second: a
    look at 10,000 records is not free); a time-out says where they are."""
    deadline = time.monotonic() + timeout
    while True:
        found = await statuses(redis, ids)
        if sum(n for s, n in found.items() if s in wanted) == len(ids):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {wanted}: {dict(found)}")
        await asyncio.sleep(0.5)


async def possible_duplicates(redis: Redis, profile: str = "sms") -> int:
    raw = await redis.hget(keys.stats(profile), "possible_duplicates")
    return int(raw or 0)


def both(a: Counter[str], b: Counter[str]) -> set[str]:
    """Destinations counted at both SMSCs (`received`, or `accepted`)."""
    return set(a) & set(b)


def retried_after_no_answer(record: dict[str, Any]) -> bool:
    """Whether the record's history has a retry after a submit whose answer never
    came (connection lost before submit_sm_resp, or a time-out)."""
    return any(
        h["status"] == "queued"
        and h["note"].startswith("retry ")
        and ("before submit_sm_resp" in h["note"] or "no submit_sm_resp" in h["note"])
        for h in record["history"]
    )


# -- 1. failover at scale ---------------------------------------------------------------

MESSAGES = 10_000
WINDOW = 20  # each connector's window


async def test_failover_at_scale_loses_nothing_and_sends_nothing_twice(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    counted: dict[str, CountingSmsc],
    run_daemon: Start,
) -> None:
    a, b = counted["a"], counted["b"]
    # Receipts before the submit_sm_resp at A: every message A accepted has its
    # receipt written (or kept for the next bind) when A is killed. With the receipt
    # after a delay, the simulator's `close` cancels the receipts still waiting, which
    # a real SMSC would keep, and those messages would stay `sent` for ever.
    a.config.report_before_response = True
    # A answers after 2 ms: at the kill a window's worth is always in flight (written,
    # unanswered), so the run always goes through the "may have gone out" path.
    a.config.response_delay = 0.002
    settings = failover_settings(redis_url, tmp_path, counted, window=WINDOW, failover_after=0.5)
    client = Client.from_settings(redis, settings)
    to = recipients(MESSAGES)
    ids = await client.send_many([{"to": t, "text": f"scale {i}"} for i, t in enumerate(to)])
    a.goal(MESSAGES // 3)
    started = time.time()
    running = run_daemon(settings)
    await asyncio.wait_for(a.reached.wait(), 60)
    # Kill A: its listener and every session close at once. What was written to it and
    # not answered yet is lost with the connection: the router sees `maybe_sent`.
    await a.close()
    killed = time.time()
    accepted_by_a = a.total_accepted
    await settle(redis, ids, {"delivered"}, 60)
    drained = time.time()

    # Counted at the SMSCs, by message.
    wanted = {t[1:] for t in to}
    lost = wanted - set(a.accepted) - set(b.accepted)
    assert not lost
    assert a.total_accepted + b.total_accepted == MESSAGES
    assert max(a.accepted.values()) == 1 and max(b.accepted.values()) == 1
    assert not both(a.accepted, b.accepted)  # none accepted twice across A and B
    assert a.total_accepted == accepted_by_a  # nothing reached A once it was dead
    first_at_b = min(t for times in b.accepted_at.values() for t in times)

    # A message in flight at A at the kill (written, unanswered) takes the retry path,
    # which counts it as a possible duplicate, and may then go out on B. The simulator
    # never accepted those (their answers die with it: "accepted twice" is 0 above), but
    # a real SMSC may have taken them: that is what `possible_duplicates` counts. Some
    # of them A never even read (still in the socket at the kill).
    records = [r for r in await Ledger(redis, retention=60, events_maxlen=10).find(ids) if r]
    assert len(records) == MESSAGES
    by_destination = {r["to"][1:]: r for r in records}
    retried = {d for d, r in by_destination.items() if retried_after_no_answer(r)}
    duplicates = await possible_duplicates(redis)
    assert len(retried) == duplicates  # each one counted, once
    assert 0 < duplicates <= WINDOW  # at most A's window was in flight
    sent_twice = both(a.received, b.received)
    assert sent_twice <= retried  # only those reached both SMSCs

    # Attempts not burned: a message moved because A was down (or refused it unsent)
    # keeps attempts 1; one that took the retry path has 2, its first at A.
    for destination, record in by_destination.items():
        assert record["connector"] == ("b" if destination in b.accepted else "a")
        if destination in retried:
            assert record["attempts"] == 2, record
            [retry] = [h for h in record["history"] if h["status"] == "queued" and h["note"]]
            assert retry["connector"] == "a"
        else:
            assert record["attempts"] == 1, record
    first_try = set(b.accepted) - retried  # moved off A, or sent to B once A was down
    assert len(first_try) > MESSAGES // 2

    # A back on the same port: once a session binds the connector is `up`, and new
    # traffic goes to A again (the first healthy connector of the route).
    await a.listen(a.port)
    await wait_for(lambda: connector(running, "a").state == "up", 15, "connector a up")
    back = recipients(200, "+4479222")
    before_b = b.total_accepted
    later = await client.send_many([{"to": t, "text": "back"} for t in back])
    await settle(redis, later, {"delivered"}, 30)
    assert {t[1:] for t in back} <= set(a.accepted)
    assert b.total_accepted == before_b

    print(
        f"\nfailover at scale: {MESSAGES} messages, window {WINDOW} per connector, "
        f"failover_after 0.5 s, response_timeout 1 s; A killed after {accepted_by_a} "
        f"accepted; first accepted by B {first_at_b - killed:.2f} s after the kill; all "
        f"delivered {drained - started:.1f} s after the daemon started; A accepted "
        f"{accepted_by_a}, B {before_b}; lost {len(lost)}; accepted twice "
        f"{len(both(a.accepted, b.accepted))}; sent to both {len(sent_twice)}; possible_duplicates "
        f"counted {duplicates}; over B on their first attempt {len(first_try)}"
    )


async def test_traffic_moves_within_failover_after_not_the_response_timeout(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    counted: dict[str, CountingSmsc],
    run_daemon: Start,
) -> None:
    """`failover_after` says how long a connector without a session keeps its traffic.
    The messages handed to its bind meanwhile (queued, never written) must not wait
    for the bind's much longer SMPP response time-out before they move: while they
    wait, they hold the profile's whole in-flight allowance and nothing goes anywhere."""
    a, b = counted["a"], counted["b"]
    a.config.report_before_response = True  # as above: A's receipts survive the kill
    failover_after, response_timeout = 0.5, 3.0
    data = pair_config(redis_url, tmp_path, counted, window=WINDOW, failover_after=failover_after)
    data["connectors"]["a"]["smpp"]["response_timeout"] = response_timeout
    settings = parse_settings(data, env={})
    to = recipients(2000)
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": t, "text": "move"} for t in to]
    )
    a.goal(500)
    run_daemon(settings)
    await asyncio.wait_for(a.reached.wait(), 30)
    await a.close()
    killed = time.time()
    await settle(redis, ids, {"delivered"}, 30)
    assert set(a.accepted) | set(b.accepted) == {t[1:] for t in to}
    moved_after = min(t for times in b.accepted_at.values() for t in times) - killed
    # `failover_after`, a look at the binds (every 0.25 s), a retry's pause: well under
    # the 3 s response time-out.
    assert moved_after < failover_after + 1.0, (
        f"first message accepted by B {moved_after:.2f} s after A was killed "
        f"(failover_after {failover_after} s, response_timeout {response_timeout} s)"
    )


# -- 2. a refusal at the route level, and the breaker -------------------------------------

ESME_RSYSERR = 0x08


async def test_route_level_refusal_moves_on_opens_the_breaker_and_probes_again(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    counted: dict[str, CountingSmsc],
    run_daemon: Start,
) -> None:
    a, b = counted["a"], counted["b"]
    a.config.vendor_status, a.config.vendor_ratio = ESME_RSYSERR, 1.0
    breaker = {"failure_ratio": 0.5, "min_requests": 5, "window": 30, "cooldown": 2.0}
    settings = failover_settings(
        redis_url, tmp_path, counted, window=10, failover_after=0.5, breaker=breaker
    )
    client = Client.from_settings(redis, settings)
    ledger = Ledger(redis, retention=60, events_maxlen=10)
    first = await client.send_many([{"to": t, "text": "r"} for t in recipients(200)])
    running = run_daemon(settings)
    await settle(redis, first, {"delivered"}, 30)
    a_runtime = connector(running, "a")
    # Every message went out over B, the refusals at A used no attempt.
    assert not a.accepted and b.total_accepted == 200
    records = [r for r in await ledger.find(first) if r]
    assert {r["connector"] for r in records} == {"b"}
    assert {r["attempts"] for r in records} == {1}
    assert await possible_duplicates(redis) == 0
    # The breaker opened after `min_requests` refusals; what A saw before it did is at
    # most what the pipeline hands out at once (both connectors' windows).
    assert a_runtime.state == "open"
    refused = a.stats()["vendor"]
    assert breaker["min_requests"] <= refused <= 20
    assert refused == sum(a.received.values())

    # Open: nothing goes to A. After the cool-down one message tries it (half-open):
    # refused again, it moves to B and the breaker opens again.
    await asyncio.sleep(breaker["cooldown"] + 0.2)
    second = await client.send_many([{"to": t, "text": "r"} for t in recipients(100, "+4479222")])
    await settle(redis, second, {"delivered"}, 30)
    assert a.stats()["vendor"] == refused + 1  # the probe, and only it
    [probe] = [d for d in a.received if d.startswith("4479222")]
    assert probe in b.accepted
    records = [r for r in await ledger.find(second) if r]
    assert {r["connector"] for r in records} == {"b"}
    assert {r["attempts"] for r in records} == {1}
    assert a_runtime.state == "open"

    # A heals: the next probe is accepted, the breaker closes, traffic returns to A.
    a.config.vendor_ratio = 0.0
    await asyncio.sleep(breaker["cooldown"] + 0.2)
    third = await client.send_many([{"to": t, "text": "r"} for t in recipients(100, "+4479333")])
    await settle(redis, third, {"delivered"}, 30)
    assert a_runtime.state == "up"
    before_b = b.total_accepted
    fourth = await client.send_many([{"to": t, "text": "r"} for t in recipients(100, "+4479444")])
    await settle(redis, fourth, {"delivered"}, 30)
    assert b.total_accepted == before_b
    assert sum(1 for d in a.accepted if d.startswith("4479444")) == 100


async def test_a_refusal_everywhere_tries_each_connector_once(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    counted: dict[str, CountingSmsc],
    run_daemon: Start,
) -> None:
    """Both connectors refuse at the route level: each is tried once (no ping-pong
    between them), and the message ends as an ordinary refusal does: `failed`, on its
    first attempt, with the last connector's code."""
    for sim in counted.values():
        sim.config.vendor_status, sim.config.vendor_ratio = ESME_RSYSERR, 1.0
    breaker = {"min_requests": 1000}  # keep both breakers closed: only the move is tested
    settings = failover_settings(redis_url, tmp_path, counted, breaker=breaker)
    client = Client.from_settings(redis, settings)
    to = recipients(20)
    ids = await client.send_many([{"to": t, "text": "x"} for t in to])
    run_daemon(settings)
    await settle(redis, ids, {"failed"}, 30)
    for sim in counted.values():
        assert sim.received == Counter({t[1:]: 1 for t in to})
    records = [r for r in await Ledger(redis, retention=60, events_maxlen=10).find(ids) if r]
    assert {r["connector"] for r in records} == {"b"}
    assert {r["attempts"] for r in records} == {1}
    assert {r["error_code"] for r in records} == {"ESME_RSYSERR"}


# -- 3. the npm SMPP peer as one of the pair ----------------------------------------------


async def test_failover_from_the_npm_peer_to_our_simulator(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    counted: dict[str, CountingSmsc],
    node_smsc: NodeSmsc,
    run_daemon: Start,
) -> None:
    b = counted["b"]
    data = pair_config(redis_url, tmp_path, counted)
    # Connector `a` is the npm peer (the counting simulator `a` stays idle).
    data["connectors"]["a"]["smpp"]["port"] = node_smsc.smpp_port
    settings = parse_settings(data, env={})
    client = Client.from_settings(redis, settings)
    ledger = Ledger(redis, retention=60, events_maxlen=10)
    first = await client.send_many([{"to": t, "text": "peer"} for t in recipients(100)])
    running = run_daemon(settings)
    await settle(redis, first, {"delivered"}, 30)
    submits = await node_smsc.submits()
    assert sorted(s["destination_addr"] for s in submits) == sorted(t[1:] for t in recipients(100))
    assert not b.received and not counted["a"].received

    # The peer goes away; what is sent from now on (at once: before `failover_after`
    # has passed, so some messages go to the dead connector first) moves to B.
    await node_smsc.stop()
    second = await client.send_many([{"to": t, "text": "sim"} for t in recipients(100, "+4479222")])
    await settle(redis, second, {"delivered"}, 30)
    assert connector(running, "a").state == "down"
    assert b.accepted == Counter({t[1:]: 1 for t in recipients(100, "+4479222")})
    records = [r for r in await ledger.find(second) if r]
    assert {r["connector"] for r in records} == {"b"}
    assert {r["attempts"] for r in records} == {1}
    assert await possible_duplicates(redis) == 0


# -- 4. no answer: the retry path, not another connector ----------------------------------


async def test_a_message_without_an_answer_is_not_resent_elsewhere_until_settled(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    counted: dict[str, CountingSmsc],
    run_daemon: Start,
) -> None:
    """The issue: "a message that may have gone out (no answer) is never re-sent on
    another connector until its first attempt is settled as for retries today". A
    takes every submit and never answers; the response time-out settles the attempt
    (a retry, counted as a possible duplicate); A's breaker opens on those time-outs,
    so the retry goes out over B."""
    a, b = counted["a"], counted["b"]
    a.config.drop_response_ratio = 1.0
    timeout = 0.5
    breaker = {"failure_ratio": 0.5, "min_requests": 3, "cooldown": 60}
    data = pair_config(redis_url, tmp_path, counted, breaker=breaker)
    data["connectors"]["a"]["smpp"]["response_timeout"] = timeout
    settings = parse_settings(data, env={})
    client = Client.from_settings(redis, settings)
    to = recipients(5)
    ids = await client.send_many([{"to": t, "text": "silent"} for t in to])
    run_daemon(settings)
    await settle(redis, ids, {"delivered"}, 30)

    assert not a.accepted  # A never answered anything
    records = {
        r["to"][1:]: r for r in await Ledger(redis, retention=60, events_maxlen=10).find(ids) if r
    }
    for destination, record in records.items():
        # Sent once to A, once to B: B got it only after the attempt at A was settled
        # (its retry recorded), and not before the response time-out.
        assert a.received[destination] == 1 and b.received[destination] == 1
        [at_a], [at_b] = a.received_at[destination], b.received_at[destination]
        assert at_b - at_a >= timeout
        [retry] = [h for h in record["history"] if h["status"] == "queued" and h["note"]]
        assert retry["connector"] == "a" and retried_after_no_answer(record), record
        assert at_b >= retry["at"]
        assert record["attempts"] == 2 and record["connector"] == "b"
    assert await possible_duplicates(redis) == len(to)
