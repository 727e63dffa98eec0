"""The key layout migration (router/store/migrate.py) on a real redis-server: an old layout
written by hand, moved, checked key by key, moved again, interrupted and resumed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from router.store import keys
from router.store.ledger import Ledger
from router.store.migrate import MigrationReport, migrate_keys

from ..conftest import Provider, config_dict
from ..daemon.test_process import cli, write_config

HOUR = 3_600_000  # ms

# (id, profile or None, ttl in ms or None)
RECORDS = [
    ("a1", "alerts", HOUR),
    ("a2", "alerts", 2 * HOUR),
    ("b1", "bulk", 3 * HOUR),
    ("b2", "bulk", None),  # no TTL: none after the move either
    ("orphan", None, HOUR),  # no profile field: its events say bulk
    ("lost", None, HOUR),  # no profile field and no event
]

# The old events stream: interleaved profiles, explicit ids (as the old version wrote).
EVENTS = [
    ("1700000000000-0", {"id": "a1", "profile": "alerts", "status": "queued"}),
    ("1700000000000-1", {"id": "b1", "profile": "bulk", "status": "queued"}),
    ("1700000000001-0", {"id": "orphan", "profile": "bulk", "status": "queued"}),
    ("1700000000002-0", {"id": "a1", "profile": "alerts", "status": "sent"}),
    ("1700000000003-0", {"type": "inbound", "id": "in-1-0", "profile": "bulk", "message": "{}"}),
    ("1700000000004-0", {"id": "a2", "profile": "alerts", "status": "queued"}),
    ("1700000000005-0", {"id": "b1", "profile": "bulk", "status": "delivered"}),
]

CALLBACKS = [
    ("1700000000002-0", {"id": "a1", "profile": "alerts", "status": "sent", "url": "http://x/a"}),
    ("1700000000005-0", {"id": "b1", "profile": "bulk", "status": "delivered", "url": "http://x"}),
    ("1700000000006-0", {"id": "a2", "profile": "alerts", "status": "sent", "url": "http://x/a"}),
]
LETTER = (
    "1700000000003-0",
    {"id": "b2", "profile": "bulk", "url": "http://x", "reason": "http 500"},
)


def expected_events(profile: str) -> list[tuple[str, dict[str, str]]]:
    return [(i, f) for i, f in EVENTS if f["profile"] == profile]


async def write_old_layout(redis: Redis) -> None:
    for job_id, profile, ttl in RECORDS:
        record = {"status": "queued", "to": "+447911123456", "text": f"secret {job_id}", "n": "1"}
        if profile:
            record["profile"] = profile
        await redis.hset(f"sms:msg:{job_id}", mapping=record)
        if ttl:
            await redis.pexpire(f"sms:msg:{job_id}", ttl)
    for entry_id, fields in EVENTS:
        await redis.xadd("sms:events", fields, id=entry_id)  # type: ignore[arg-type]
    await redis.xgroup_create("sms:callbacks", "posters", id="0", mkstream=True)
    for entry_id, fields in CALLBACKS:
        await redis.xadd("sms:callbacks", fields, id=entry_id)  # type: ignore[arg-type]
    # One entry read (pending), the others unread; an acknowledged one is XDEL'd.
    await redis.xreadgroup("posters", "router-1", {"sms:callbacks": ">"}, count=1)
    await redis.xadd("sms:callbacks", {"id": "gone", "profile": "bulk", "url": "u"})
    gone = (await redis.xrevrange("sms:callbacks", count=1))[0][0]
    await redis.xdel("sms:callbacks", gone)
    await redis.xadd("sms:callbacks:dlq", LETTER[1], id=LETTER[0])  # type: ignore[arg-type]
    # Keys that carry {P} already stay where they are.
    await redis.set(keys.provider_id("alerts", "pm-1"), "a1")
    await redis.xadd(keys.queue("bulk"), {"job": b"\x81"})


async def snapshot(redis: Redis) -> dict[str, Any]:
    """Every key and its serialised value (DUMP carries no TTL, so it compares)."""
    return {k.decode(): await redis.dump(k) async for k in redis.scan_iter(count=1000)}


async def stream(redis: Redis, key: str) -> list[tuple[str, dict[str, str]]]:
    rows: Any = await redis.xrange(key)
    return [(i.decode(), {k.decode(): v.decode() for k, v in f.items()}) for i, f in rows]


async def assert_migrated(redis: Redis, started: float) -> None:
    elapsed = (time.monotonic() - started) * 1000
    for job_id, profile, ttl in RECORDS:
        placed = profile or ("bulk" if job_id == "orphan" else None)
        if placed is None:  # unresolved: left where it was, TTL and all
            assert await redis.hget(f"sms:msg:{job_id}", "text") == f"secret {job_id}".encode()
            continue
        new = keys.record(placed, job_id)
        assert await redis.hget(new, "text") == f"secret {job_id}".encode()
        assert not await redis.exists(f"sms:msg:{job_id}")
        assert not await redis.exists(keys.locator(job_id))  # found by its profile
        left = await redis.pttl(new)
        if ttl is None:
            assert left == -1
        else:
            assert ttl - elapsed - 1000 <= left <= ttl
    for profile in ("alerts", "bulk"):
        assert await stream(redis, keys.events(profile)) == expected_events(profile)
        wanted = [(i, f) for i, f in CALLBACKS if f["profile"] == profile]
        assert await stream(redis, keys.callbacks(profile)) == wanted
        # The new version's posters read every copied entry: the group starts at 0.
        groups: Any = await redis.xinfo_groups(keys.callbacks(profile))
        assert [(g["name"], g["last-delivered-id"]) for g in groups] == [(b"posters", b"0-0")]
    assert await stream(redis, keys.callback_dead_letters("bulk")) == [LETTER]
    assert not await redis.exists(keys.callback_dead_letters("alerts"))
    names = {k.decode() async for k in redis.scan_iter(count=1000)}
    assert {n for n in names if not n.startswith("sms:{")} == {"sms:msg:lost"}
    assert not [n for n in names if ":migrate:" in n]  # the copy cursors are gone
    assert await redis.get(keys.provider_id("alerts", "pm-1")) == b"a1"
    assert await redis.xlen(keys.queue("bulk")) == 1


def assert_full_counts(report: MigrationReport) -> None:
    assert report.records_moved == 5
    assert report.records_already_moved == 0
    assert report.records_resolved_from_events == 1
    assert report.records_unresolved == 1 and report.unresolved_ids == ["lost"]
    assert report.events_moved == {"alerts": 3, "bulk": 4}
    assert report.event_ids_preserved and report.callback_ids_preserved
    assert report.callbacks_moved == 3
    assert report.callback_dead_letters_moved == 1
    assert report.left_behind == {}
    assert report.changed


async def test_moves_every_old_key_and_a_second_run_changes_nothing(redis: Redis) -> None:
    await write_old_layout(redis)
    started = time.monotonic()
    report = await migrate_keys(redis, batch=2)  # small batches: several of each
    assert_full_counts(report)
    await assert_migrated(redis, started)

    before = await snapshot(redis)
    again = await migrate_keys(redis)
    assert await snapshot(redis) == before
    assert not again.changed
    assert again.records_moved == again.records_already_moved == 0
    assert again.records_unresolved == 1  # still there, still unresolved
    assert again.events_moved == {} and again.callbacks_moved == 0


async def test_a_dry_run_changes_nothing_and_counts_what_a_run_moves(redis: Redis) -> None:
    await write_old_layout(redis)
    before = await snapshot(redis)
    report = await migrate_keys(redis, dry_run=True, batch=3)
    assert await snapshot(redis) == before
    assert report.dry_run
    assert_full_counts(report)


class Interrupted(Exception):
    pass


async def test_an_interrupted_run_is_resumed_without_duplicates_or_overwrites(
    redis: Redis,
) -> None:
    await write_old_layout(redis)
    # As if a run had stopped between the RESTORE of a1 and the DEL of its old key.
    await redis.hset(keys.record("alerts", "a1"), mapping={"text": "new", "profile": "alerts"})
    await redis.pexpire(keys.record("alerts", "a1"), HOUR)

    def stop_in_events(stage: str, done: int) -> None:
        if stage == "events" and done >= 4:  # two chunks of two entries copied
            raise Interrupted

    started = time.monotonic()
    with pytest.raises(Interrupted):
        await migrate_keys(redis, batch=2, progress=stop_in_events)
    assert await redis.exists("sms:events")
    assert await redis.xlen(keys.events("alerts")) == 2  # copied before the stop
    assert await redis.xlen(keys.events("bulk")) == 2

    report = await migrate_keys(redis, batch=2)
    # The first run moved the records that name their profile; the orphan waited for
    # the events.
    assert report.records_moved == 1 and report.records_already_moved == 0
    assert report.records_resolved_from_events == 1
    assert report.events_moved == {"alerts": 1, "bulk": 2}
    assert report.event_ids_preserved
    # The record the first run found moved already kept its new contents.
    assert await redis.hget(keys.record("alerts", "a1"), "text") == b"new"
    await redis.hset(keys.record("alerts", "a1"), "text", "secret a1")
    await assert_migrated(redis, started)


async def test_an_existing_new_record_is_kept_and_counted_as_moved_already(
    redis: Redis,
) -> None:
    await write_old_layout(redis)
    await redis.hset(keys.record("bulk", "b1"), mapping={"text": "new", "profile": "bulk"})
    report = await migrate_keys(redis)
    assert report.records_moved == 4 and report.records_already_moved == 1
    assert await redis.hget(keys.record("bulk", "b1"), "text") == b"new"
    assert not await redis.exists("sms:msg:b1")
    found = await Ledger(redis, retention=60, events_maxlen=10).get("b1", profiles=["bulk"])
    assert found is not None and found["text"] == "new"


async def test_newer_entries_in_a_new_stream_mean_fresh_ids_in_the_same_order(
    redis: Redis,
) -> None:
    await write_old_layout(redis)
    # The new version ran already and wrote an event of alerts (a current id).
    newer = (await redis.xadd(keys.events("alerts"), {"id": "a9", "profile": "alerts"})).decode()
    report = await migrate_keys(redis)
    assert not report.event_ids_preserved
    assert report.events_moved == {"alerts": 3, "bulk": 4}
    rows = await stream(redis, keys.events("alerts"))
    assert rows[0][0] == newer
    assert [f for _i, f in rows[1:]] == [f for _i, f in expected_events("alerts")]
    assert all(i > newer for i, _f in rows[1:])
    assert await stream(redis, keys.events("bulk")) == expected_events("bulk")
    # A rerun copies nothing twice.
    again = await migrate_keys(redis)
    assert again.events_moved == {}
    assert await redis.xlen(keys.events("alerts")) == 4


async def test_entries_naming_no_profile_keep_their_old_stream(redis: Redis) -> None:
    await write_old_layout(redis)
    await redis.xadd("sms:callbacks", {"id": "x", "url": "http://x"})
    report = await migrate_keys(redis)
    assert report.left_behind == {"sms:callbacks": 1}
    assert report.callbacks_moved == 3
    assert await redis.xlen("sms:callbacks") == 4  # nothing lost
    again = await migrate_keys(redis)
    assert again.callbacks_moved == 0 and again.left_behind == {"sms:callbacks": 1}
    assert await redis.xlen(keys.callbacks("alerts")) == 2


async def test_the_cli_command_prints_the_counts(
    tmp_path: Path, redis_url: str, provider: Provider, redis: Redis
) -> None:
    config = str(write_config(tmp_path / "router.toml", config_dict(redis_url, provider.url)))
    await write_old_layout(redis)
    before = await snapshot(redis)
    code, out, err = await cli("migrate-keys", "-c", config, "--dry-run")
    assert code == 0, err
    assert out.splitlines()[:2] == [
        "dry run: nothing changed",
        "records would move: 5 (of which placed by their events: 1)",
    ]
    assert await snapshot(redis) == before

    code, out, err = await cli("migrate-keys", "-c", config)
    assert code == 0, err
    lines = out.splitlines()
    assert lines == [
        "records moved: 5 (of which placed by their events: 1)",
        "records moved by an earlier run (old key dropped): 0",
        "records without a profile, left under sms:msg:<id>: 1 (e.g. lost)",
        "events moved: alerts 3, bulk 4 (ids kept)",
        "callbacks moved: 3 (ids kept)",
        "callback dead letters moved: 1",
    ]
    assert "secret" not in out + err
    assert await redis.hget(keys.record("bulk", "orphan"), "text") == b"secret orphan"

    code, out, err = await cli("migrate-keys", "-c", config)
    assert code == 0, err
    assert out.splitlines()[-1] == "nothing to move: the keys are in the new layout"
