"""An early report kept by an instance whose clock runs a little ahead still applies.

Early reports (a receipt before its message is recorded `sent`) wait in a hash per
time bucket (`keys.early_bucket`), named by the clock of the instance that took the
receipt; `finish` on another instance looks by its own clock. The SMSC may send a
receipt on any session of the system id, so the two are often different instances:
near a bucket's end, one slightly ahead keeps the report in the bucket the other
has not reached yet. Real Redis (the `redis` fixture)."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from router import Client
from router.engine.receipts import EARLY_TTL, Reports
from router.store import ledger as ledger_module

from .test_records import ledger_of, record_sent


@pytest.mark.parametrize("skew", [-EARLY_TTL, +EARLY_TTL])
async def test_a_report_kept_by_a_skewed_clock_applies(
    redis: Redis, monkeypatch: pytest.MonkeyPatch, skew: int
) -> None:
    ledger = ledger_of(redis)
    [job_id] = await Client(redis, default_profile="sms").send_many(
        [{"to": "+447911123456", "text": "skewed"}]
    )
    real = time.time
    # The instance that took the receipt: its clock a bucket ahead (or behind).
    monkeypatch.setattr(ledger_module.time, "time", lambda: real() + skew)
    reports = Reports(redis, ledger, "sms", id_format="auto")
    await reports.apply(reports.candidates("7A7A"), "delivered", "DELIVRD", "000")
    monkeypatch.setattr(ledger_module.time, "time", real)
    await record_sent(redis, reports, job_id, "7A7A")
    record = await ledger.get(job_id, profile="sms")
    assert record is not None and record["status"] == "delivered", record
