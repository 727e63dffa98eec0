"""Planning (router/engine/plan.py): what the worker does with each entry it reads,
worked out from the entry alone, and from the rules' verdict on a refused pick."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from router.config import Settings
from router.engine.plan import Plan, Planner
from router.policy.jobs import Job, JobError, encode_job
from router.policy.rules import Refusal
from router.store.queue import Entry

OTP = {"text": {"en": "Your code is {code}", "es": "Tu código es {code}"}}


def entry(wire: dict[str, Any] | None, deliveries: int = 1, raw: bytes | None = None) -> Entry:
    job = raw if wire is None else encode_job(wire)
    return Entry("1-1", {"job": job} if job is not None else {}, deliveries)


@pytest.fixture
def planner(redis: Redis, make_settings: Callable[..., Settings]) -> Planner:
    settings = make_settings(queue={"max_deliveries": 3}, templates={"otp": OTP})
    return Planner(redis=redis, name="alerts", settings=settings)


def test_each_kind_of_entry_gets_its_plan(planner: Planner) -> None:
    now = time.time()
    to = "+447911123456"
    cases: list[tuple[Entry, Plan, str]] = [
        (entry({"id": "a", "to": to, "text": "hi"}), Plan.SEND, ""),
        (entry({"id": "b", "to": to, "text": "hi"}, deliveries=4), Plan.DEAD,
         "delivered 4 times without an outcome (queue.max_deliveries = 3)"),
        (entry(None, raw=b"\xc1 not msgpack"), Plan.DEAD, ""),
        (entry({"id": "c", "to": to, "template": "nope"}), Plan.DEAD, ""),
        (entry({"id": "d", "to": to, "text": "hi", "profile": "bulk"}), Plan.FORWARD, ""),
        (entry({"id": "e", "to": to, "text": "hi", "expires_at": now - 1}), Plan.EXPIRED,
         "validity passed before sending"),
        (entry({"id": "f", "to": to, "text": "hi", "send_at": 4_102_444_800.0}), Plan.SCHEDULE,
         "send at 2100-01-01T00:00:00Z"),
    ]  # fmt: skip
    for item, want, note in cases:
        got_entry, job, plan, reason = planner.plan(item)
        assert (got_entry, plan) == (item, want), job
        if note:
            assert reason == note
        if plan is Plan.DEAD:
            assert reason  # a dead letter always says why
    # A job that does not decode is planned dead with the decoder's words.
    _, job, _, reason = planner.plan(entry(None, raw=b"\xc1 not msgpack"))
    assert isinstance(job, JobError) and reason == str(job)


def test_a_job_to_send_is_composed_once_by_planning(planner: Planner) -> None:
    wire = {"id": "otp-1", "to": "+447911123456", "template": "otp", "vars": {"code": "42"}}
    _, job, plan, _ = planner.plan(entry(wire))
    assert plan is Plan.SEND and isinstance(job, Job)
    # The text replaces the template: it is what is recorded, sent and retried.
    assert (job.text, job.template) == ("Your code is 42", None)


def test_a_refused_pick_is_rejected_or_deferred_past_a_full_cap(
    redis: Redis, make_settings: Callable[..., Settings]
) -> None:
    full = Refusal("daily_cap_reached", "the campaign's daily cap is reached")
    other = Refusal("opted_out", "the recipient opted out")
    rejecting = Planner(redis=redis, name="alerts", settings=make_settings())
    deferring = Planner(redis=redis, name="alerts", settings=make_settings(over_cap="defer"))
    assert rejecting.refused(full) is Plan.REFUSE
    assert rejecting.refused(other) is Plan.REFUSE
    assert deferring.refused(full) is Plan.DEFER
    assert deferring.refused(other) is Plan.REFUSE
