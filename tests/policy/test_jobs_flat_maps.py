"""A flat `meta` / `vars` (ASCII keys to ASCII text, numbers, booleans, nulls) is taken
without being encoded when a bound of its size is within 8,192 bytes: the answers at
the limit are the encoding's own (escaped control characters count as 6 bytes, a
number beyond 20 digits or not finite goes the long way)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from router.policy.jobs import JobError, decode_job

GOOD = {"to": "+447911123456", "text": "hi"}


def decoded(meta: dict[str, Any]) -> dict[str, Any]:
    return decode_job(msgpack.packb({**GOOD, "meta": meta}), default_id="x").meta


def refused(meta: dict[str, Any]) -> str:
    with pytest.raises(JobError) as info:
        decode_job(msgpack.packb({**GOOD, "meta": meta}), default_id="x")
    return str(info.value)


def test_a_flat_map_at_the_limit_is_judged_by_its_encoding() -> None:
    # {"k":"xx..."}: 8 bytes around the text.
    assert decoded({"k": "x" * 8184}) == {"k": "x" * 8184}  # 8,192 bytes
    assert refused({"k": "x" * 8185}) == "job.meta: larger than 8192 bytes encoded"
    # A control character is 6 bytes encoded (\u0001): 1,364 fit, 1,365 do not.
    assert decoded({"k": "\x01" * 1364}) == {"k": "\x01" * 1364}
    assert refused({"k": "\x01" * 1365}) == "job.meta: larger than 8192 bytes encoded"


def test_a_flat_map_keeps_its_values_and_refuses_what_json_cannot_carry() -> None:
    meta = {"a": 1, "b": -(2**63), "c": 2**64 - 1, "d": 0.5, "e": True, "f": None, "g": "t"}
    assert list(decoded(meta).items()) == list(meta.items())
    assert "numbers must be finite" in refused({"x": float("inf")})
    assert "numbers must be finite" in refused({"x": float("nan")})
    assert decoded({"é": "ü", "n": 1e300}) == {"é": "ü", "n": 1e300}
