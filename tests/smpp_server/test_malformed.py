"""Bad input: thousands of malformed PDUs (unknown command ids, bodies cut short,
bad TON and NPI, oversized fields, unreadable command_length, wrong passwords, PDUs
before bind), each answered as SMPP 3.4 says, while another client submits on the
same server unaffected; the server stays up and holds no session it should not."""

from __future__ import annotations

import asyncio
import random
import struct

from binds.smpp import pdu
from binds.smpp.pdu import HEADER
from router.smpp_server import statuses as st
from router.smpp_server.addresses import NPIS

from .conftest import MakeDoor
from .raw import RawClient, bind_body, bound, message_id, submit_body

TO = "+447911123456"
ALERT_NOTIFICATION = 0x102
KNOWN = {
    0x80000000,
    0x01,
    0x02,
    0x03,
    0x04,
    0x05,
    0x06,
    0x07,
    0x08,
    0x09,
    0x0B,
    0x15,
    0x21,
    0x102,
    0x103,
}
Case = tuple[int, bytes, set[tuple[int, int]]]  # command_id, body, allowed (resp id, status)


def malformed_cases(rng: random.Random) -> list[Case]:
    cases: list[Case] = []
    nack = (pdu.GENERIC_NACK, pdu.ESME_RINVCMDID)
    while len(cases) < 400:  # unknown command ids (requests and responses)
        command_id = rng.choice([rng.randrange(0x10, 0x100), rng.randrange(1 << 32)])
        if command_id & 0x7FFFFFFF not in KNOWN and not command_id & pdu.RESPONSE:
            cases.append((command_id, rng.randbytes(rng.randrange(40)), {nack}))
    resp = pdu.SUBMIT_SM | pdu.RESPONSE
    whole = submit_body(TO, b"a message cut short", source="ACME", source_ton=5)
    for cut in range(len(whole)):  # bodies cut short at every octet
        statuses = {
            pdu.ESME_RINVCMDLEN,
            st.ESME_RINVSRCADR,
            st.ESME_RINVDSTADR,
            st.ESME_RINVSERTYP,
            st.ESME_RINVSCHED,
            st.ESME_RINVEXPIRY,
            pdu.ESME_RINVMSGLEN,
        }
        allowed = {(resp, s) for s in statuses} | {(pdu.GENERIC_NACK, pdu.ESME_RINVCMDLEN)}
        cases.append((pdu.SUBMIT_SM, whole[:cut], allowed))
    for ton in range(7, 256, 2):  # bad TON and NPI
        cases.append(
            (pdu.SUBMIT_SM, submit_body(TO, b"x", dest_ton=ton), {(resp, st.ESME_RINVDSTTON)})
        )
        cases.append(
            (
                pdu.SUBMIT_SM,
                submit_body(TO, b"x", source="1", source_ton=ton),
                {(resp, st.ESME_RINVSRCTON)},
            )
        )
        if ton not in NPIS:
            cases.append(
                (pdu.SUBMIT_SM, submit_body(TO, b"x", dest_npi=ton), {(resp, st.ESME_RINVDSTNPI)})
            )
    for size in range(22, 122):  # oversized fields
        digits = "".join(rng.choice("0123456789") for _ in range(size))
        cases.append((pdu.SUBMIT_SM, submit_body(digits, b"x"), {(resp, st.ESME_RINVDSTADR)}))
        cases.append(
            (
                pdu.SUBMIT_SM,
                submit_body(TO, b"x", source="A" * size, source_ton=5),
                {(resp, st.ESME_RINVSRCADR)},
            )
        )
        body = b"SERVICE" + b"x" * size + b"\0" + submit_body(TO, b"x")[1:]
        cases.append((pdu.SUBMIT_SM, body, {(resp, st.ESME_RINVSERTYP)}))
        tlv = submit_body(TO, b"x") + struct.pack("!HH", 0x0424, size + 200) + b"x" * size
        cases.append((pdu.SUBMIT_SM, tlv, {(resp, st.ESME_RINVOPTPARSTREAM)}))
        short = submit_body(TO, b"x" * (size % 100 + 2))
        sm_length = short.index(b"x") - 1  # sm_length says more than follows
        cases.append(
            (
                pdu.SUBMIT_SM,
                short[:sm_length] + b"\xff" + short[sm_length + 1 :],
                {(pdu.GENERIC_NACK, pdu.ESME_RINVCMDLEN)},
            )
        )
    for _ in range(100):  # a bound session binds again, with any body
        cases.append(
            (
                pdu.BIND_TRANSCEIVER,
                rng.randbytes(rng.randrange(60)),
                {(pdu.BIND_TRANSCEIVER | pdu.RESPONSE, pdu.ESME_RALYBND)},
            )
        )
    rng.shuffle(cases)
    return cases


async def _good_client(port: int, count: int) -> list[int]:
    """Submits `count` messages, one at a time, while the bad input goes on."""
    client = await bound(port)
    statuses = []
    for n in range(count):
        answer = await client.request(pdu.SUBMIT_SM, submit_body(TO, b"good %d" % n))
        statuses.append(answer.status)
        assert len(message_id(answer)) == 32 or answer.status
    await client.close()
    return statuses


async def _closing_cases(port: int, rng: random.Random) -> int:
    """Inputs after which the server closes the connection: a command_length below
    the header or above 64 KiB (generic_nack ESME_RINVCMDLEN naming the sequence),
    wrong passwords (ESME_RBINDFAIL). Each on a new connection."""
    done = 0
    for n in range(150):
        client = await RawClient.connect(port)
        if n % 3 == 2:
            answer = await client.bind("acme", rng.choice(["", "x", "secret2", "SECRET1"]))
            assert (answer.status, answer.body) == (pdu.ESME_RBINDFAIL, b"")
        else:
            sequence = rng.randrange(1, 1 << 31)
            length = rng.randrange(0, 16) if n % 3 else rng.randrange(65537, 1 << 32)
            client.send_raw(HEADER.pack(length, pdu.SUBMIT_SM, 0, sequence) + b"junk")
            nack = await client.read()
            assert nack is not None
            assert (nack.command_id, nack.status, nack.sequence) == (
                pdu.GENERIC_NACK,
                pdu.ESME_RINVCMDLEN,
                sequence,
            )
        assert await client.closed()
        done += 1
    return done


async def _before_bind(port: int) -> int:
    """PDUs before bind, on one connection: ESME_RINVBNDSTS (unknown ids: RINVCMDID)."""
    client = await RawClient.connect(port)
    for n in range(100):
        command_id = [pdu.SUBMIT_SM, pdu.DATA_SM, 0x03, 0x08, 0x07, 0x21][n % 6]
        answer = await client.request(command_id, submit_body(TO, b"early"))
        assert (answer.command_id, answer.status) == (
            command_id | pdu.RESPONSE,
            pdu.ESME_RINVBNDSTS,
        )
    await client.close()
    return 100


async def test_malformed_pdus_are_answered_and_harm_no_one(make_door: MakeDoor) -> None:
    door = await make_door()
    rng = random.Random(20)
    cases = malformed_cases(rng)
    good = asyncio.create_task(_good_client(door.port, 300))
    closing = asyncio.create_task(_closing_cases(door.port, rng))
    early = asyncio.create_task(_before_bind(door.port))
    bad = await bound(door.port)
    expected = {}
    for command_id, body, allowed in cases:  # all written at once, read in any order
        expected[bad.send(command_id, body)] = allowed
    wrong = []
    while expected:
        answer = await bad.read()
        assert answer is not None, f"closed with {len(expected)} unanswered"
        allowed = expected.pop(answer.sequence)
        if (answer.command_id, answer.status) not in allowed:
            wrong.append((answer.command_id, pdu.status_name(answer.status), allowed))
    assert wrong == []
    answered = len(cases) + await closing + await early
    assert answered >= 1000
    assert set(await good) == {0}
    # Still bound and taking submits; no session left behind.
    answer = await bad.request(pdu.SUBMIT_SM, submit_body(TO, b"after all that"))
    assert answer.status == 0
    assert len(door.server.sessions) == 1
    await bad.close()
    await asyncio.sleep(0.1)
    assert door.server.sessions == []
    assert door.server.context.bound == {}
    print(f"\nmalformed PDUs answered: {answered}")


# The server refuses these requests in every state, and SMPP 3.4 gives them no response
# PDU (outbind and alert_notification go from an SMSC to an ESME): the only answer the
# spec has is generic_nack ESME_RINVCMDID (section 2.3: "an unknown or invalid
# command_id"), bound or not (it once answered 0x8000000B / 0x80000102 before bind,
# PDUs SMPP 3.4 does not define).
async def test_outbind_and_alert_notification_get_generic_nack_in_any_state(
    make_door: MakeDoor,
) -> None:
    door = await make_door()
    unbound = await RawClient.connect(door.port)
    bound_client = await bound(door.port)
    answers = {}
    for name, client in (("before bind", unbound), ("bound", bound_client)):
        for command_id in (pdu.OUTBIND, ALERT_NOTIFICATION):
            answer = await client.request(command_id, bind_body("acme", "secret1"))
            answers[(name, command_id)] = (answer.command_id, answer.status)
    await unbound.close()
    await bound_client.close()
    nack = (pdu.GENERIC_NACK, pdu.ESME_RINVCMDID)
    assert answers == dict.fromkeys(answers, nack)
