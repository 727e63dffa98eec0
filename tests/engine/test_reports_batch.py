"""`Reports.handle_many`: the receipts of one read recorded together, against a real Redis."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from binds.smpp.pdu import (
    ESME_ROK,
    TAG_MESSAGE_STATE,
    TAG_RECEIPTED_MESSAGE_ID,
    ShortMessage,
)
from binds.smpp.receipt import parse_receipt, receipt_fields
from router import Client
from router.engine.receipts import Reports
from router.store import keys
from router.store.health import NumberHealth, Outcome, QualityBoard
from router.store.ledger import Ledger

from ..conftest import RedisServer, free_port

UK = "+447911123456"


def receipt(
    message_id: str, stat: str = "DELIVRD", err: str = "000", *, tlv: bool = False
) -> ShortMessage:
    text = (
        f"id:{message_id} sub:001 dlvrd:001 submit date:2311231010 done date:2311231011 "
        f"stat:{stat} err:{err} text:hi"
    )
    tlvs = {TAG_RECEIPTED_MESSAGE_ID: message_id.encode() + b"\0"} if tlv else {}
    if tlv and stat == "DELIVRD":
        tlvs[TAG_MESSAGE_STATE] = struct.pack("B", 2)
    return ShortMessage(esm_class=0x04, short_message=text.encode(), tlvs=tlvs)


async def sent(redis: Redis, ledger: Ledger, provider_ids: list[str]) -> list[str]:
    """Jobs recorded `sent` from +16501112345 over connector ``carrier-a``, each indexed
    under its provider id."""
    jobs = await Client(redis, default_profile="sms").send_many(
        [{"to": UK, "text": f"m{i}"} for i in range(len(provider_ids))]
    )
    for job, provider_id in zip(jobs, provider_ids, strict=True):
        owner = (await redis.hget(keys.record("sms", job), "owner") or b"").decode()
        await ledger.transition(job, owner, "sending", profile="sms")
        index = [keys.provider_id("sms", provider_id)]
        await ledger.transition(
            job, owner, "sent", profile="sms", indexes=index, connector="carrier-a",
            fields={"from": "+16501112345"},
        )  # fmt: skip
    return jobs


async def script_calls(redis: Redis) -> int:
    """Script calls that ran (a first call answered NOSCRIPT is made again)."""
    found = (await redis.info("commandstats")).get("cmdstat_evalsha", {})
    return int(found.get("calls", 0)) - int(found.get("failed_calls", 0))


async def test_the_receipts_of_a_read_are_recorded_in_one_call(redis: Redis) -> None:
    ledger = Ledger(redis, retention=600, events_maxlen=1000)
    reports = Reports(redis, ledger, "sms", id_format="as-is")
    jobs = await sent(redis, ledger, ["p0", "p1", "p2"])
    messages = [
        receipt("p0", tlv=True),
        receipt("p1", "UNDELIV", "0x0B"),
        receipt("p2"),
        receipt("early1"),  # its message is not recorded sent yet: kept
        receipt("p0", "ENROUTE"),  # intermediate: nothing to record
        ShortMessage(esm_class=0x04, short_message=b"stat:DELIVRD"),  # no id: ignored
    ]
    await redis.config_resetstat()
    assert await reports.handle_many(messages) == [ESME_ROK] * 6
    assert await script_calls(redis) == 1
    records = [await ledger.get(job) or {} for job in jobs]
    assert [r["status"] for r in records] == ["delivered", "undelivered", "delivered"]
    assert records[1]["dlr_err"] == "0x0B" and records[1]["dlr_stat"] == "UNDELIV"
    assert await redis.keys("sms:{sms}:early*")  # kept for when its message is sent
    # Again (the SMSC resent them, say): nothing changes.
    assert await reports.handle_many(messages[:3]) == [ESME_ROK] * 3
    assert [(await ledger.get(j) or {})["status"] for j in jobs] == [r["status"] for r in records]


async def test_what_a_read_made_final_is_counted_beside_the_answers(redis: Redis) -> None:
    """Counting (quality, number health) is not waited for by the answers; `counted`
    waits for it, and the outcomes of several reads may share one count."""
    ledger = Ledger(redis, retention=600, events_maxlen=1000)
    reports = Reports(redis, ledger, "sms", id_format="as-is")
    await sent(redis, ledger, [f"q{i}" for i in range(5)])
    first = reports.handle_many([receipt("q0"), receipt("q1", "UNDELIV", "001")])
    second = reports.handle_many([receipt(f"q{i}") for i in range(2, 5)])
    assert await asyncio.gather(first, second) == [[ESME_ROK] * 2, [ESME_ROK] * 3]
    await reports.counted()
    board = QualityBoard(redis)
    board.want("carrier-a", 600)
    await board.refresh()
    assert board.sample("carrier-a", 600, "44") == (4, 5)
    health = NumberHealth("sms", 600)
    await health.refresh(redis)
    assert health.samples == {"+16501112345": (4, 5)}


async def test_outcomes_counted_later_are_counted_together(redis: Redis) -> None:
    """`count_later` (the pipeline's flushes: early reports applied there) returns at once;
    outcomes of the same quarter second go in one count."""
    reports = Reports(redis, Ledger(redis, retention=60, events_maxlen=100), "sms",
                      id_format="as-is")  # fmt: skip
    made = Outcome("delivered", UK, "+16501112345", "carrier-a")
    await redis.config_resetstat()
    for _ in range(3):
        reports.count_later([made, made._replace(status="failed")])
        await asyncio.sleep(0)
    await reports.counted()
    board = QualityBoard(redis)
    board.want("carrier-a", 600)
    await board.refresh()
    assert board.sample("carrier-a", 600, "44") == (3, 6)
    stats = await redis.info("commandstats")
    # The first at once, the two others together: two counts of two buckets each.
    assert stats["cmdstat_expire"]["calls"] == 2 * 4


async def test_a_batch_redis_did_not_take_raises_for_every_receipt(tmp_path: Path) -> None:
    """The handler then refuses them all for resend; none is half-recorded."""
    server = RedisServer(tmp_path / "redis", free_port(), appendonly=True)
    server.start()
    redis = Redis.from_url(server.url, socket_connect_timeout=1)
    try:
        reports = Reports(redis, Ledger(redis, retention=60, events_maxlen=100), "sms",
                          id_format="as-is")  # fmt: skip
        server.stop()
        with pytest.raises(RedisConnectionError):
            await reports.handle_many([receipt("p0"), receipt("p1")])
    finally:
        await redis.aclose()


@pytest.mark.parametrize(
    "text",
    [
        "id:0012 sub:001 dlvrd:001 submit date:2311231010 done date:2311231011 stat:delivrd "
        "err:000 text:hi",
        "ID:abc Stat:UNDELIV Err:0x0B",
        "id:7 stat:ENROUTE",
        "msgid:5 stat:DELIVRD",
        "id:\0 stat:DELIVRD",
        "id:1  sub:001   stat:DELIVRD  err:000 text: stat:EXPIRED",
        "",
    ],
)
def test_receipt_fields_are_what_parse_receipt_reads(text: str) -> None:
    full = parse_receipt(text)
    expected = None if full is None else (full.message_id, full.stat, full.err)
    assert receipt_fields(text) == expected
