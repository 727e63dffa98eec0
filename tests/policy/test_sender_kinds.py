"""Senders of every kind (issue 19): long codes, toll-free numbers, short codes and
alphanumeric sender IDs in a profile's numbers and a job's ``from``, and the rules
that know them (router/numbers.py, router/config.py, router/policy/rules.py, jobs.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from redis.asyncio import Redis

from binds.smpp.bodies import source_address
from router.config import ConfigError, Settings, parse_settings
from router.numbers import normalise_sender, sender_kind
from router.policy.jobs import JobError, decode_job, encode_job
from router.policy.rules import Refusal, SenderRules
from router.policy.senders import SenderPool, Want
from router.summary import config_lines, number_facts

US_LONG, TOLL_FREE, UK_LONG = "+14155552671", "+18005550100", "+447911123456"
TO_US, TO_CA, TO_UK, TO_FR = "+12125550123", "+14165550100", "+447700900123", "+33612345678"


@pytest.mark.parametrize(
    ("given", "stored", "kind"),
    [
        ("+1 415 555 2671", US_LONG, "long_code"),
        ("+18005550100", TOLL_FREE, "toll_free"),
        ("72345", "72345", "short_code"),
        ("123", "123", "short_code"),
        ("12345678", "12345678", "short_code"),
        ("ACME", "ACME", "alphanumeric"),
        ("Acme Bank 1", "Acme Bank 1", "alphanumeric"),
        ("A", "A", "alphanumeric"),
        ("2FA", "2FA", "alphanumeric"),
    ],
)
def test_each_kind_of_sender_is_recognised(given: str, stored: str, kind: str) -> None:
    assert normalise_sender(given) == stored
    assert sender_kind(stored) == kind


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("TOO LONG SENDER", "alphanumeric sender ID (1-11"),
        ("12", "a short code has 3-8 digits"),
        ("123456789", "must start with '+'"),
        ("AC-ME", "letters, digits or inner spaces"),
        (" ACME", "letters, digits or inner spaces"),
        ("ACME ", "letters, digits or inner spaces"),
        ("Grüße", "letters, digits or inner spaces"),
        ("", "is not a sender"),
    ],
)
def test_a_bad_sender_is_named_with_what_a_sender_is(given: str, why: str) -> None:
    with pytest.raises(ValueError, match="is not a sender") as caught:
        normalise_sender(given)
    assert why in str(caught.value)
    with pytest.raises(ValueError, match=r"not a valid E\.164 number"):
        normalise_sender("+1650")  # a '+' is a number: the E.164 error, as before


def test_a_job_from_of_each_kind_is_checked_at_the_door() -> None:
    for sender in ("ACME", "72345", "+1 415 555 2671"):
        job = decode_job(encode_job({"to": TO_UK, "text": "hi", "from": sender}), default_id="j")
        assert job.sender == normalise_sender(sender)
    with pytest.raises(JobError) as caught:
        decode_job(
            encode_job({"to": TO_UK, "text": "hi", "from": "TOO LONG SENDER"}), default_id="j"
        )
    assert str(caught.value).startswith("job.from: 'TOO LONG SENDER' is not a sender: ")
    assert caught.value.field == "from"


def settings_with(
    numbers: dict[str, dict[str, Any]], *, router: dict[str, Any] | None = None
) -> Settings:
    return parse_settings(config(numbers, router=router), env={})


def config(
    numbers: dict[str, dict[str, Any]], *, router: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "router": {"redis": "redis://127.0.0.1:1", **(router or {})},
        "campaigns": {"ok": {"brand": "B", "status": "Confirmed"}},
        "numbers": {n: d for n, d in numbers.items() if d},
        "profiles": {
            "p": {
                "protocol": "http",
                "numbers": list(numbers),
                "http": {"url": "http://127.0.0.1:9/send"},
            }
        },
    }


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(data, env={})
    return caught.value.problems


def test_a_profile_holds_senders_of_every_kind() -> None:
    settings = settings_with(
        {"ACME": {}, "72345": {"country": "us"}, US_LONG: {"campaign": "ok"}, TOLL_FREE: {}}
    )
    assert settings.profiles["p"].numbers == ["ACME", "72345", US_LONG, TOLL_FREE]
    assert settings.number("72345").country == "US"
    assert settings.profile_of_number("ACME") == "p"
    kinds = {f["number"]: f["kind"] for f in number_facts(settings, "p")}
    assert kinds == {
        "ACME": "alphanumeric",
        "72345": "short_code",
        US_LONG: "long_code",
        TOLL_FREE: "toll_free",
    }
    lines = [line.strip() for line in config_lines(settings)]
    assert "ACME [alphanumeric]: can send (not to US, CA)" in lines
    assert "72345 [short code]: can send (within US only)" in lines
    assert f"{US_LONG} [long code]: can send (domestic only); campaign ok" in lines


def test_sender_mistakes_are_named_where_they_are() -> None:
    found = problems(config({"TOO LONG SENDER": {}}))
    assert any(
        p.startswith("profiles.p.numbers[0]: 'TOO LONG SENDER' is not a sender") for p in found
    ), found
    found = problems(config({"72345": {}}))
    assert any("short code 72345 needs its country" in p for p in found), found
    found = problems(config({"72345": {"country": "XX"}}))
    assert any("'XX' is not a known ISO 3166 country code" in p for p in found), found
    found = problems(config({"ACME": {"campaign": "ok"}, "72345": {"country": "US"}}))
    assert any(
        "numbers.ACME.campaign: a 10DLC campaign is for US/CA long codes" in p for p in found
    )
    found = problems(config({"ACME": {"country": "GB"}}))
    assert any("numbers.ACME.country: only a short code takes a country" in p for p in found)
    found = problems(config({"ACME": {}}, router={"alphanumeric_refused": ["US", "ZZZ"]}))
    assert any(p.startswith("router.alphanumeric_refused[1]") for p in found), found


def test_an_alphanumeric_sender_is_refused_where_it_is_not_accepted() -> None:
    settings = settings_with({"ACME": {}})
    rules = SenderRules("p", ["ACME"], settings)
    assert rules.capable(TO_UK, None).numbers == ("ACME",)  # no home country: any country
    assert rules.capable(TO_FR, None).numbers == ("ACME",)
    for to in (TO_US, TO_CA):
        refusal = rules.capable(to, None).refusal
        assert refusal is not None and refusal.code == "sender_not_allowed"
        assert "does not accept alphanumeric sender IDs" in refusal.reason
    # The list is the operator's: France refused, the US accepted.
    settings = settings_with({"ACME": {}}, router={"alphanumeric_refused": ["fr"]})
    rules = SenderRules("p", ["ACME"], settings)
    assert rules.capable(TO_US, None).numbers == ("ACME",)
    refusal = rules.capable(TO_FR, None).refusal
    assert refusal is not None and refusal.code == "sender_not_allowed"


def test_the_pool_picks_among_the_senders_allowed_for_the_destination() -> None:
    settings = settings_with(
        {
            "ACME": {},
            US_LONG: {"campaign": "ok", "features": ["SmsSender"]},
            "72345": {"country": "GB"},
        }
    )
    rules = SenderRules("p", settings.profiles["p"].numbers, settings)
    assert rules.capable(TO_US, None).numbers == (US_LONG,)
    assert rules.capable(TO_UK, None).numbers == ("ACME", "72345")
    refusals = rules.capable(TO_US, None).refusals
    assert refusals["ACME"].code == refusals["72345"].code == "sender_not_allowed"
    assert "a short code sends only within its country" in refusals["72345"].reason


def test_ten_dlc_applies_to_us_and_ca_long_codes_only() -> None:
    settings = settings_with({US_LONG: {}, "72345": {"country": "US"}})
    rules = SenderRules("p", [US_LONG, "72345"], settings)
    # A US long code without a campaign is still refused, as before.
    static = rules.static_refusal(US_LONG)
    assert static is not None and static.code == "campaign_not_confirmed"
    # A US short code needs none.
    assert rules.static_refusal("72345") is None
    assert rules.capable(TO_US, "2FA").numbers == ("72345",)
    assert rules.caps() == {}


def test_a_uk_long_code_keeps_its_rules() -> None:
    settings = settings_with({UK_LONG: {}})
    rules = SenderRules("p", [UK_LONG], settings)
    assert rules.capable(TO_UK, None).numbers == (UK_LONG,)
    refusal = rules.capable(TO_US, None).refusal
    assert refusal is not None and refusal.code == "international_not_enabled"


@pytest.mark.parametrize(
    ("source", "address", "ton", "npi"),
    [
        ("ACME", "ACME", 5, 0),
        ("Acme Bank 1", "Acme Bank 1", 5, 0),
        ("72345", "72345", 3, 0),
        (US_LONG, US_LONG[1:], 1, 1),
        (TOLL_FREE, TOLL_FREE[1:], 1, 1),
    ],
)
def test_each_kind_has_its_smpp_address(source: str, address: str, ton: int, npi: int) -> None:
    assert source_address(source) == (address, ton, npi)


async def test_sender_preference_picks_the_preferred_kind_where_it_may(redis: Redis) -> None:
    data = config({"ACME": {}, "BRAND": {}, US_LONG: {"campaign": "ok", "features": ["SmsSender"]}})
    data["profiles"]["p"]["sender_preference"] = ["alphanumeric"]
    settings = parse_settings(data, env={})
    profile = settings.profiles["p"]
    senders = SenderPool(redis, "p", profile, SenderRules("p", profile.numbers, settings))
    # To the UK (the long code may not send abroad): the two IDs, in turn.
    assert Counter(await choose(senders, [Want(TO_UK) for _ in range(10)])) == {
        "ACME": 5,
        "BRAND": 5,
    }
    # To the US, where IDs are refused: the long code, the preference notwithstanding.
    assert set(await choose(senders, [Want(TO_US) for _ in range(4)])) == {US_LONG}
    data["profiles"]["p"]["sender_preference"] = ["long_code", "alphanumeric"]
    data["numbers"][US_LONG]["features"] = ["SmsSender", "InternationalSmsSender"]
    settings = parse_settings(data, env={})
    profile = settings.profiles["p"]
    senders = SenderPool(redis, "p", profile, SenderRules("p", profile.numbers, settings))
    assert set(await choose(senders, [Want(TO_UK) for _ in range(6)])) == {US_LONG}
    # Without a preference: every allowed sender in turn, as before.
    del data["profiles"]["p"]["sender_preference"]
    settings = parse_settings(data, env={})
    profile = settings.profiles["p"]
    senders = SenderPool(redis, "p", profile, SenderRules("p", profile.numbers, settings))
    assert Counter(await choose(senders, [Want(TO_UK) for _ in range(9)])) == {
        "ACME": 3,
        "BRAND": 3,
        US_LONG: 3,
    }
    data["profiles"]["p"]["sender_preference"] = ["short_code", "alphanumeric"]
    lines = [line.strip() for line in config_lines(parse_settings(data, env={}))]
    assert any("sender_preference=short_code,alphanumeric" in line for line in lines), lines
    found = problems(
        {**data, "profiles": {"p": {**data["profiles"]["p"], "sender_preference": ["fax"]}}}
    )
    assert any(p.startswith("profiles.p.sender_preference[0]") for p in found), found


async def choose(senders: SenderPool, wants: list[Want]) -> list[str | Refusal]:
    """One batch's picks, as the worker makes them (one round trip, then `pick`)."""
    async with senders._redis.pipeline(transaction=False) as pipe:
        senders.commands(pipe, wants)
        replies = await pipe.execute()
    picks, _ = await senders.pick(wants, replies)
    return picks
