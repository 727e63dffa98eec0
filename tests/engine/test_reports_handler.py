"""The daemon's deliver_sm handler of a whole read (`deliver_many_handler`), real Redis."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from binds.smpp import DeliverManyHandler
from binds.smpp.pdu import ESME_ROK, ESME_RX_T_APPN, ShortMessage
from router.daemon.runtime import deliver_many_handler
from router.engine.inbound import Inbound
from router.engine.receipts import Reports
from router.store import keys
from router.store.ledger import Ledger
from router.store.outages import RedisOutages

from ..conftest import RedisServer, free_port

RECEIPT = ShortMessage(
    esm_class=0x04,
    short_message=b"id:a1 sub:001 dlvrd:001 submit date:2311231010 "
    b"done date:2311231011 stat:DELIVRD err:000",
)
INBOUND = ShortMessage(source="447911123456", source_ton=1, short_message=b"hi")


def handler(redis: Redis, outages: RedisOutages) -> DeliverManyHandler:
    ledger = Ledger(redis, retention=60, events_maxlen=1000)
    reports = Reports(redis, ledger, "alerts", id_format="as-is")
    inbound = Inbound(redis, "alerts", forward=True, reassembly_timeout=5)
    return deliver_many_handler(reports, inbound, outages)


async def test_receipts_and_inbound_messages_of_one_read_are_each_stored(redis: Redis) -> None:
    on_deliver_many = handler(redis, RedisOutages())
    assert await on_deliver_many("alerts/smpp0", [RECEIPT, RECEIPT]) == [ESME_ROK] * 2
    assert await on_deliver_many("alerts/smpp0", [RECEIPT, INBOUND]) == [ESME_ROK] * 2
    assert await redis.xlen(keys.inbound("alerts")) == 1


async def test_during_an_outage_every_deliver_sm_is_refused_for_resend(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", free_port(), appendonly=True)
    server.start()
    redis = Redis.from_url(server.url, socket_connect_timeout=1)
    outages = RedisOutages()
    try:
        on_deliver_many = handler(redis, outages)
        server.stop()
        for _ in range(3):
            got = await on_deliver_many("alerts/smpp0", [RECEIPT] * 4)
            assert got == [ESME_RX_T_APPN] * 4
        assert outages.count == 1
    finally:
        await redis.aclose()
