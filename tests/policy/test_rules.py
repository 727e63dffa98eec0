"""Send-time rules (router/policy/rules.py): which numbers may send which message, and why not."""

from __future__ import annotations

from typing import Any

import pytest

from router.config import Settings, parse_settings
from router.policy.rules import SenderRules

US_A, US_B, US_C = "+14155552671", "+14082223333", "+16505550100"
TOLL_FREE = "+18005550100"
UK = "+447911123456"
TO_US, TO_CA, TO_UK = "+12125550123", "+14165550100", "+447700900123"


def settings_with(
    numbers: dict[str, dict[str, Any]], campaigns: dict[str, dict[str, Any]] | None = None
) -> Settings:
    profile = {
        "protocol": "http",
        "numbers": list(numbers),
        "http": {"url": "http://127.0.0.1:9/send"},
    }
    return parse_settings(
        {
            "router": {"redis": "redis://127.0.0.1:1"},
            "campaigns": campaigns or {},
            "numbers": numbers,
            "profiles": {"p": profile},
        },
        env={},
    )


def confirmed(**extra: Any) -> dict[str, Any]:
    return {"brand": "B", "status": "Confirmed", "brand_status": "Verified", **extra}


def rules(numbers: dict[str, dict[str, Any]], **campaigns: dict[str, Any]) -> SenderRules:
    settings = settings_with(numbers, campaigns)
    return SenderRules("p", list(numbers), settings)


def test_a_us_long_code_sends_only_on_a_confirmed_campaign_of_a_good_brand() -> None:
    r = rules(
        {
            US_A: {"campaign": "ok"},
            US_B: {"campaign": "pending"},
            US_C: {"campaign": "unverified"},
        },
        ok=confirmed(),
        pending={"brand": "B", "status": "Pending"},
        unverified=confirmed(brand_status="Unverified"),
    )
    capable = r.capable(TO_US, None)
    assert capable.numbers == (US_A,)
    assert capable.refusals[US_B].code == "campaign_not_confirmed"
    assert "campaign 'pending' is Pending" in capable.refusals[US_B].reason
    assert capable.refusals[US_C].code == "campaign_not_confirmed"
    assert "brand is Unverified" in capable.refusals[US_C].reason


def test_no_campaign_never_sends_and_the_job_says_why() -> None:
    r = rules({US_A: {}, US_B: {"campaign": "c"}}, c={"brand": "B", "status": "Suspended"})
    capable = r.capable(TO_US, None)
    assert capable.numbers == ()
    assert capable.refusal is not None
    assert capable.refusal.code == "campaign_not_confirmed"
    assert US_A in capable.refusal.reason and US_B in capable.refusal.reason


def test_features_and_sms_enabled() -> None:
    r = rules(
        {
            UK: {"features": ["MmsSender"]},
            "+447911123457": {"sms_enabled": False},
            "+447911123458": {"features": ["A2PSmsSender"]},
        }
    )
    capable = r.capable(TO_UK, None)
    assert capable.numbers == ("+447911123458",)
    assert capable.refusals[UK].code == "no_capable_sender"
    assert "sms_enabled = false" in capable.refusals["+447911123457"].reason


def test_another_country_needs_international_sms_sender() -> None:
    r = rules({UK: {}, "+447911123457": {"features": ["SmsSender", "InternationalSmsSender"]}})
    assert r.capable(TO_UK, None).numbers == (UK, "+447911123457")
    abroad = r.capable(TO_US, None)
    assert abroad.numbers == ("+447911123457",)
    assert abroad.refusals[UK].code == "international_not_enabled"
    only = rules({UK: {}})
    refusal = only.capable(TO_US, None).refusal
    assert refusal is not None and refusal.code == "international_not_enabled"


def test_canada_is_another_country_than_the_us() -> None:
    r = rules({US_A: {"campaign": "c"}}, c=confirmed())
    refusal = r.capable(TO_CA, None).refusal
    assert refusal is not None and refusal.code == "international_not_enabled"


def test_toll_free_needs_verification() -> None:
    assert rules({TOLL_FREE: {"verified": True}}).capable(TO_US, None).numbers == (TOLL_FREE,)
    refusal = rules({TOLL_FREE: {}}).capable(TO_US, None).refusal
    assert refusal is not None
    assert refusal.code == "no_capable_sender" and "toll-free" in refusal.reason


def test_use_case_must_be_among_the_campaign_s() -> None:
    r = rules(
        {US_A: {"campaign": "otp"}, US_B: {"campaign": "mkt"}},
        otp=confirmed(use_cases=["2FA"]),
        mkt=confirmed(use_cases=["MARKETING"]),
    )
    assert r.capable(TO_US, "2FA").numbers == (US_A,)
    assert r.capable(TO_US, "MARKETING").numbers == (US_B,)
    assert r.capable(TO_US, None).numbers == (US_A, US_B)
    refusal = r.capable(TO_US, "POLITICAL").refusal
    assert refusal is not None and refusal.code == "use_case_not_allowed"
    assert "'POLITICAL'" in refusal.reason


def test_caps_count_us_and_ca_destinations_only() -> None:
    r = rules(
        {
            US_A: {"campaign": "low", "features": ["SmsSender", "InternationalSmsSender"]},
            US_B: {"campaign": "std"},
            US_C: {"campaign": "big"},
        },
        low=confirmed(tier="LowVolume"),
        std=confirmed(tier="StandardVolume"),
        big=confirmed(tier="StandardVolume", daily_cap=50_000),
    )
    assert r.caps() == {"low": 6000, "big": 50_000}
    assert r.capable(TO_US, None).campaign == {US_A: "low", US_C: "big"}
    assert r.capable(TO_UK, None).campaign == {}  # abroad: not counted


def test_geomatch_tiers_area_then_country_then_any() -> None:
    sf, nyc = "+14155552671", "+12125550100"
    r = rules(
        {
            UK: {"features": ["SmsSender", "InternationalSmsSender"]},
            sf: {"campaign": "c", "features": ["SmsSender", "InternationalSmsSender"]},
            nyc: {"campaign": "c", "features": ["SmsSender", "InternationalSmsSender"]},
        },
        c=confirmed(),
    )
    assert r.capable("+12125550999", None).tiers == ((nyc,), (sf,), (UK,))
    assert r.capable("+14155550999", None).tiers == ((sf,), (nyc,), (UK,))
    assert r.capable(TO_UK, None).tiers == ((UK,), (sf, nyc))


@pytest.mark.parametrize("use_case", [f"U{i}" for i in range(3)])
def test_answers_are_kept_per_destination_kind(use_case: str) -> None:
    r = rules({UK: {}})
    assert r.capable(TO_UK, use_case) is r.capable("+447700900999", use_case)
