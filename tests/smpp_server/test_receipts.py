"""Delivery receipts back to SMPP clients, seen by PyPI's smpplib (a client we did
not write) bound to the SMPP server beside a real daemon on our SMSC simulator (which
sends its own receipts): every message submitted with registered_delivery = 1 gets one
deliver_sm receipt naming the submit_sm_resp's message_id, with the appendix B text
and the TLVs that agree with the message's final status; a client that unbinds before
its receipts arrive gets them when it binds again; registered_delivery = 0 gets none."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import smpplib.client
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from binds.smpp import pdu
from binds.smpp.pdu import decode_short_message
from router.config import parse_settings
from router.smpp_server import SmppServer, receipts
from router.smpp_server.receipts import deliver_sm_body, receipt_key, receipt_text, wanted
from router.store import keys
from router.store.ledger import Ledger
from router.store.outages import RedisOutages
from sims.smscsim import SmscSimulator

from ..conftest import NUMBERS, RedisServer, free_port, wait_for
from .conftest import MakeDoor, door_config
from .raw import bound

RECEIPT = re.compile(
    r"id:(?P<id>\S+) sub:001 dlvrd:(?P<dlvrd>00[01]) submit date:\d{10} done date:\d{10} "
    r"stat:(?P<stat>DELIVRD|UNDELIV|EXPIRED|REJECTD) err:\d{3} text:(?P<text>.{0,20})$",
    re.DOTALL,
)


@dataclass
class Got:
    """What one smpplib session saw."""

    message_ids: list[str] = field(default_factory=list)  # submit_sm_resp, in order
    receipts: list[dict[str, Any]] = field(default_factory=list)


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def smpplib_session(
    port: int,
    *,
    mode: str = "transceiver",
    submit: list[str] = (),  # type: ignore[assignment]
    registered_delivery: int = 1,
    receipts: int = 0,
    listen: float = 60.0,
) -> Got:
    """Bind, submit a message to each of `submit` (waiting for every response), read
    deliver_sm until `receipts` of them arrived or `listen` seconds passed, unbind.
    Blocking: run it in a thread."""
    got = Got()
    client = smpplib.client.Client("127.0.0.1", port, timeout=0.5, allow_unknown_opt_params=True)

    def sent(pdu: Any, **_: Any) -> None:
        assert int(pdu.status) == 0, pdu.status
        got.message_ids.append(_str(pdu.message_id))

    def received(pdu: Any, **_: Any) -> int:
        got.receipts.append(
            {
                "esm_class": int(pdu.esm_class),
                "text": _str(pdu.short_message),
                "receipted_message_id": _str(pdu.receipted_message_id),
                "message_state": int(pdu.message_state or 0),
                "source": _str(pdu.source_addr),
                "destination": _str(pdu.destination_addr),
                "dest_ton": int(pdu.dest_addr_ton),
                "dest_npi": int(pdu.dest_addr_npi),
            }
        )
        return 0

    client.set_message_sent_handler(sent)
    client.set_message_received_handler(received)
    client.connect()
    try:
        getattr(client, f"bind_{mode}")(system_id="acme", password="secret1")
        for n, to in enumerate(submit):
            while n - len(got.message_ids) >= 50:  # the account's window is 100
                client.read_once()
            client.send_message(
                source_addr_ton=0,
                source_addr="",
                dest_addr_ton=1,
                dest_addr_npi=1,
                destination_addr=to.lstrip("+"),
                short_message=f"receipt test {to}".encode(),
                data_coding=0,
                registered_delivery=registered_delivery,
            )
        deadline = time.monotonic() + 60
        while len(got.message_ids) < len(submit) and time.monotonic() < deadline:
            client.read_once()
        deadline = time.monotonic() + listen
        while len(got.receipts) < receipts and time.monotonic() < deadline:
            client.read_once()
        client.unbind()
    finally:
        client.disconnect()
    return got


def _numbers(count: int, base: int = 0) -> list[str]:
    return [f"+44791120{base + i:04d}" for i in range(count)]


async def _finals(redis: Redis, ids: list[str]) -> dict[str, str]:
    ledger = Ledger(redis, retention=3600, events_maxlen=1000)
    records = await ledger.find(ids)
    return {i: (r["status"] if r else "missing") for i, r in zip(ids, records, strict=True)}


def _check_receipts(got: list[dict[str, Any]], statuses: dict[str, str]) -> None:
    by_id = {r["receipted_message_id"]: r for r in got}
    assert len(by_id) == len(got), "a receipt came twice"
    assert set(by_id) == set(statuses)
    expect = {"delivered": ("DELIVRD", 2, "001"), "undelivered": ("UNDELIV", 5, "000")}
    for job_id, receipt in by_id.items():
        assert receipt["esm_class"] == 0x04  # SMSC delivery receipt
        match = RECEIPT.match(receipt["text"])
        assert match is not None, receipt["text"]
        assert match["id"] == job_id
        stat, state, dlvrd = expect[statuses[job_id]]
        assert (match["stat"], receipt["message_state"], match["dlvrd"]) == (stat, state, dlvrd)
        assert match["text"] == "receipt test +447911"[:20]
        assert receipt["source"].startswith("4479112")  # the message's `to`


async def test_every_message_gets_its_receipt(make_door: MakeDoor, smsc: SmscSimulator) -> None:
    smsc.config.delivered_ratio = 0.8  # some undelivered: UNDELIV receipts
    door = await make_door(daemon=True)
    numbers = _numbers(200)
    got = await asyncio.to_thread(
        smpplib_session, door.port, submit=numbers, receipts=len(numbers), listen=90
    )
    assert len(got.message_ids) == len(numbers)
    statuses = await _finals(door.redis, got.message_ids)
    counts = Counter(statuses.values())
    assert counts["delivered"] + counts["undelivered"] == len(numbers), counts
    assert counts["undelivered"] > 0, counts
    _check_receipts(got.receipts, statuses)
    # Each is acked on its deliver_sm_resp: nothing is left pending for another session.

    async def acked() -> bool:
        return int((await door.redis.xpending(receipt_key("acme"), "smpp"))["pending"]) == 0

    await wait_for(acked, 5, "every receipt acked")


async def test_a_receipt_goes_to_the_sender_the_message_went_from(
    make_door: MakeDoor, smsc: SmscSimulator
) -> None:
    """The receipt's destination_addr is the record's `from` (the sender the profile
    picked: the client gave none), international, not the client's empty source_addr."""
    door = await make_door(daemon=True)
    numbers = _numbers(6, base=300)
    got = await asyncio.to_thread(
        smpplib_session, door.port, submit=numbers, receipts=len(numbers), listen=60
    )
    assert len(got.receipts) == len(numbers)
    ledger = Ledger(door.redis, retention=3600, events_maxlen=1000)
    records = await ledger.find(got.message_ids)
    went_from = {i: r["from"] for i, r in zip(got.message_ids, records, strict=True) if r}
    assert set(went_from.values()) <= set(NUMBERS)
    for receipt in got.receipts:
        sender = went_from[receipt["receipted_message_id"]]
        assert (receipt["destination"], receipt["dest_ton"], receipt["dest_npi"]) == (
            sender.lstrip("+"),
            1,
            1,
        )


async def test_receipts_wait_for_the_client_to_bind_again(
    make_door: MakeDoor, smsc: SmscSimulator
) -> None:
    smsc.config.receipt_delay = 1.5  # the client has unbound when they arrive
    door = await make_door(daemon=True)
    numbers = _numbers(50, base=500)
    first = await asyncio.to_thread(smpplib_session, door.port, submit=numbers, listen=0)
    assert first.receipts == []
    ids = first.message_ids

    async def all_final() -> bool:
        return set((await _finals(door.redis, ids)).values()) == {"delivered"}

    await wait_for(all_final, 60, "every message delivered")
    stream = receipt_key("acme")

    async def relayed() -> bool:
        return int(await door.redis.xlen(stream)) == len(ids)

    await wait_for(relayed, 30, "every receipt relayed to the account's stream")
    # Bound again later, as a receiver this time: it gets every receipt it missed.
    again = await asyncio.to_thread(
        smpplib_session, door.port, mode="receiver", receipts=len(ids), listen=30
    )
    _check_receipts(again.receipts, dict.fromkeys(ids, "delivered"))


async def test_receipts_a_lost_session_left_unanswered_go_to_the_next_on_any_instance(
    make_door: MakeDoor, smsc: SmscSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(receipts, "CLAIM_IDLE", 1.0)  # claimed again after 1 s, not 30
    smsc.config.receipt_delay = 1.0
    door = await make_door(daemon=True)
    numbers = _numbers(10, base=700)
    first = await asyncio.to_thread(smpplib_session, door.port, submit=numbers, listen=0)
    ids = first.message_ids
    # A receiver that takes the receipts and never answers, then drops the connection.
    silent = await bound(door.port, mode="receiver")
    seen: set[str] = set()
    while len(seen) < len(ids):
        got = await silent.read(timeout=30)
        assert got is not None
        if got.command_id == pdu.DELIVER_SM:
            seen.add(decode_short_message(got.body).tlv_text(pdu.TAG_RECEIPTED_MESSAGE_ID) or "")
    assert seen == set(ids)
    await silent.close()
    # The client binds again on another instance (another consumer of the same groups).
    settings = door.settings
    other = SmppServer(
        settings.model_copy(
            update={"router": settings.router.model_copy(update={"instance": "other-instance"})}
        ),
        door.redis,
    )
    await other.start()
    try:
        again = await asyncio.to_thread(
            smpplib_session, other.port, mode="receiver", receipts=len(ids), listen=30
        )
    finally:
        await other.stop(grace=1)
    _check_receipts(again.receipts, dict.fromkeys(ids, "delivered"))
    assert other.receipts.sent == len(ids)


async def test_no_receipt_without_registered_delivery(
    make_door: MakeDoor, smsc: SmscSimulator
) -> None:
    door = await make_door(daemon=True)
    numbers = _numbers(20, base=900)
    got = await asyncio.to_thread(
        smpplib_session, door.port, submit=numbers, registered_delivery=0, listen=0
    )

    async def all_final() -> bool:
        return set((await _finals(door.redis, got.message_ids)).values()) == {"delivered"}

    await wait_for(all_final, 60, "every message delivered")
    # Then one that asks: once its receipt arrives, the others' would have too.
    ask = await asyncio.to_thread(
        smpplib_session, door.port, submit=_numbers(1, base=990), receipts=2, listen=8
    )
    assert [r["receipted_message_id"] for r in ask.receipts] == ask.message_ids
    assert int(await door.redis.xlen(receipt_key("acme"))) == 1


async def test_relay_picks_what_was_asked_and_skips_bad_events(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    settings = parse_settings(door_config(redis_url, tmp_path, 1), env={}, base_dir=tmp_path)
    profile = next(iter(settings.profiles))
    events = keys.events(profile)
    relay = receipts.ReceiptRelay(redis, lambda: settings, RedisOutages(redis), "test")
    relay.start()
    try:

        async def grouped() -> bool:
            with contextlib.suppress(ResponseError):
                return any(
                    g["name"] == receipts.EVENTS_GROUP.encode()
                    for g in await redis.xinfo_groups(events)
                )
            return False

        await wait_for(grouped, 5, "the relay's group")

        async def message(
            job: str, status: str, meta: str | None, *, account: str = "acme"
        ) -> None:
            record = {"to": "+14155550100", "from": "+16501112345", "created_at": "1767225600"}
            record |= {"text": "hello", "account": account} if account else {"text": "hello"}
            if meta is not None:
                record["meta"] = meta
            await redis.hset(keys.record(profile, job), mapping=record)
            event = {"id": job, "profile": profile, "status": status, "at": "1767225660"}
            if meta is not None:
                event["meta"] = meta
            await redis.xadd(events, event)

        await message("j-any", "delivered", '{"smpp_registered_delivery": 1}')
        await message("j-fail-only-ok", "delivered", '{"smpp_registered_delivery": 2}')
        await message("j-fail-only", "failed", '{"smpp_registered_delivery": 2}')
        await message("j-none", "expired", '{"other": 1}')
        await message("j-not-final", "sent", '{"smpp_registered_delivery": 1}')
        await message("j-http", "delivered", '{"smpp_registered_delivery": 1}', account="")
        await redis.xadd(
            events, {"id": "j-bad", "profile": profile, "status": "rejected", "meta": "{not json"}
        )
        await redis.xadd(events, {"type": "inbound", "id": "in-1", "profile": profile})
        # No meta on the event: the record says.
        await redis.hset(
            keys.record(profile, "j-record"),
            mapping={
                "account": "acme",
                "meta": '{"smpp_registered_delivery": 1}',
                "to": "+1415",
                "from": "ACME",
                "created_at": "1767225600",
            },
        )
        await redis.xadd(events, {"id": "j-record", "profile": profile, "status": "rejected"})

        async def drained() -> bool:
            # In this order: every event read, then none of them pending.
            groups = await redis.xinfo_groups(events)
            if int(groups[0]["entries-read"] or 0) != 9:
                return False
            info = await redis.xpending(events, receipts.EVENTS_GROUP)
            return int(info["pending"]) == 0

        await wait_for(drained, 10, "every event read and acked")
        got = await redis.xrange(receipt_key("acme"))
        relayed = {f[b"id"].decode(): f[b"status"].decode() for _, f in got}
        assert relayed == {"j-any": "delivered", "j-fail-only": "failed", "j-record": "rejected"}
        assert relay.relayed == 3
    finally:
        await relay.stop()


async def test_receipts_wait_out_a_redis_outage(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", free_port(), appendonly=True)
    server.start()
    redis = Redis.from_url(server.url)
    settings = parse_settings(door_config(server.url, tmp_path, 1), env={}, base_dir=tmp_path)
    profile = next(iter(settings.profiles))
    outages = RedisOutages(redis)
    smpp = SmppServer(settings, redis, outages=outages)
    await smpp.start()
    client = None
    try:
        client = await bound(smpp.port, mode="receiver")

        async def grouped() -> bool:
            with contextlib.suppress(ResponseError):
                return bool(await redis.xinfo_groups(keys.events(profile)))
            return False

        await wait_for(grouped, 5, "the relay's group")
        await asyncio.sleep(1.2)  # appendfsync everysec: the group is on disk
        server.kill()
        await asyncio.sleep(1.5)  # the loops meet the outage and pause
        server.start()
        meta = '{"smpp_registered_delivery": 1}'
        record = {"account": "acme", "to": "+14155550100", "from": "ACME", "meta": meta}
        await redis.hset(keys.record(profile, "j-1"), mapping=record)
        await redis.xadd(
            keys.events(profile),
            {
                "id": "j-1",
                "profile": profile,
                "status": "delivered",
                "at": "1767225660",
                "meta": meta,
            },
        )
        while True:
            got = await client.read(timeout=20)
            assert got is not None
            if got.command_id == pdu.DELIVER_SM:
                break
        message = decode_short_message(got.body)
        assert message.tlv_text(pdu.TAG_RECEIPTED_MESSAGE_ID) == "j-1"
        client.send(pdu.DELIVER_SM | pdu.RESPONSE, b"\0", sequence=got.sequence)

        async def acked() -> bool:
            pending = await redis.xpending(receipt_key("acme"), receipts.RECEIPTS_GROUP)
            return int(pending["pending"]) == 0 and smpp.receipts.sent == 1

        await wait_for(acked, 10, "the receipt acked")
        assert outages.count >= 1
    finally:
        if client is not None:
            await client.close()
        await smpp.stop(grace=1)
        await redis.aclose()
        server.stop()


def test_registered_delivery_asks() -> None:
    assert [wanted(1, s) for s in ("delivered", "undelivered")] == [True, True]
    assert [wanted(2, s) for s in ("delivered", "failed", "expired")] == [False, True, True]
    assert [wanted(rd, "failed") for rd in (0, 3, 0x11)] == [False, False, True]


def test_receipt_text_and_body() -> None:
    entry = {
        "id": "job-1",
        "status": "expired",
        "err": "000",
        "submit": "1767225600.5",  # 2026-01-01 00:00:00 UTC
        "done": "1767229260",
        "text": "Hello there, a long text",
        "to": "+14155550100",
        "from": "ACME",
    }
    assert receipt_text(entry) == (
        "id:job-1 sub:001 dlvrd:000 submit date:2601010000 done date:2601010101 "
        "stat:EXPIRED err:000 text:Hello there, a long "
    )
    body = deliver_sm_body(entry)
    assert b"\x00\x01\x0114155550100\x00\x05\x00ACME\x00\x04" in body
    assert body.endswith(b"\x00\x1e\x00\x06job-1\x00\x04\x27\x00\x01\x03")
    # A message rejected before a sender was picked went from nobody: an empty
    # destination_addr of unknown TON/NPI (it was read as an alphanumeric TON 5).
    nobody = decode_short_message(deliver_sm_body(entry | {"from": "", "status": "rejected"}))
    assert (nobody.destination, nobody.dest_ton, nobody.dest_npi) == ("", 0, 0)
    assert (nobody.source, nobody.source_ton, nobody.source_npi) == ("14155550100", 1, 1)


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
