"""What a message record costs Redis, and records of the older shape still answering.

A record is kept for the retention (a week by default) for every message, so its size
is the router's memory: its bound is checked through Redis itself (MEMORY USAGE) for a
message as the doors make them (a 32-digit job id, E.164 numbers, a short text), once
`sent` and once `delivered`. A record written before the compact shape (steps as
``h<n>`` with ``c<n>``, `updated_at`, `connector`, `attempts`, `profile`,
`provider_message_id`, `dlr_*` stored) must answer every query as it did: the record
read by id (API, CLI, Twilio's fetch, query_sm), the SMS log and its filters, and the
scripts that change it (a delivery report, a missing-report note).

Real Redis (the `redis` fixture)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from redis.asyncio import Redis

from router import Client
from router.api.twilio import message_resource
from router.smpp_server.queries import query_resp_body
from router.store import keys, smslog
from router.store.connections import as_text
from router.store.ledger import Finished, Ledger, Report, Sending, decode_record

PROFILE = "sms"
# The bound a record keeps to (MEMORY USAGE: key, value, dict entry), sent or delivered.
RECORD_BYTES = 400


def ledger_of(redis: Redis) -> Ledger:
    return Ledger(redis, retention=3600, events_maxlen=10_000)


async def send_one(redis: Redis, ledger: Ledger, job_id: str, text: str) -> str:
    """Enqueue `job_id` as a door does, record `sending` and `sent` as the worker does;
    returns its provider id."""
    client = Client(redis, default_profile=PROFILE)
    await client.send("+447911123456", text, id=job_id, **{"from": "+16501112345"})
    owner = as_text(await redis.hget(keys.record(PROFILE, job_id), "owner") or b"")
    item = Sending(id=job_id, owner=owner, replay="", sender="+16501112345",
                   to="+447911123456", text=text, meta="", url="", sticky_key="",
                   sticky_ttl=0)  # fmt: skip
    [result] = await ledger.sending(PROFILE, [item])
    assert result.ok, result
    pmid = f"{int(time.time() * 1000) % 10**14:014d}"
    done = Finished(id=job_id, entry=owner, step=result.step + 1, status="sent", note="",
                    url="", to="+447911123456", sender="+16501112345", meta="",
                    segments=1, error_code="", error_raw="", error="", part_ids=[pmid],
                    forms=[], connector="smsc-a", price=0.0)  # fmt: skip
    await ledger.finish(PROFILE, keys.queue(PROFILE), [done])
    return pmid


async def memory(redis: Redis, key: str) -> int:
    return int(await redis.memory_usage(key, samples=0) or 0)


async def test_a_record_sent_then_delivered_stays_within_its_bound(redis: Redis) -> None:
    ledger = ledger_of(redis)
    job_id = uuid.uuid4().hex  # as the doors make them
    pmid = await send_one(redis, ledger, job_id, "Your code is 123456")
    record_key = keys.record(PROFILE, job_id)
    sent = await memory(redis, record_key)
    assert await redis.object("encoding", record_key) == b"listpack"
    assert sent <= RECORD_BYTES, sent
    [applied] = await ledger.reports(
        PROFILE, [Report("delivered", "DELIVRD", "000", [pmid])], keep_for=60
    )
    assert applied.result.verdict == "ok" and applied.connector == "smsc-a", applied
    delivered = await memory(redis, record_key)
    assert await redis.object("encoding", record_key) == b"listpack"
    assert delivered <= RECORD_BYTES, delivered
    # A delivered message keeps no provider-id index entry: its report came.
    assert not await redis.exists(keys.provider_id(PROFILE, pmid))
    record = await ledger.get(job_id, profile=PROFILE)
    assert record is not None
    assert (record["status"], record["dlr_stat"], record["dlr_err"]) == (
        "delivered", "DELIVRD", "000",
    )  # fmt: skip
    assert record["provider_message_id"] == pmid and record["segments"] == 1
    assert record["connector"] == "smsc-a" and record["attempts"] == 1
    assert record["profile"] == PROFILE and record["updated_at"] == record["history"][-1]["at"]
    assert [h["status"] for h in record["history"]] == ["queued", "sending", "sent", "delivered"]


async def test_every_step_time_reads_back_as_the_event_wrote_it(redis: Redis) -> None:
    """The log lists a record at the event whose `at` is its latest change: the compact
    step time must read back as the very float of the event's text."""
    ledger = ledger_of(redis)
    await send_one(redis, ledger, "t-1", "hi")
    record = await ledger.get("t-1", profile=PROFILE)
    assert record is not None
    rows: Any = await redis.xrange(keys.events(PROFILE))
    ats = [float(as_text(f[b"at"])) for _id, f in rows if f.get(b"id") == b"t-1"]
    assert [h["at"] for h in record["history"]] == ats
    page = await smslog.message_log(redis, ledger, profiles=[PROFILE], since=0, limit=10)
    assert [r["id"] for r in page.records] == ["t-1"]


# A record as the previous version wrote it (the fields and their order as stored),
# `sent` over connector smsc-a, then given the step fields of that version.
OLD_SENT: dict[str, str] = {
    "created_at": "1796515717.337141", "owner": "1796515717352-0", "status": "sent",
    "updated_at": "1796515719.291429", "n": "3", "h1": "queued|1796515717.337141|",
    "profile": PROFILE, "to": "+4915100000000", "h2": "sending|1796515719.283026|",
    "attempts": "1", "from": "+16501112345", "text": "Hello from the bench",
    "h3": "sent|1796515719.291429|", "c3": "smsc-a", "connector": "smsc-a",
    "provider_message_id": "15718000000033", "segments": "1", "account": "acme",
}  # fmt: skip
OLD_DELIVERED: dict[str, str] = {
    **OLD_SENT, "status": "delivered", "updated_at": "1796515724.944062", "n": "4",
    "h4": "delivered|1796515724.944062|stat DELIVRD err 000", "dlr_stat": "DELIVRD",
    "dlr_err": "000", "dlr:15718000000033": '["delivered","DELIVRD","000"]',
}  # fmt: skip


async def old_record(redis: Redis, job_id: str, fields: dict[str, str]) -> None:
    """Store an old-shape record with its locator, index and events, as that version
    left them."""
    mapping: dict[Any, Any] = dict(fields)
    await redis.hset(keys.record(PROFILE, job_id), mapping=mapping)
    await redis.expire(keys.record(PROFILE, job_id), 3600)
    await redis.set(keys.locator(job_id), PROFILE, ex=3600)
    await redis.set(keys.provider_id(PROFILE, fields["provider_message_id"]), job_id, ex=3600)
    for n in range(1, int(fields["n"]) + 1):
        status, at, _note = fields[f"h{n}"].split("|", 2)
        event: dict[Any, Any] = {"id": job_id, "profile": PROFILE, "status": status}
        await redis.xadd(keys.events(PROFILE), {**event, "at": at, "to": fields["to"]})


def expected(job_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """What reading an old record gave: its fields, the history parsed, `n` gone."""
    out: dict[str, Any] = {"id": job_id}
    out.update({k: v for k, v in fields.items() if k != "n" and k[:1] not in "hc"})
    out["connector"] = fields["connector"]
    out.update(created_at=float(fields["created_at"]), updated_at=float(fields["updated_at"]))
    out.update(attempts=int(fields["attempts"]), segments=int(fields["segments"]))
    steps = []
    for n in range(1, int(fields["n"]) + 1):
        status, at, note = fields[f"h{n}"].split("|", 2)
        step: dict[str, Any] = {"status": status, "at": float(at), "note": note}
        if f"c{n}" in fields:
            step["connector"] = fields[f"c{n}"]
        steps.append(step)
    out["history"] = steps
    return out


async def test_an_old_record_answers_every_query_as_it_did(redis: Redis) -> None:
    ledger = ledger_of(redis)
    await old_record(redis, "old-d", OLD_DELIVERED)
    want = expected("old-d", OLD_DELIVERED)
    # By id: the API's GET /v1/messages/<id>, the CLI's status, Twilio's fetch.
    assert await ledger.get("old-d", profile=PROFILE) == want
    assert await ledger.find(["old-d"]) == [want]
    assert await ledger.get("old-d", profiles=["other", PROFILE]) == want
    assert decode_record(OLD_DELIVERED) == {k: v for k, v in want.items() if k != "id"}
    twilio = message_resource(want, "AC1")
    assert (twilio["status"], twilio["num_segments"]) == ("delivered", "1")
    assert twilio["date_sent"] is not None and twilio["date_updated"] is not None
    # query_sm: final state (DELIVERED = 2) and its date.
    body = query_resp_body("old-d", want)
    assert body.startswith(b"old-d\0") and body[-2] == 2 and body[6:7] != b"\0"
    # The SMS log and its filters (status, to, account).
    filters: list[dict[str, Any]] = [
        {}, {"status": "delivered"}, {"to": "+4915100000000"}, {"account": "acme"},
    ]  # fmt: skip
    for given in filters:
        page = await smslog.message_log(
            redis, ledger, profiles=[PROFILE], since=0, limit=10, **given
        )
        assert [r["id"] for r in page.records] == ["old-d"], given
    page = await smslog.message_log(
        redis, ledger, profiles=[PROFILE], since=0, limit=10, status="sent"
    )
    assert page.records == []


async def test_an_old_sent_record_takes_its_report_and_reads_whole(redis: Redis) -> None:
    """A message the old version recorded `sent`, its report applied by this one: the
    record is of both shapes then, and reads as one."""
    ledger = ledger_of(redis)
    await old_record(redis, "old-s", OLD_SENT)
    pmid = OLD_SENT["provider_message_id"]
    [applied] = await ledger.reports(
        PROFILE, [Report("undelivered", "UNDELIV", "013", [pmid])], keep_for=60
    )
    assert applied.result.verdict == "ok", applied
    assert (applied.result.previous, applied.connector) == ("undelivered", "smsc-a")
    record = await ledger.get("old-s", profile=PROFILE)
    assert record is not None
    assert record["status"] == "undelivered" and record["attempts"] == 1
    assert record["connector"] == "smsc-a" and record["provider_message_id"] == pmid
    assert (record["dlr_stat"], record["dlr_err"]) == ("UNDELIV", "013")
    assert record["error_code"] == "dlr_undeliv"
    assert [h["status"] for h in record["history"]] == [
        "queued", "sending", "sent", "undelivered",
    ]  # fmt: skip
    assert record["history"][2]["connector"] == "smsc-a"
    assert record["updated_at"] == record["history"][-1]["at"] > float(OLD_SENT["updated_at"])
    page = await smslog.message_log(
        redis, ledger, profiles=[PROFILE], since=0, limit=10, status="undelivered"
    )
    assert [r["id"] for r in page.records] == ["old-s"]


async def test_an_old_sent_record_gets_its_missing_report_note(redis: Redis) -> None:
    ledger = ledger_of(redis)
    ledger.expect_reports(PROFILE, 0.001)
    await old_record(redis, "old-m", OLD_SENT)
    await redis.zadd(keys.awaiting_reports(PROFILE), {"old-m": 1.0})
    assert await ledger.note_missing_reports(PROFILE, note="no report") == 1
    rows: Any = await redis.xrevrange(keys.events(PROFILE), count=1)
    [(_id, event)] = rows
    assert event[b"provider_message_id"] == OLD_SENT["provider_message_id"].encode()
    record = await ledger.get("old-m", profile=PROFILE)
    assert record is not None and record["status"] == "sent"
    assert record["history"][-1]["note"] == "no report" and record["report_timeout"] == "1"
    assert record["connector"] == "smsc-a"


async def test_a_profile_without_reports_keeps_no_provider_id_index(redis: Redis) -> None:
    """`index_provider_ids(profile, False)`: a sent message costs its record alone, and
    reads the same."""
    ledger = ledger_of(redis)
    ledger.index_provider_ids(PROFILE, False)
    pmid = await send_one(redis, ledger, "no-index", "hi")
    assert not await redis.exists(keys.provider_id(PROFILE, pmid))
    record = await ledger.get("no-index", profile=PROFILE)
    assert record is not None and record["status"] == "sent"
    assert record["provider_message_id"] == pmid
    ledger.index_provider_ids(PROFILE, True)
    again = await send_one(redis, ledger, "indexed", "hi")
    assert await redis.get(keys.provider_id(PROFILE, again)) == b"indexed"


async def test_a_long_text_keeps_the_record_compact_and_reads_whole(redis: Redis) -> None:
    """A text longer than Redis' `hash-max-listpack-value` (64 by default) is kept in
    pieces cut between characters: the record stays a listpack, `text` alone starts
    the message (what the SMPP server's receipts read), and the record reads it whole."""
    ledger = ledger_of(redis)
    texts = {
        "ascii": "Your appointment is confirmed for Tuesday at 10:30. Reply C to cancel "
        "or R to reschedule. Thank you for choosing us, see you soon!!",
        "cyrillic": "\u0412\u0430\u0448 \u043a\u043e\u0434 482913, " * 8,  # 2 bytes each
        "emoji": "Happy birthday! \U0001f382\U0001f389 " * 6,
    }
    for name, text in texts.items():
        job_id = uuid.uuid4().hex
        pmid = await send_one(redis, ledger, job_id, text)
        report = Report("delivered", "DELIVRD", "000", [pmid])
        await ledger.reports(PROFILE, [report], keep_for=60)
        key = keys.record(PROFILE, job_id)
        assert await redis.object("encoding", key) == b"listpack", name
        size = await memory(redis, key)
        # The text's bytes, a few per piece, and the allocator's rounding (64 bytes at
        # these sizes) beyond a short message's bound.
        assert size <= RECORD_BYTES + len(text.encode()) + 64, (name, size)
        stored: Any = await redis.hgetall(key)
        first = stored[b"text"]
        assert len(first) <= 64 and text.startswith(first.decode()), name  # whole characters
        record = await ledger.get(job_id, profile=PROFILE)
        assert record is not None and record["text"] == text, name
        assert not [k for k in record if k.startswith("text~")]
    # The slow path (a keyword's reply is recorded through `transition`) cuts it too.
    long = "x" * 150
    result = await ledger.transition(
        "kw-1", "", "rejected", profile=PROFILE, note="no", fields={"text": long, "to": "+1"}
    )
    assert result.ok
    assert await redis.object("encoding", keys.record(PROFILE, "kw-1")) == b"listpack"
    record = await ledger.get("kw-1", profile=PROFILE)
    assert record is not None and record["text"] == long


async def test_a_long_callback_url_and_error_stay_compact_and_whole(redis: Redis) -> None:
    """A status callback URL longer than 64 bytes is kept in pieces too: the record
    stays a listpack, each status callback is posted to the whole URL (report.lua and
    the slow paths read it back), and the record reads it whole; so does a long error."""
    ledger = ledger_of(redis)
    url = "https://hooks.example.com/v2/sms/status?account=acme&token=" + "t0k3n" * 12
    client = Client(redis, default_profile=PROFILE)
    await client.send("+447911123456", "hi", id="cb-1", status_callback_url=url)
    owner = as_text(await redis.hget(keys.record(PROFILE, "cb-1"), "owner") or b"")
    item = Sending(id="cb-1", owner=owner, replay="", sender="+16501112345",
                   to="+447911123456", text="hi", meta="", url=url, sticky_key="",
                   sticky_ttl=0)  # fmt: skip
    [result] = await ledger.sending(PROFILE, [item])
    done = Finished(id="cb-1", entry=owner, step=result.step + 1, status="sent", note="",
                    url=url, to="+447911123456", sender="+16501112345", meta="",
                    segments=2, error_code="", error_raw="", error="",
                    part_ids=["p-cb-1a", "p-cb-1b"], forms=[], connector="smsc-a",
                    price=0.0)  # fmt: skip
    await ledger.finish(PROFILE, keys.queue(PROFILE), [done])
    for part in ("p-cb-1a", "p-cb-1b"):
        report = Report("delivered", "DELIVRD", "000", [part])
        await ledger.reports(PROFILE, [report], keep_for=60)
    key = keys.record(PROFILE, "cb-1")
    assert await redis.object("encoding", key) == b"listpack"
    record = await ledger.get("cb-1", profile=PROFILE)
    assert record is not None and record["status"] == "delivered"
    assert record["status_callback_url"] == url and record["segments"] == 2
    posted: Any = await redis.xrange(keys.callbacks(PROFILE))
    statuses = [f[b"status"] for _id, f in posted]
    assert statuses == [b"queued", b"sending", b"sent", b"delivered"], statuses
    assert {f[b"url"] for _id, f in posted} == {url.encode()}
    # A failure's long reason, through `transition`.
    reason = "refused by the provider: " + "the destination network is not reachable " * 3
    await client.send("+447911123456", "hi", id="cb-2")
    owner = as_text(await redis.hget(keys.record(PROFILE, "cb-2"), "owner") or b"")
    failed = await ledger.transition(
        "cb-2", owner, "failed", profile=PROFILE, note="refused",
        fields={"error": reason, "error_code": "unreachable"},
    )  # fmt: skip
    assert failed.ok
    assert await redis.object("encoding", keys.record(PROFILE, "cb-2")) == b"listpack"
    record = await ledger.get("cb-2", profile=PROFILE)
    assert record is not None and record["error"] == reason
