"""Kannel 1.4.5 in front of sms-router: an application that speaks Kannel's sendsms
keeps its Kannel, and Kannel's SMSC is sms-router's SMPP server.

sendsms (HTTP) -> Kannel's smsbox -> bearerbox -> SMPP (one transceiver, or a
transmitter and a receiver) -> a real `sms-router run` process (its [smpp_server]) ->
our SMSC simulator, and the delivery receipts back: simulator -> sms-router ->
deliver_sm to Kannel -> Kannel's dlr-url (a real aiohttp server here). Then both sides
idle past their enquire_link interval, and the link still takes a message.

Messages: GSM ones, one UCS2 (coding=2, UTF-8), one long message that Kannel splits
itself (UDH, 8-bit reference) and sms-router puts together again into one job, one
with a validity (Kannel writes validity_period as an absolute time), a flash one
(mclass=0: data_coding 0xF0; sms-router sends it on as a plain GSM message, class 0
is not kept) and a deferred one (schedule_delivery_time, absolute: the job waits in
the schedule).

Long messages: Kannel 1.4.5 asks for a receipt on the first part only
(registered_delivery 0x11 on part 1, 0 on the others, as its PDU log shows) and keeps
one DLR entry, under part 1's submit_sm_resp message_id. sms-router answers every part
with the one job id and sends one receipt for the whole message under that id, so
Kannel matches it and calls the dlr-url once with %d = 1.

Skipped only when Debian's `kannel` package is missing; `make test` installs it.
Run: pytest -s tests/smpp_server/test_kannel_front.py (figures printed).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from binds.smpp import pdu
from router.store import keys
from router.store.ledger import Ledger
from sims.smscsim import SmscSimulator

from ..conftest import free_port, listening, serve_app, wait_for
from ..daemon.test_process import start_daemon, write_config
from .conftest import MakeDoor, door_config
from .kannel import Kannel, SmscLink, installed
from .raw import bound, message_id, submit_body

needs_kannel = pytest.mark.skipif(
    not installed(),
    reason="Kannel is not installed (/usr/sbin/bearerbox missing): `make kannel` "
    "installs Debian's package (root or sudo); `make test` does it first",
)

ACCOUNT, PASSWORD = "gateway", "gw-pw1"
TO = "+447911123456"
SENDER = "+16501112345"  # one of the profile's numbers (door_config's NUMBERS)
GSM_COUNT = 95
UCS2_TEXT = "Grüße ✓ Привет 你好"
LONG_TEXT = " ".join(f"part-of-a-long-message-{n:03d}" for n in range(14))  # 3 segments
# Kannel's placeholders: %d DLR type, %p the message's destination, %P its sender,
# %A the SMSC's receipt text, %i Kannel's smsc-id, %F the SMSC's message id (the job id).
DLR_QUERY = "type=%d&to=%p&from=%P&reply=%A&smsc=%i&id=%F"
DELIVERED, SMSC_ACCEPTED = "1", "8"  # Kannel's DLR types
# sms-router asks enquire_link after KEEPALIVE idle seconds; Kannel every 2 * KEEPALIVE
# seconds whatever the traffic (so the server's session is idle in between).
KEEPALIVE = 1


@dataclass
class Sent:
    n: int
    to: str
    text: str
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class DlrUrl:
    """The application's dlr-url: records every GET Kannel makes, by message number."""

    url: str = ""
    got: dict[int, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))

    async def handle(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.got[int(query.pop("n"))].append(query)
        return web.Response(text="ok")

    def of_type(self, kind: str) -> dict[int, list[dict[str, str]]]:
        found: dict[int, list[dict[str, str]]] = {}
        for n, reports in self.got.items():
            matching = [r for r in reports if r.get("type") == kind]
            if matching:
                found[n] = matching
        return found


@pytest.fixture
async def dlr_url() -> AsyncIterator[DlrUrl]:
    recorder = DlrUrl()
    app = web.Application()
    app.router.add_get("/dlr", recorder.handle)
    runner, base = await serve_app(app)
    recorder.url = f"{base}/dlr"
    try:
        yield recorder
    finally:
        await runner.cleanup()


@dataclass
class Front:
    kannel: Kannel
    port: int  # sms-router's SMPP server
    log: Path  # the daemon's


@pytest.fixture(params=["transceiver", "transmitter+receiver"])
async def front(
    request: pytest.FixtureRequest,
    redis: Redis,
    redis_url: str,
    smsc: SmscSimulator,
    tmp_path: Path,
) -> AsyncIterator[Front]:
    """A real `sms-router run` with its SMPP server on the simulator, and Kannel bound
    to it (one transceiver, or a transmitter and a receiver); both stopped by process
    id whatever the test did. Both sides ask enquire_link (KEEPALIVE)."""
    port = free_port()
    data = door_config(redis_url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    data["smpp_server"]["listen"] = f"127.0.0.1:{port}"
    data["smpp_server"]["enquire_link"] = KEEPALIVE
    data["accounts"][ACCOUNT] = {"smpp_password": PASSWORD, "window": 100, "max_binds": 2}
    config = write_config(tmp_path / "router.toml", data)
    log = tmp_path / "daemon.log"
    daemon = await start_daemon(config, log)
    link = SmscLink(
        port,
        ACCOUNT,
        PASSWORD,
        transceiver=request.param == "transceiver",
        enquire_link=2 * KEEPALIVE,
    )
    kannel = Kannel(tmp_path / "kannel", link)
    try:
        await wait_for(lambda: listening(port), 30, "sms-router's SMPP server listening")
        await kannel.start()
        yield Front(kannel, port, log)
    finally:
        kannel.stop()
        if daemon.returncode is None:
            daemon.terminate()
            try:
                await asyncio.wait_for(daemon.wait(), 30)
            except TimeoutError:
                daemon.kill()
                await daemon.wait()


def _messages() -> list[Sent]:
    """GSM ones, then the special ones, each to its own number."""
    sent = [Sent(n, f"+44791110{n:04d}", f"gsm message {n} via Kannel") for n in range(GSM_COUNT)]
    special = [
        (UCS2_TEXT, {"coding": "2", "charset": "UTF-8"}),
        (LONG_TEXT, {}),
        ("valid for 30 minutes", {"validity": "30"}),  # validity_period, absolute
        ("a flash message", {"mclass": "0"}),  # data_coding 0xF0: GSM, class 0
        ("sent in 10 minutes", {"deferred": "10"}),  # schedule_delivery_time, absolute
    ]
    for text, params in special:
        n = len(sent)
        sent.append(Sent(n, f"+44791110{n:04d}", text, params))
    return sent


def _kannel_pdus(log: str) -> Counter[str]:
    """The PDUs Kannel's SMPP log (level 0) shows, by direction and type: "sent
    submit_sm", "got enquire_link", ..."""
    seen: Counter[str] = Counter()
    direction = ""
    for line in log.splitlines():
        if "Got PDU:" in line:
            direction = "got"
        elif "Sending PDU:" in line or "Sending enquire link:" in line:
            direction = "sent"
        elif "type_name:" in line and direction:
            seen[f"{direction} {line.rsplit(maxsplit=1)[-1]}"] += 1
            direction = ""
    return seen


async def _send_all(kannel: Kannel, messages: list[Sent], dlr_base: str) -> list[str]:
    """Every message through sendsms (20 at a time); the answers that were not 202."""
    free = asyncio.Semaphore(20)
    refused: list[str] = []

    async def one(http: aiohttp.ClientSession, m: Sent) -> None:
        async with free:
            status, body = await kannel.sendsms(
                http,
                to=m.to,
                text=m.text,
                **{"from": SENDER},
                **{"dlr-mask": "31", "dlr-url": f"{dlr_base}?n={m.n}&{DLR_QUERY}"},
                **m.params,
            )
            if status != 202:
                refused.append(f"message {m.n}: {status} {body}")

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(one(http, m) for m in messages))
    return refused


@needs_kannel
@pytest.mark.slow  # starts sms-router, bearerbox and smsbox
async def test_kannel_sends_through_sms_router_and_gets_its_receipts(
    front: Front, dlr_url: DlrUrl, smsc: SmscSimulator, redis: Redis
) -> None:
    kannel = front.kannel
    messages = _messages()
    started = time.monotonic()
    refused = await _send_all(kannel, messages, dlr_url.url)
    assert refused == [], refused

    sent_at = time.time()
    deferred = [m for m in messages if "deferred" in m.params]
    due = [m for m in messages if m not in deferred]

    def all_delivered() -> bool:
        return len(dlr_url.of_type(DELIVERED)) == len(due)

    try:
        await wait_for(all_delivered, 40, "a delivered report (%d = 1) for every message")
    except AssertionError:
        missing = sorted({m.n for m in due} - set(dlr_url.of_type(DELIVERED)))
        got = {n: dlr_url.got.get(n) for n in missing}
        raise AssertionError(
            f"no delivered report for messages {missing}; their reports: {got}\n"
            f"{await kannel.status()}\n{kannel.logs()}\n--- daemon\n"
            f"{front.log.read_text()[-3000:]}"
        ) from None
    seconds = time.monotonic() - started
    delivered = dlr_url.of_type(DELIVERED)
    assert set(delivered) == {m.n for m in due}, "a report delivered for the deferred one"
    ids: dict[int, str] = {}
    for m in due:
        (report,) = delivered[m.n]  # exactly one final report per message
        assert report["to"] in (m.to, m.to.lstrip("+")), report
        assert report["from"].lstrip("+") == SENDER.lstrip("+"), report
        assert report["smsc"] == "router", report
        assert "stat:DELIVRD" in report["reply"], report
        ids[m.n] = report["id"]
    # Kannel's own "accepted by the SMSC" report (%d = 8), from the submit_sm_resp: one
    # per message (the long one's once all its parts were answered), the deferred one's
    # too, all carrying the job id the receipt names.
    accepted = dlr_url.of_type(SMSC_ACCEPTED)
    assert {n: len(r) for n, r in accepted.items()} == {m.n: 1 for m in messages}
    assert all(accepted[n][0]["id"] == job_id for n, job_id in ids.items())
    for m in deferred:
        ids[m.n] = accepted[m.n][0]["id"]
    assert len(set(ids.values())) == len(messages), "one job id reported for two messages"
    # Each message is one record with the text the application sent: delivered, the
    # deferred one scheduled for when Kannel said.
    ledger = Ledger(redis, retention=3600, events_maxlen=1000)
    records = await ledger.find([ids[m.n] for m in messages])
    for m, record in zip(messages, records, strict=True):
        assert record is not None, f"message {m.n}: no record {ids[m.n]}"
        status = "scheduled" if m in deferred else "delivered"
        assert (record["status"], record["text"], record["to"]) == (status, m.text, m.to)
        assert record["account"] == ACCOUNT
    # The deferred one waits in the profile's schedule for Kannel's time: 10 minutes on.
    schedule = await redis.zrange(keys.schedule("sms"), 0, -1, withscores=True)
    assert len(schedule) == len(deferred) == 1
    wait = float(schedule[0][1]) - sent_at
    assert 540 < wait < 660, f"scheduled {wait:.0f} s on, not 600"
    # And the SMSC took each once (the deferred one not yet): one segment each, three
    # for the long one.
    took = Counter(submit["destination"] for submit in smsc.submits)
    assert dict(took) == {m.to.lstrip("+"): 3 if m.text == LONG_TEXT else 1 for m in due}
    # Idle: both sides ask enquire_link and answer it; the link stays up (no bind
    # again) and takes the next message.
    await asyncio.sleep(4 * KEEPALIVE + 0.5)
    last = Sent(len(messages), "+447911199999", "after the keep-alives")
    assert await _send_all(kannel, [last], dlr_url.url) == []
    await wait_for(lambda: last.n in dlr_url.of_type(DELIVERED), 20, "the last one delivered")
    log = front.log.read_text()
    bound_as = sorted(
        json.loads(line)["mode"] for line in log.splitlines() if '"client bound"' in line
    )
    expected = ["transceiver"] if kannel.smsc.transceiver else ["receiver", "transmitter"]
    assert bound_as == expected, f"Kannel bound as {bound_as}: the link broke and came back?"
    assert "enquire_link unanswered" not in log
    pdus = _kannel_pdus((kannel.run / "smsc.log").read_text())
    assert pdus["got enquire_link"] >= 1, f"sms-router never asked enquire_link: {pdus}"
    assert pdus["sent enquire_link_resp"] >= 1, f"Kannel never answered ours: {pdus}"
    assert pdus["sent enquire_link"] >= 1, f"Kannel never asked enquire_link: {pdus}"
    assert pdus["got enquire_link_resp"] >= 1, f"sms-router never answered Kannel's: {pdus}"
    print(
        f"\nKannel in front: {len(messages)} messages ({GSM_COUNT} GSM, 1 UCS2, 1 long in 3 "
        f"parts, validity, flash, deferred) sendsms -> Kannel -> sms-router -> SMSC, "
        f"delivered reports back at the dlr-url for the {len(due)} due in {seconds:.1f} s; "
        f"SMSC-accepted reports (%d = 8) for {len(accepted)}; dlr-url GETs "
        f"{sum(len(r) for r in dlr_url.got.values())}"
    )


# Which part of a long message asks for the receipt (registered_delivery) differs among
# clients: Kannel 1.4.5 asks on the first part only, others on every part or on the last.
# Whichever it is, the message gets one receipt, under its one job id.
@pytest.mark.parametrize(
    "asked",
    [
        pytest.param((1, 0, 0), id="first-part"),
        pytest.param((1, 1, 1), id="every-part"),
        pytest.param((0, 0, 1), id="last-part"),
        # 0x10 asks for intermediate notifications only: the receipt is the last part's
        pytest.param((0x10, 0, 1), id="intermediate-then-last"),
    ],
)
async def test_a_long_message_gets_one_receipt_whichever_part_asks(
    make_door: MakeDoor, asked: tuple[int, ...]
) -> None:
    door = await make_door(daemon=True)
    client = await bound(door.port)
    sequences = []
    for seq, registered in enumerate(asked, start=1):
        udh = bytes((5, 0, 3, 42, len(asked), seq))
        body = submit_body(
            TO, udh + b"part %d" % seq, esm_class=0x40, registered_delivery=registered
        )
        sequences.append(client.send(pdu.SUBMIT_SM, body))
    ids = set()
    for _ in sequences:
        answer = await client.read()
        assert answer is not None and answer.status == 0
        ids.add(message_id(answer))
    (job_id,) = ids
    receipts: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not receipts:
        try:
            got = await client.read(1)
        except TimeoutError:
            continue
        assert got is not None, "connection closed"
        if got.command_id == pdu.DELIVER_SM:
            client.send(pdu.DELIVER_SM | pdu.RESPONSE, b"\0", sequence=got.sequence)
            receipts.append(pdu.decode_short_message(got.body).short_message.decode())
        elif got.command_id == pdu.ENQUIRE_LINK:
            client.send(pdu.ENQUIRE_LINK | pdu.RESPONSE, sequence=got.sequence)
    await client.close()
    assert len(receipts) == 1, f"receipts for {job_id}: {receipts}"
    assert receipts[0].startswith(f"id:{job_id} ") and "stat:DELIVRD" in receipts[0]
