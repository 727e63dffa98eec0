"""The job wire format and the small pure helpers."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from router.numbers import normalise_e164
from router.policy.jobs import Job, JobError, decode_job, encode_job
from router.store.outages import backoff


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
        (
            msgpack.packb({"to": "+447911123456", "text": "x", "template": "otp"}),
            "job.template: give 'text' or 'template', not both",
        ),
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


GOOD = {"to": "+447911123456", "text": "hi"}


def nested(depth: int) -> dict[str, Any]:
    """A map `depth` levels deep, counting itself: nested(2) == {"a": {"a": 1}}."""
    node: Any = 1
    for _ in range(depth):
        node = {"a": node}
    return node  # type: ignore[no-any-return]


def refused(job: dict[str, Any] | bytes) -> str:
    raw = job if isinstance(job, bytes) else msgpack.packb(job)
    with pytest.raises(JobError) as info:
        decode_job(raw, default_id="x")
    return str(info.value)


@pytest.mark.parametrize("name", ["meta", "vars"])
def test_maps_are_bounded_in_depth_and_size(name: str) -> None:
    # 1,000 levels once made the worker's json.dumps raise RecursionError, forever.
    assert refused({**GOOD, name: nested(1000)}) == f"job.{name}: nested deeper than 8 levels"
    assert refused({**GOOD, name: nested(9)}) == f"job.{name}: nested deeper than 8 levels"
    assert refused({**GOOD, name: {"l": [[[[[[[[1]]]]]]]]}}).endswith("deeper than 8 levels")
    assert getattr(decode({**GOOD, name: nested(8)}), name) == nested(8)
    big = {"k": "x" * 8200}
    assert refused({**GOOD, name: big}) == f"job.{name}: larger than 8192 bytes encoded"
    assert getattr(decode({**GOOD, name: {"k": "x" * 8000}}), name) == {"k": "x" * 8000}


def test_meta_is_made_json_safe() -> None:
    # Keys that json.dumps would choke on (bytes) become text; so do UTF-8 binary values.
    job = decode({**GOOD, "meta": {"a": {b"k": b"v", 7: [b"w"]}}})
    assert job.meta == {"a": {"k": "v", "7": ["w"]}}
    assert "numbers must be finite" in refused({**GOOD, "meta": {"x": float("nan")}})
    assert "must be UTF-8" in refused({**GOOD, "meta": {"x": b"\xff"}})
    ext = msgpack.packb({**GOOD, "meta": {"x": msgpack.ExtType(5, b"z")}})
    assert refused(ext) == "job.meta: ExtType is not a JSON value"


def test_oversized_jobs_and_fields_are_refused() -> None:
    whole = msgpack.packb({**GOOD, "meta": {f"k{i}": "x" * 100 for i in range(700)}})
    assert len(whole) > 65536
    assert refused(whole) == f"job: {len(whole)} bytes, more than the 65536 a job may take"
    url = "https://x.example/" + "a" * 2048
    assert refused({**GOOD, "status_callback_url": url}) == (
        "job.status_callback_url: longer than 2048 characters"
    )
    for name, limit in [("profile", 64), ("use_case", 64), ("lang", 35), ("template", 256)]:
        assert refused({**GOOD, name: "p" * (limit + 1)}) == (
            f"job.{name}: longer than {limit} characters"
        )
    assert refused({**GOOD, "to": "+44" + " " * 100 + "7911123456"}) == (
        "job.to: longer than 64 characters"
    )


@pytest.mark.parametrize("value", [1e17, 2**63, 1.7e308, 1.7e12, 2**64 - 1])
@pytest.mark.parametrize("name", ["send_at", "expires_at"])
def test_times_out_of_range_are_refused(name: str, value: float) -> None:
    # 1e17 passed before and crashed later (time.gmtime: year out of range).
    assert refused({**GOOD, name: value}).startswith(f"job.{name}: out of range")


@pytest.mark.parametrize(
    "text", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+00:00", "1969-12-31T23:59:59Z"]
)
def test_iso_times_out_of_range_are_refused(text: str) -> None:
    assert refused({**GOOD, "send_at": text}).startswith("job.send_at: out of range")


def test_times_at_the_ends_of_the_range_are_kept() -> None:
    assert decode({**GOOD, "send_at": 0}).send_at == 0.0
    assert decode({**GOOD, "send_at": "9999-12-31T23:59:59Z"}).send_at == 253_402_300_799.0


def test_undecodable_jobs_raise_only_job_error() -> None:
    # 20,000 levels: msgpack's own stack gives up; it must still be a JobError.
    inner = b"\x01"
    for _ in range(20_000):
        inner = b"\x81\xa1a" + inner
    raw = b"\x83\xa2to\xad+447911123456\xa4text\xa1x\xa4meta" + inner
    assert refused(raw).startswith("not msgpack")


@pytest.mark.parametrize(
    "bad",
    ["++447911123456", "+-447911123456", "+447911123456 x5", "+447911123456;ext=5", "+44 +7911"],
)
def test_e164_refuses_doubled_plus_and_extensions(bad: str) -> None:
    with pytest.raises(ValueError):
        normalise_e164(bad)
    assert refused({**GOOD, "to": bad}).startswith("job.to: ")


def test_e164_keeps_accepting_separators() -> None:
    for spelling in ("+44 7911 123456", "+44-7911-123456", "+44.7911.123456", "+(44) 7911123456"):
        assert normalise_e164(spelling) == "+447911123456"
