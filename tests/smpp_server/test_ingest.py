"""Submits that arrive together (one read) are enqueued together: each is answered as
it would be alone (its own refusal, its own job id once durable), the window and an
account's daily quota count each one. And the server's ingest rate, printed for the
closing note (not asserted): submit_sm/s from a raw asyncio client
(tests/smpp_server/ingest_client.py, a process of its own) keeping 100 submits
unanswered, each answered only once its job is durably in Redis.
Run: pytest -s tests/smpp_server/test_ingest.py"""

from __future__ import annotations

import asyncio
import json
import sys

import msgpack
import pytest

from binds.smpp import pdu
from binds.smpp.pdu import Pdu
from router.smpp_server import statuses as st
from router.store import keys

from .conftest import MakeDoor
from .raw import RawClient, bound, message_id, submit_body

COUNT = 20_000
WINDOW = 100
TO = "+447911123456"
# Submits refused at each step a batch goes through: reading the body, decoding the
# text, the job decoder and the profile's checks (to, from, text), the account.
REFUSED = [
    (dict(to="+1"), st.ESME_RINVDSTADR),
    (dict(octets=b""), pdu.ESME_RINVMSGLEN),
    (dict(data_coding=4), st.ESME_RSUBMITFAIL),
    (dict(octets=b"\x00A\x00", data_coding=8), pdu.ESME_RINVMSGLEN),
    (dict(source="+14155550000", source_ton=1), st.ESME_RINVSRCADR),
    (dict(schedule_delivery_time="tomorrow"), st.ESME_RINVSCHED),
    (dict(octets=b"", tlvs={pdu.TAG_MESSAGE_PAYLOAD: b"a" * 45_000}), pdu.ESME_RINVMSGLEN),
]


async def in_one_write(client: RawClient, bodies: list[bytes]) -> dict[int, Pdu]:
    """Send every submit_sm in one write (the server reads them together); their
    responses by sequence number."""
    sequences = [client.next_sequence() for _ in bodies]
    client.send_raw(
        b"".join(
            Pdu(pdu.SUBMIT_SM, 0, sequence, body).encode()
            for sequence, body in zip(sequences, bodies, strict=True)
        )
    )
    answers: dict[int, Pdu] = {}
    while len(answers) < len(bodies):
        answer = await client.read()
        assert answer is not None, "connection closed before every response"
        assert answer.command_id == pdu.SUBMIT_SM | pdu.RESPONSE
        answers[answer.sequence] = answer
    return {n: answers[sequence] for n, sequence in enumerate(sequences)}


async def test_submits_read_together_are_each_answered_as_alone(make_door: MakeDoor) -> None:
    door = await make_door()
    client = await bound(door.port)
    bodies: list[bytes] = []
    expected: list[int] = []
    for n in range(60):
        if n % 4 == 3:
            fields, status = REFUSED[(n // 4) % len(REFUSED)]
            fields = dict(fields)
            bodies.append(submit_body(fields.pop("to", TO), fields.pop("octets", b"no"), **fields))
            expected.append(status)
        else:
            bodies.append(submit_body(f"+4479111{n:05d}", b"together %d" % n))
            expected.append(pdu.ESME_ROK)
    answers = await in_one_write(client, bodies)
    assert [answers[n].status for n in range(len(bodies))] == expected
    ids = {n: message_id(a) for n, a in answers.items() if a.status == pdu.ESME_ROK}
    assert len(set(ids.values())) == len(ids) == 45
    assert all(answers[n].body == b"" for n in answers if n not in ids)
    # Each job id answered is the job its submit made (the answers are not shuffled).
    entries = await door.redis.xrange(keys.queue("sms"))
    jobs = {job["id"]: job for job in (msgpack.unpackb(f[b"job"]) for _id, f in entries)}
    assert len(jobs) == 45
    for n, job_id in ids.items():
        assert (jobs[job_id]["to"], jobs[job_id]["text"]) == (f"+4479111{n:05d}", f"together {n}")
    await client.close()


async def test_the_window_and_the_quota_count_each_submit_of_a_read(make_door: MakeDoor) -> None:
    door = await make_door()
    solo = await bound(door.port, "solo", "solo1")  # window 5
    answers = await in_one_write(solo, [submit_body(TO, b"w%d" % n) for n in range(8)])
    assert [answers[n].status for n in range(8)] == [0] * 5 + [pdu.ESME_RTHROTTLED] * 3
    quota = await bound(door.port, "quota", "quota1")  # daily_quota 3
    answers = await in_one_write(quota, [submit_body(TO, b"q%d" % n) for n in range(5)])
    statuses = sorted(a.status for a in answers.values())
    assert statuses == [0, 0, 0, st.ESME_RSUBMITFAIL, st.ESME_RSUBMITFAIL]
    assert await door.redis.xlen(keys.queue("sms")) == 5 + 3
    await solo.close()
    await quota.close()


@pytest.mark.slow
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
