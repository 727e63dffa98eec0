"""Schemathesis against ``/openapi.json`` of a live daemon: requests generated from the
document (valid ones, and ones that break it) never get a server error, and every
answer matches the document (status, content type, body schema).

Bounded and repeatable: few examples per operation, derandomized, no shrinking."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from router.config import Settings

from ..conftest import RunningDaemon
from .test_api_messages import TOKENS, start_api

EXAMPLES = 25  # per operation and generation mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def fuzz(base: str, token: str, seen: Counter[tuple[str, int]]) -> list[str]:
    """Run every operation's generated cases; the failures, one line each. `seen`
    counts the answers by operation and status."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", timeout=10)
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document describes it fully
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                cases(operation, mode, base, headers, seen)()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # nothing to get wrong: no input
            except Exception as exc:  # a failed check: keep going, report them all
                failures.append(f"{operation.label} ({mode.value}): {exc}"[:2000])
    return failures


def cases(
    operation: Any,
    mode: GenerationMode,
    base: str,
    headers: dict[str, str],
    seen: Counter[tuple[str, int]],
) -> Callable[[], None]:
    """A Hypothesis test that calls `operation` with cases of `mode` and checks them."""

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=base, headers=headers, timeout=10)
        seen[operation.label, response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    return run


async def test_schemathesis_finds_nothing(
    redis: object,
    make_settings: Callable[..., Settings],
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    # The template of the document's batch example (as in the shipped router.toml).
    otp = {"text": {"en": "Your code is {code}", "es": "Tu código es {code}"}}
    async with start_api(make_settings(templates={"otp": otp}), run_daemon) as api:
        assert api.running.daemon.api is not None
        base = f"http://127.0.0.1:{api.running.daemon.api.port}"
        # Schemathesis is synchronous: it runs in a thread while the daemon serves here.
        seen: Counter[tuple[str, int]] = Counter()
        failures = await asyncio.to_thread(fuzz, base, TOKENS["ops"], seen)
    assert failures == [], "\n\n".join(failures)
    # Not only errors: every operation but a lookup of a random id also succeeded.
    succeeded = {label for label, status in seen if status < 300}
    labels = {label for label, _status in seen}
    assert labels - succeeded == {"GET /v1/messages/{id}"}, sorted(seen.items())
