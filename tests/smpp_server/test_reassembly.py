"""Long messages from SMPP clients put together in Redis (router/smpp_server/reassembly.py):
the parts of one message over sessions of two server instances on one Redis (8-bit
and 16-bit UDH references, SAR), each part answered with the message's job id once
stored; a part sent again gets the same id; an instance stopped between parts and a
new one completing the message; a message left complete and not enqueued (its
instance died) enqueued by another instance's sweeper; an incomplete message
recorded rejected after the time-out with its REJECTD receipt and query_sm answer; a
message refused once whole (the quota) rejected the same way; parts refused at the
door storing nothing; and one message over two instances delivered through a daemon
to the SMSC simulator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis

from binds.smpp import pdu
from binds.smpp.pdu import Pdu, decode_short_message
from router.config import parse_settings
from router.smpp_server import SmppServer
from router.smpp_server import statuses as st
from router.smpp_server.reassembly import Reassembly, pack_part
from router.smpp_server.submit import Part
from router.store import keys, scripts
from router.store.ledger import Ledger
from router.store.outages import REDIS_ERRORS, RedisOutages
from sims.smscsim import SmscSimulator

from ..conftest import RedisServer, free_port, wait_for
from .conftest import Door, MakeDoor, door_config
from .raw import RawClient, bound, message_id, submit_body

TO = "+447911123456"
SAR = (pdu.TAG_SAR_MSG_REF_NUM, pdu.TAG_SAR_TOTAL_SEGMENTS, pdu.TAG_SAR_SEGMENT_SEQNUM)
QUERY_SM = 0x00000003
REJECTED_STATE = 8


def part_body(kind: str, reference: int, total: int, seq: int, text: bytes, **fields: Any) -> bytes:
    """A submit_sm body of part `seq` of `total`, concatenated the `kind` way."""
    if kind == "sar":
        values = (struct.pack("!H", reference), bytes((total,)), bytes((seq,)))
        return submit_body(TO, text, tlvs=dict(zip(SAR, values, strict=True)), **fields)
    if kind == "udh8":
        header = bytes((5, 0, 3, reference & 0xFF, total, seq))
    else:
        header = bytes((6, 8, 4, reference >> 8, reference & 0xFF, total, seq))
    return submit_body(TO, header + text, esm_class=0x40, **fields)


async def answer_of(client: RawClient, sequence: int) -> Pdu:
    """The response to `sequence` (answering what the server sends meanwhile)."""
    while True:
        got = await client.read()
        assert got is not None, "closed before the answer"
        if got.command_id in (pdu.DELIVER_SM, pdu.ENQUIRE_LINK):
            client.send(got.command_id | pdu.RESPONSE, sequence=got.sequence)
            continue
        if got.sequence == sequence:
            return got


async def submit_part(client: RawClient, body: bytes) -> str:
    """Send one part; its message id (asserting ESME_ROK)."""
    answer = await answer_of(client, client.send(pdu.SUBMIT_SM, body))
    assert answer.status == pdu.ESME_ROK, pdu.status_name(answer.status)
    return message_id(answer)


async def queued(redis: Redis) -> list[dict[str, Any]]:
    """The jobs on profile `sms`'s work stream."""
    entries = await redis.xrange(keys.queue("sms"))
    return [msgpack.unpackb(fields[b"job"]) for _id, fields in entries]


async def parts_keys(redis: Redis) -> list[bytes]:
    return sorted(await redis.keys("sms:{acct:*}:parts:*"))


def ledger_of(door: Door) -> Ledger:
    return door.server.context.intake.client.ledger


async def query_state(client: RawClient, job_id: str) -> tuple[int, int]:
    """(command_status, message_state) of a query_sm for `job_id`."""
    body = job_id.encode() + b"\0" + bytes((0, 0)) + b"\0"
    answer = await answer_of(client, client.send(QUERY_SM, body))
    return answer.status, answer.body[-2] if answer.status == 0 else -1


@pytest.mark.parametrize("kind", ["udh8", "udh16", "sar"])
async def test_parts_over_two_instances_are_one_message(make_door: MakeDoor, kind: str) -> None:
    one, two = await make_door(), await make_door()
    first, second, third = await bound(one.port), await bound(two.port), await bound(one.port)
    reference = 0x1234 if kind != "udh8" else 0x34
    ids = [
        await submit_part(first, part_body(kind, reference, 3, 1, b"one ")),
        await submit_part(second, part_body(kind, reference, 3, 3, b"three")),
        await submit_part(third, part_body(kind, reference, 3, 2, b"two ")),
    ]
    assert len(set(ids)) == 1, ids

    async def enqueued() -> bool:
        return len(await queued(one.redis)) == 1

    await wait_for(enqueued, 5, "the message enqueued")
    (job,) = await queued(one.redis)
    assert (job["id"], job["text"], job["to"]) == (ids[0], "one two three", TO)
    assert job["meta"] == {"smpp_registered_delivery": 1}
    # Decided: the parts are gone, the id stays a while for parts sent again.
    (group,) = await parts_keys(one.redis)
    assert sorted(await one.redis.hkeys(group)) == [b"complete", b"done", b"first", b"id", b"n",
                                                    b"total"]  # fmt: skip
    assert await one.redis.zcard(keys.long_message_due("acme")) == 0
    for client in (first, second, third):
        await client.close()


async def test_a_character_cut_between_parts_on_two_instances(make_door: MakeDoor) -> None:
    """UCS2 'é' split between the two parts' octets comes out whole."""
    one, two = await make_door(), await make_door()
    a, b = await bound(one.port), await bound(two.port)
    ids = [
        await submit_part(a, part_body("udh8", 9, 2, 1, b"\x00h\x00", data_coding=8)),
        await submit_part(b, part_body("udh8", 9, 2, 2, b"\xe9", data_coding=8)),
    ]
    assert ids[0] == ids[1]

    async def enqueued() -> bool:
        return len(await queued(one.redis)) == 1

    await wait_for(enqueued, 5, "the message enqueued")
    assert (await queued(one.redis))[0]["text"] == "hé"
    await a.close()
    await b.close()


async def test_a_part_sent_again_gets_the_same_id(make_door: MakeDoor) -> None:
    one, two = await make_door(), await make_door()
    a, b = await bound(one.port), await bound(two.port)
    first = await submit_part(a, part_body("sar", 300, 2, 1, b"A"))
    again = await submit_part(b, part_body("sar", 300, 2, 1, b"A"))  # the client timed out
    assert again == first
    assert await queued(one.redis) == []  # one part, counted once
    assert await submit_part(a, part_body("sar", 300, 2, 2, b"B")) == first

    async def enqueued() -> bool:
        return len(await queued(one.redis)) == 1

    await wait_for(enqueued, 5, "the message enqueued")
    # After the message was enqueued too: the same id, nothing enqueued again.
    assert await submit_part(b, part_body("sar", 300, 2, 2, b"B")) == first
    await asyncio.sleep(0.2)
    assert [(j["id"], j["text"]) for j in await queued(one.redis)] == [(first, "AB")]
    await a.close()
    await b.close()


async def test_an_instance_stopped_between_parts(make_door: MakeDoor) -> None:
    """The first part's instance stops (its memory gone); a new instance on the same
    Redis takes the second part and completes the message under the first's id."""
    old = await make_door()
    client = await bound(old.port)
    first = await submit_part(client, part_body("udh16", 0xBEEF, 2, 1, b"before "))
    await old.server.stop(grace=1)
    await client.close()
    new = await make_door()
    client = await bound(new.port)
    assert await submit_part(client, part_body("udh16", 0xBEEF, 2, 2, b"after")) == first

    async def enqueued() -> bool:
        return len(await queued(new.redis)) == 1

    await wait_for(enqueued, 5, "the message enqueued")
    assert [(j["id"], j["text"]) for j in await queued(new.redis)] == [(first, "before after")]
    await client.close()


async def test_a_complete_message_left_by_a_dead_instance_is_enqueued(
    make_door: MakeDoor,
) -> None:
    """What an instance that died right after storing the last part leaves (the set
    marked complete, nothing enqueued): another instance's sweeper enqueues it once
    the lease has passed, under the id its parts were answered with."""
    door = await make_door()
    redis = door.redis
    group = keys.long_message_parts("acme", "", TO, 77, 2, "bits8")
    add = redis.register_script(scripts.source("parts_add"))
    for seq, text in ((1, b"left "), (2, b"complete")):
        part = Part(TO, None, "", text, 0, 1)
        reply = await add(
            keys=[group, keys.long_message_due("acme")],
            args=[seq, pack_part(part), 2, "job-left-complete", 60_000, 300, 3600],
        )
    assert reply[:2] == [b"job-left-complete", b"complete"]
    reassembly: Reassembly = door.server.context.reassembly
    reassembly.lease = 0.3
    assert await reassembly.sweep() == 0  # not due yet: the lease
    await asyncio.sleep(0.4)
    assert await reassembly.sweep() == 1
    assert [(j["id"], j["text"]) for j in await queued(redis)] == [
        ("job-left-complete", "left complete")
    ]
    assert await reassembly.sweep() == 0  # decided once
    assert await redis.zcard(keys.long_message_due("acme")) == 0


async def test_an_incomplete_message_is_rejected_with_its_receipt(make_door: MakeDoor) -> None:
    door = await make_door(reassembly_timeout=1)
    door.server.context.reassembly.start()  # the sweeper (the server's start, once wired)
    client = await bound(door.port)
    ids = [
        await submit_part(client, part_body("udh8", 5, 3, seq, b"part %d " % seq)) for seq in (1, 3)
    ]
    assert ids[0] == ids[1]
    job_id = ids[0]
    # The receipt: REJECTD for the id the parts were answered with.
    while True:
        got = await client.read(10)
        assert got is not None
        if got.command_id == pdu.DELIVER_SM:
            client.send(pdu.DELIVER_SM | pdu.RESPONSE, sequence=got.sequence)
            break
    text = decode_short_message(got.body).short_message.decode()
    assert f"id:{job_id} " in text and "stat:REJECTD" in text, text
    assert await query_state(client, job_id) == (0, REJECTED_STATE)
    record = (await ledger_of(door).find([job_id]))[0]
    assert record is not None
    assert (record["status"], record["error_code"], record["account"]) == (
        "rejected",
        "incomplete",
        "acme",
    )
    assert record["error"] == "incomplete long message: 2 of 3 parts in 1 s"
    assert await queued(door.redis) == []
    # The missing part, late: the message is decided; the same id, nothing enqueued.
    assert await submit_part(client, part_body("udh8", 5, 3, 2, b"late")) == job_id
    await asyncio.sleep(0.3)
    assert await queued(door.redis) == []
    assert await door.redis.zcard(keys.long_message_due("acme")) == 0
    await client.close()


async def test_a_message_refused_once_whole_is_rejected(make_door: MakeDoor) -> None:
    """`quota` may send 3 a day: the fourth message, a long one, has its parts answered
    (each part is taken), and refused once whole: recorded rejected with the reason."""
    door = await make_door()
    client = await bound(door.port, "quota", "quota1")
    for n in range(3):
        await submit_part(client, submit_body(TO, b"single %d" % n))
    ids = {
        await submit_part(client, part_body("sar", 1, 2, seq, b"long %d" % seq)) for seq in (1, 2)
    }
    (job_id,) = ids

    async def decided() -> bool:
        record = (await ledger_of(door).find([job_id]))[0]
        return record is not None and record["status"] == "rejected"

    await wait_for(decided, 5, "the long message recorded rejected")
    record = (await ledger_of(door).find([job_id]))[0]
    assert record is not None and record["error_code"] == "refused"
    assert "daily quota of 3" in record["error"]
    assert json.loads(json.dumps(record["meta"])) == {"smpp_registered_delivery": 1}
    assert await query_state(client, job_id) == (0, REJECTED_STATE)
    assert len(await queued(door.redis)) == 3
    await client.close()


async def test_parts_refused_at_the_door_store_nothing(make_door: MakeDoor) -> None:
    door = await make_door()
    acme = await bound(door.port)
    bad_to = submit_body("+1", bytes((5, 0, 3, 1, 2, 1)) + b"x", esm_class=0x40)
    answer = await answer_of(acme, acme.send(pdu.SUBMIT_SM, bad_to))
    assert answer.status == st.ESME_RINVDSTADR
    senders = await bound(door.port, "senders", "snd1")
    wrong_from = part_body("udh8", 2, 2, 1, b"x", source="+16509999999", source_ton=1)
    answer = await answer_of(senders, senders.send(pdu.SUBMIT_SM, wrong_from))
    assert answer.status == st.ESME_RINVSRCADR
    assert await parts_keys(door.redis) == []
    await acme.close()
    await senders.close()


async def test_a_long_message_over_two_instances_is_delivered(
    make_door: MakeDoor, smsc: SmscSimulator
) -> None:
    """End to end: a daemon drains to the SMSC simulator what two instances' sessions
    submitted as parts of one message."""
    one = await make_door(daemon=True)
    two = await make_door()
    a, b = await bound(one.port), await bound(two.port)
    text = "long message over two instances " * 6  # 192 characters: 2 parts of 153
    chunks = [text[:153].encode(), text[153:].encode()]
    ids = [
        await submit_part(a, part_body("udh8", 42, 2, 1, chunks[0])),
        await submit_part(b, part_body("udh8", 42, 2, 2, chunks[1])),
    ]
    job_id = ids[0]
    assert ids[1] == job_id

    async def final() -> bool:
        record = (await ledger_of(one).find([job_id]))[0]
        return record is not None and record["status"] in ("delivered", "undelivered")

    await wait_for(final, 20, "the long message delivered")
    record = (await ledger_of(one).find([job_id]))[0]
    assert record is not None and record["text"] == text
    await a.close()
    await b.close()


async def test_the_sweeper_waits_out_a_redis_outage(tmp_path: Path) -> None:
    """redis-server killed and started again (its append-only file kept the part) while
    the sweeper runs: the outage is noted once, the loop goes on, and the incomplete
    message is recorded rejected when Redis answers again."""
    server = RedisServer(tmp_path / "redis", free_port(), appendonly=True)
    server.start()
    redis = Redis.from_url(server.url)
    data = door_config(server.url, tmp_path, 1, reassembly_timeout=2)
    settings = parse_settings(data, env={}, base_dir=tmp_path)
    outages = RedisOutages(redis)
    # The server's own sweeper (started with it), reporting to `outages` as the daemon's
    # wiring passes its own.
    smpp = SmppServer(settings, redis, outages=outages)
    await smpp.start()
    sweeper = smpp.context.reassembly
    client = None
    try:
        client = await bound(smpp.port)
        job_id = await submit_part(client, part_body("sar", 8, 2, 1, b"half"))
        await asyncio.sleep(1.2)  # appendfsync everysec: the part is on disk
        server.kill()
        await asyncio.sleep(2.0)  # the sweeper meets the outage, the message comes due
        assert outages.down_since is not None
        server.start()

        async def rejected() -> bool:
            with contextlib.suppress(*REDIS_ERRORS):
                record = (await smpp.context.intake.client.ledger.find([job_id]))[0]
                return record is not None and record["status"] == "rejected"
            return False

        await wait_for(rejected, 15, "the incomplete message recorded rejected")
        # An outage's end is noted after a second of quiet (flapping stays one outage).
        await wait_for(lambda: outages.down_since is None, 5, "the outage's end noted")
        assert outages.count == 1
        assert sweeper.rejected == 1
    finally:
        if client is not None:
            await client.close()
        await sweeper.close()
        await smpp.stop(grace=1)
        await redis.aclose()
        server.stop()


async def test_a_part_sent_again_takes_over_a_message_its_instance_left(
    make_door: MakeDoor,
) -> None:
    """The client did not get the last part's answer (its instance died after storing
    it) and sends it again: once the lease has passed, that part's instance enqueues
    the message at once, under the id the other parts got."""
    door = await make_door()
    redis = door.redis
    group = keys.long_message_parts("acme", "", TO, 78, 2, "bits8")
    add = redis.register_script(scripts.source("parts_add"))
    for seq, text in ((1, b"first "), (2, b"last")):
        part = Part(TO, None, "", text, 0, 1)
        await add(
            keys=[group, keys.long_message_due("acme")],
            args=[seq, pack_part(part), 2, "job-taken-over", 60_000, 200, 3600],
        )
    client = await bound(door.port)
    await asyncio.sleep(0.3)  # the lease of the instance that died passes
    assert await submit_part(client, part_body("udh8", 78, 2, 2, b"last")) == "job-taken-over"
    # Answered once enqueued: no sweeper was needed.
    assert [(j["id"], j["text"]) for j in await queued(redis)] == [("job-taken-over", "first last")]
    await client.close()


async def test_the_message_asks_for_a_receipt_if_any_part_does(make_door: MakeDoor) -> None:
    """Kannel asks on the first part only, other clients on every part or the last."""
    door = await make_door()
    client = await bound(door.port)
    for seq, asked in ((1, 0), (2, 0), (3, 1)):
        body = part_body("udh8", 11, 3, seq, b"p%d " % seq, registered_delivery=asked)
        await submit_part(client, body)
    for seq in (1, 2):
        await submit_part(client, part_body("udh8", 12, 2, seq, b"q", registered_delivery=0))
    jobs = await queued(door.redis)
    assert [(j["text"], j.get("meta")) for j in jobs] == [
        ("p1 p2 p3 ", {"smpp_registered_delivery": 1}),
        ("qq", None),
    ]
    await client.close()
