"""query_sm and cancel_sm against a real daemon on the SMSC simulator: the ledger's
answer about the account's own messages, and a cancelled message that never reaches
the SMSC."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from binds.smpp import pdu
from binds.smpp.pdu import Pdu
from router.smpp_server.queries import (
    CANCEL_SM,
    ESME_RCANCELFAIL,
    ESME_RINVMSGID,
    QUERY_SM,
    Queries,
    read_query_sm,
)
from router.store import keys
from router.store.ledger import Ledger
from sims.smscsim import SmscSimulator

from ..conftest import wait_for
from .conftest import MakeDoor
from .raw import RawClient, bound, message_id, submit_body

DELIVERED_TO = "+447911123456"
LATER_TO = "+447911123457"  # scheduled an hour ahead
SOON_TO = "+447911123458"  # scheduled 4 seconds ahead, cancelled before


def query_body(job_id: str, source: str = "") -> bytes:
    return job_id.encode() + b"\0" + bytes((0, 0)) + source.encode() + b"\0"


def cancel_body(job_id: str) -> bytes:
    address = bytes((0, 0)) + b"\0"
    return b"\0" + job_id.encode() + b"\0" + address + address


def read_resp(answer: Pdu) -> tuple[str, str, int, int]:
    """(message_id, final_date, message_state, error_code) of a query_sm_resp."""
    job_id, index = pdu.read_c_string(answer.body, 0, "message_id", 65)
    final_date, index = pdu.read_c_string(answer.body, index, "final_date", 17)
    assert len(answer.body) == index + 2, answer.body
    return job_id, final_date, answer.body[index], answer.body[index + 1]


async def submit(client: RawClient, to: str, schedule: str = "") -> str:
    answer = await client.request(
        pdu.SUBMIT_SM,
        submit_body(to, b"query me", registered_delivery=0, schedule_delivery_time=schedule),
    )
    assert answer.status == 0, pdu.status_name(answer.status)
    return message_id(answer)


async def status_of(ledger: Ledger, job_id: str) -> dict[str, Any]:
    record = (await ledger.find([job_id]))[0]
    assert record is not None
    return record


async def test_query_and_cancel(make_door: MakeDoor, smsc: SmscSimulator) -> None:
    door = await make_door(daemon=True)
    ledger = Ledger(door.redis, retention=3600, events_maxlen=1000)
    acme = await bound(door.port)
    delivered = await submit(acme, DELIVERED_TO)
    later = await submit(acme, LATER_TO, "000000010000000R")
    soon = await submit(acme, SOON_TO, "000000000004000R")

    async def statuses(*wanted: tuple[str, str]) -> bool:
        records = await ledger.find([j for j, _s in wanted])
        return [r["status"] if r else None for r in records] == [s for _j, s in wanted]

    await wait_for(
        lambda: statuses((delivered, "delivered"), (later, "scheduled"), (soon, "scheduled")),
        20,
        "one delivered, two scheduled",
    )
    # A delivered message: DELIVERED, with the time it became so.
    answer = await acme.request(QUERY_SM, query_body(delivered, "ACME"))
    assert (answer.command_id, answer.status) == (QUERY_SM | pdu.RESPONSE, 0)
    job_id, final_date, state, error = read_resp(answer)
    assert (job_id, state, error) == (delivered, 2, 0)
    assert len(final_date) == 16 and final_date.endswith("000+"), final_date
    # A scheduled one: ENROUTE, no final date yet.
    assert read_resp(await acme.request(QUERY_SM, query_body(later)))[1:] == ("", 1, 0)
    # Another account's ids, and an unknown one: the same answer (no probing).
    other = await bound(door.port, "parts", "parts1", "transmitter")
    for command_id, request in (
        (QUERY_SM, query_body(delivered)),
        (CANCEL_SM, cancel_body(later)),
        (QUERY_SM, query_body("nosuchjob")),
    ):
        answer = await other.request(command_id, request)
        assert (answer.command_id, answer.status) == (command_id | pdu.RESPONSE, ESME_RINVMSGID)
    unknown = await acme.request(CANCEL_SM, cancel_body("nosuchjob"))
    assert unknown.status == ESME_RINVMSGID
    # Cancel both scheduled ones: REJECTED, error_code `cancelled`, final date set.
    for job_id in (soon, later):
        answer = await acme.request(CANCEL_SM, cancel_body(job_id))
        assert (answer.command_id, answer.status) == (CANCEL_SM | pdu.RESPONSE, 0)
        _id, final_date, state, _error = read_resp(await acme.request(QUERY_SM, query_body(job_id)))
        assert (state, len(final_date)) == (8, 16)
        record = await status_of(ledger, job_id)
        assert (record["status"], record["error_code"]) == ("rejected", "cancelled")
        assert "cancel_sm" in record["history"][-1]["note"]
    # Already final (cancelled, delivered): ESME_RCANCELFAIL.
    for job_id in (later, delivered):
        answer = await acme.request(CANCEL_SM, cancel_body(job_id))
        assert answer.status == ESME_RCANCELFAIL, pdu.status_name(answer.status)
    # The cancelled message came due: the worker dropped it; the SMSC never saw it.
    schedule = keys.schedule("sms")

    async def taken_from_schedule() -> bool:
        entries: list[bytes] = await door.redis.zrange(schedule, 0, -1)
        return not any(soon.encode() in entry for entry in entries)

    await wait_for(taken_from_schedule, 20, "the cancelled message came due")

    async def work_stream_empty() -> bool:
        return int(await door.redis.xlen(keys.queue("sms"))) == 0

    await wait_for(work_stream_empty, 20, "its entry was read and dropped")
    await asyncio.sleep(0.5)
    sent_to = [s["destination"] for s in smsc.submits]
    assert DELIVERED_TO.lstrip("+") in sent_to
    assert SOON_TO.lstrip("+") not in sent_to and LATER_TO.lstrip("+") not in sent_to
    assert (await status_of(ledger, soon))["status"] == "rejected"
    await acme.close()
    await other.close()


async def test_query_before_bind_and_unreadable(make_door: MakeDoor) -> None:
    door = await make_door()
    client = await RawClient.connect(door.port)
    answer = await client.request(QUERY_SM, query_body("x"))
    assert (answer.command_id, answer.status) == (QUERY_SM | pdu.RESPONSE, pdu.ESME_RINVBNDSTS)
    assert (await client.bind("acme", "secret1")).status == 0
    cut = await client.request(QUERY_SM, b"no terminator")
    assert (cut.command_id, cut.status) == (pdu.GENERIC_NACK, pdu.ESME_RINVCMDLEN)
    # A receiver may query too (the account's messages, whatever the session's mode).
    receiver = await bound(door.port, mode="receiver")
    answer = await receiver.request(QUERY_SM, query_body("nosuchjob"))
    assert answer.status == ESME_RINVMSGID
    assert read_query_sm(query_body("abc", "ACME")).source_addr == "ACME"
    await client.close()
    await receiver.close()


async def test_cancel_does_not_overwrite_a_sending_started_after_the_read(redis: Redis) -> None:
    """The record went to `sending` after cancel_sm read it `queued`: the WATCHed step
    does not happen, and the record is left to the worker."""
    queries = Queries(redis, Ledger(redis, retention=3600, events_maxlen=1000), lambda: ["sms"])
    record: dict[str | bytes, str] = {
        "status": "sending",
        "owner": "1-0",
        "account": "acme",
        "to": DELIVERED_TO,
    }
    await redis.hset(keys.record("sms", "racing"), mapping=record)
    stale = {**record, "status": "queued", "profile": "sms"}
    result = await queries._reject("racing", stale)
    assert (result.verdict, result.previous) == ("done", "sending")
    assert await redis.hget(keys.record("sms", "racing"), "status") == b"sending"
    # Still queued when the step runs: rejected, cancelled.
    await redis.hset(keys.record("sms", "racing"), "status", "queued")
    assert (await queries._reject("racing", stale)).ok
    stored = await redis.hmget(keys.record("sms", "racing"), ["status", "error_code"])
    assert stored == [b"rejected", b"cancelled"]
