"""Who may receive from a profile: keywords, opt-outs, block and allow lists, and the
CLI that manages them, against a real redis-server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from router.config import Settings
from router.policy import audience
from router.policy.audience import Audience, classify
from router.store import keys

from ..conftest import Provider, config_dict
from ..daemon.test_process import cli, write_config

MakeSettings = Callable[..., Settings]


def test_classify_takes_the_whole_text_in_any_case_and_spacing(
    make_settings: MakeSettings,
) -> None:
    profile = make_settings().profiles["alerts"]
    assert classify("STOP", profile) == "stop"
    assert classify("  Stop \n", profile) == "stop"
    assert classify("unsubscribe", profile) == "stop"
    assert classify("\tQuit", profile) == "stop"
    assert classify("start", profile) == "start"
    assert classify("UnStop", profile) == "start"
    assert classify(" help ", profile) == "help"
    assert classify("Info", profile) == "help"
    for text in ("stop it", "STOP!", "please stop", "", "   ", "ST OP", "helpme"):
        assert classify(text, profile) is None, text


def test_classify_uses_the_profile_keywords_only(make_settings: MakeSettings) -> None:
    profile = make_settings(
        stop_keywords=["ARRET", "Basta"], start_keywords=["go on"], help_keywords=["AIDE"]
    ).profiles["alerts"]
    assert classify("arrêt", profile) is None
    assert classify("arret", profile) == "stop"
    assert classify("BASTA", profile) == "stop"
    assert classify(" Go On ", profile) == "start"
    assert classify("aide", profile) == "help"
    assert classify("STOP", profile) is None  # the defaults were replaced
    assert classify("help", profile) is None


async def test_screen_reads_opt_outs_and_the_static_lists(
    redis: Redis, make_settings: MakeSettings
) -> None:
    profile = make_settings(blocklist=["+4420", "+15550001111"]).profiles["alerts"]
    screen = Audience(redis, "alerts", profile)
    assert await audience.add_opt_out(redis, "alerts", "+1 650 111 2345")
    verdicts = await screen.screen(
        ["+442071234567", "+15550001111", "+16501112345", "+447911123456"]
    )
    assert verdicts == [
        ("blocked", "+442071234567 is on profile alerts's blocklist (+4420)"),
        ("blocked", "+15550001111 is on profile alerts's blocklist (+15550001111)"),
        ("opted_out", "+16501112345 opted out of profile alerts"),
        None,
    ]
    assert await screen.screen([]) == []


async def test_an_allowlist_admits_only_its_numbers_and_prefixes(
    redis: Redis, make_settings: MakeSettings
) -> None:
    profile = make_settings(allowlist=["+44"]).profiles["alerts"]
    screen = Audience(redis, "alerts", profile)
    assert await screen.screen(["+447911123456", "+16501112345"]) == [
        None,
        ("blocked", "+16501112345 is not on profile alerts's allowlist"),
    ]
    # A Redis allowlist entry widens the configured one.
    await audience.add_list_entry(redis, "alerts", "allow", "+1650")
    assert await screen.screen(["+447911123456", "+16501112345", "+14082223333"]) == [
        None,
        None,
        ("blocked", "+14082223333 is not on profile alerts's allowlist"),
    ]


async def test_an_allowlist_in_redis_alone_also_restricts(
    redis: Redis, make_settings: MakeSettings
) -> None:
    screen = Audience(redis, "alerts", make_settings().profiles["alerts"])
    assert await screen.screen(["+16501112345"]) == [None]
    await audience.add_list_entry(redis, "alerts", "allow", "+447911123456")
    assert await screen.screen(["+16501112345", "+447911123456"]) == [
        ("blocked", "+16501112345 is not on profile alerts's allowlist"),
        None,
    ]


async def test_blocked_beats_opted_out_and_the_longest_prefix_is_named(
    redis: Redis, make_settings: MakeSettings
) -> None:
    profile = make_settings(blocklist=["+1"]).profiles["alerts"]
    await audience.add_list_entry(redis, "alerts", "block", "+1650")
    await audience.add_opt_out(redis, "alerts", "+16501112345")
    screen = Audience(redis, "alerts", profile)
    assert await screen.screen(["+16501112345", "+14082223333"]) == [
        ("blocked", "+16501112345 is on profile alerts's blocklist (+1650)"),
        ("blocked", "+14082223333 is on profile alerts's blocklist (+1)"),
    ]


async def test_a_list_change_reaches_another_instance_on_its_next_batch(
    redis: Redis, make_settings: MakeSettings
) -> None:
    profile = make_settings().profiles["alerts"]
    first = Audience(redis, "alerts", profile)
    second = Audience(redis, "alerts", profile)
    number = "+447911123456"
    assert await second.screen([number]) == [None]
    assert await second.screen([number]) == [None]
    assert second.reloads == 1  # nothing changed: the cached lists serve
    assert await audience.add_list_entry(redis, "alerts", "block", "+44791")
    assert await second.screen([number]) == [
        ("blocked", f"{number} is on profile alerts's blocklist (+44791)")
    ]
    assert second.reloads == 2
    assert await first.screen([number]) == [
        ("blocked", f"{number} is on profile alerts's blocklist (+44791)")
    ]
    assert await audience.remove_list_entry(redis, "alerts", "block", "+44791")
    assert not await audience.remove_list_entry(redis, "alerts", "block", "+44791")
    assert await second.screen([number]) == [None]
    assert await redis.get(keys.lists_version("alerts")) == b"2"  # changes only, not no-ops


async def test_commands_share_the_callers_pipeline(
    redis: Redis, make_settings: MakeSettings
) -> None:
    screen = Audience(redis, "alerts", make_settings().profiles["alerts"])
    await audience.add_opt_out(redis, "alerts", "+447911123456")
    recipients = ["+447911123456", "+16501112345"]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.incr("worker:own:read")
        queued = screen.commands(pipe, recipients)
        pipe.get("worker:own:read")
        replies = await pipe.execute()
    assert queued == 2 and replies[0] == 1 and replies[-1] == b"1"
    assert await screen.verdicts(recipients, replies[1 : 1 + queued]) == [
        ("opted_out", "+447911123456 opted out of profile alerts"),
        None,
    ]
    async with redis.pipeline(transaction=False) as pipe:
        assert screen.commands(pipe, []) == 1
        assert await screen.verdicts([], await pipe.execute()) == []


async def test_management_functions_validate_and_sort(redis: Redis) -> None:
    for number in ("+447911123457", "+1 (650) 111-2345", "+447911123456"):
        assert await audience.add_opt_out(redis, "alerts", number)
    assert not await audience.add_opt_out(redis, "alerts", "+447911123456")
    assert await audience.list_opt_outs(redis, "alerts") == [
        "+16501112345",
        "+447911123456",
        "+447911123457",
    ]
    assert await audience.remove_opt_out(redis, "alerts", "+447911123457")
    assert not await audience.remove_opt_out(redis, "alerts", "+447911123457")
    with pytest.raises(ValueError, match=r"'07911123456' is not a valid E\.164 number"):
        await audience.add_opt_out(redis, "alerts", "07911123456")
    for bad in ("44", "+", "+4420x", "+1234567890123456", "+44 20"):
        with pytest.raises(ValueError, match=r"is not a number or prefix \('\+' then 1-15"):
            await audience.add_list_entry(redis, "alerts", "block", bad)
    assert await audience.add_list_entry(redis, "alerts", "block", "+4420")
    assert await audience.add_list_entry(redis, "alerts", "allow", "+44")
    assert await audience.add_list_entry(redis, "alerts", "allow", "+1")
    assert await audience.show_lists(redis, "alerts") == {
        "block": ["+4420"],
        "allow": ["+1", "+44"],
    }
    assert await redis.get(keys.lists_version("alerts")) == b"3"


async def test_list_opt_outs_pages_through_a_large_set(redis: Redis) -> None:
    numbers = [f"+44791100{i:04d}" for i in range(2500)]
    await redis.sadd(keys.opt_outs("alerts"), *numbers)
    assert await audience.list_opt_outs(redis, "alerts") == sorted(numbers)


def _config(tmp_path: Path, redis_url: str, provider: Provider) -> str:
    data = config_dict(redis_url, provider.url, blocklist=["+4420"], allowlist=["+44", "+1"])
    return str(write_config(tmp_path / "router.toml", data))


async def test_optout_commands(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    config = _config(tmp_path, redis_url, provider)
    code, out, err = await cli(
        "optout", "add", "-c", config, "--profile", "alerts", "+44 7911 123456"
    )
    assert code == 0, err
    assert out.strip() == "+447911123456 opted out of profile alerts"
    assert await redis.sismember(keys.opt_outs("alerts"), "+447911123456")
    await redis.sadd(keys.opt_outs("alerts"), "+16501112345")
    code, out, err = await cli("optout", "list", "-c", config, "--profile", "alerts")
    assert code == 0, err
    assert out.split() == ["+16501112345", "+447911123456"]
    assert "2 opted-out number(s)" in err
    code, out, err = await cli(
        "optout", "remove", "--profile", "alerts", "-c", config, "+16501112345"
    )
    assert code == 0, err
    assert out.strip() == "+16501112345 opted back in to profile alerts"
    assert await redis.smembers(keys.opt_outs("alerts")) == {b"+447911123456"}
    code, out, err = await cli("optout", "add", "-c", config, "--profile", "alerts", "0791")
    assert code == 2 and not out and "Invalid value for NUMBER" in err
    code, _, err = await cli("optout", "add", "-c", config, "--profile", "nope", "+16501112345")
    assert code == 1 and "unknown profile 'nope'" in err
    code, _, err = await cli("optout", "list", "-c", config)
    assert code == 2 and "--profile" in err


async def test_lists_commands(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    config = _config(tmp_path, redis_url, provider)
    code, out, err = await cli(
        "lists", "add", "-c", config, "--profile", "alerts", "--block", "+4479"
    )
    assert code == 0, err
    assert out.strip() == "+4479 added to profile alerts's blocklist"
    code, out, err = await cli(
        "lists", "add", "-c", config, "--profile", "alerts", "--allow", "+33"
    )
    assert code == 0, err
    code, out, err = await cli("lists", "show", "-c", config, "--profile", "alerts")
    assert code == 0, err
    assert out.splitlines() == [
        "blocklist (config): +4420",
        "blocklist (redis): +4479",
        "allowlist (config): +1 +44",
        "allowlist (redis): +33",
    ]
    code, out, err = await cli(
        "lists", "remove", "-c", config, "--profile", "alerts", "--block", "+4420"
    )
    assert code == 0 and "+4420 was not on profile alerts's blocklist" in out
    assert "is in the configuration" in err
    code, out, err = await cli(
        "lists", "remove", "-c", config, "--profile", "alerts", "--block", "+4479"
    )
    assert code == 0 and out.strip() == "+4479 removed from profile alerts's blocklist"
    assert await redis.smembers(keys.block_list("alerts")) == set()
    assert await redis.get(keys.lists_version("alerts")) == b"3"
    code, _, err = await cli("lists", "add", "-c", config, "--profile", "alerts", "+4479")
    assert code == 2 and "--block or --allow" in err
    code, _, err = await cli(
        "lists", "add", "-c", config, "--profile", "alerts", "--block", "--allow", "+4479"
    )
    assert code == 2 and "--block or --allow" in err
    code, _, err = await cli("lists", "add", "-c", config, "--profile", "alerts", "--block", "44x")
    assert code == 2 and "'44x' is not a number or prefix" in err
    code, _, err = await cli("lists", "show", "-c", config, "--profile", "nope")
    assert code == 1 and "unknown profile 'nope'" in err
