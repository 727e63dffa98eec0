"""What a submit is answered when it cannot be taken (the status names the field,
nothing is enqueued), and what it becomes when it can: data_sm, times,
registered_delivery, long messages put together or passed as parts, quotas, Redis away."""

from __future__ import annotations

import struct
import time
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis

from binds.smpp import pdu
from router.smpp_server import SmppServer
from router.smpp_server import statuses as st
from router.store import keys

from ..conftest import free_port, wait_for
from .conftest import MakeDoor
from .raw import bound, data_sm_body, message_id, submit_body

TO = "+447911123456"
SAR = (pdu.TAG_SAR_MSG_REF_NUM, pdu.TAG_SAR_TOTAL_SEGMENTS, pdu.TAG_SAR_SEGMENT_SEQNUM)


def sar(reference: int, total: int, seq: int) -> dict[int, bytes]:
    return dict(
        zip(SAR, (struct.pack("!H", reference), bytes((total,)), bytes((seq,))), strict=True)
    )


async def queued(redis: Redis) -> list[dict[str, Any]]:
    """The jobs on profile `sms`'s work stream, as producers' wire maps."""
    entries = await redis.xrange(keys.queue("sms"))
    return [msgpack.unpackb(fields[b"job"]) for _id, fields in entries]


REFUSALS = [
    ("dest TON national", dict(to="7911123456", dest_ton=2), st.ESME_RINVDSTADR),
    ("dest TON 9", dict(dest_ton=9), st.ESME_RINVDSTTON),
    ("dest NPI 7", dict(dest_npi=7), st.ESME_RINVDSTNPI),
    ("source TON 7", dict(source="ACME", source_ton=7), st.ESME_RINVSRCTON),
    ("source national", dict(source="7911123456", source_ton=2), st.ESME_RINVSRCADR),
    ("not a number", dict(to="+1"), st.ESME_RINVDSTADR),
    ("letters", dict(to="44791112345x"), st.ESME_RINVDSTADR),
    ("empty destination", dict(to=""), st.ESME_RINVDSTADR),
    ("30 digits", dict(to="1" * 30), st.ESME_RINVDSTADR),
    ("not the profile's number", dict(source="+14155550000", source_ton=1), st.ESME_RINVSRCADR),
    ("alphanumeric not owned", dict(source="ACME", source_ton=5), st.ESME_RINVSRCADR),
    ("empty text", dict(octets=b""), pdu.ESME_RINVMSGLEN),
    ("binary", dict(data_coding=4), st.ESME_RSUBMITFAIL),
    ("UCS2 odd", dict(octets=b"\x00A\x00", data_coding=8), pdu.ESME_RINVMSGLEN),
    ("UDHI, no header", dict(octets=b"\x09abc", esm_class=0x40), st.ESME_RINVESMCLASS),
    ("both texts", dict(tlvs={pdu.TAG_MESSAGE_PAYLOAD: b"x"}), st.ESME_ROPTPARNOTALLWD),
    ("SAR incomplete", dict(tlvs={pdu.TAG_SAR_MSG_REF_NUM: b"\0\1"}), st.ESME_RMISSINGOPTPARAM),
    ("SAR seq > total", dict(tlvs=sar(1, 2, 3)), st.ESME_RINVOPTPARAMVAL),
    (
        "SAR sizes",
        dict(tlvs={**sar(1, 2, 1), pdu.TAG_SAR_TOTAL_SEGMENTS: b"\0\2"}),
        st.ESME_RINVPARLEN,
    ),
    ("schedule", dict(schedule_delivery_time="tomorrow"), st.ESME_RINVSCHED),
    ("validity", dict(validity_period="991399000000000+"), st.ESME_RINVEXPIRY),
    (
        "too long",
        dict(octets=b"", tlvs={pdu.TAG_MESSAGE_PAYLOAD: b"a" * 45_000}),
        pdu.ESME_RINVMSGLEN,
    ),
]


@pytest.mark.parametrize(("case", "fields", "status"), REFUSALS, ids=[c[0] for c in REFUSALS])
async def test_refusals_name_the_field(
    make_door: MakeDoor, case: str, fields: dict[str, Any], status: int
) -> None:
    door = await make_door()
    client = await bound(door.port)
    fields = dict(fields)
    body = submit_body(fields.pop("to", TO), fields.pop("octets", b"hello"), **fields)
    answer = await client.request(pdu.SUBMIT_SM, body)
    assert (answer.command_id, answer.status) == (pdu.SUBMIT_SM | pdu.RESPONSE, status), (
        pdu.status_name(answer.status)
    )
    assert answer.body == b""
    assert await queued(door.redis) == []
    await client.close()


async def test_an_accepted_submit_becomes_the_job_it_says(make_door: MakeDoor) -> None:
    door = await make_door()
    client = await bound(door.port, "senders", "snd1")
    body = submit_body(
        "447911123456",
        b"caf\x7f",
        source="16501112345",
        source_ton=1,
        dest_ton=0,
        registered_delivery=0,
        validity_period="000001000000000R",
        schedule_delivery_time="300101120000004+",
    )
    answer = await client.request(pdu.SUBMIT_SM, body)
    assert answer.status == 0
    (job,) = await queued(door.redis)
    assert job["id"] == message_id(answer)
    assert (job["to"], job["from"], job["text"], job["account"]) == (
        TO,
        "+16501112345",
        "caf\u00e0",
        "senders",
    )
    assert "meta" not in job  # registered_delivery 0
    # 2030-01-01 12:00 at UTC+1 is 11:00 UTC; valid for one day from now.
    assert job["send_at"] == 1893495600.0
    assert abs(job["expires_at"] - (time.time() + 86_400)) < 5
    # A sender the account does not allow.
    refused = await client.request(
        pdu.SUBMIT_SM, submit_body(TO, b"x", source="+14082223333", source_ton=1)
    )
    assert refused.status == st.ESME_RINVSRCADR
    await client.close()


async def test_data_sm(make_door: MakeDoor) -> None:
    door = await make_door()
    client = await bound(door.port)
    answer = await client.request(
        pdu.DATA_SM, data_sm_body(TO, "Grüße".encode("utf-16-be"), data_coding=8)
    )
    assert (answer.command_id, answer.status) == (pdu.DATA_SM | pdu.RESPONSE, 0)
    (job,) = await queued(door.redis)
    assert (job["id"], job["text"]) == (message_id(answer), "Grüße")
    missing = await client.request(pdu.DATA_SM, data_sm_body(TO, b"")[:-4])
    assert missing.status == st.ESME_RMISSINGOPTPARAM
    await client.close()


async def test_a_long_message_over_two_sessions_is_one_job(make_door: MakeDoor) -> None:
    door = await make_door()
    first, second = await bound(door.port), await bound(door.port)
    udh = [bytes((5, 0, 3, 42, 2, n)) for n in (1, 2)]
    one = first.send(pdu.SUBMIT_SM, submit_body(TO, udh[1] + b" world", esm_class=0x40))
    two = await second.request(pdu.SUBMIT_SM, submit_body(TO, udh[0] + b"hello", esm_class=0x40))
    answer = await first.read()
    assert answer is not None and answer.sequence == one
    assert (answer.status, two.status) == (0, 0)
    assert message_id(answer) == message_id(two)
    (job,) = await queued(door.redis)
    assert job["text"] == "hello world"
    await first.close()
    await second.close()


async def test_a_16_bit_reference_and_message_payload(make_door: MakeDoor) -> None:
    door = await make_door()
    client = await bound(door.port)
    udh = [bytes((6, 8, 4, 0x12, 0x34, 2, n)) for n in (1, 2)]
    first = client.send(pdu.SUBMIT_SM, submit_body(TO, udh[0] + b"sixteen ", esm_class=0x40))
    second = client.send(pdu.SUBMIT_SM, submit_body(TO, udh[1] + b"bits", esm_class=0x40))
    answers = {a.sequence: a for a in [await client.read(), await client.read()] if a}
    assert {answers[first].status, answers[second].status} == {0}
    assert message_id(answers[first]) == message_id(answers[second])
    payload = "é" * 400
    whole = submit_body(
        TO, b"", data_coding=3, tlvs={pdu.TAG_MESSAGE_PAYLOAD: payload.encode("latin-1")}
    )
    assert (await client.request(pdu.SUBMIT_SM, whole)).status == 0
    assert [job["text"] for job in await queued(door.redis)] == ["sixteen bits", payload]
    await client.close()


async def test_parts_of_a_closed_session_are_kept(make_door: MakeDoor) -> None:
    """A part is answered once stored in Redis, so it outlives its session: the rest
    sent over another session completes the message under the same id."""
    door = await make_door()
    gone = await bound(door.port)
    part1 = submit_body(TO, bytes((5, 0, 3, 9, 2, 1)) + b"one ", esm_class=0x40)
    part2 = submit_body(TO, bytes((5, 0, 3, 9, 2, 2)) + b"two", esm_class=0x40)
    first = await gone.request(pdu.SUBMIT_SM, part1)
    await gone.close()
    again = await bound(door.port)
    second = await again.request(pdu.SUBMIT_SM, part2)
    assert [first.status, second.status] == [0, 0]
    assert message_id(first) == message_id(second)
    (job,) = await queued(door.redis)
    assert job["text"] == "one two"
    assert job["id"] == message_id(first)
    await again.close()


async def test_sar_parts_sent_twice_are_one_message(make_door: MakeDoor) -> None:
    door = await make_door()
    client = await bound(door.port)
    sequences = [
        client.send(pdu.SUBMIT_SM, submit_body(TO, text, tlvs=sar(300, 2, seq)))
        for text, seq in [(b"A", 1), (b"A", 1), (b"B", 2)]
    ]
    answers = {a.sequence: a for a in [await client.read() for _ in sequences] if a}
    assert {a.status for a in answers.values()} == {0}
    assert len({message_id(a) for a in answers.values()}) == 1
    (job,) = await queued(door.redis)
    assert job["text"] == "AB"
    await client.close()


async def test_an_incomplete_long_message_times_out(make_door: MakeDoor) -> None:
    """The part is answered once stored; the rest not coming within the time-out, the
    message is recorded rejected under the id the part was answered with."""
    door = await make_door(reassembly_timeout=1)
    client = await bound(door.port)
    answer = await client.request(
        pdu.SUBMIT_SM, submit_body(TO, bytes((5, 0, 3, 1, 3, 1)) + b"a", esm_class=0x40)
    )
    assert answer.status == pdu.ESME_ROK
    record = keys.record("sms", message_id(answer))

    async def rejected() -> bool:
        return await door.redis.hget(record, "status") == b"rejected"

    await wait_for(rejected, 10, "the incomplete message recorded rejected")
    assert await queued(door.redis) == []
    await client.close()


async def test_an_account_may_pass_long_messages_as_parts(make_door: MakeDoor) -> None:
    door = await make_door()
    client = await bound(door.port, "parts", "parts1")
    answers = [
        await client.request(
            pdu.SUBMIT_SM, submit_body(TO, bytes((5, 0, 3, 5, 2, n)) + b"p%d" % n, esm_class=0x40)
        )
        for n in (1, 2)
    ]
    assert [a.status for a in answers] == [0, 0]
    jobs = await queued(door.redis)
    assert [(j["id"], j["text"], j["meta"]["smpp_part"]) for j in jobs] == [
        (message_id(answers[0]), "p1", "1/2"),
        (message_id(answers[1]), "p2", "2/2"),
    ]
    await client.close()


async def test_daily_quota(make_door: MakeDoor) -> None:
    door = await make_door()
    client = await bound(door.port, "quota", "quota1")
    bad = await client.request(pdu.SUBMIT_SM, submit_body("+1", b"refused: not counted"))
    assert bad.status == st.ESME_RINVDSTADR
    statuses = [
        (await client.request(pdu.SUBMIT_SM, submit_body(TO, b"q%d" % n))).status for n in range(5)
    ]
    assert statuses == [0, 0, 0, st.ESME_RSUBMITFAIL, st.ESME_RSUBMITFAIL]
    assert len(await queued(door.redis)) == 3
    await client.close()


async def test_redis_away_is_a_temporary_refusal(make_door: MakeDoor) -> None:
    door = await make_door()
    away = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    server = SmppServer(door.settings, away)
    await server.start()
    try:
        client = await bound(server.port)
        answer = await client.request(pdu.SUBMIT_SM, submit_body(TO, b"nowhere"))
        assert answer.status == pdu.ESME_RMSGQFUL
        await client.close()
    finally:
        await server.stop(grace=1)
        await away.aclose()
