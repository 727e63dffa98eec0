"""End to end over SMPP: the real daemon, a real Redis, our SMSC simulator."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis

from binds.smpp.pdu import ShortMessage
from router import Client
from router.config import Settings, parse_settings
from router.store import keys
from router.store.connections import as_text
from router.store.ledger import Ledger
from sims.smscsim import SmscSimulator

from ..conftest import NUMBERS, RunningDaemon, free_port, number_tables, wait_for

Start = Callable[[Settings], RunningDaemon]
FINAL = {"delivered", "undelivered", "failed"}


class Inbox:
    """A real aiohttp server standing in for the application's callback_url."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.statuses: list[tuple[str, dict[str, Any]]] = []
        self.refuse = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        if self.refuse > 0:
            self.refuse -= 1
            return web.Response(status=503)
        self.messages.append(await request.json())
        return web.Response(status=204)

    async def status(self, request: web.Request) -> web.Response:
        if self.refuse > 0:
            self.refuse -= 1
            return web.Response(status=500)
        self.statuses.append((request.match_info["app"], await request.json()))
        return web.Response(status=200)


@pytest.fixture
async def inbox() -> AsyncIterator[Inbox]:
    box = Inbox()
    app = web.Application()
    app.router.add_post("/inbound", box.handle)
    app.router.add_post("/status/{app}", box.status)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    box.url = f"http://127.0.0.1:{port}/inbound"
    yield box
    await runner.cleanup()


def smpp_config(
    redis_url: str, tmp: Path, port: int, *, callback: str = "", **profile: Any
) -> dict[str, Any]:
    """A configuration with one SMPP profile `sms` (global) on the simulator at `port`."""
    smpp = {
        "host": "127.0.0.1",
        "port": port,
        "system_id": "smppclient1",
        "password": "password",
        "response_timeout": 1,
        "enquire_link": 5,
        "reconnect_max": 0.5,
        **profile.pop("smpp", {}),
    }
    demo: dict[str, Any] = {
        "global": True,
        "protocol": "smpp",
        "window": 10,
        "numbers": NUMBERS,
        "smpp": smpp,
        **profile,
    }
    if callback:
        demo.update(direction="both", callback_url=callback)
    return {
        "router": {
            "redis": redis_url,
            "instance": "test",
            "shutdown_grace": 5,
            "state_dir": str(tmp / "var"),
        },
        "queue": {
            "retry_base": 0.05,
            "retry_max": 0.2,
            "schedule_poll": 0.05,
            "block_ms": 100,
            "claim_idle": 2,
        },
        **number_tables(demo["numbers"]),
        "profiles": {"sms": demo},
    }


def smpp_settings(
    redis_url: str, tmp: Path, port: int, *, callback: str = "", **profile: Any
) -> Settings:
    return parse_settings(smpp_config(redis_url, tmp, port, callback=callback, **profile), env={})


async def statuses(redis: Redis, ids: list[str]) -> Counter[str]:
    ledger = Ledger(redis, retention=3600, events_maxlen=1000)
    return Counter(r["status"] if r else "missing" for r in await ledger.find(ids))


async def all_in(redis: Redis, ids: list[str], wanted: set[str]) -> bool:
    found = await statuses(redis, ids)
    return sum(n for s, n in found.items() if s in wanted) == len(ids)


@pytest.mark.parametrize("processing", ["sync", "async"])
async def test_messages_reach_delivered_with_reports(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    run_daemon: Start,
    processing: str,
) -> None:
    settings = smpp_settings(redis_url, tmp_path, smsc.port, processing=processing)  # type: ignore[attr-defined]
    client = Client.from_settings(redis, settings)
    texts = ["plain", "Grüße ✓", "long " * 60]
    ids = await client.send_many([{"to": "+447911123456", "text": t} for t in texts * 10])
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, ids, {"delivered"}), 20, "delivered")
    limit = 1 if processing == "sync" else 10
    assert 1 <= smsc.stats()["max_outstanding"] <= limit
    if processing == "async":
        assert smsc.stats()["max_outstanding"] > 1
    record = await Ledger(redis, retention=60, events_maxlen=10).get(ids[2])
    assert record is not None and record["segments"] == 2
    assert [h["status"] for h in record["history"]][-2:] == ["sent", "delivered"]
    codings = {s["data_coding"] for s in smsc.submits}
    assert codings == {0, 8}
    long_parts = [s for s in smsc.submits if s["esm_class"] & 0x40]
    assert len(long_parts) == 20


async def test_undelivered_report_and_report_before_response(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    smsc.config.delivered_ratio = 0.0
    smsc.config.report_before_response = True
    settings = smpp_settings(redis_url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": f"m{i}"} for i in range(20)]
    )
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, ids, {"undelivered"}), 20, "undelivered")
    record = await Ledger(redis, retention=60, events_maxlen=10).get(ids[0])
    assert record is not None
    assert record["dlr_stat"] == "UNDELIV" and record["error_code"] == "dlr_undeliv"
    # Each report that came before its message's `sent` was applied by `finish`, so no
    # time-bucket hash of early reports holds one.
    kept = [
        k
        async for k in redis.scan_iter(match=keys.early_bucket("sms", 0)[:-1] + "*")
        if not as_text(k).endswith(":due") and await redis.hlen(k)
    ]
    assert kept == []


async def test_throttling_and_disconnects_lose_nothing(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    smsc.config.throttle_ratio = 0.2
    smsc.config.disconnect_every = 37
    settings = smpp_settings(redis_url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": f"m{i}"} for i in range(150)]
    )
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, ids, FINAL), 60, "final statuses")
    found = await statuses(redis, ids)
    assert found["delivered"] == 150, found
    assert smsc.stats()["throttled"] > 0 and smsc.stats()["disconnects"] > 0


async def test_wrong_password_shows_in_bind_state_and_jobs_wait(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    settings = smpp_settings(
        redis_url,
        tmp_path,
        smsc.port,  # type: ignore[attr-defined]
        smpp={"password": "wrong"},
    )
    job = await Client.from_settings(redis, settings).send("+447911123456", "hi")
    running = run_daemon(settings)
    await wait_for(lambda: smsc.stats()["bind_rejected"] >= 1, 10, "bind rejected")
    await asyncio.sleep(0.3)
    binds = running.daemon.workers[0].binds
    assert binds[0].state == "bind_failed"
    assert "ESME_RINVPASWD" in str(binds[0].last_error)
    assert (await statuses(redis, [job]))["delivered"] == 0


async def test_inbound_long_message_out_of_order_reaches_callback(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    run_daemon: Start,
    inbox: Inbox,
) -> None:
    inbox.refuse = 2  # the application is down for a moment: retried, not lost
    settings = smpp_settings(redis_url, tmp_path, smsc.port, callback=inbox.url)  # type: ignore[attr-defined]
    run_daemon(settings)
    await wait_for(lambda: smsc.stats()["sessions"] == 1, 10, "bound")
    text = "Привет! " * 25  # UCS2, 200 units: 3 parts
    await smsc.inject("+447911123456", NUMBERS[0], text, parts=3, order=[2, 0, 1])
    await smsc.inject("+447911123457", NUMBERS[1], "short one")
    await wait_for(lambda: len(inbox.messages) == 2, 20, "two inbound posts")
    by_text = {m["text"]: m for m in inbox.messages}
    assert set(by_text) == {text, "short one"}
    assert by_text[text]["parts"] == 3 and by_text[text]["from"] == "+447911123456"
    assert by_text[text]["incomplete"] is False and by_text[text]["to"] == NUMBERS[0]
    assert smsc.stats()["inbound_acked"] == 4
    assert await redis.xlen(keys.inbound("sms")) == 0


async def test_dropped_responses_and_12_digit_dates_still_end_delivered(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    smsc.config.drop_response_ratio = 0.1
    smsc.config.date_digits = 12
    settings = smpp_settings(
        redis_url,
        tmp_path,
        smsc.port,  # type: ignore[attr-defined]
        smpp={"response_timeout": 0.3},
    )
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": f"m{i}"} for i in range(60)]
    )
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, ids, {"delivered"}), 40, "delivered")
    assert smsc.stats()["dropped"] > 0
    counted = int(await redis.hget(keys.stats("sms"), "possible_duplicates") or 0)
    assert counted >= smsc.stats()["dropped"]  # each unanswered submit may have been taken


async def test_vendor_status_codes_follow_the_profile_table(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    smsc.config.vendor_ratio = 1.0
    smsc.config.vendor_status = 0x401
    settings = smpp_settings(
        redis_url,
        tmp_path,
        smsc.port,  # type: ignore[attr-defined]
        smpp={"vendor_status": {"0x0401": "retry"}},
    )
    job = await Client.from_settings(redis, settings).send("+447911123456", "vendor")
    run_daemon(settings)
    await wait_for(lambda: smsc.stats()["vendor"] >= 2, 10, "retried after a vendor status")
    smsc.config.vendor_ratio = 0.0
    await wait_for(lambda: all_in(redis, [job], {"delivered"}), 10, "delivered after retry")


async def test_unmapped_vendor_status_fails_with_its_code(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    smsc.config.vendor_ratio = 1.0
    smsc.config.vendor_status = 0x4A1
    settings = smpp_settings(redis_url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    job = await Client.from_settings(redis, settings).send("+447911123456", "vendor")
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, [job], {"failed"}), 10, "failed")
    record = await Ledger(redis, retention=60, events_maxlen=10).get(job)
    assert record is not None
    assert record["error_code"] == "vendor_0x04A1" and record["error_raw"] == "0x000004A1"


async def test_async_window_fills_but_never_overflows(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    smsc.config.response_delay = 0.05
    settings = smpp_settings(redis_url, tmp_path, smsc.port, window=7)  # type: ignore[attr-defined]
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": f"m{i}"} for i in range(80)]
    )
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, ids, {"delivered"}), 30, "delivered")
    assert smsc.stats()["max_outstanding"] == 7


async def test_inbound_parts_missing_after_timeout_arrive_flagged_incomplete(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    run_daemon: Start,
    inbox: Inbox,
) -> None:
    settings = smpp_settings(
        redis_url,
        tmp_path,
        smsc.port,
        callback=inbox.url,  # type: ignore[attr-defined]
        smpp={"reassembly_timeout": 1},
    )
    run_daemon(settings)
    await wait_for(lambda: smsc.stats()["sessions"] == 1, 10, "bound")
    text = "part " * 80  # GSM, 400 septets: 3 parts
    await smsc.inject("+447911123456", NUMBERS[0], text, parts=3, order=[0, 2])
    await wait_for(lambda: len(inbox.messages) == 1, 15, "incomplete message posted")
    message = inbox.messages[0]
    assert message["incomplete"] is True and message["parts"] == 2
    assert message["from"] == "+447911123456" and message["to"] == NUMBERS[0]
    assert message["text"].startswith("part part") and len(message["text"]) < len(text)
    assert await redis.zcard(keys.inbound_partial("sms")) == 0


async def test_receipt_text_in_ucs2_without_tlvs_is_understood(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    from router.engine.receipts import Reports

    settings = smpp_settings(redis_url, tmp_path, 1)
    ledger = Ledger(redis, retention=60, events_maxlen=100)
    client = Client.from_settings(redis, settings)
    job = await client.send("+447911123456", "hi", id="ucs2-receipt")
    owner = (await redis.hget(keys.record("sms", job), "owner") or b"").decode()
    for status in ("sending", "sent"):
        await ledger.transition(
            job,
            owner,
            status,
            profile="sms",
            indexes=[keys.provider_id("sms", "a1")] if status == "sent" else (),
        )
    reports = Reports(redis, ledger, "sms", id_format="as-is")
    text = (
        "id:a1 sub:001 dlvrd:001 submit date:2311231010 done date:2311231011 stat:DELIVRD err:000"
    )
    receipt = ShortMessage(esm_class=0x04, data_coding=8, short_message=text.encode("utf-16-be"))
    assert await reports.handle(receipt) == 0
    assert (await ledger.get(job) or {})["status"] == "delivered"


async def test_status_changes_reach_status_callback_urls(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    run_daemon: Start,
    inbox: Inbox,
) -> None:
    base = inbox.url.replace("/inbound", "/status")
    settings = smpp_settings(
        redis_url,
        tmp_path,
        smsc.port,  # type: ignore[attr-defined]
        status_callback_url=f"{base}/profile",
    )
    client = Client.from_settings(redis, settings)
    first = await client.send("+447911123456", "one", meta={"order": 7})
    second = await client.send("+447911123456", "two", status_callback_url=f"{base}/job")
    inbox.refuse = 1  # the application fails once: retried, not lost
    run_daemon(settings)
    await wait_for(lambda: len(inbox.statuses) == 7, 20, "seven status callbacks")
    seen = {(app, body["id"], body["status"]) for app, body in inbox.statuses}
    # The profile's url is known from `sending` on; a job's own from `queued`.
    assert seen == {
        ("profile", first, "sending"),
        ("profile", first, "sent"),
        ("profile", first, "delivered"),
        ("job", second, "queued"),
        ("job", second, "sending"),
        ("job", second, "sent"),
        ("job", second, "delivered"),
    }
    delivered = next(
        b for _, b in inbox.statuses if b["status"] == "delivered" and b["id"] == first
    )
    assert delivered["meta"] == {"order": 7} and delivered["stat"] == "DELIVRD"
    assert "url" not in delivered
    events = await redis.xrange(keys.events("sms"))
    assert not any(b"url" in fields for _, fields in events)


async def test_stop_while_the_smsc_answers_nothing_ends_within_the_grace(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    """The window full of unanswered submits, more batches recorded and waiting for
    room: SIGTERM still ends the daemon after the grace (serving does not wait for a
    batch stuck behind the window), and nothing is lost."""
    smsc.config.drop_response_ratio = 1.0
    data = smpp_config(redis_url, tmp_path, smsc.port, window=5)  # type: ignore[attr-defined]
    data["router"]["shutdown_grace"] = 1
    settings = parse_settings(data, env={})
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": f"stuck {i}"} for i in range(300)]
    )
    running = run_daemon(settings)
    await wait_for(lambda: len(smsc.submits) >= 5, 20, "the window filled")
    began = time.monotonic()
    assert await running.stop() == 0
    assert time.monotonic() - began < 8
    counts = await statuses(redis, ids)
    assert sum(counts.values()) == 300 and counts["missing"] == 0


@pytest.mark.parametrize("registered_delivery", [0, 1])
async def test_a_profile_asking_no_receipts_keeps_no_provider_id_index(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    smsc: SmscSimulator,
    run_daemon: Start,
    registered_delivery: int,
) -> None:
    """registered_delivery = 0: no report will come, so `sent` writes no provider-id
    index entry (it would cost ~200 B a message for the whole retention); asking for
    receipts keeps the index until each report is applied."""
    smsc.config.receipt_delay = 30.0  # (the simulator's reports held back past the test)
    settings = smpp_settings(
        redis_url, tmp_path, smsc.port, smpp={"registered_delivery": registered_delivery}
    )
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": f"hi {n}"} for n in range(5)]
    )
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, ids, {"sent"}), 20, "sent")
    indexed = [key async for key in redis.scan_iter(match=keys.provider_id("sms", "*"))]
    assert len(indexed) == (5 if registered_delivery else 0)
    assert {s["registered_delivery"] for s in smsc.submits} == {registered_delivery}
