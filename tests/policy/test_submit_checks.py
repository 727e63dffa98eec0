"""Jobs the worker would certainly refuse are refused at submit, by the same checks.

An unknown template, a missing template variable, a text over the profile's
`max_segments`: the HTTP API answers 400 naming the field, `sms-router send` exits 1,
`sms-router enqueue` names the line and enqueues nothing, and the Twilio-compatible
API answers 400 in Twilio's shape. The same job sent by a plain XADD still reaches the
worker, which dead-letters it with the same reason. Real daemon, Redis, HTTP provider
and CLI processes.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from router.client import Client
from router.config import Settings, parse_settings
from router.daemon.daemon import Daemon
from router.policy.checks import JobCheck
from router.policy.jobs import JobError, decode_job, encode_job
from router.store import keys
from router.store.ledger import Ledger

from ..api.test_api_messages import start_api
from ..conftest import NUMBERS, Provider, RunningDaemon, config_dict, wait_for
from ..daemon.test_process import cli, write_config

UK = "+447911123456"
OUTSIDE = "+447700900123"  # no profile's number
OTP = {"en": "Your code is {code}", "es": "Tu código es {code}"}
TOO_LONG = "x" * 307  # 3 GSM parts (153 + 153 + 1): one more than max_segments = 2
# Each job the worker refuses, and the error a door gives for it (the worker's
# reason is the same with a `job.` prefix).
REFUSED = [
    ({"to": UK, "template": "nope"}, "template: unknown template 'nope'"),
    (
        {"to": UK, "template": "otp", "vars": {"other": "1"}},
        "vars.code: missing variable 'code' (template 'otp')",
    ),
    ({"to": UK, "text": TOO_LONG}, "text: 3 segments, more than max_segments = 2"),
]
ACCOUNT = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "t" * 32


def submit_config(redis_url: str, provider: Provider, **profile: Any) -> dict[str, Any]:
    """Profile `alerts` (global) sends at most 2 parts; template `otp` takes `{code}`."""
    data = config_dict(redis_url, provider.url, max_segments=2, **profile)
    data["templates"] = {"otp": {"text": OTP}}
    return data


def with_doors(data: dict[str, Any], tmp_path: Path) -> Settings:
    """The settings with the JSON API (one admin key) and the Twilio API on a free port."""
    data = copy.deepcopy(data)
    data["router"]["state_dir"] = str(tmp_path / "var")
    data["api"] = {
        "listen": "127.0.0.1:0",
        "keys": {"ops": {"token": "o" * 32, "scopes": ["admin"]}},
        "twilio": {"account_sid": ACCOUNT, "auth_token": TWILIO_TOKEN},
    }
    return parse_settings(data, env={}, base_dir=tmp_path)


async def records(redis: Redis, ids: list[str]) -> list[dict[str, Any]]:
    found = await Ledger(redis, retention=3600, events_maxlen=1000).find(ids, profiles=["alerts"])
    return [r or {} for r in found]


async def test_the_api_refuses_what_the_worker_would_refuse_naming_the_field(
    redis: Redis,
    redis_url: str,
    provider: Provider,
    tmp_path: Path,
    run_daemon: Any,
) -> None:
    settings = with_doors(submit_config(redis_url, provider), tmp_path)
    async with start_api(settings, run_daemon) as api:
        for job, error in REFUSED:
            status, body = await api.call("POST", "/v1/messages", json=job)
            assert (status, body) == (400, {"error": error}), job
        # A batch is taken whole or not at all; the error names the job and the variable.
        batch: list[dict[str, Any]] = [{"id": f"b{i}", "to": UK, "text": "fine"} for i in range(3)]
        batch.append({"id": "b3", "to": UK, "template": "otp", "vars": {"other": "1"}})
        status, body = await api.call("POST", "/v1/messages", json={"messages": batch})
        assert (status, body) == (
            400,
            {"error": "messages[3].vars.code: missing variable 'code' (template 'otp')"},
        )
        # A job that fills its template is taken and sent as composed.
        good = {"id": "otp-1", "to": UK, "template": "otp", "vars": {"code": 42}, "lang": "es"}
        status, body = await api.call("POST", "/v1/messages", json=good)
        assert (status, body) == (202, {"id": "otp-1", "status": "queued"})
        await wait_for(lambda: any(r["ref"] == "otp-1" for r in provider.requests), 20, "sent")
        assert [r["text"] for r in provider.requests] == ["Tu código es 42"]
        for job_id in ("b0", "b3"):  # nothing of the refused batch was enqueued
            status, _ = await api.call("GET", f"/v1/messages/{job_id}")
            assert status == 404, job_id


async def test_the_twilio_api_refuses_a_body_over_max_segments(
    redis: Redis,
    redis_url: str,
    provider: Provider,
    tmp_path: Path,
    run_daemon: Any,
) -> None:
    settings = with_doors(submit_config(redis_url, provider), tmp_path)
    running: RunningDaemon = run_daemon(settings)
    await wait_for(lambda: running.daemon.api is not None and running.daemon.api.port, 10)
    assert running.daemon.api is not None
    url = f"http://127.0.0.1:{running.daemon.api.port}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    basic = base64.b64encode(f"{ACCOUNT}:{TWILIO_TOKEN}".encode()).decode()
    headers = {"Authorization": f"Basic {basic}"}
    async with aiohttp.ClientSession() as http:
        form = {"To": UK, "From": NUMBERS[0], "Body": TOO_LONG}
        async with http.post(url, data=form, headers=headers) as response:
            status, body = response.status, await response.json()
        assert status == 400
        assert body["message"] == "Body: 3 segments, more than max_segments = 2"
        assert body["code"] == 21617  # Twilio's "body too long", not 21602 "missing"
        assert body["status"] == 400 and body["more_info"].startswith("https://www.twilio.com/")
        form["Body"] = "x" * 306  # exactly 2 parts: taken
        async with http.post(url, data=form, headers=headers) as response:
            assert response.status == 201, await response.text()


async def test_send_refuses_what_the_worker_would_refuse(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path
) -> None:
    config = str(write_config(tmp_path / "router.toml", submit_config(redis_url, provider)))
    base = ("send", "-c", config, "--to", UK)
    for extra, error in (
        (("--text", TOO_LONG), REFUSED[2][1]),
        (("--template", "nope"), REFUSED[0][1]),
        (("--template", "otp", "--var", "other=1"), REFUSED[1][1]),
        ((), "text: required (or 'template'; profile 'alerts' has no default template)"),
    ):
        code, out, err = await cli(*base, *extra)
        assert (code, out, err.strip()) == (1, "", f"error: {error}"), extra
    assert await redis.xlen(keys.queue("alerts")) == 0
    code, _, err = await cli(*base, "--template", "otp", "--var", "code")
    assert code == 2 and "'code' is not NAME=VALUE" in err
    code, out, err = await cli(
        *base, "--template", "otp", "--var", "code=7", "--lang", "es", "--id", "cli-otp"
    )
    assert (code, out.strip()) == (0, "cli-otp"), err
    assert await redis.xlen(keys.queue("alerts")) == 1


async def test_enqueue_names_each_line_the_worker_would_refuse_and_enqueues_nothing(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path
) -> None:
    config = str(write_config(tmp_path / "router.toml", submit_config(redis_url, provider)))
    jobs = tmp_path / "jobs.jsonl"
    good = {"to": UK, "template": "otp", "vars": {"code": "1"}}
    lines = [good, *(job for job, _ in REFUSED), {"to": UK, "text": "x" * 306}]
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, out, err = await cli("enqueue", "-c", config, str(jobs))
    assert code == 1 and not out
    assert err.strip().splitlines() == [
        *(f"{jobs}:{number}: {error}" for number, (_, error) in enumerate(REFUSED, 2)),
        "3 bad line(s); nothing enqueued",
    ]
    assert await redis.xlen(keys.queue("alerts")) == 0


def verdict_jobs() -> list[dict[str, Any]]:
    """Jobs on both sides of every check: content x language x sender, and texts of
    random lengths around the two-part limit in three alphabets."""
    contents: list[dict[str, Any]] = [
        {"text": "hello"},
        {"text": "x" * 306},  # 2 GSM parts
        {"text": TOO_LONG},
        {"text": "я" * 134},  # 2 UCS2 parts
        {"text": "я" * 135},  # 3
        {"text": "\u2019" * 300},  # GSM once smart-encoded: 2 parts (3 in UCS2)
        {"text": "x" * 400},  # over the cheap bound (2 x 160 characters)
        {"template": "otp", "vars": {"code": "9"}},
        {"template": "otp", "meta": {"code": 9}},
        {"template": "otp", "vars": {"other": "1"}},
        {"template": "otp", "vars": {"code": ["a"]}},
        {"template": "otp", "meta": {"code": {"a": 1}}},
        {"template": "otp", "vars": {"code": "x" * 300}},  # renders past 2 parts
        {"template": "nope", "vars": {"code": "9"}},
        {"vars": {"code": "9"}},  # no text, and the profile has no default template
    ]
    rng = random.Random(17)
    for _ in range(12):
        alphabet = rng.choice(["x", "я", "€"])  # 1 unit, UCS2, a 2-unit GSM escape
        contents.append({"text": alphabet * rng.randint(120, 330)})
    jobs: list[dict[str, Any]] = []
    for content, lang, sender in itertools.product(
        contents, (None, "es"), (None, NUMBERS[1], OUTSIDE)
    ):
        job = {"id": f"v{len(jobs)}", "to": UK, **content}
        if lang:
            job["lang"] = lang
        if sender:
            job["from"] = sender
        jobs.append(job)
    return jobs


async def test_the_doors_and_the_worker_give_the_same_verdict(
    redis: Redis,
    redis_url: str,
    provider: Provider,
    tmp_path: Path,
    run_daemon: Any,
) -> None:
    data = submit_config(redis_url, provider, smart_encoding=True, window=64)
    data["router"]["state_dir"] = str(tmp_path / "var")
    settings = parse_settings(data, env={}, base_dir=tmp_path)
    jobs = verdict_jobs()
    door = {
        str(jobs[i]["id"]): str(e) for i, e in Client.from_settings(redis, settings).problems(jobs)
    }
    # Both verdicts occur, so the comparison below is not vacuous.
    assert 0 < len(door) < len(jobs)
    # The worker meets each job as a producer's plain XADD, which no door checked.
    for job in jobs:
        await redis.xadd(keys.queue("alerts"), {"job": encode_job(job)})
    run_daemon(settings)
    ids = [str(job["id"]) for job in jobs]

    async def settled() -> bool:
        return all(r.get("status") in ("sent", "rejected") for r in await records(redis, ids))

    await wait_for(settled, 60, "every job sent or rejected")
    worker = {r["id"]: r["error"] for r in await records(redis, ids) if r["status"] == "rejected"}
    assert worker == door
    sent = {r["ref"] for r in provider.requests}
    assert sent == set(ids) - set(door)


async def test_after_a_reload_the_api_judges_by_the_new_templates(
    redis: Redis, redis_url: str, provider: Provider, tmp_path: Path
) -> None:
    data = submit_config(redis_url, provider)
    data["router"]["state_dir"] = str(tmp_path / "var")
    data["api"] = {
        "listen": "127.0.0.1:0",
        "keys": {"ops": {"token": "o" * 32, "scopes": ["admin"]}},
    }
    path = write_config(tmp_path / "router.toml", data)
    daemon = Daemon(parse_settings(data, env={}, base_dir=tmp_path), path)
    task = asyncio.create_task(daemon.run(install_signals=False))
    try:
        await wait_for(lambda: daemon.api is not None and daemon.api.port, 10)
        assert daemon.api is not None
        url = f"http://127.0.0.1:{daemon.api.port}/v1/messages"
        headers = {"Authorization": f"Bearer {'o' * 32}"}
        job = {"id": "welcome-1", "to": UK, "template": "welcome", "vars": {"name": "Ana"}}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(url, json=job) as response:
                assert response.status == 400
                assert await response.json() == {"error": "template: unknown template 'welcome'"}
            data["templates"]["welcome"] = {"text": {"en": "Welcome, {name}"}}
            write_config(path, data)
            assert await daemon.reload()
            async with http.post(url, json=job) as response:
                assert response.status == 202, await response.text()
        await wait_for(lambda: provider.requests, 20, "sent")
        assert provider.requests[0]["text"] == "Welcome, Ana"
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)


def test_the_check_names_the_variable_where_it_came_from_and_changes_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    data = config_dict(redis_url, "http://127.0.0.1:9/", max_segments=2, smart_encoding=True)
    data["templates"] = {"otp": {"text": OTP}}
    settings = parse_settings(data, env={}, base_dir=tmp_path)
    check = JobCheck("alerts", settings.profiles["alerts"], settings.templates)
    job = decode_job(
        encode_job({"to": UK, "template": "otp", "vars": {"code": "\u20189\u2019"}, "lang": "en"}),
        default_id="j",
    )
    assert check.text(job) == "Your code is '9'"  # smart encoding: GSM quotes
    assert (job.text, job.template) == (None, "otp")  # the door's job goes on as it came
    for wire, error in (
        ({"meta": {"code": {"a": 1}}}, "job.meta.code: variable 'code' must be text or a number"),
        ({"vars": {"code": [1]}}, "job.vars.code: variable 'code' must be text or a number"),
        ({"meta": {"other": 1}}, "job.vars.code: missing variable 'code' (template 'otp')"),
    ):
        bad = decode_job(encode_job({"to": UK, "template": "otp", **wire}), default_id="j")
        with pytest.raises(JobError) as caught:
            check.text(bad)
        assert str(caught.value).startswith(error), wire
