"""What the operator sees of the rules: check-config's summary, `sms-router numbers`,
and rule refusals with their code in `log`, `status` and the event stream."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from router import Client
from router.config import Settings, parse_settings
from router.store import keys
from router.store.connections import as_text
from router.summary import today

from ..conftest import NUMBERS, Provider, RunningDaemon, config_dict, wait_for
from ..daemon.test_process import cli, write_config

TOLL_FREE = "+18005550199"
DISABLED = "+12025550143"


def _rules_config(redis_url: str, provider_url: str) -> dict[str, Any]:
    """`alerts` with a LowVolume campaign, a number switched off, an unverified toll-free
    number and one on a Pending campaign; an unused campaign; a template."""
    numbers = [*NUMBERS, DISABLED, TOLL_FREE]
    data = config_dict(
        redis_url,
        provider_url,
        numbers=numbers,
        sender="sticky+geomatch",
        over_cap="defer",
        template="otp",
        smart_encoding=True,
    )
    data["campaigns"]["test"].update(tier="LowVolume", use_cases=["2FA"])
    data["campaigns"]["pending"] = {"brand": "Other", "status": "Pending"}
    data["campaigns"]["spare"] = {"brand": "Spare", "status": "Confirmed", "daily_cap": 500}
    data["numbers"][DISABLED] = {"sms_enabled": False, "campaign": "test"}
    data["numbers"][NUMBERS[2]]["campaign"] = "pending"
    data["numbers"][TOLL_FREE] = {"features": ["SmsSender"]}
    data["templates"] = {
        "otp": {
            "text": {"en": "Your code is {code}", "es": "Tu código es {code}"},
            "description": "one-time codes",
        }
    }
    return data


async def test_check_config_summarises_rules_numbers_campaigns_and_templates(
    tmp_path: Path, redis_url: str, provider: Provider
) -> None:
    config = write_config(tmp_path / "router.toml", _rules_config(redis_url, provider.url))
    code, out, err = await cli("check-config", "-c", str(config))
    assert code == 0, err
    lines = [line.strip() for line in out.splitlines()]
    assert lines[0] == "OK"
    # The profile's first line is unchanged (what the other check-config tests read).
    assert lines[1].startswith("alerts: http outbound async window=8 tps=0 numbers=5 global")
    assert lines[2] == (
        "sender=sticky+geomatch over_cap=defer template=otp smart_encoding=true sticky_ttl=365 days"
    )
    assert "numbers that can send: 2 of 5" in lines
    assert f"{NUMBERS[0]} [long code]: can send (international); campaign test" in lines
    assert f"{DISABLED} [long code]: cannot send: sms_enabled = false; campaign test" in lines
    assert (
        f"{NUMBERS[2]} [long code]: cannot send: campaign 'pending' is Pending, not Confirmed; "
        "campaign pending"
    ) in lines
    assert f"{TOLL_FREE} [toll free]: cannot send: toll-free and not verified" in lines
    assert (
        "campaign test: Confirmed, brand Test (Verified), LowVolume, cap 6,000/day, use cases 2FA"
    ) in lines
    assert "campaign pending: Pending, brand Other (Verified), LowVolume, cap 6,000/day" in out
    assert "campaigns not used by any number: spare" in lines
    assert "template otp: en, es (default en) - one-time codes" in lines
    bulk = lines.index(next(x for x in lines if x.startswith("bulk: http")))
    assert lines[bulk + 1] == "sender=round_robin over_cap=reject template=- smart_encoding=false"


async def test_numbers_shows_capability_todays_count_and_sticky_mappings(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    config = str(write_config(tmp_path / "router.toml", _rules_config(redis_url, provider.url)))
    day = today()
    await redis.hset(keys.campaign_counts(day), mapping={"test": 4321, "pending": 7})
    await redis.hset(keys.campaign_counts("19990101"), "test", 99)  # another day: not shown
    # More mappings than one SCAN/MGET chunk, so the counting crosses chunks.
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(2500):
            pipe.set(keys.sticky("alerts", f"+4479111{i:05d}"), NUMBERS[i % 2], ex=600)
        pipe.set(keys.sticky("alerts", "+447911199999"), DISABLED, ex=600)
        pipe.set(keys.sticky("bulk", "+447911100001"), NUMBERS[0], ex=600)  # other profile
        await pipe.execute()

    code, out, err = await cli("numbers", "-c", config, "--profile", "alerts", "--json")
    assert code == 0, err
    rows = {r["number"]: r for r in map(json.loads, out.strip().splitlines())}
    assert list(rows) == [*NUMBERS, DISABLED, TOLL_FREE]
    first = rows[NUMBERS[0]]
    assert first["can_send"] is True and first["code"] is None
    assert first["features"] == ["SmsSender", "InternationalSmsSender"]
    assert (first["campaign"], first["campaign_status"], first["tier"]) == (
        "test",
        "Confirmed",
        "LowVolume",
    )
    assert (first["today"], first["daily_cap"], first["day"]) == (4321, 6000, day)
    assert (first["sticky"], rows[NUMBERS[1]]["sticky"]) == (1250, 1250)
    assert rows[NUMBERS[2]]["code"] == "campaign_not_confirmed"
    assert rows[NUMBERS[2]]["today"] == 7
    assert rows[DISABLED]["can_send"] is False and rows[DISABLED]["sticky"] == 1
    assert rows[DISABLED]["why"] == "sms_enabled = false"
    toll_free = rows[TOLL_FREE]
    assert toll_free["toll_free"] is True and toll_free["verified"] is False
    assert toll_free["code"] == "no_capable_sender" and toll_free["today"] is None

    code, out, err = await cli("numbers", "-c", config, "--profile", "alerts", columns=250)
    assert code == 0, err
    shown = [x.strip() for x in out.splitlines()]
    line = next(x for x in shown if x.startswith(NUMBERS[0]))
    assert "test (Confirmed, LowVolume)" in line and "yes" in line
    assert "4,321 / 6,000" in line and line.endswith("1250")
    assert "no: no_capable_sender: toll-free and not verified" in next(
        x for x in shown if x.startswith(TOLL_FREE)
    )

    code, _, err = await cli("numbers", "-c", config, "--profile", "nope")
    assert code == 1 and "unknown profile 'nope'" in err
    code, _, err = await cli("numbers", "-c", config)
    assert code == 2 and "--profile" in err


async def test_rule_refusal_shows_its_code_in_log_status_and_events(
    tmp_path: Path,
    redis_url: str,
    provider: Provider,
    redis: Redis,
    run_daemon: Callable[[Settings], RunningDaemon],
) -> None:
    data = config_dict(redis_url, provider.url)
    data["campaigns"]["test"]["use_cases"] = ["2FA"]
    config = str(write_config(tmp_path / "router.toml", data))
    settings = parse_settings(data, env={}, base_dir=tmp_path)
    client = Client.from_settings(redis, settings)
    refused = await client.send("+447911123456", "promo", id="promo-1", use_case="MARKETING")
    fine = await client.send("+447911123456", "code 1", id="otp-1", use_case="2FA")
    running = run_daemon(settings)
    try:
        await wait_for(lambda: len(provider.requests) >= 1, 20, "the allowed job sent")

        async def refused_recorded() -> bool:
            return await redis.hget(keys.record("alerts", refused), "status") == b"rejected"

        await wait_for(refused_recorded, 20, "the refused job recorded")
    finally:
        await running.stop()
    assert len(provider.requests) == 1

    code, out, err = await cli("log", "-c", config, "--status", "rejected", columns=250)
    assert code == 0, err
    line = next(x for x in out.splitlines() if refused in x)
    assert "rejected" in line and "use_case_not_allowed: no number of profile 'alerts'" in line
    assert fine not in out

    code, out, err = await cli("log", "-c", config, "--status", "rejected", "--json")
    assert code == 0, err
    (record,) = [json.loads(x) for x in out.strip().splitlines()]
    assert record["error_code"] == "use_case_not_allowed"
    assert "'MARKETING' is not among campaign 'test'" in record["error"]

    code, out, err = await cli("status", "-c", config, refused)
    assert code == 0, err
    assert "use_case_not_allowed" in out

    events = await redis.xrange(keys.events("alerts"))
    mine = [f for _, f in events if as_text(f.get(b"id", b"")) == refused]
    assert [as_text(f[b"status"]) for f in mine][-1] == "rejected"
    assert as_text(mine[-1][b"error_code"]) == "use_case_not_allowed"
    # Acknowledged, not dead-lettered: the job was well formed.
    assert await redis.xlen(keys.dead_letters("alerts")) == 0
