"""Bad input at scale against a real `sms-router run` process: more than 10,000
malformed PDUs over thousands of connections, each answered as SMPP 3.4 says, while a
healthy client submits on the same server throughout; the daemon stays up, keeps no
connection, session or held part it should not, and its memory stays bounded.

The flood, in each round, all at once:
- bound sessions, each sending test_malformed's mix (unknown command ids, bodies cut
  short at every octet, bad TON/NPI, oversized fields, a second bind, sm_length past
  the body) and random junk submit_sm bodies, some near 64 KiB;
- stray responses (deliver_sm_resp, enquire_link_resp, generic_nack, ... for
  sequences never sent), which get no answer;
- binds with wrong passwords, unknown system_ids, over-long system_id or password;
- command_length below 16 or above 64 KiB (generic_nack ESME_RINVCMDLEN, closed);
- requests before bind (ESME_RINVBNDSTS; unknown ids generic_nack ESME_RINVCMDID);
- connections that close mid-PDU (in the header, in the body, bound or not, and
  bound with the first part of a long message held).

Memory: the daemon's VmRSS (/proc/PID/status) after a warm-up round, then after the
flood rounds; the growth must stay under `RSS_GROWTH_MB`. Run:
pytest -s tests/smpp_server/test_malformed_scale.py (figures printed).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from binds.smpp import pdu
from binds.smpp.pdu import HEADER
from router.daemon.daemon import health_key
from router.smpp_server import statuses as st
from router.store import keys
from sims.smscsim import SmscSimulator

from ..conftest import free_port, listening, wait_for
from ..daemon.test_process import start_daemon, write_config
from .conftest import door_config
from .raw import RawClient, bind_body, bound, message_id, submit_body
from .test_malformed import TO, malformed_cases

pytestmark = pytest.mark.slow

FLOOD, FLOOD_PW = "flood", "flood1"  # the bad clients' account (many binds allowed)
BOUND_SESSIONS = 6  # per round, each sending the whole malformed mix
JUNK_PER_SESSION = 300
STRAY_RESPONSES = 200  # per bound session
WRONG_BINDS = 600
BAD_LENGTHS = 200
EARLY_SESSIONS, EARLY_PER_SESSION = 10, 100
CUT_CONNECTIONS = 400
ROUNDS = 2  # flood rounds after the warm-up
CONCURRENT_CONNECTIONS = 50
# The daemon's memory after the warm-up round and after the flood rounds (~27,000 bad
# PDUs on ~2,400 connections; measured: +1.5 to +3.5 MB). A leaked session per
# connection (its Session, transport, buffers and timer: 10 KB or more) would add
# over 24 MB, a leaked frame or part per PDU (1 KB or more with its objects) over 27 MB.
RSS_GROWTH_MB = 20
# Answers to a submit_sm that a malformed body may get: the status naming what is wrong.
REFUSALS = {
    pdu.ESME_RINVMSGLEN,
    st.ESME_RINVSRCADR,
    st.ESME_RINVDSTADR,
    st.ESME_RINVSERTYP,
    st.ESME_RINVESMCLASS,
    st.ESME_RSUBMITFAIL,
    st.ESME_RINVSRCTON,
    st.ESME_RINVSRCNPI,
    st.ESME_RINVDSTTON,
    st.ESME_RINVDSTNPI,
    st.ESME_RINVSCHED,
    st.ESME_RINVEXPIRY,
    st.ESME_RINVOPTPARSTREAM,
    st.ESME_ROPTPARNOTALLWD,
    st.ESME_RINVPARLEN,
    st.ESME_RMISSINGOPTPARAM,
    st.ESME_RINVOPTPARAMVAL,
    st.ESME_RINVREGDLVFLG,
}
SUBMIT_RESP = pdu.SUBMIT_SM | pdu.RESPONSE
# Requests before bind: its response with ESME_RINVBNDSTS. (outbind and
# alert_notification have no response PDU: test_malformed covers them.)
EARLY = (pdu.SUBMIT_SM, pdu.DATA_SM, 0x03, 0x08, 0x07, 0x21, pdu.DELIVER_SM)
STRAY = (
    pdu.DELIVER_SM | pdu.RESPONSE,
    pdu.ENQUIRE_LINK | pdu.RESPONSE,
    pdu.GENERIC_NACK,
    pdu.SUBMIT_SM | pdu.RESPONSE,
    pdu.UNBIND | pdu.RESPONSE,
    pdu.DATA_SM | pdu.RESPONSE,
)


@dataclass
class Tally:
    """What the flood saw: PDUs answered as the spec says, by kind, and every wrong one."""

    answered: Counter[str] = field(default_factory=Counter)
    silent: Counter[str] = field(default_factory=Counter)  # sent, no answer is due
    good: int = 0  # well-formed PDUs the flood sends too (binds, unbinds), answered right
    connections: int = 0
    wrong: list[str] = field(default_factory=list)

    def check(
        self, kind: str, answer: pdu.Pdu | None, allowed: set[tuple[int, int]], bad: bool = True
    ) -> None:
        if answer is not None and (answer.command_id, answer.status) in allowed:
            if bad:
                self.answered[kind] += 1
            else:
                self.good += 1
        elif len(self.wrong) < 50:
            got = "closed" if answer is None else _name(answer)
            self.wrong.append(f"{kind}: {got}, expected one of {sorted(allowed)}")

    @property
    def total(self) -> int:
        return self.answered.total() + self.silent.total()


def _name(answer: pdu.Pdu) -> str:
    return f"0x{answer.command_id:08X} {pdu.status_name(answer.status)}"


def _junk(rng: random.Random, size: int) -> bytes:
    """A submit_sm body of random octets: a service_type and source that parse now and
    then, so the reading goes past the first field."""
    body = bytearray(rng.randbytes(size))
    if size > 12 and rng.random() < 0.5:
        body[0] = 0  # empty service_type
        body[1:3] = bytes((rng.randrange(8), rng.randrange(20)))
        if rng.random() < 0.5:
            body[3] = 0  # empty source_addr
    return bytes(body)


async def _bound_mix(port: int, seed: int, tally: Tally) -> None:
    """One bound session: the malformed mix, junk submits and stray responses, all
    written at once and read in any order; then a good submit and an unbind."""
    rng = random.Random(seed)
    client = await bound(port, FLOOD, FLOOD_PW)
    tally.connections += 1
    expected: dict[int, tuple[str, set[tuple[int, int]]]] = {}
    for command_id, body, allowed in malformed_cases(rng):
        expected[client.send(command_id, body)] = ("mix", allowed)
    junk_answers = {(SUBMIT_RESP, s) for s in REFUSALS} | {(pdu.GENERIC_NACK, pdu.ESME_RINVCMDLEN)}
    for n in range(JUNK_PER_SESSION):
        size = rng.randrange(60_000, 65_000) if n % 100 == 0 else rng.randrange(2048)
        expected[client.send(pdu.SUBMIT_SM, _junk(rng, size))] = ("junk", junk_answers)
    for _ in range(STRAY_RESPONSES):  # sequences far above any the server sent
        client.send(rng.choice(STRAY), sequence=rng.randrange(1 << 30, 1 << 31))
        tally.silent["stray response"] += 1
    while expected:
        answer = await client.read(30)
        if answer is None:
            tally.wrong.append(f"bound session closed with {len(expected)} unanswered")
            return
        if answer.sequence not in expected:
            tally.wrong.append(f"answer to a PDU not sent or not due an answer: {_name(answer)}")
            continue
        kind, allowed = expected.pop(answer.sequence)
        tally.check(kind, answer, allowed)
    after = submit_body(TO, b"after the mix", registered_delivery=0)
    good = await client.request(pdu.SUBMIT_SM, after)
    if good.status != 0:
        tally.wrong.append(f"bound session's good submit after the mix: {_name(good)}")
    unbound = await client.request(pdu.UNBIND)
    tally.check("unbind", unbound, {(pdu.UNBIND | pdu.RESPONSE, pdu.ESME_ROK)}, bad=False)
    await client.close()


async def _wrong_bind(port: int, n: int, tally: Tally) -> None:
    """A bind the server must refuse, and then close the connection."""
    client = await RawClient.connect(port)
    tally.connections += 1
    mode = (pdu.BIND_TRANSMITTER, pdu.BIND_RECEIVER, pdu.BIND_TRANSCEIVER)[n % 3]
    resp = mode | pdu.RESPONSE
    case = n % 5
    if case == 0:  # wrong password
        body, status = bind_body(FLOOD, f"bad{n % 1000}"), pdu.ESME_RBINDFAIL
    elif case == 1:  # unknown account
        body, status = bind_body(f"nobody{n % 1000}", "pw"), pdu.ESME_RBINDFAIL
    elif case == 2:  # another account's password
        body, status = bind_body("acme", FLOOD_PW), pdu.ESME_RBINDFAIL
    elif case == 3:  # system_id over 15 characters
        body, status = bind_body("x" * (16 + n % 40), "pw"), pdu.ESME_RINVSYSID
    else:  # password over 8 characters
        body, status = bind_body(FLOOD, "p" * (9 + n % 40)), pdu.ESME_RINVPASWD
    answer = await client.request(mode, body)
    tally.check("wrong bind", answer, {(resp, status)})
    if answer.body != b"":
        tally.wrong.append(f"a refused bind's response has a body: {answer.body!r}")
    if not await client.closed():
        tally.wrong.append("connection left open after a refused bind")


async def _bad_length(port: int, n: int, tally: Tally) -> None:
    """A command_length no frame can have: generic_nack naming the sequence, closed."""
    client = await RawClient.connect(port)
    tally.connections += 1
    rng = random.Random(n)
    sequence = rng.randrange(1, 1 << 31)
    length = rng.randrange(0, 16) if n % 2 else rng.randrange(65_537, 1 << 32)
    if n % 4 == 3:  # after a bind: the bound session is closed too
        await client.bind(FLOOD, FLOOD_PW)
    client.send_raw(HEADER.pack(length, pdu.SUBMIT_SM, 0, sequence) + rng.randbytes(20))
    answer = await client.read()
    tally.check("bad command_length", answer, {(pdu.GENERIC_NACK, pdu.ESME_RINVCMDLEN)})
    if answer is not None and answer.sequence != sequence:
        tally.wrong.append(f"bad command_length: nack names {answer.sequence}, not {sequence}")
    if not await client.closed():
        tally.wrong.append("connection left open after an unreadable command_length")


async def _before_bind(port: int, seed: int, tally: Tally) -> None:
    """Requests before bind, written at once on one connection."""
    rng = random.Random(seed)
    client = await RawClient.connect(port)
    tally.connections += 1
    expected: dict[int, set[tuple[int, int]]] = {}
    for n in range(EARLY_PER_SESSION):
        if n % 10 == 9:  # an unknown command id
            command_id = rng.randrange(0x300, 0x10000)
            allowed = {(pdu.GENERIC_NACK, pdu.ESME_RINVCMDID)}
        else:
            command_id = EARLY[n % len(EARLY)]
            allowed = {(command_id | pdu.RESPONSE, pdu.ESME_RINVBNDSTS)}
        expected[client.send(command_id, submit_body(TO, b"early"))] = allowed
    while expected:
        answer = await client.read()
        if answer is None:
            tally.wrong.append(f"closed before bind with {len(expected)} unanswered")
            return
        tally.check("before bind", answer, expected.pop(answer.sequence, set()))
    await client.close()


async def _cut(port: int, n: int, tally: Tally) -> None:
    """A connection closed mid-PDU: no answer is due; the server must forget it."""
    client = await RawClient.connect(port)
    tally.connections += 1
    rng = random.Random(n)
    whole = HEADER.pack(200, pdu.SUBMIT_SM, 0, 7) + submit_body(TO, b"x" * 150)
    case = n % 4
    if case == 0:  # in the header, unbound
        client.send_raw(whole[: rng.randrange(1, 16)])
    elif case == 1:  # in the body, unbound
        client.send_raw(whole[: rng.randrange(16, 100)])
    else:
        answer = await client.bind(FLOOD, FLOOD_PW)
        ok = {(pdu.BIND_TRANSCEIVER | pdu.RESPONSE, 0)}
        tally.check("bind before a cut", answer, ok, bad=False)
        if case == 2:  # in the body, bound
            client.send_raw(whole[: rng.randrange(16, 100)])
        else:  # bound, part 1 of 3 of a long message sent, then gone: the server
            # keeps the part until `reassembly_timeout`, then rejects the message
            udh = bytes((5, 0, 3, n % 256, 3, 1))
            body = submit_body(TO, udh + b"part one", esm_class=0x40, registered_delivery=0)
            client.send(pdu.SUBMIT_SM, body)
            await asyncio.sleep(0.01)  # read before the connection goes
    tally.silent["cut mid-PDU"] += 1
    await client.close()


async def _each(count: int, job: Callable[[int], Awaitable[None]]) -> None:
    """`job(0..count-1)`, at most CONCURRENT_CONNECTIONS at once."""
    free = asyncio.Semaphore(CONCURRENT_CONNECTIONS)

    async def one(n: int) -> None:
        async with free:
            await job(n)

    await asyncio.gather(*(one(n) for n in range(count)))


async def flood(port: int, tally: Tally, seed: int, scale: float = 1.0) -> None:
    """One round of every kind of bad input, all kinds at once."""

    def count(n: int) -> int:
        return max(1, int(n * scale))

    await asyncio.gather(
        _each(count(BOUND_SESSIONS), lambda n: _bound_mix(port, seed * 1000 + n, tally)),
        _each(count(WRONG_BINDS), lambda n: _wrong_bind(port, seed * 10_000 + n, tally)),
        _each(count(BAD_LENGTHS), lambda n: _bad_length(port, seed * 10_000 + n, tally)),
        _each(count(EARLY_SESSIONS), lambda n: _before_bind(port, seed * 1000 + n, tally)),
        _each(count(CUT_CONNECTIONS), lambda n: _cut(port, seed * 10_000 + n, tally)),
    )


@dataclass
class Healthy:
    """A well-behaved client submitting one message at a time while the flood goes on,
    in a process of its own (`python -m tests.smpp_server.test_malformed_scale PORT`;
    it stops when its stdin closes and prints what it saw as JSON), so its answer
    times are the server's, not this test's event loop, busy with the flood."""

    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, each submit's answer
    receipts: int = 0  # deliver_sm received (and answered) for its messages meanwhile
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, port: int) -> None:
        client = await bound(port)
        print("bound", flush=True)  # the test waits for this line
        n = 0
        while not self.stop.is_set():
            started = time.monotonic()
            answer = await client.call(pdu.SUBMIT_SM, submit_body(TO, b"healthy %d" % n))
            self.latencies.append(time.monotonic() - started)
            self.statuses[answer.status] += 1
            if answer.status == 0 and len(message_id(answer)) != 32:
                self.statuses[-1] += 1  # an OK without a job id
            n += 1
            await asyncio.sleep(0.005)
        self.receipts = len(client.delivered)
        await client.call(pdu.UNBIND)
        await client.close()

    @classmethod
    async def start(cls, port: int) -> asyncio.subprocess.Process:
        """The client's process, once it is bound and submitting."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.smpp_server.test_malformed_scale",
            str(port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line == b"bound\n", f"the healthy client did not bind: {line!r}"
        return proc

    @classmethod
    async def finish(cls, proc: asyncio.subprocess.Process) -> Healthy:
        out, _ = await asyncio.wait_for(proc.communicate(b""), 30)  # b"": stdin closed
        assert proc.returncode == 0, f"the healthy client failed: {out.decode()[-2000:]}"
        seen = json.loads(out.splitlines()[-1])  # what it saw: its last line
        statuses = Counter({int(k): v for k, v in seen["statuses"].items()})
        return cls(statuses, seen["latencies"], seen["receipts"])


async def _healthy_main(port: int) -> None:
    healthy = Healthy()
    task = asyncio.create_task(healthy.run(port))
    await asyncio.to_thread(sys.stdin.read)  # until the test closes our stdin
    healthy.stop.set()
    await task
    seen = {"statuses": healthy.statuses, "latencies": healthy.latencies}
    print(json.dumps({**seen, "receipts": healthy.receipts}))


def _percentiles(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    at = {name: ordered[int(q * (len(ordered) - 1))] for name, q in (("p50", 0.5), ("p99", 0.99))}
    at["max"] = ordered[-1]
    return ", ".join(f"{name} {value * 1000:.0f} ms" for name, value in at.items())


def rss_mb(pid: int) -> float:
    """VmRSS of process `pid`, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


@dataclass
class Daemon:
    proc: asyncio.subprocess.Process
    port: int
    log: Path
    instance: str


@pytest.fixture
async def daemon(
    redis: Redis, redis_url: str, smsc: SmscSimulator, tmp_path: Path
) -> AsyncIterator[Daemon]:
    """A real `sms-router run` with its SMPP server, on the simulator; stopped by pid."""
    port = free_port()
    data = door_config(redis_url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    data["smpp_server"]["listen"] = f"127.0.0.1:{port}"
    data["accounts"][FLOOD] = {"smpp_password": FLOOD_PW, "max_binds": 1000, "window": 10_000}
    config = write_config(tmp_path / "router.toml", data)
    log = tmp_path / "daemon.log"
    proc = await start_daemon(config, log)
    try:
        await wait_for(lambda: listening(port), 30, "the daemon's SMPP server listening")
        yield Daemon(proc, port, log, data["router"]["instance"])
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _none_due(redis: Redis, due: str) -> bool:
    return int(await redis.zcard(due)) == 0


async def _health(redis: Redis, instance: str) -> dict[str, Any]:
    raw = await redis.get(health_key(instance))
    return json.loads(raw) if raw else {}


async def test_ten_thousand_malformed_pdus_harm_no_one(daemon: Daemon, redis: Redis) -> None:
    pid = daemon.proc.pid
    good = await Healthy.start(daemon.port)
    started = time.monotonic()
    warm = Tally()
    await flood(daemon.port, warm, seed=1, scale=0.5)  # warm-up: every path taken once
    assert warm.wrong == [], warm.wrong
    rss_warm = rss_mb(pid)
    tally = Tally()
    after = []
    for n in range(ROUNDS):
        await flood(daemon.port, tally, seed=2 + n)
        after.append(rss_mb(pid))
    seconds = time.monotonic() - started
    healthy = await Healthy.finish(good)
    assert daemon.proc.returncode is None, daemon.log.read_text()[-3000:]
    # The server forgot every connection, session and held part of the flood.
    flood_end = time.time()

    async def settled() -> bool:
        health = await _health(redis, daemon.instance)
        server = health.get("smpp_server") or {}
        return bool(
            health.get("at", 0) > flood_end
            and server.get("connections") == 0
            and server.get("bound") == {}
            and server.get("held_parts") == 0
        )

    try:
        await wait_for(settled, 15, "health: no connection, session or held part left")
    except AssertionError:
        raise AssertionError(f"left behind: {await _health(redis, daemon.instance)}") from None
    # The long messages whose first part came before the connection went are decided
    # (rejected, incomplete) once `reassembly_timeout` passes: none is left waiting.
    due = keys.long_message_due(FLOOD)
    try:
        await wait_for(lambda: _none_due(redis, due), 20, "incomplete long messages decided")
    except AssertionError:
        waiting = await redis.zrange(due, 0, 4, withscores=True)
        raise AssertionError(
            f"{await redis.zcard(due)} long messages still due at {await redis.time()}: "
            f"{waiting}; daemon log: {daemon.log.read_text()[-2000:]}"
        ) from None
    log = daemon.log.read_text()
    growth = max(after) - rss_warm
    print(
        f"\nmalformed at scale: {tally.total} bad PDUs after a warm-up of {warm.total} "
        f"({dict(tally.answered)}; no answer due: {dict(tally.silent)}) on "
        f"{tally.connections} connections in {ROUNDS} rounds, {seconds:.1f} s in all; healthy "
        f"client {healthy.statuses.total()} submits {dict(healthy.statuses)}, answered in "
        f"{_percentiles(healthy.latencies)}, {healthy.receipts} receipts; daemon VmRSS "
        f"{rss_warm:.1f} MB after the warm-up, {', '.join(f'{r:.1f}' for r in after)} MB "
        f"after each round "
        f"(growth {growth:+.1f} MB, bound {RSS_GROWTH_MB})"
    )
    assert tally.wrong == [], tally.wrong
    assert tally.total >= 10_000 * ROUNDS
    assert set(healthy.statuses) == {0}, healthy.statuses
    assert healthy.statuses[0] >= 50, "the healthy client hardly submitted during the flood"
    errors = [line for line in log.splitlines() if '"level": "error"' in line]
    assert "PDU not handled" not in log, "a PDU raised in the server: see the daemon's log"
    assert errors == [], errors[:5]
    assert growth < RSS_GROWTH_MB
    daemon.proc.terminate()
    assert await asyncio.wait_for(daemon.proc.wait(), 30) == 0, log[-3000:]


NEVER_READ_CONNECTIONS = 12
# Each connection that never reads may keep what the server read from it but has not
# answered yet: the transport's high-water mark (64 KiB) plus one read's answers. The
# daemon measured +23 MB for 12 such connections with reading held at 256 KiB of
# answers (allocator churn of ~90 MB read included), +81 to +189 MB without.
NEVER_READ_GROWTH_MB = 48


# A client that never reads its answers could make the daemon (uvloop) queue megabytes
# of them per connection before it stops reading: uvloop checks the write buffer's
# high-water mark once per loop turn, after libuv has delivered up to 32 reads of
# 256 KiB each, so `pause_writing` comes after ~4-8 MB of answers are queued. Before
# bind too: enquire_link is answered to anyone who connects. The session holds reading
# once 256 KiB of answers wait to be written (`Session._hold_reading`).
async def test_clients_that_never_read_are_paused_not_buffered(
    daemon: Daemon, redis: Redis
) -> None:
    """Connections that write enquire_link after enquire_link before binding and never
    read the answers: the server stops reading each once its answers back up, so the
    daemon's memory stays bounded whatever they send, and a healthy client on the
    same server is served meanwhile."""
    pid = daemon.proc.pid
    good = await Healthy.start(daemon.port)
    await asyncio.sleep(0.5)
    rss_before = rss_mb(pid)
    chunk = b"".join(pdu.Pdu(pdu.ENQUIRE_LINK, 0, n + 1, b"").encode() for n in range(4096))

    async def never_read() -> tuple[RawClient, int]:
        client = await RawClient.connect(daemon.port)  # not bound
        written = 0
        while True:  # until the server has stopped reading for two seconds
            client.send_raw(chunk)
            try:
                await asyncio.wait_for(client.writer.drain(), 2)
            except TimeoutError:
                return client, written
            written += len(chunk)
            assert written < 1 << 30, "the server read 1 GiB without stopping: not paused"

    clients = await asyncio.gather(*(never_read() for _ in range(NEVER_READ_CONNECTIONS)))
    rss_paused = rss_mb(pid)
    healthy = await Healthy.finish(good)
    for client, _ in clients:
        client.writer.transport.abort()
    written = sum(w for _, w in clients)
    growth = rss_paused - rss_before
    print(
        f"\nnever read: {NEVER_READ_CONNECTIONS} connections wrote {written / 1e6:.1f} MB "
        f"of enquire_link before the server stopped reading them; daemon VmRSS "
        f"{rss_before:.1f} -> {rss_paused:.1f} MB ({growth:+.1f}, bound "
        f"{NEVER_READ_GROWTH_MB}); healthy client {healthy.statuses.total()} submits "
        f"{dict(healthy.statuses)}, answered in {_percentiles(healthy.latencies)}"
    )
    assert set(healthy.statuses) == {0}, healthy.statuses
    assert healthy.statuses[0] >= 20

    async def forgotten() -> bool:
        health = await _health(redis, daemon.instance)
        server = health.get("smpp_server") or {}
        return bool(health.get("at", 0) > time.time() - 1 and server.get("connections") == 0)

    await wait_for(forgotten, 15, "the paused connections forgotten once closed")
    assert daemon.proc.returncode is None
    assert all(w >= len(chunk) for _, w in clients), "a connection was never read at all"
    assert growth < NEVER_READ_GROWTH_MB


if __name__ == "__main__":
    asyncio.run(_healthy_main(int(sys.argv[1])))
