"""Senders of every kind over SMPP, end to end (issue 19): the real daemon, a real
Redis and our SMSC simulator, which records each submit's source address, TON and NPI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from router import Client
from router.config import parse_settings
from router.store.ledger import Ledger
from sims.smscsim import SmscSimulator

from ..conftest import wait_for
from .test_smpp_flow import FINAL, Start, all_in, smpp_config

US_LONG = "+14155552671"  # no campaign: a US long code that may not send (10DLC)


async def test_each_kind_reaches_the_smsc_with_its_ton_and_npi(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    data: dict[str, Any] = smpp_config(redis_url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    data["profiles"]["sms"]["numbers"] = ["ACME", "72345", US_LONG]
    data["numbers"] = {"72345": {"country": "GB"}, US_LONG: {"features": ["SmsSender"]}}
    settings = parse_settings(data, env={})
    client = Client.from_settings(redis, settings)
    sent = await client.send_many(
        [
            {"to": "+447911123456", "text": "alpha", "from": "ACME"},
            {"to": "+447911123457", "text": "short", "from": "72345"},
        ]
    )
    refused = await client.send_many(
        [
            {"to": "+12125550123", "text": "alpha to US", "from": "ACME"},
            {"to": "+12125550124", "text": "any to US"},  # no sender may
            {"to": "+12125550125", "text": "long code", "from": US_LONG},
        ]
    )
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, sent, {"delivered"}), 20, "delivered")
    await wait_for(lambda: all_in(redis, refused, FINAL | {"rejected"}), 20, "settled")
    by_source = {s["source"]: s for s in smsc.submits}
    assert set(by_source) == {"ACME", "72345"}  # nothing else reached the SMSC
    assert (by_source["ACME"]["source_ton"], by_source["ACME"]["source_npi"]) == (5, 0)
    assert (by_source["72345"]["source_ton"], by_source["72345"]["source_npi"]) == (3, 0)
    ledger = Ledger(redis, retention=60, events_maxlen=10)
    alpha, anyone, long_code = await ledger.find(refused)
    assert alpha is not None and alpha["status"] == "rejected"
    assert alpha["error_code"] == "sender_not_allowed"
    assert "does not accept alphanumeric sender IDs" in alpha["error"]
    assert anyone is not None and anyone["status"] == "rejected"
    assert anyone["error_code"] == "campaign_not_confirmed"  # the most specific of the two
    assert long_code is not None and long_code["status"] == "rejected"
    assert long_code["error_code"] == "campaign_not_confirmed"


async def test_a_long_code_keeps_ton_1_npi_1(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    data = smpp_config(redis_url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    settings = parse_settings(data, env={})
    sender = settings.profiles["sms"].numbers[0]
    ids = await Client.from_settings(redis, settings).send_many(
        [{"to": "+447911123456", "text": "hi", "from": sender}]
    )
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, ids, {"delivered"}), 20, "delivered")
    [submit] = smsc.submits
    assert (submit["source"], submit["source_ton"], submit["source_npi"]) == (sender[1:], 1, 1)


async def test_a_sender_addressed_as_configured(
    redis: Redis, redis_url: str, tmp_path: Path, smsc: SmscSimulator, run_daemon: Start
) -> None:
    """`[numbers."72345"] ton/npi` win over the kind's TON 3 NPI 0 (an SMSC that wants
    its short codes as TON 0 NPI 1); an unset one keeps the kind's."""
    data: dict[str, Any] = smpp_config(redis_url, tmp_path, smsc.port)  # type: ignore[attr-defined]
    data["profiles"]["sms"]["numbers"] = ["72345", "ACME"]
    data["numbers"] = {"72345": {"country": "GB", "ton": 0, "npi": 1}, "ACME": {"npi": 9}}
    settings = parse_settings(data, env={})
    ids = await Client.from_settings(redis, settings).send_many(
        [
            {"to": "+447911123456", "text": "short", "from": "72345"},
            {"to": "+447911123457", "text": "alpha", "from": "ACME"},
        ]
    )
    run_daemon(settings)
    await wait_for(lambda: all_in(redis, ids, {"delivered"}), 20, "delivered")
    by_source = {s["source"]: (s["source_ton"], s["source_npi"]) for s in smsc.submits}
    assert by_source == {"72345": (0, 1), "ACME": (5, 9)}
