"""The job wire format and the small pure helpers."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from router.jobs import Job, JobError, decode_job, encode_job
from router.numbers import normalise_e164
from router.worker import backoff


def decode(job: dict[str, Any]) -> Job:
    return decode_job(msgpack.packb(job), default_id="gen-1")


def test_minimal_job_gets_the_default_id() -> None:
    job = decode({"to": "+44 7911 123456", "text": "hi"})
    assert job.id == "gen-1"
    assert job.to == "+447911123456"


def test_full_job_round_trips() -> None:
    wire = {
        "id": "a1",
        "to": "+447911123456",
        "text": "hi",
        "from": "+16501112345",
        "profile": "alerts",
        "use_case": "CustomerCare",
        "send_at": 1_900_000_000.0,
        "expires_at": "2030-01-01T00:00:00Z",
        "status_callback_url": "https://x.example/s",
        "meta": {"user": 7},
    }
    job = decode(wire)
    assert job.sender == "+16501112345"
    assert job.expires_at == 1893456000.0
    again = decode_job(encode_job(job.to_wire()), default_id="other")
    assert again == job


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xc1", "not msgpack"),
        (msgpack.packb([1, 2]), "must be a msgpack map"),
        (msgpack.packb({"text": "x"}), "job.to: required"),
        (msgpack.packb({"to": "+447911123456"}), "job.text: required"),
        (msgpack.packb({"to": "+447911123456", "text": ""}), "job.text: must not be empty"),
        (msgpack.packb({"to": 447911123456, "text": "x"}), "job.to: must be a string"),
        (msgpack.packb({"to": "+1555", "text": "x"}), "job.to: '+1555' is not a valid E.164"),
        (msgpack.packb({"to": "447911123456", "text": "x"}), "must start with '+'"),
        (
            msgpack.packb({"to": "+447911123456", "text": "x", "send_at": "soon"}),
            "job.send_at: 'soon' is not unix seconds",
        ),
        (
            msgpack.packb({"to": "+447911123456", "text": "x", "send_at": "2030-01-01T00:00"}),
            "has no time zone",
        ),
        (
            msgpack.packb({"to": "+447911123456", "text": "x", "meta": [1]}),
            "job.meta: must be a map",
        ),
        (msgpack.packb({"to": "+447911123456", "text": "x", "id": "a b"}), "job.id:"),
        (
            msgpack.packb({"to": "+447911123456", "text": "x", "status_callback_url": "ftp://x"}),
            "job.status_callback_url: must be an http",
        ),
        (
            msgpack.packb({"to": "+447911123456", "text": "x", "priority": 1}),
            "job.priority: unknown field",
        ),
        (None, "no 'job' field"),
    ],
)
def test_bad_jobs_name_the_field(raw: bytes | None, message: str) -> None:
    with pytest.raises(JobError) as info:
        decode_job(raw, default_id="x")
    assert message in str(info.value)


def test_e164_accepts_documented_numbers_and_refuses_garbage() -> None:
    assert normalise_e164("+16501112345") == "+16501112345"
    assert normalise_e164("+1 (408) 222-3333") == "+14082223333"
    for bad in ("+1555", "+999123456789", "hello", "+"):
        with pytest.raises(ValueError):
            normalise_e164(bad)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0)]:
        values = [backoff(attempt, 1.0, 30.0) for _ in range(200)]
        assert all(ceiling * 0.5 <= v <= ceiling for v in values)
        assert max(values) - min(values) > 0  # jittered
