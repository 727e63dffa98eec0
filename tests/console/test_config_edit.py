"""The console's configuration edits (router/console/config_edit.py): the shipped
router.toml and small hand-written files with comments, changed through tomlkit,
validated by the router's own loader, written atomically; and a running daemon that
reloads a moved number into its new profile."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from router import Client
from router.console.config_edit import (
    MASK,
    PROFILE_SETTINGS,
    ConfigEditError,
    MoveSender,
    Plan,
    SetProfileSetting,
    SetSmsEnabled,
    apply,
    mask_secrets,
    plan,
    setting_kind,
)
from router.errors import RouterError
from router.store.ledger import Ledger

from ..conftest import Provider, config_dict, wait_for
from ..daemon.test_process import write_config

ROOT = Path(__file__).resolve().parents[2]

SMALL = """\
# Hand-written configuration: comments everywhere.
[router]
redis = "redis://127.0.0.1:6379/0"   # where the queues live

[campaigns.main]
brand = "Acme"
status = "Confirmed"
use_cases = ["2FA", "ACCOUNT_NOTIFICATION"]

# Senders with details.
[numbers."+16501112345"]
campaign = "main"   # 10DLC
[numbers."+14082223333"]
campaign = "main"
sms_enabled = false   # paused by ops

# The profiles follow.
[profiles.alerts]           # urgent things
global = true
protocol = "http"
window = 8                  # in flight
numbers = [
  "+16501112345",  # main line
  "+14082223333",
]
sender = "round_robin"

[profiles.alerts.http]
url = "http://127.0.0.1:9/send"
form = { from = "{from}", to = "{to}", text = "{text}" }

[profiles.bulk]
protocol = "http"
numbers = ["+447911123456", "ACME"]   # UK and an alphanumeric ID
default_use_case = "MARKETING"

[profiles.bulk.http]
url = "http://127.0.0.1:9/send"
form = { from = "{from}", to = "{to}", text = "{text}" }
"""


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    """The repository's router.toml, with the token files it reads (as `make run`)."""
    path = tmp_path / "router.toml"
    shutil.copyfile(ROOT / "router.toml", path)
    (tmp_path / "var").mkdir()
    for name in ("api-token", "ops-token", "twilio-auth-token", "kannel-token"):
        (tmp_path / "var" / name).write_text(secrets.token_hex(16) + "\n")
    return path


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    write(path, SMALL)
    return path


def changed(found: Plan) -> tuple[list[str], list[str]]:
    """The diff's removed and added lines (without their - / +)."""
    lines = found.diff.splitlines()[2:]  # past the --- / +++ header
    removed = [line[1:] for line in lines if line.startswith("-")]
    added = [line[1:] for line in lines if line.startswith("+")]
    return removed, added


def read(path: Path) -> str:
    return path.read_text()


def write(path: Path, text: str) -> None:
    path.write_text(text)


def owner(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_uid, status.st_gid


def loaded(path: Path) -> dict[str, Any]:
    return tomllib.loads(read(path))


def stamp(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


async def refused(path: Path, found: Plan, reason: str, seen: str | None = None) -> None:
    """Applying `found` is refused naming `reason`, and the file stays as it was."""
    before = stamp(path)
    reloads: list[bool] = []

    async def reload() -> bool:
        reloads.append(True)
        return True

    outcome = await apply(found, reload, seen=seen)
    assert not outcome.applied and outcome.reloaded is None and not reloads
    assert any(reason in problem for problem in outcome.problems), outcome.problems
    assert "not applied" in outcome.message
    assert stamp(path) == before
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


# ---------------------------------------------------------------- the shipped file


async def test_moving_a_number_in_the_shipped_file_changes_only_the_two_arrays(
    shipped: Path,
) -> None:
    old = read(shipped)
    found = plan(shipped, MoveSender("+1 415 555 2671", "web"), env={})
    assert found.ok and found.problems_before == []
    assert found.summary == "move +14155552671 from profile demo to profile web"
    assert changed(found) == (
        [
            'numbers = ["+16501112345", "+14082223333", "+14155552671"]',
            'numbers = ["+14155550100"]',
        ],
        [
            'numbers = ["+16501112345", "+14082223333"]',
            'numbers = ["+14155550100", "+14155552671"]',
        ],
    )
    # Byte for byte: every comment, blank line and alignment elsewhere is the same.
    assert found.new_text == old.replace(
        'numbers = ["+16501112345", "+14082223333", "+14155552671"]',
        'numbers = ["+16501112345", "+14082223333"]',
    ).replace('numbers = ["+14155550100"]', 'numbers = ["+14155550100", "+14155552671"]')
    assert read(shipped) == old  # planning writes nothing

    outcome = await apply(found)
    assert outcome.applied and outcome.reloaded is None
    assert read(shipped) == found.new_text
    data = loaded(shipped)
    assert data["profiles"]["web"]["numbers"] == ["+14155550100", "+14155552671"]
    # The number's details and the inbound route naming it stay where they were.
    assert data["numbers"]["+14155552671"]["campaign"] == "demo"
    assert data["inbound_routes"][0]["to"] == ["+14155552671"]


async def test_disabling_and_enabling_sms_in_the_shipped_file(shipped: Path) -> None:
    old = read(shipped)
    found = plan(shipped, SetSmsEnabled("+14155550100", False), env={})
    assert found.ok and found.summary == "disable SMS on +14155550100"
    # The key goes after the table's last key, before the blank line and the comment
    # that lead to [templates.otp].
    assert found.new_text == old.replace(
        '[numbers."+14155550100"]\ncampaign = "demo"\n',
        '[numbers."+14155550100"]\ncampaign = "demo"\nsms_enabled = false\n',
    )
    assert changed(found) == ([], ["sms_enabled = false"])
    assert (await apply(found)).applied

    again = plan(shipped, SetSmsEnabled("+14155550100", True), env={})
    assert again.ok and changed(again) == (["sms_enabled = false"], ["sms_enabled = true"])
    assert (await apply(again)).applied
    assert loaded(shipped)["numbers"]["+14155550100"]["sms_enabled"] is True


async def test_a_profile_setting_in_the_shipped_file_keeps_its_comment(shipped: Path) -> None:
    old = read(shipped)
    found = plan(shipped, SetProfileSetting("demo", "tps", "25"), env={})
    assert found.ok and found.summary == "set profiles.demo.tps = 25"
    assert found.new_text == old.replace(
        "tps = 0                       # 0 = no rate limit",
        "tps = 25                       # 0 = no rate limit",
    )
    removal = plan(shipped, SetProfileSetting("demo", "tps", None), env={})
    assert removal.ok
    assert changed(removal) == (["tps = 0                       # 0 = no rate limit"], [])
    assert removal.new_text == old.replace(
        "tps = 0                       # 0 = no rate limit\n", ""
    )


# ---------------------------------------------------------------- hand-written files


async def test_moving_out_of_a_multiline_array_takes_the_numbers_comment(small: Path) -> None:
    found = plan(small, MoveSender("+16501112345", "bulk"), env={})
    # bulk's default_use_case is not among the moved number's campaign's use cases.
    assert found.problems == [
        "profiles.bulk.default_use_case: 'MARKETING' is not among campaign 'main''s "
        "use_cases (number +16501112345)"
    ]
    assert found.problems_before == []
    assert changed(found) == (
        ['  "+16501112345",  # main line', 'numbers = ["+447911123456", "ACME"]   # UK and an '
         "alphanumeric ID"],
        ['numbers = ["+447911123456", "ACME", "+16501112345"]   # UK and an alphanumeric ID'],
    )  # fmt: skip
    await refused(small, found, "default_use_case")

    # Without the use case the same move is fine.
    cleared = plan(small, SetProfileSetting("bulk", "default_use_case", None), env={})
    assert (await apply(cleared)).applied
    moved = plan(small, MoveSender("ACME", "alerts"), env={})
    assert moved.ok and (await apply(moved)).applied
    assert loaded(small)["profiles"]["alerts"]["numbers"] == [
        "+16501112345",
        "+14082223333",
        "ACME",
    ]
    assert '  "ACME",\n]\nsender' in read(small)  # one per line, as the array is


async def test_a_number_without_details_gets_a_table_after_the_others(small: Path) -> None:
    old = read(small)
    found = plan(small, SetSmsEnabled("+447911123456", False), env={})
    assert found.ok
    assert found.new_text == old.replace(
        'sms_enabled = false   # paused by ops\n',
        'sms_enabled = false   # paused by ops\n'
        '[numbers."+447911123456"]\nsms_enabled = false\n',
    )  # fmt: skip
    assert (await apply(found)).applied
    data = loaded(small)
    assert data["numbers"]["+447911123456"] == {"sms_enabled": False}
    # Enabling one that has no table is the default already.
    with pytest.raises(ConfigEditError, match="already enabled on ACME") as error:
        plan(small, SetSmsEnabled("ACME", True), env={})
    assert error.value.field == "enabled"


async def test_numbers_written_as_inline_tables_stay_inline(tmp_path: Path) -> None:
    path = tmp_path / "inline.toml"
    write(
        path,
        "[numbers]   # details\n"
        '"+447911123456" = { features = ["SmsSender"] }  # uk\n'
        "\n"
        "[profiles.p]\n"
        'protocol = "http"\n'
        'numbers = ["+447911123456", "+447911123457"]\n'
        'http = { url = "http://127.0.0.1:9/send" }\n',
    )
    first = plan(path, SetSmsEnabled("+447911123456", False), env={})
    assert first.ok
    assert changed(first)[1] == [
        '"+447911123456" = { features = ["SmsSender"], sms_enabled = false }  # uk'
    ]
    assert (await apply(first)).applied
    second = plan(path, SetSmsEnabled("+447911123457", False), env={})
    assert second.ok
    assert changed(second) == ([], ['"+447911123457" = { sms_enabled = false }'])
    assert loaded(path)["numbers"]["+447911123456"]["sms_enabled"] is False


async def test_a_file_without_numbers_tables_gets_one(tmp_path: Path) -> None:
    path = tmp_path / "bare.toml"
    write(
        path,
        '[profiles.p]\nprotocol = "http"\nnumbers = ["72345"]\n'
        'http = { url = "http://127.0.0.1:9/send" }\n',
    )
    found = plan(path, SetSmsEnabled("72345", False), env={})
    # A short code needs its country: the file had that problem before, and still has.
    assert found.problems == found.problems_before != []
    assert '[numbers."72345"]\nsms_enabled = false\n' in found.new_text
    assert tomllib.loads(found.new_text)["numbers"] == {"72345": {"sms_enabled": False}}


SPLIT = """\
[profiles.a]
protocol = "http"
numbers = ["+447911123456", "+447911123457"]  # two

# connectors next
[connectors.c]
protocol = "http"
http = { url = "http://127.0.0.1:9/x" }

[profiles.b]
numbers = ["+447911123458"]

[profiles.a.http]
url = "http://127.0.0.1:9/send"

[numbers]
"+447911123456".features = ["SmsSender"]

[[routes]]
connectors = ["c"]
"""


async def test_tables_split_around_others_dotted_keys_and_crlf_lines(tmp_path: Path) -> None:
    path = tmp_path / "split.toml"
    old = SPLIT.replace("\n", "\r\n")
    path.write_bytes(old.encode())
    # A key of profile a goes with a's own keys, not into [profiles.a.http].
    setting = plan(path, SetProfileSetting("a", "window", "5"), env={})
    assert setting.ok, setting.problems
    assert setting.new_text == old.replace("# two\r\n", "# two\r\nwindow = 5\r\n")
    moved = plan(path, MoveSender("+447911123457", "b"), env={})
    assert moved.ok and changed(moved)[1] == [
        'numbers = ["+447911123456"]  # two',
        'numbers = ["+447911123458", "+447911123457"]',
    ]
    assert "\r" not in moved.diff  # shown as lines, whatever the file's line ends
    # [numbers] written with dotted keys: the existing entry takes one more, a new one is
    # a line of the same table.
    dotted = plan(path, SetSmsEnabled("+447911123456", False), env={})
    assert dotted.ok and changed(dotted) == ([], ['"+447911123456".sms_enabled = false'])
    fresh = plan(path, SetSmsEnabled("+447911123457", False), env={})
    assert fresh.ok and changed(fresh) == ([], ['"+447911123457" = { sms_enabled = false }'])
    for found in (setting, moved, dotted, fresh):
        assert "\n" not in found.new_text.replace("\r\n", "")  # still CRLF only
    assert (await apply(fresh)).applied and path.read_bytes() == fresh.new_text.encode()


async def test_a_new_number_table_follows_the_last_of_the_numbers_tables(tmp_path: Path) -> None:
    path = tmp_path / "runs.toml"
    old = (
        '[numbers."+447911123456"]\nfeatures = ["SmsSender"]\n\n'
        '[profiles.p]\nprotocol = "http"\nnumbers = ["+447911123456", "+447911123457"]\n'
        'http = { url = "http://127.0.0.1:9/send" }\n\n'
        '[numbers."+447911123458"]\nverified = false\n\n'
        "# the end\n"
        '[profiles.q]\nprotocol = "http"\nnumbers = ["+447911123458"]\n'
        'http = { url = "http://127.0.0.1:9/send" }\n'
    )
    write(path, old)
    found = plan(path, SetSmsEnabled("+447911123457", False), env={})
    assert found.ok, found.problems
    assert found.new_text == old.replace(
        "verified = false\n", 'verified = false\n[numbers."+447911123457"]\nsms_enabled = false\n'
    )


@pytest.mark.parametrize(
    ("key", "text", "written"),
    [
        ("store_text", "false", "store_text = false"),
        ("skip_unhealthy", "On", "skip_unhealthy = true"),
        ("mms_max_bytes", "1048576", "mms_max_bytes = 1048576"),
        ("health_threshold", "0.75", "health_threshold = 0.75"),
        ("tps", "5", "tps = 5"),
        ("sticky_ttl", "86400.5", "sticky_ttl = 86400.5"),
        ("over_cap", " defer ", 'over_cap = "defer"'),
        (
            "status_callback_url",
            "https://o.example/s",
            'status_callback_url = "https://o.example/s"',
        ),
        (
            "sender_preference",
            "toll_free, long_code,",
            'sender_preference = ["toll_free", "long_code"]',
        ),
    ],
)
async def test_a_setting_from_a_form_is_converted_by_its_type(
    small: Path, key: str, text: str, written: str
) -> None:
    old = read(small)
    found = plan(small, SetProfileSetting("alerts", key, text), env={})
    assert found.ok, found.problems
    # A new key goes after the profile's last key, before its [profiles.alerts.http].
    assert found.new_text == old.replace(
        'sender = "round_robin"\n', f'sender = "round_robin"\n{written}\n', 1
    )
    assert changed(found) == ([], [written])
    assert (await apply(found)).applied


async def test_a_setting_whose_needs_are_missing_is_refused(small: Path) -> None:
    found = plan(small, SetProfileSetting("alerts", "shorten", "yes"), env={})
    assert changed(found) == ([], ["shorten = true"])
    assert found.problems[0].startswith("profiles.alerts.shorten: needs [links] base_url")
    await refused(small, found, "base_url")


async def test_replacing_and_removing_a_setting(small: Path) -> None:
    old = read(small)
    found = plan(small, SetProfileSetting("alerts", "window", "64"), env={})
    assert found.new_text == old.replace(
        "window = 8                  # in flight", "window = 64                  # in flight"
    )
    gone = plan(small, SetProfileSetting("alerts", "sender", None), env={})
    assert gone.ok and gone.summary == "remove profiles.alerts.sender (back to its default)"
    assert gone.new_text == old.replace('sender = "round_robin"\n', "")


async def test_bad_changes_are_refused_naming_the_field(small: Path) -> None:
    before = stamp(small)

    def alerts(key: str, value: str | None) -> SetProfileSetting:
        return SetProfileSetting("alerts", key, value)

    w = "profiles.alerts."
    cases: list[tuple[Any, str, str]] = [
        (MoveSender("+447700900123", "alerts"), "sender", "+447700900123 is in no profile"),
        (MoveSender("12", "alerts"), "sender", "'12' is not a sender"),
        (MoveSender("ACME", "nosuch"), "profile", "unknown profile 'nosuch'"),
        (MoveSender("ACME", "bulk"), "profile", "ACME already belongs to profile 'bulk'"),
        (SetSmsEnabled("+447700900123", False), "sender", "in no profile's numbers"),
        (SetSmsEnabled("+14082223333", False), "enabled", "already disabled"),
        (SetProfileSetting("nosuch", "window", "3"), "profile", "unknown profile"),
        (alerts("protocol", "smpp"), "key", "'protocol' cannot be changed"),
        (alerts("webhook_secret", "x"), "key", "'webhook_secret'"),
        (alerts("window", "abc"), w + "window", "'abc' is not a whole number"),
        (alerts("window", "2.5"), w + "window", "not a whole number"),
        (alerts("tps", "fast"), w + "tps", "'fast' is not a number"),
        (alerts("tps", "inf"), w + "tps", "not a finite number"),
        (alerts("shorten", "maybe"), w + "shorten", "not true or false"),
        (alerts("help_text", "  "), w + "help_text", "empty"),
        (alerts("window", "8"), w + "window", "already has that value"),
        (alerts("tps", None), w + "tps", "not set"),
    ]  # fmt: skip
    for change, field, message in cases:
        with pytest.raises(ConfigEditError) as error:
            plan(small, change, env={})
        assert error.value.field == field, change
        assert message in str(error.value), (change, str(error.value))
        assert isinstance(error.value, RouterError)
    assert stamp(small) == before


async def test_values_the_loader_refuses_are_problems_and_nothing_is_written(
    small: Path,
) -> None:
    found = plan(small, SetProfileSetting("alerts", "window", "0"), env={})
    assert found.problems == ["profiles.alerts.window: must be between 1 and 10000"]
    assert changed(found) == (
        ["window = 8                  # in flight"],
        ["window = 0                  # in flight"],
    )
    await refused(small, found, "profiles.alerts.window: must be between 1 and 10000")
    choice = plan(small, SetProfileSetting("alerts", "sender", "random"), env={})
    assert choice.problems and choice.problems[0].startswith("profiles.alerts.sender:")
    # The last number of a profile cannot leave it.
    ship = read(small).replace('numbers = ["+447911123456", "ACME"]', 'numbers = ["ACME"]')
    write(small, ship)
    empty = plan(small, MoveSender("ACME", "alerts"), env={})
    assert any(p.startswith("profiles.bulk.numbers:") for p in empty.problems), empty.problems
    await refused(small, empty, "profiles.bulk.numbers")


async def test_a_file_changed_after_planning_is_not_overwritten(small: Path) -> None:
    found = plan(small, SetProfileSetting("alerts", "window", "16"), env={})
    meanwhile = read(small).replace("# Senders with details.", "# Edited by hand.")
    write(small, meanwhile)
    await refused(small, found, "changed since this change was planned")
    assert read(small) == meanwhile
    # Planned again from the new text, it applies and keeps the other edit.
    again = plan(small, SetProfileSetting("alerts", "window", "16"), env={})
    assert (await apply(again)).applied
    assert "# Edited by hand." in read(small) and "window = 16" in read(small)


async def test_a_file_changed_between_showing_and_confirming_is_not_overwritten(
    small: Path,
) -> None:
    change = SetProfileSetting("alerts", "window", "16")
    shown = plan(small, change, env={})  # the page shows its diff; the form keeps its digest
    write(small, read(small).replace("# The profiles follow.", "# Edited by hand."))
    confirmed = plan(small, change, env={})  # planned again when the admin confirms
    assert confirmed.ok and confirmed.digest != shown.digest
    await refused(small, confirmed, "changed since the change was shown", seen=shown.digest)
    again = plan(small, change, env={})
    assert (await apply(again, seen=again.digest)).applied


async def test_the_file_keeps_its_mode_and_a_link_stays_a_link(tmp_path: Path) -> None:
    real = tmp_path / "etc" / "router.toml"
    real.parent.mkdir()
    write(real, SMALL)
    real.chmod(0o640)
    link = tmp_path / "router.toml"
    link.symlink_to(real)
    found = plan(link, SetProfileSetting("alerts", "window", "16"), env={})
    outcome = await apply(found)
    assert outcome.applied
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert link.is_symlink() and "window = 16" in read(real)
    assert sorted(p.name for p in real.parent.iterdir()) == ["router.toml"]  # no temp left


async def test_root_keeps_the_files_owner(small: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file away")
    os.chown(small, 65534, 65534)
    found = plan(small, SetProfileSetting("alerts", "window", "16"), env={})
    assert (await apply(found)).applied
    assert owner(small) == (65534, 65534)


async def test_an_unwritable_folder_writes_nothing(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "router.toml"
    write(path, SMALL)
    found = plan(path, SetProfileSetting("alerts", "window", "16"), env={})
    folder.chmod(0o555)
    try:
        await refused(path, found, "cannot write in")
    finally:
        folder.chmod(0o755)


async def test_secrets_stay_references_and_never_show(tmp_path: Path) -> None:
    token = "app-token-" + secrets.token_hex(12)
    password = secrets.token_hex(4)
    literal = "hunter22"
    path = tmp_path / "router.toml"
    write(
        path,
        f"""\
[router]
redis = "redis://:{literal}@127.0.0.1:6379/0"

[api]
listen = "127.0.0.1:8080"
[api.keys.app]
token = "env:APP_TOKEN"
scopes = ["send"]

[profiles.s]
protocol = "smpp"
numbers = ["+447911123456", "ACME"]
window = 4
smpp = {{ host = "127.0.0.1", port = 2775, system_id = "me", password = "env:SMPP_PW" }}

[profiles.t]
protocol = "smpp"
numbers = ["+447911123457"]
smpp = {{ host = "127.0.0.1", port = 2775, system_id = "you", password = "{literal}" }}
""",
    )
    env = {"APP_TOKEN": token, "SMPP_PW": password}
    found = plan(path, SetProfileSetting("s", "window", "8"), env=env)
    assert found.ok, found.problems
    assert 'token = "env:APP_TOKEN"' in found.new_text
    assert 'password = "env:SMPP_PW"' in found.new_text
    for secret in (token, password):
        assert secret not in found.new_text + found.diff + " ".join(found.problems)
    moved = plan(path, MoveSender("ACME", "t"), env=env)
    # The diff's context shows t's literal password masked, and references as they are.
    assert literal not in moved.diff and f'password = "{MASK}" }}' in moved.diff
    assert 'password = "env:SMPP_PW" }' in moved.diff
    assert (await apply(moved)).applied
    assert 'token = "env:APP_TOKEN"' in read(path) and token not in read(path)
    # A problem about a secret names the variable, never a value.
    broken = plan(path, SetProfileSetting("s", "window", "9"), env={"APP_TOKEN": token})
    assert any("SMPP_PW" in p for p in broken.problems), broken.problems
    assert token not in " ".join(broken.problems)


def test_masking_secrets_in_a_diff_line() -> None:
    assert mask_secrets('+password = "s3cret"  # x\n') == f'+password = "{MASK}"  # x\n'
    assert mask_secrets(' token = "env:T"\n') == ' token = "env:T"\n'
    assert mask_secrets(" auth_token = 'file:var/t'\n") == " auth_token = 'file:var/t'\n"
    assert mask_secrets(' smpp = { password = "pw" }\n') == f' smpp = {{ password = "{MASK}" }}\n'
    assert (
        mask_secrets(' url = "https://user:pa55@h.example/x"\n')
        == f' url = "https://user:{MASK}@h.example/x"\n'
    )
    assert (
        mask_secrets(' url = "https://h.example:8443/x"\n') == ' url = "https://h.example:8443/x"\n'
    )
    assert mask_secrets(" window = 8\n") == " window = 8\n"


def test_every_settable_key_is_a_profile_key_with_a_form_kind() -> None:
    kinds = {key: setting_kind(key) for key in PROFILE_SETTINGS}
    assert kinds["window"] == "int" and kinds["tps"] == "float"
    assert kinds["shorten"] == "bool" and kinds["sender_preference"] == "list"
    assert kinds["daily_spend_limit"] == "float" and kinds["callback_url"] == "str"
    assert "numbers" not in kinds and "webhook_secret" not in kinds


# ---------------------------------------------------------------- with a running daemon


async def test_a_move_applied_and_reloaded_sends_from_the_number_in_its_new_profile(
    redis: Redis,
    redis_url: str,
    provider: Provider,
    tmp_path: Path,
    daemon_from: Any,
) -> None:
    data = config_dict(redis_url, provider.url)  # alerts: the three US numbers; bulk: UK
    data["router"]["state_dir"] = str(tmp_path / "var")
    path = write_config(tmp_path / "router.toml", data)
    daemon = daemon_from(path)
    await wait_for(lambda: daemon.runtimes.get("bulk") is not None, 20, "started")
    moved = "+14082223333"
    client = Client(redis)
    ledger = Ledger(redis, retention=3600, events_maxlen=1000)

    async def final(job: str) -> dict[str, Any] | None:
        [record] = await ledger.find([job])
        done = record is not None and record["status"] in ("sent", "delivered", "rejected")
        return record if done else None

    job = {"to": "+447700900123", "text": "hi", "from": moved, "profile": "bulk"}
    [before] = await client.send_many([job])
    await wait_for(lambda: final(before), 20, "the first job judged")
    assert (await final(before) or {})["status"] == "rejected"  # not bulk's number yet

    found = plan(path, MoveSender(moved, "bulk"))
    assert found.ok, found.problems
    outcome = await apply(found, daemon.reload)
    assert outcome.applied and outcome.reloaded is True, outcome.message
    assert daemon.settings.profile_of_number(moved) == "bulk"
    assert daemon.settings.profiles["alerts"].numbers == ["+16501112345", "+14155552671"]

    [after] = await client.send_many([job])
    await wait_for(lambda: final(after), 20, "the second job sent")
    assert (await final(after) or {})["status"] in ("sent", "delivered")
    [request] = [r for r in provider.requests if r.get("ref") == after]
    assert request["from"] == moved


async def test_a_reload_that_fails_is_reported_with_the_file_written(small: Path) -> None:
    found = plan(small, SetProfileSetting("alerts", "window", "16"), env={})

    async def broken() -> bool:
        await asyncio.sleep(0)
        raise RuntimeError("no daemon here")

    outcome = await apply(found, broken)
    assert outcome.applied and outcome.reloaded is False
    assert outcome.reload_error == "RuntimeError: no daemon here"
    assert "did not reload" in outcome.message and "window = 16" in read(small)
