"""Clients we did not write (PyPI's smpplib, the npm `smpp` package) bind and submit
2,000 mixed messages each (GSM, UCS2, long with an 8-bit UDH or SAR) through the SMPP
server to a real daemon and our SMSC simulator: every submit_sm_resp is OK, the parts
of a message carry one message_id, and it is a job whose record holds the text as sent
and reaches `delivered`. The smpplib run reads the record as each response arrives: a
client is answered only once its job is in Redis."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from router.store import keys
from router.store.ledger import Ledger

from ..conftest import wait_for
from .clients import Results, node_submit, smpplib_submit
from .conftest import MakeDoor
from .mix import Message, message

pytestmark = pytest.mark.slow

COUNT = 2000


async def _check(redis: Redis, messages: list[Message], results: Results) -> None:
    ids: list[str] = []
    for msg, answers in zip(messages, results, strict=True):
        statuses = {status for status, _ in answers}
        assert statuses == {0}, (msg.kind, answers)
        message_ids = {message_id for _, message_id in answers}
        assert len(message_ids) == 1, f"{msg.kind}: parts answered {message_ids}"
        ids.append(message_ids.pop())
    assert len(set(ids)) == len(messages)
    ledger = Ledger(redis, retention=3600, events_maxlen=1000)
    records = await ledger.find(ids)
    assert all(r is not None for r in records)
    for msg, record in zip(messages, records, strict=True):
        assert record is not None
        assert (record["to"], record["text"], record["account"]) == (msg.to, msg.text, "acme")
        assert record["meta"] == {"smpp_registered_delivery": 1}

    async def delivered() -> bool:
        found = Counter(r["status"] if r else "missing" for r in await ledger.find(ids))
        return found["delivered"] == len(ids)

    await wait_for(delivered, 120, "every message delivered")


async def test_smpplib_submits_mixed_messages_durably(make_door: MakeDoor, redis_url: str) -> None:
    door = await make_door(daemon=True)
    messages = [message(i) for i in range(COUNT)]
    check = sync_redis.Redis.from_url(redis_url)
    # message id -> whether an OK answer for it found its record as it arrived.
    seen: dict[str, bool] = {}

    def on_resp(status: int, message_id: str) -> None:
        # Read in the client's thread as the response arrives. A long message's parts
        # are answered once stored in Redis (the record comes with the last part), so
        # the record must be there by the answer of a whole message or of the part
        # that completes one: some answer of every id must have found it.
        if status == 0:
            there = bool(check.exists(keys.record("sms", message_id)))
            seen[message_id] = seen.get(message_id, False) or there

    try:
        results = await asyncio.to_thread(
            smpplib_submit, door.port, "acme", "secret1", messages, window=50, on_resp=on_resp
        )
    finally:
        check.close()
    missing = [m for m, there in seen.items() if not there]
    assert missing == []
    await _check(door.redis, messages, results)


async def test_npm_smpp_client_submits_mixed_messages(make_door: MakeDoor) -> None:
    door = await make_door(daemon=True)
    messages = [message(i) for i in range(COUNT)]
    report = await node_submit(door.port, "acme", "secret1", messages, window=50)
    assert (report["bind"], report["unbind"]) == (0, 0)
    results = [[(r["status"], r["message_id"] or "") for r in parts] for parts in report["results"]]
    await _check(door.redis, messages, results)
