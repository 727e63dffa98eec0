"""Message records and their interop with SMSCs: early reports that expire on their own,
histories in order, the message text (and its opt-out), `status` output, receipts that
never come, and receipt ids written in another style than the submit_sm_resp.

Real Redis, the real daemon, our SMSC simulator; the CLI as a real process."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis

from router import Client
from router.config import Settings, parse_settings
from router.engine.receipts import Reports
from router.store import keys
from router.store.connections import as_text
from router.store.ledger import Finished, Ledger, Sending
from sims.smscsim import SmscSimulator

from ..binds.test_smpp_flow import smpp_config
from ..conftest import Provider, RunningDaemon, config_dict, wait_for
from ..daemon.test_process import cli, start_daemon, write_config

Start = Callable[[Settings], RunningDaemon]


def ledger_of(redis: Redis) -> Ledger:
    return Ledger(redis, retention=3600, events_maxlen=10_000)


async def records(redis: Redis, ids: list[str]) -> list[dict[str, Any]]:
    found = await ledger_of(redis).find(ids, profiles=("alerts", "bulk", "sms"))
    assert all(found)
    return [r for r in found if r]


async def all_status(redis: Redis, ids: list[str], status: str) -> bool:
    return all(
        r and r["status"] == status
        for r in await ledger_of(redis).find(ids, profiles=("alerts", "bulk", "sms"))
    )


# --- 1. early reports expire on their own -------------------------------------------------


async def early_kept(redis: Redis, profile: str = "sms") -> dict[str, bytes]:
    """Every report kept early, over the profile's time-bucket hashes."""
    kept: dict[str, bytes] = {}
    async for name in redis.scan_iter(match=keys.early_bucket(profile, 0)[:-1] + "*"):
        if not as_text(name).endswith(":due"):
            found: Any = await redis.hgetall(name)
            kept.update({as_text(k): v for k, v in found.items()})
    return kept


async def test_orphan_early_report_expires_while_other_early_reports_keep_arriving(
    redis: Redis,
) -> None:
    """An early report never applied is dropped with its time bucket: steady traffic
    does not keep an orphan (a single hash with one TTL refreshed on every write would
    never expire)."""
    ledger = ledger_of(redis)
    reports = Reports(redis, ledger, "sms", id_format="auto", early_ttl=1)
    await reports.apply(reports.candidates("0A0A"), "delivered", "DELIVRD", "000")
    assert "a0a" in await early_kept(redis)
    arriving = 0
    deadline = time.monotonic() + 20
    while "a0a" in await early_kept(redis):
        assert time.monotonic() < deadline, "the orphan early report never expired"
        arriving += 1
        await reports.apply([f"later{arriving}"], "delivered", "DELIVRD", "000")
        await ledger.drop_early_reports("sms")
        await asyncio.sleep(0.05)
    assert arriving > 5 and f"later{arriving}" in await early_kept(redis)
    # No sorted set of deadlines any more (the older layout's).
    assert not await redis.exists(keys.early_reports("sms"), keys.early_deadlines("sms"))


async def test_an_early_report_kept_before_the_upgrade_still_applies(redis: Redis) -> None:
    """The older layout kept early reports in one hash with a sorted set of deadlines:
    one kept just before the upgrade is applied by `sent` and leaves both."""
    ledger = ledger_of(redis)
    [job_id] = await Client(redis, default_profile="sms").send_many(
        [{"to": "+447911123456", "text": "kept before"}]
    )
    reports = Reports(redis, ledger, "sms", id_format="auto")
    await redis.hset(keys.early_reports("sms"), "4242", '["delivered","DELIVRD","000"]')
    await redis.zadd(keys.early_deadlines("sms"), {"4242": time.time() + 60})
    await record_sent(redis, reports, job_id, "4242")
    record = await ledger.get(job_id)
    assert record is not None and record["status"] == "delivered", record
    assert not await redis.exists(keys.early_reports("sms"), keys.early_deadlines("sms"))


def sending_item(job_id: str, owner: str) -> Sending:
    return Sending(id=job_id, owner=owner, replay="", sender="+16501112345",
                   to="+447911123456", text="", meta="", url="", sticky_key="",
                   sticky_ttl=0)  # fmt: skip


def sent_item(job_id: str, entry: str, step: int, ids: list[str], forms: list[str]) -> Finished:
    return Finished(id=job_id, entry=entry, step=step + 1, status="sent", note="", url="",
                    to="+447911123456", sender="+16501112345", meta="", segments=len(ids),
                    error_code="", error_raw="", error="", part_ids=ids,
                    forms=forms, connector="", price=0.0)  # fmt: skip


async def record_sent(
    redis: Redis, reports: Reports, job_id: str, resp: str, *, stream: str = ""
) -> None:
    """What the pipeline does: `sending`, then `sent` with the early-report forms.
    A `stream` other than the job's acknowledges nothing there (the entry stays)."""
    ledger = ledger_of(redis)
    owner = (await redis.hget(keys.record("sms", job_id), "owner") or b"").decode()
    [result] = await ledger.sending("sms", [sending_item(job_id, owner)])
    assert result.ok, result
    pmid = reports.normalise(resp)
    forms = [x for form in reports.forms(pmid) for x in (pmid, form)]
    item = sent_item(job_id, owner, result.step, [pmid], forms)
    await ledger.finish("sms", stream or keys.queue("sms"), [item])


async def test_early_report_is_applied_and_deleted_when_its_message_is_sent(
    redis: Redis,
) -> None:
    ledger = ledger_of(redis)
    ids = await Client(redis, default_profile="sms").send_many(
        [{"to": "+447911123456", "text": "early"}]
    )
    reports = Reports(redis, ledger, "sms", id_format="auto")
    # The receipt (decimal, padded) comes before the submit_sm_resp (hex) is recorded.
    await reports.apply(reports.candidates("0000004096"), "delivered", "DELIVRD", "000")
    assert "4096" in await early_kept(redis)
    await record_sent(redis, reports, ids[0], "1000")
    record = await ledger.get(ids[0])
    assert record is not None and record["status"] == "delivered"
    assert [h["status"] for h in record["history"]] == ["queued", "sending", "sent", "delivered"]
    assert not await early_kept(redis)
    assert await redis.xlen(keys.queue("sms")) == 0, "the entry is acknowledged and deleted"


# --- 2. history order, text, status output -------------------------------------------------


async def test_history_starts_with_queued_for_jobs_sent_through_client(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path
) -> None:
    """A daemon (its own process) is already reading when a batch arrives. Before the
    fix the client's XADDs came first and its `queued` records after, so the worker's
    `sending` beat them: histories without `queued`, or with `queued` timed after
    `sending`."""
    data = config_dict(redis_url, provider.url, window=50)
    config = write_config(tmp_path / "router.toml", data)
    settings = parse_settings(data, env={}, base_dir=tmp_path)
    proc = await start_daemon(config, tmp_path / "daemon.log")
    try:
        await wait_for(lambda: redis.exists("sms:health:test"), 30, "daemon up")
        client = Client.from_settings(redis, settings)
        jobs = [{"to": "+447911123456", "text": f"h{i}"} for i in range(2000)]
        ids = await client.send_many(jobs)
        await wait_for(lambda: all_status(redis, ids, "sent"), 60, "sent")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    for record in await records(redis, ids):
        steps = [h["status"] for h in record["history"]]
        assert steps == ["queued", "sending", "sent"], (record["id"], steps)
        times = [h["at"] for h in record["history"]]
        assert times == sorted(times), (record["id"], record["history"])


async def test_repeated_job_id_is_enqueued_once(redis: Redis) -> None:
    client = Client(redis, default_profile="sms")
    job = {"id": "once", "to": "+447911123456", "text": "x"}
    await client.send_many([job, job])
    await client.send_many([job])
    assert await redis.xlen(keys.queue("sms")) == 1
    assert client.duplicates_dropped == 2


@pytest.mark.parametrize("store_text", [True, False])
async def test_text_is_stored_unless_the_profile_opts_out(
    redis: Redis,
    make_settings: Callable[..., Settings],
    run_daemon: Start,
    provider: Provider,
    store_text: bool,
) -> None:
    settings = make_settings(store_text=store_text)
    client = Client.from_settings(redis, settings)
    queued = await client.send("+447911123456", "secret code 1234")
    # A producer's plain XADD: the worker records the text when sending.
    plain = "plain-1"
    wire = {"id": plain, "to": "+447911123456", "text": "plain text"}
    await redis.xadd(keys.queue("alerts"), {"job": msgpack.packb(wire)})
    before = await ledger_of(redis).get(queued)
    assert before is not None
    assert before.get("text") == ("secret code 1234" if store_text else None)
    running = run_daemon(settings)
    await wait_for(lambda: all_status(redis, [queued, plain], "sent"), 20, "sent")
    assert await running.stop() == 0
    first, second = await records(redis, [queued, plain])
    if store_text:
        assert (first["text"], second["text"]) == ("secret code 1234", "plain text")
    else:
        assert "text" not in first and "text" not in second
        events = await redis.xrange(keys.events("sms"))
        assert not any(b"secret" in v for _, f in events for v in f.values())


# --- 3. delivery reports that never come -------------------------------------------------


async def test_sent_without_delivery_report_gets_a_final_note_event_and_count(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    smsc.config.receipts = False  # the SMSC loses every receipt
    data = smpp_config(redis_url, tmp_path, smsc.port, smpp={"report_timeout": 1})  # type: ignore[attr-defined]
    settings = parse_settings(data, env={})
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": f"lost {i}"} for i in range(5)]
    )
    started = time.time()
    run_daemon(settings)

    async def noted() -> bool:
        return all(r.get("report_timeout") == "1" for r in await records(redis, ids))

    await wait_for(noted, 30, "every message noted")
    assert time.time() - started >= 1
    for record in await records(redis, ids):
        assert record["status"] == "sent"
        last = record["history"][-1]
        assert (last["status"], last["note"]) == ("sent", "no delivery report")
        assert [h["status"] for h in record["history"]] == ["queued", "sending", "sent", "sent"]
    assert await redis.hget(keys.stats("sms"), "reports_missing") == b"5"
    assert await redis.zcard(keys.awaiting_reports("sms")) == 0
    events = [f for _, f in await redis.xrange(keys.events("sms")) if f.get(b"report_timeout")]
    assert sorted(f[b"id"].decode() for f in events) == sorted(ids)
    assert {f[b"note"] for f in events} == {b"no delivery report"}

    # `sms-router log` lists them by that change, with the note.
    config = str(write_config(tmp_path / "router.toml", data))
    code, out, err = await cli("log", "-c", config, "--since", "5m")
    assert code == 0, err
    lines = [line for line in out.splitlines() if any(i in line for i in ids)]
    assert len(lines) == 5 and all("no delivery report" in line for line in lines)

    # A receipt that still comes later applies: the message ends delivered.
    record = (await records(redis, ids[:1]))[0]
    reports = Reports(redis, ledger_of(redis), "sms", id_format="auto")
    late = reports.candidates(record["provider_message_id"])
    await reports.apply(late, "delivered", "DELIVRD", "000")
    after = (await records(redis, ids[:1]))[0]
    assert after["status"] == "delivered"
    assert [h["status"] for h in after["history"]][-2:] == ["sent", "delivered"]


async def test_awaiting_set_empties_as_reports_arrive_and_stays_empty_without_requests(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    data = smpp_config(redis_url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    settings = parse_settings(data, env={})
    assert settings.profiles["sms"].smpp is not None
    assert settings.profiles["sms"].smpp.report_timeout == 172_800
    client = Client.from_settings(redis, settings)
    ids = await client.send_many([{"to": "+447911123456", "text": f"r{i}"} for i in range(20)])
    running = run_daemon(settings)
    await wait_for(lambda: all_status(redis, ids, "delivered"), 20, "delivered")
    assert await redis.zcard(keys.awaiting_reports("sms")) == 0
    assert await running.stop() == 0

    # registered_delivery = 0 asks for no report: nothing waits for one.
    smsc.config.receipts = False
    data["profiles"]["sms"]["smpp"].update(registered_delivery=0, report_timeout=1)
    settings = parse_settings(data, env={})
    ids = await client.send_many([{"to": "+447911123456", "text": f"n{i}"} for i in range(5)])
    run_daemon(settings)
    await wait_for(lambda: all_status(redis, ids, "sent"), 20, "sent")
    assert await redis.zcard(keys.awaiting_reports("sms")) == 0
    assert not await redis.hget(keys.stats("sms"), "reports_missing")


# --- 2 (cont.). status output; 4. receipt id styles end to end -------------------------


@pytest.mark.parametrize(
    ("resp_style", "receipt_style", "early"),
    [
        ("hex", "decimal", False),
        ("hex", "decimal", True),
        ("decimal", "hex", False),
        ("hex", "padded", False),
        ("decimal", "padded", True),
    ],
)
async def test_receipt_ids_in_another_style_match_with_the_default_format(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    run_daemon: Start,
    resp_style: str,
    receipt_style: str,
    early: bool,
) -> None:
    smsc.config.message_id_style = resp_style
    smsc.config.receipt_id_style = receipt_style
    smsc.config.report_before_response = early
    data = smpp_config(redis_url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    settings = parse_settings(data, env={})
    assert settings.profiles["sms"].smpp is not None
    assert settings.profiles["sms"].smpp.message_id_format == "auto"
    texts = ["short", "long " * 60]
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": t} for t in texts * 3]
    )
    running = run_daemon(settings)
    await wait_for(lambda: all_status(redis, ids, "delivered"), 20, "delivered")
    assert await running.stop() == 0
    assert not await early_kept(redis)
    if (resp_style, receipt_style, early) != ("hex", "decimal", False):
        return
    # `status`: the text and the history; internal fields only with --json.
    config = str(write_config(tmp_path / "router.toml", data))
    code, out, err = await cli("status", "-c", config, ids[1])
    assert code == 0, err
    assert "long long" in out and "delivered" in out and "queued" in out
    assert "owner" not in out and "dlr:" not in out
    code, out, err = await cli("status", "-c", config, ids[1], "--json")
    assert code == 0, err
    record = json.loads(out)
    assert "owner" in record and any(name.startswith("dlr:") for name in record)


async def test_entry_back_after_sent_is_not_sent_again_and_its_early_report_applied(
    redis: Redis, redis_url: str, smsc: SmscSimulator, run_daemon: Start, tmp_path: Path
) -> None:
    """A report kept while its message is `sending` is applied in the step that records
    `sent` (there is no second step that a Redis blip could skip); an entry that comes
    back after that step finds its record final and is not sent again."""
    ledger = ledger_of(redis)
    client = Client(redis, default_profile="sms")
    [job_id] = await client.send_many([{"to": "+447911123456", "text": "early, then a blip"}])
    reports = Reports(redis, ledger, "sms", id_format="auto")
    await reports.apply(reports.candidates("77"), "delivered", "DELIVRD", "000")
    # Acknowledge elsewhere: the entry stays on the stream, as if the ack were lost.
    await record_sent(redis, reports, job_id, "77", stream="sms:{sms}:elsewhere")
    assert (await redis.hget(keys.record("sms", job_id), "status")) == b"delivered"
    data = smpp_config(redis_url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    run_daemon(parse_settings(data, env={}, base_dir=tmp_path))

    async def acked() -> bool:
        return int(await redis.xlen(keys.queue("sms"))) == 0

    await wait_for(acked, 20, "the entry acknowledged")
    assert (await redis.hget(keys.record("sms", job_id), "status")) == b"delivered"
    assert not smsc.submits, "a message recorded sent must not be sent again"
