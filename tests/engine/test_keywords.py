"""Inbound keywords: STOP/START change the opt-out set, replies are enqueued once, the
callback says which keyword it was. Real Redis, real HTTP callback, and end to end
the real daemon with the SMSC simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from binds.smpp.pdu import ESM_UDHI, ESME_ROK, ShortMessage
from router import Client
from router.config import Settings
from router.engine.inbound import CallbackPoster, Inbound, render
from router.engine.keywords import Keywords
from router.policy.audience import KEYWORD_REPLY_PREFIX
from router.policy.jobs import Job, decode_job
from router.store import keys
from router.store.connections import as_text
from router.store.ledger import Ledger
from sims.smscsim import SmscSimulator

from ..binds import test_smpp_flow
from ..binds.test_smpp_flow import Inbox, smpp_settings
from ..conftest import NUMBERS, RunningDaemon, wait_for

inbox = test_smpp_flow.inbox  # the callback_url fixture, shared

MakeSettings = Callable[..., Settings]
TEXTS = {
    "stop_text": "You are unsubscribed.",
    "start_text": "Welcome back.",
    "help_text": "Help: x",
}
PERSON = "+447911123456"


def _inbound(redis: Redis, settings: Settings) -> Inbound:
    ledger = Ledger(redis, retention=3600, events_maxlen=1000)
    keywords = Keywords("alerts", settings.profiles["alerts"], ledger)
    return Inbound(redis, "alerts", forward=True, reassembly_timeout=5, keywords=keywords)


def _message(text: str, *, to: str = NUMBERS[0], source: str = PERSON) -> ShortMessage:
    return ShortMessage(
        source=source.lstrip("+"),
        source_ton=1,
        destination=to.lstrip("+"),
        dest_ton=1,
        short_message=text.encode(),
    )


async def _replies(redis: Redis) -> list[Job]:
    rows: Any = await redis.xrange(keys.queue("alerts"))
    return [decode_job(fields[b"job"], default_id="") for _id, fields in rows]


async def _stored(redis: Redis) -> list[dict[str, Any]]:
    rows: Any = await redis.xrange(keys.inbound("alerts"))
    return [
        render(as_text(entry), "alerts", {as_text(k): as_text(v) for k, v in fields.items()})
        for entry, fields in rows
    ]


async def test_stop_start_help_change_the_opt_out_set_and_enqueue_one_reply_each(
    redis: Redis, make_settings: MakeSettings
) -> None:
    inbound = _inbound(redis, make_settings(**TEXTS))
    opt_outs = keys.opt_outs("alerts")
    assert await inbound.handle(_message(" Stop ")) == ESME_ROK
    assert await redis.sismember(opt_outs, PERSON)
    # The SMSC sends it again (our response was lost): same reply id, not texted twice.
    assert await inbound.handle(_message(" Stop ")) == ESME_ROK
    replies = await _replies(redis)
    assert len(replies) == 1
    stop = replies[0]
    assert stop.id.startswith(KEYWORD_REPLY_PREFIX)
    assert (stop.to, stop.sender, stop.text, stop.profile) == (
        PERSON,
        NUMBERS[0],
        "You are unsubscribed.",
        "alerts",
    )
    record = await Ledger(redis, retention=60, events_maxlen=10).get(stop.id, profile="alerts")
    assert record is not None and record["status"] == "queued" and record["to"] == PERSON

    assert await inbound.handle(_message("start")) == ESME_ROK
    assert not await redis.sismember(opt_outs, PERSON)
    assert await inbound.handle(_message("HELP")) == ESME_ROK
    assert not await redis.sismember(opt_outs, PERSON)
    assert await inbound.handle(_message("stop it")) == ESME_ROK
    assert not await redis.sismember(opt_outs, PERSON)
    texts = [job.text for job in await _replies(redis)]
    assert texts == ["You are unsubscribed.", "Welcome back.", "Help: x"]
    posted = await _stored(redis)
    assert [(m["text"], m.get("opt_out")) for m in posted] == [
        (" Stop ", "stop"),
        (" Stop ", "stop"),
        ("start", "start"),
        ("HELP", "help"),
        ("stop it", None),
    ]
    assert "opt_out" not in posted[-1]


async def test_no_reply_without_its_text_and_no_from_outside_the_pool(
    redis: Redis, make_settings: MakeSettings
) -> None:
    inbound = _inbound(redis, make_settings(stop_text="Bye."))
    await inbound.handle(_message("HELP"))
    await inbound.handle(_message("START"))
    assert await _replies(redis) == []
    await inbound.handle(_message("QUIT", to="+447700900123"))
    (reply,) = await _replies(redis)
    assert reply.text == "Bye." and reply.sender is None  # the worker picks a sender
    assert await redis.smembers(keys.opt_outs("alerts")) == {PERSON.encode()}


async def test_a_keyword_from_an_alphanumeric_sender_is_reported_not_applied(
    redis: Redis, make_settings: MakeSettings
) -> None:
    inbound = _inbound(redis, make_settings(**TEXTS))
    message = _message("STOP", source="ACME")
    message.source_ton = 5
    assert await inbound.handle(message) == ESME_ROK
    assert await redis.exists(keys.opt_outs("alerts")) == 0
    assert await _replies(redis) == []
    assert [m["opt_out"] for m in await _stored(redis)] == ["stop"]


async def test_many_inbound_messages_at_once_are_stored_in_one_transaction(
    redis: Redis, make_settings: MakeSettings
) -> None:
    """Stores that arrive together share a MULTI (the Batcher): keywords among them
    are applied, others untouched."""
    inbound = _inbound(redis, make_settings(**TEXTS))
    senders = [f"+4479111234{i:02d}" for i in range(40)]
    codes = await asyncio.gather(
        *(
            inbound.handle(_message("STOP" if i % 2 else f"hello {i}", source=number))
            for i, number in enumerate(senders)
        )
    )
    assert set(codes) == {ESME_ROK}
    opted = {as_text(v) for v in await redis.smembers(keys.opt_outs("alerts"))}
    assert opted == set(senders[1::2])
    assert await redis.xlen(keys.inbound("alerts")) == 40
    assert sorted(job.to for job in await _replies(redis)) == sorted(senders[1::2])


def _part(text: str, reference: int, total: int, seq: int) -> ShortMessage:
    udh = bytes([5, 0, 3, reference, total, seq])
    message = _message("")
    message.esm_class = ESM_UDHI
    message.short_message = udh + text.encode()
    return message


async def test_a_keyword_in_two_parts_is_applied_when_the_poster_renders_it(
    redis: Redis, make_settings: MakeSettings, inbox: Inbox
) -> None:
    inbound = _inbound(redis, make_settings(**TEXTS))
    poster = CallbackPoster(redis, "alerts", inbox.url, consumer="t", inbound=inbound)
    inbox.refuse = 1  # the first post fails: applying it again changes nothing
    await inbound.handle(_part("SCRIBE ", 9, 2, 2))  # out of order
    await inbound.handle(_part("UNSUB", 9, 2, 1))
    await inbound.handle(_part("st", 10, 2, 1))
    await inbound.handle(_part("op it", 10, 2, 2))
    stopping = asyncio.Event()
    task = asyncio.create_task(poster.run(stopping))
    await wait_for(lambda: len(inbox.messages) == 2, 20, "two posts")
    stopping.set()
    await asyncio.wait_for(task, 10)
    first, second = inbox.messages
    assert first["text"] == "UNSUBSCRIBE "
    assert (first["parts"], first["opt_out"]) == (2, "stop")
    assert second["text"] == "stop it" and "opt_out" not in second
    assert await redis.smembers(keys.opt_outs("alerts")) == {PERSON.encode()}
    (reply,) = await _replies(redis)
    assert reply.to == PERSON and reply.text == "You are unsubscribed."


async def test_keywords_end_to_end_over_smpp(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    run_daemon: Callable[[Settings], RunningDaemon],
    inbox: Inbox,
) -> None:
    settings = smpp_settings(redis_url, tmp_path, smsc.port, callback=inbox.url, **TEXTS)  # type: ignore[attr-defined]
    run_daemon(settings)
    await wait_for(lambda: smsc.stats()["sessions"] == 1, 10, "bound")
    ledger = Ledger(redis, retention=60, events_maxlen=10)
    opt_outs = keys.opt_outs("sms")

    async def reply_delivered(text: str) -> dict[str, Any] | None:
        prefix = keys.record("sms", "")
        for key in [as_text(k) async for k in redis.scan_iter(match=f"{prefix}keyword-reply.*")]:
            record = await ledger.get(key.removeprefix(prefix), profile="sms")
            if record and record.get("text") == text and record["status"] == "delivered":
                return record
        return None

    await smsc.inject(PERSON, NUMBERS[1], "STOP")
    await wait_for(lambda: len(inbox.messages) == 1, 20, "STOP posted")
    assert inbox.messages[0]["opt_out"] == "stop" and inbox.messages[0]["text"] == "STOP"
    assert await redis.sismember(opt_outs, PERSON)
    await wait_for(lambda: reply_delivered("You are unsubscribed."), 20, "stop_text delivered")
    record = await reply_delivered("You are unsubscribed.")
    assert record is not None and (record["to"], record["from"]) == (PERSON, NUMBERS[1])
    # A send to them now is rejected, with the code.
    client = Client.from_settings(redis, settings)
    blocked = await client.send(PERSON, "offer", id="after-stop")
    await wait_for(lambda: _status(ledger, blocked, "rejected"), 20, "rejected")
    record = await ledger.get(blocked)
    assert record is not None and record["error_code"] == "opted_out"

    await smsc.inject(PERSON, NUMBERS[0], "  yes ")
    await wait_for(lambda: len(inbox.messages) == 2, 20, "START posted")
    assert inbox.messages[1]["opt_out"] == "start"
    assert not await redis.sismember(opt_outs, PERSON)
    await wait_for(lambda: reply_delivered("Welcome back."), 20, "start_text delivered")
    allowed = await client.send(PERSON, "offer", id="after-start")
    await wait_for(lambda: _status(ledger, allowed, "delivered"), 20, "delivered after START")

    await smsc.inject(PERSON, NUMBERS[0], "info")
    await smsc.inject(PERSON, NUMBERS[0], "information please")
    await wait_for(lambda: len(inbox.messages) == 4, 20, "HELP posted")
    by_text = {m["text"]: m for m in inbox.messages}
    assert by_text["info"]["opt_out"] == "help"
    assert "opt_out" not in by_text["information please"]
    await wait_for(lambda: reply_delivered("Help: x"), 20, "help_text delivered")
    assert not await redis.sismember(opt_outs, PERSON)


async def _status(ledger: Ledger, job_id: str, wanted: str) -> bool:
    record = await ledger.get(job_id)
    return record is not None and record["status"] == wanted
