"""The kind of each sender as the operator sees it (issue 19): `check-config` and
`sms-router numbers`, run as commands against a real Redis."""

from __future__ import annotations

import json
from pathlib import Path

from ..conftest import NUMBERS, Provider, config_dict
from ..daemon.test_process import cli, write_config


async def test_check_config_and_numbers_show_each_senders_kind(
    tmp_path: Path, redis_url: str, provider: Provider
) -> None:
    data = config_dict(redis_url, provider.url, numbers=[NUMBERS[0], "ACME", "72345"])
    data["numbers"]["72345"] = {"country": "US"}
    data["profiles"]["alerts"]["sender_preference"] = ["short_code"]
    config = write_config(tmp_path / "router.toml", data)
    code, out, err = await cli("check-config", "-c", str(config))
    assert code == 0, err
    lines = [line.strip() for line in out.splitlines()]
    assert f"{NUMBERS[0]} [long code]: can send (international); campaign test" in lines
    assert "ACME [alphanumeric]: can send (not to US, CA)" in lines
    assert "72345 [short code]: can send (within US only)" in lines
    assert any("sender_preference=short_code" in line for line in lines), lines

    code, out, err = await cli("numbers", "-c", str(config), "--profile", "alerts", "--json")
    assert code == 0, err
    rows = {r["number"]: r for r in map(json.loads, out.strip().splitlines())}
    assert {n: (r["kind"], r["country"]) for n, r in rows.items()} == {
        NUMBERS[0]: ("long_code", None),
        "ACME": ("alphanumeric", None),
        "72345": ("short_code", "US"),
    }
    code, out, err = await cli("numbers", "-c", str(config), "--profile", "alerts", columns=250)
    assert code == 0, err
    shown = [x.strip() for x in out.splitlines()]
    assert "kind" in shown[0]
    assert "short code (US)" in next(x for x in shown if x.startswith("72345"))
    assert "alphanumeric" in next(x for x in shown if x.startswith("ACME"))
    assert "long code" in next(x for x in shown if x.startswith(NUMBERS[0]))

    data["numbers"]["72345"] = {}
    config = write_config(tmp_path / "bad.toml", data)
    code, out, err = await cli("check-config", "-c", str(config))
    assert code != 0
    assert "short code 72345 needs its country" in out + err
