"""Receipts are asked for only where they can come back.

A delivery receipt arrives as a deliver_sm, which an SMPP transmitter session cannot
receive (and the router binds no receiver session). Before: a transmitter asked for
one anyway (registered_delivery = 1), so every message waited report_timeout (48 h)
and was then noted "no delivery report". Real daemon, real Redis, our simulator.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from redis.asyncio import Redis

from router import Client
from router.config import parse_settings
from router.store import keys
from sims.smscsim import SmscSimulator

from ..conftest import wait_for
from .test_smpp_flow import Start, all_in, smpp_config, smpp_settings


async def test_a_transmitter_asks_for_no_receipts_and_nothing_waits_for_one(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    settings = smpp_settings(redis_url, tmp_path, smsc.port, smpp={"bind": "transmitter"})  # type: ignore[attr-defined]
    smpp = settings.profiles["sms"].smpp
    assert smpp is not None and smpp.registered_delivery == 0 and smpp.report_wait == 0
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": f"m{i}"} for i in range(5)]
    )
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, ids, {"sent"}), 20, "sent")
    assert {s["registered_delivery"] for s in smsc.submits} == {0}
    assert smsc.stats()["receipts_sent"] == 0
    # Nothing is left waiting for a report that cannot come.
    assert await redis.zcard(keys.awaiting_reports("sms")) == 0


async def test_a_transceiver_still_asks_for_receipts_by_default(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    settings = smpp_settings(redis_url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    smpp = settings.profiles["sms"].smpp
    assert smpp is not None and smpp.bind == "transceiver" and smpp.registered_delivery == 1
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": "hello"}]
    )
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, ids, {"delivered"}), 20, "delivered")
    assert {s["registered_delivery"] for s in smsc.submits} == {1}


def test_an_explicit_receipt_request_is_kept_and_warned_about(
    redis_url: str, tmp_path: Path
) -> None:
    """An operator who sets registered_delivery = 1 on a transmitter gets what they
    asked for, and check-config says the receipts cannot come back and what to do."""
    data = smpp_config(redis_url, tmp_path, 2775, smpp={"bind": "transmitter",
                                                         "registered_delivery": 1})  # fmt: skip
    smpp = parse_settings(data, env={}).profiles["sms"].smpp
    assert smpp is not None and smpp.registered_delivery == 1
    assert "WARNING registered_delivery = 1" in smpp.receipts_note
    assert 'bind = "transceiver"' in smpp.receipts_note
    data = smpp_config(redis_url, tmp_path, 2775, smpp={"bind": "transmitter"})
    smpp = parse_settings(data, env={}).profiles["sms"].smpp
    assert smpp is not None and smpp.receipts_note.startswith("no delivery reports")
    data = smpp_config(redis_url, tmp_path, 2775, smpp={"registered_delivery": 0})
    smpp = parse_settings(data, env={}).profiles["sms"].smpp
    assert smpp is not None and smpp.registered_delivery == 0 and not smpp.receipts_note


async def test_check_config_prints_the_warning(redis_url: str, tmp_path: Path) -> None:
    lines = [
        "[router]",
        f'redis = "{redis_url}"',
        "[profiles.sms]",
        'protocol = "smpp"',
        "global = true",
        'numbers = ["+15550100"]',
        "[profiles.sms.smpp]",
        'host = "127.0.0.1"',
        'system_id = "smppclient1"',
        'password = "password"',
        'bind = "transmitter"',
        "registered_delivery = 1",
        '[numbers."+15550100"]',
        'features = ["SmsSender", "InternationalSmsSender"]',
    ]
    config = tmp_path / "router.toml"
    config.write_text("\n".join(lines) + "\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "check-config", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert text.startswith("OK"), text
    assert "WARNING registered_delivery = 1 asks for delivery reports" in text, text
    assert 'use bind = "transceiver"' in text, text
