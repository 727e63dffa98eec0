"""`sms-router status` and `log` name the connector each attempt went over: `status` a
`via` column beside each history step (when any step has one), `log` a `connector`
column (when any record has one), both in `--json`. Real Redis, the CLI as a real
process; the records written by the ledger as the pipeline and the retry path write
them."""

from __future__ import annotations

import json
from pathlib import Path

from redis.asyncio import Redis

from router import Client
from router.config import parse_settings
from router.store import keys
from router.store.connections import as_text
from router.store.ledger import Finished, Ledger, Sending

from ..conftest import Provider, config_dict
from ..daemon.test_process import cli, write_config

PROFILE = "alerts"
FAILED_OVER = "order-2026-11-23-0f3c9a1e5b7d4e2f8a6c1b3d5e7f9a0b"


async def _sent(ledger: Ledger, redis: Redis, job_id: str, *, first: str, then: str) -> None:
    """Record a message's attempts: over `first` (a Retry when `then` is given, else
    `sent`), then over `then`."""
    owner = as_text(await redis.hget(keys.record(PROFILE, job_id), "owner") or b"")
    attempts = [first, then] if then else [first]
    for n, connector in enumerate(attempts, 1):
        [began] = await ledger.sending(
            PROFILE,
            [Sending(job_id, owner, "", "+16501112345", "+447911123456", "", "", "", "", 0)],
        )
        assert began.ok, began
        if n < len(attempts):
            note = f"retry 1 in 0.1s: throttled by {connector}"
            retry = await ledger.transition(
                job_id, owner, "queued", profile=PROFILE, note=note, connector=connector
            )
            assert retry.ok, retry
            continue
        done = Finished(job_id, owner, began.step + 1, "sent", "", "", "+447911123456",
                        "+16501112345", "", 1, "", "", "", [f"p-{job_id}"], [],
                        connector, 0.0)  # fmt: skip
        await ledger.finish(PROFILE, keys.queue(PROFILE), [done])


async def _records(tmp_path: Path, redis_url: str, provider: Provider, redis: Redis) -> str:
    data = config_dict(redis_url, provider.url)
    config = str(write_config(tmp_path / "router.toml", data))
    settings = parse_settings(data, env={}, base_dir=tmp_path)
    client = Client.from_settings(redis, settings)
    await client.send("+447911123456", "hello", id=FAILED_OVER)
    await client.send("+447911123456", "hello", id="direct-1")
    ledger = Ledger(redis, retention=3600, events_maxlen=1000)
    await _sent(ledger, redis, FAILED_OVER, first="smsc-east", then="smsc-west")
    await _sent(ledger, redis, "direct-1", first="smsc-east", then="")
    return config


async def test_status_shows_the_connector_of_each_attempt(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    config = await _records(tmp_path, redis_url, provider, redis)
    code, out, err = await cli("status", "-c", config, FAILED_OVER)
    assert code == 0, err
    fields = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert fields["connector"] == ["smsc-west"]
    header = next(line for line in out.splitlines() if line.split()[:2] == ["time", "status"])
    assert header.split() == ["time", "status", "via", "note"]
    steps = out.splitlines()[out.splitlines().index(header) + 1 :]
    # Each step's status and connector (columns after the date and time).
    assert [line.split()[2:4] for line in steps if line.strip()] == [
        ["queued"], ["sending"], ["queued", "smsc-east"], ["sending"], ["sent", "smsc-west"],
    ]  # fmt: skip
    assert "throttled by smsc-east" in out
    code, out, err = await cli("status", "-c", config, FAILED_OVER, "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["connector"] == "smsc-west"
    assert [h.get("connector") for h in record["history"]] == [
        None, None, "smsc-east", None, "smsc-west",
    ]  # fmt: skip
    assert not [k for k in record if k[:1] in "ch" and k[1:].isdigit()]


async def test_status_of_a_message_never_sent_has_no_via_column(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    config = await _records(tmp_path, redis_url, provider, redis)
    await Client(redis, default_profile=PROFILE).send("+447911123456", "x", id="waiting-1")
    code, out, err = await cli("status", "-c", config, "waiting-1")
    assert code == 0, err
    assert "via" not in out.split() and "connector" not in out.split()
    assert any(line.split() == ["time", "status", "note"] for line in out.splitlines())


async def test_log_shows_each_records_connector_and_drops_it_first_when_narrow(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    config = await _records(tmp_path, redis_url, provider, redis)
    code, out, err = await cli("log", "-c", config, columns=200)
    assert code == 0 and not err, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "updated", "id", "profile", "status", "to", "from", "connector", "tries", "note",
    ]  # fmt: skip
    row = next(line for line in lines if FAILED_OVER in line)
    assert "smsc-west" in row.split() and "smsc-east" not in row.split()
    assert "smsc-east" in next(line for line in lines if "direct-1" in line).split()
    # At 80 columns the id stays whole; what does not fit is named on stderr.
    code, out, err = await cli("log", "-c", config, columns=80)
    assert code == 0
    assert FAILED_OVER in out and max(len(line) for line in out.splitlines()) <= 80
    assert "connector" in err and "not shown at 80 columns" in err
    # --json: the record's connector and each step's.
    code, out, err = await cli("log", "-c", config, "--json")
    assert code == 0, err
    rows = {r["id"]: r for r in map(json.loads, out.strip().splitlines())}
    assert rows[FAILED_OVER]["connector"] == "smsc-west"
    assert rows["direct-1"]["history"][-1]["connector"] == "smsc-east"


async def test_log_without_connectors_has_no_connector_column(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    data = config_dict(redis_url, provider.url)
    config = str(write_config(tmp_path / "router.toml", data))
    await Client(redis, default_profile=PROFILE).send("+447911123456", "x", id="waiting-2")
    code, out, err = await cli("log", "-c", config, columns=200)
    assert code == 0 and not err, err
    assert out.splitlines()[0].split() == [
        "updated", "id", "profile", "status", "to", "from", "tries", "note",
    ]  # fmt: skip
