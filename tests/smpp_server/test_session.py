"""Sessions: binds (credentials, scopes, max_binds, ESME_RALYBND), PDUs before bind,
enquire_link both ways, unbind both ways, the window, TLS, a reload."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import pytest

from binds.smpp import pdu
from router.config import parse_settings

from .clients import smpplib_bind_status
from .conftest import MakeDoor, door_config
from .raw import RawClient, bind_body, bound, message_id, submit_body

QUERY_SM, CANCEL_SM = 0x03, 0x08
REPLACE_SM = 0x07  # not taken yet
UDH = bytes((5, 0, 3, 7, 2, 1))  # part 1 of 2, reference 7


async def test_a_bind_answers_our_system_id_and_interface_version(make_door: MakeDoor) -> None:
    door = await make_door()
    client = await RawClient.connect(door.port)
    answer = await client.bind("acme", "secret1", "transmitter")
    assert (answer.command_id, answer.status) == (pdu.BIND_TRANSMITTER | pdu.RESPONSE, 0)
    assert answer.body == b"sms-router\0" + bytes((0x02, 0x10, 0, 1, 0x34))
    # A 3.3 client gets no sc_interface_version.
    old = await RawClient.connect(door.port)
    answer = await old.request(pdu.BIND_TRANSCEIVER, bind_body("acme", "secret1", version=0x33))
    assert (answer.status, answer.body) == (0, b"sms-router\0")
    await client.close()
    await old.close()


@pytest.mark.parametrize(
    ("system_id", "password"),
    [("acme", "wrong"), ("nobody", "secret1"), ("http", "x"), ("acme", "")],
)
async def test_wrong_credentials_are_refused_and_closed(
    make_door: MakeDoor, system_id: str, password: str
) -> None:
    door = await make_door()
    client = await RawClient.connect(door.port)
    answer = await client.bind(system_id, password)
    assert (answer.status, answer.body) == (pdu.ESME_RBINDFAIL, b"")
    assert await client.closed()
    # The same through smpplib.
    status = await asyncio.to_thread(smpplib_bind_status, door.port, system_id, password)
    assert status == pdu.ESME_RBINDFAIL
    assert await asyncio.to_thread(smpplib_bind_status, door.port, "acme", "secret1") == 0


async def test_oversized_bind_fields_name_the_field(make_door: MakeDoor) -> None:
    door = await make_door()
    for body, status in [
        (bind_body("a" * 16, "secret1"), pdu.ESME_RINVSYSID),
        (bind_body("acme", "secret123"), pdu.ESME_RINVPASWD),
        (b"acme\0secret1\0", pdu.ESME_RINVCMDLEN),
    ]:
        client = await RawClient.connect(door.port)
        answer = await client.request(pdu.BIND_TRANSCEIVER, body)
        assert answer.status == status, pdu.status_name(answer.status)
        assert await client.closed()


async def test_max_binds_per_account(make_door: MakeDoor) -> None:
    door = await make_door()
    first = await bound(door.port, "solo", "solo1", "transmitter")
    second = await RawClient.connect(door.port)
    assert (await second.bind("solo", "solo1", "receiver")).status == pdu.ESME_RBINDFAIL
    assert await second.closed()
    # Other accounts are not affected.
    other = await bound(door.port)
    await first.request(pdu.UNBIND)
    assert await first.closed()
    third = await bound(door.port, "solo", "solo1")
    assert door.server.context.binds_of("solo") == 1
    health = door.server.health()
    assert (health["bound"], health["connections"]) == ({"solo": 1, "acme": 1}, 2)
    await third.close()
    await other.close()


async def test_a_second_bind_is_already_bound(make_door: MakeDoor) -> None:
    door = await make_door()
    client = await bound(door.port)
    again = await client.bind("acme", "secret1", "transmitter")
    assert again.status == pdu.ESME_RALYBND
    answer = await client.request(pdu.SUBMIT_SM, submit_body("+447911123456", b"still bound"))
    assert answer.status == pdu.ESME_ROK
    await client.close()


async def test_pdus_before_bind(make_door: MakeDoor) -> None:
    door = await make_door()
    client = await RawClient.connect(door.port)
    link = await client.request(pdu.ENQUIRE_LINK)
    assert (link.command_id, link.status) == (pdu.ENQUIRE_LINK | pdu.RESPONSE, 0)
    for command_id, body in [
        (pdu.SUBMIT_SM, submit_body("+447911123456", b"early")),
        (pdu.DATA_SM, b""),
        (QUERY_SM, b"1\0\0\0\0"),
        (CANCEL_SM, b""),
    ]:
        answer = await client.request(command_id, body)
        assert (answer.command_id, answer.status) == (
            command_id | pdu.RESPONSE,
            pdu.ESME_RINVBNDSTS,
        )
    unknown = await client.request(0x0000_0777)
    assert (unknown.command_id, unknown.status) == (pdu.GENERIC_NACK, pdu.ESME_RINVCMDID)
    # Still open, and it may bind now.
    assert (await client.bind("acme", "secret1")).status == 0
    await client.close()


async def test_a_receiver_does_not_submit(make_door: MakeDoor) -> None:
    door = await make_door()
    receiver = await bound(door.port, mode="receiver")
    answer = await receiver.request(pdu.SUBMIT_SM, submit_body("+447911123456", b"no"))
    assert answer.status == pdu.ESME_RINVBNDSTS
    # An account without the `send` scope binds only as a receiver.
    reader = await RawClient.connect(door.port)
    assert (await reader.bind("reader", "read1", "transmitter")).status == pdu.ESME_RBINDFAIL
    await bound(door.port, "reader", "read1", "receiver")


async def test_commands_not_taken_yet_are_nacked_once_bound(make_door: MakeDoor) -> None:
    door = await make_door()
    client = await bound(door.port)
    answer = await client.request(REPLACE_SM, b"1\0\0\0\0")
    assert (answer.command_id, answer.status) == (pdu.GENERIC_NACK, pdu.ESME_RINVCMDID)
    await client.close()


async def test_enquire_link_both_ways(make_door: MakeDoor) -> None:
    door = await make_door(enquire_link=1)
    alive = await bound(door.port)
    silent = await bound(door.port)

    async def answer_links() -> int:
        # Our enquire_links, answered: the session stays.
        asked = 0
        while asked < 3:
            got = await alive.read(5)
            assert got is not None and got.command_id == pdu.ENQUIRE_LINK
            alive.send(pdu.ENQUIRE_LINK | pdu.RESPONSE, sequence=got.sequence)
            asked += 1
        return asked

    answering = asyncio.create_task(answer_links())
    # Not answered: closed after enquire_link seconds more.
    got = await silent.read(5)
    assert got is not None and got.command_id == pdu.ENQUIRE_LINK
    started = asyncio.get_running_loop().time()
    assert await silent.closed(5)
    assert asyncio.get_running_loop().time() - started >= 0.8
    assert await answering == 3
    answer = await alive.request(pdu.SUBMIT_SM, submit_body("+447911123456", b"alive"))
    assert answer.status == 0
    # Never bound: closed too.
    idle = await RawClient.connect(door.port)
    assert await idle.closed(5)
    await alive.close()


async def test_unbind_is_answered_and_closes(make_door: MakeDoor) -> None:
    door = await make_door()
    client = await bound(door.port)
    answer = await client.request(pdu.UNBIND)
    assert (answer.command_id, answer.status) == (pdu.UNBIND | pdu.RESPONSE, 0)
    assert await client.closed()
    assert door.server.context.binds_of("acme") == 0


async def test_window_counts_unanswered_submits(make_door: MakeDoor) -> None:
    """`solo` has window 5: with Redis holding writes back, five submits wait for their
    enqueue, unanswered; the sixth is throttled at once, and the five are answered OK
    once Redis takes writes again."""
    door = await make_door()
    client = await bound(door.port, "solo", "solo1")
    await door.redis.execute_command("CLIENT", "PAUSE", "3000", "WRITE")
    try:
        waiting = [
            client.send(pdu.SUBMIT_SM, submit_body("+447911123456", b"m%d" % n)) for n in range(5)
        ]
        answer = await client.request(pdu.SUBMIT_SM, submit_body("+447911123456", b"sixth"))
        assert answer.status == pdu.ESME_RTHROTTLED
    finally:
        await door.redis.execute_command("CLIENT", "UNPAUSE")
    answers = [await client.read() for _ in waiting]
    assert sorted((a.sequence, a.status) for a in answers if a) == [(s, 0) for s in waiting]
    await client.close()


async def test_stopping_unbinds_clients_after_answering(make_door: MakeDoor) -> None:
    door = await make_door()
    client = await bound(door.port)
    sequences = [
        client.send(pdu.SUBMIT_SM, submit_body("+447911123456", f"m{n}".encode()))
        for n in range(50)
    ]
    await asyncio.sleep(0)  # sent; the server stops while they are being enqueued
    stopping = asyncio.create_task(door.server.stop(grace=5))
    answered: dict[int, int] = {}
    while True:
        got = await client.read(5)
        assert got is not None, "closed before the unbind"
        if got.command_id == pdu.UNBIND:
            client.send(pdu.UNBIND | pdu.RESPONSE, sequence=got.sequence)
            break
        answered[got.sequence] = got.status
    await stopping
    assert await client.closed()
    # Whatever was read was answered before the unbind, and OK means enqueued.
    assert set(answered) <= set(sequences)
    assert set(answered.values()) <= {0, pdu.ESME_RINVBNDSTS}
    assert len(answered) == len(sequences)
    with pytest.raises(OSError):  # no longer listening
        await RawClient.connect(door.port)


def _certificate(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls(make_door: MakeDoor, tmp_path: Path) -> None:
    cert, key = await asyncio.to_thread(_certificate, tmp_path)
    door = await make_door(cert=str(cert), key=str(key))
    tls = ssl.create_default_context(cafile=str(cert))
    tls.check_hostname = False
    client = await RawClient.connect(door.port, tls=tls)
    assert (await client.bind("acme", "secret1")).status == 0
    answer = await client.request(pdu.SUBMIT_SM, submit_body("+447911123456", b"over TLS"))
    assert answer.status == 0 and len(message_id(answer)) == 32
    await client.close()
    # Plain TCP to a TLS port gets nowhere.
    plain = await RawClient.connect(door.port)
    plain.send(pdu.BIND_TRANSCEIVER, bind_body("acme", "secret1"))
    assert await plain.read(5) is None


async def test_a_reload_closes_sessions_of_removed_accounts(
    make_door: MakeDoor, redis_url: str, tmp_path: Path, smsc: object
) -> None:
    door = await make_door()
    solo = await bound(door.port, "solo", "solo1")
    acme = await bound(door.port)
    data = door_config(redis_url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    del data["accounts"]["solo"]
    data["accounts"]["acme"]["window"] = 7
    door.server.configure(parse_settings(data, env={}, base_dir=tmp_path))
    assert await solo.closed()
    answer = await acme.request(pdu.SUBMIT_SM, submit_body("+447911123456", b"after reload"))
    assert answer.status == 0
    assert [s.caller.account.window for s in door.server.sessions if s.caller] == [7]
    await acme.close()
