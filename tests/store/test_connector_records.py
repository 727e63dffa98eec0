"""Every attempt's connector on the message record: in the history step it belongs to
(the decoded record's `connector` is the latest attempt's), and the status event's
`connector`; written by finish.lua (an outcome) and transition.lua (a retry), read back
by `decode_record`. Records of the older shape (`c<n>` beside `h<n>`, and a
`connector` field) and those written before connectors decode as they did.

Real Redis (the `redis` fixture)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from router import Client
from router.store import keys
from router.store.connections import as_text
from router.store.ledger import Finished, Ledger, Sending, decode_record

PROFILE = "sms"


def ledger_of(redis: Redis) -> Ledger:
    return Ledger(redis, retention=3600, events_maxlen=10_000)


async def queued(redis: Redis, job_id: str) -> str:
    """Enqueue `job_id` as a door does; returns the record's owner (its work entry)."""
    await Client(redis, default_profile=PROFILE).send("+447911123456", "hi", id=job_id)
    return as_text(await redis.hget(keys.record(PROFILE, job_id), "owner") or b"")


async def sending(ledger: Ledger, job_id: str, owner: str) -> int:
    """Record `sending`; returns the step the outcome follows."""
    item = Sending(id=job_id, owner=owner, replay="", sender="+16501112345",
                   to="+447911123456", text="", meta="", url="", sticky_key="",
                   sticky_ttl=0)  # fmt: skip
    [result] = await ledger.sending(PROFILE, [item])
    assert result.ok, result
    return result.step


def outcome(
    job_id: str, owner: str, step: int, connector: str, *, failed: bool = False
) -> Finished:
    """A `sent` (or `failed`) outcome of the attempt over `connector`."""
    status = "failed" if failed else "sent"
    return Finished(id=job_id, entry=owner, step=step + 1, status=status,
                    note="refused" if failed else "", url="", to="+447911123456",
                    sender="+16501112345", meta="", segments=0 if failed else 1,
                    error_code="invalid_destination" if failed else "",
                    error_raw="0x0B" if failed else "", error="refused" if failed else "",
                    part_ids=[] if failed else [f"p-{job_id}"], forms=[],
                    connector=connector, price=0.0)  # fmt: skip


async def raw(redis: Redis, job_id: str) -> dict[str, str]:
    found = await redis.hgetall(keys.record(PROFILE, job_id))
    return {as_text(k): as_text(v) for k, v in found.items()}


async def last_event(redis: Redis) -> dict[str, str]:
    [(_id, fields)] = await redis.xrevrange(keys.events(PROFILE), count=1)
    return {as_text(k): as_text(v) for k, v in fields.items()}


async def test_an_outcome_over_a_connector_names_it_on_the_record_its_step_and_event(
    redis: Redis,
) -> None:
    ledger = ledger_of(redis)
    owner = await queued(redis, "j-a")
    step = await sending(ledger, "j-a", owner)
    await ledger.finish(PROFILE, keys.queue(PROFILE), [outcome("j-a", owner, step, "A")])
    stored = await raw(redis, "j-a")
    n = step + 1
    # The step names its connector (`s<time>|A`); nothing else on the record does.
    assert stored["status"] == "sent" and stored[str(n)].startswith("s")
    assert stored[str(n)].split("|") == [stored[str(n)].split("|")[0], "A"]
    assert [k for k in stored if "A" in stored[k]] == [str(n)]
    event = await last_event(redis)
    assert event["status"] == "sent" and event["connector"] == "A"
    record = await ledger.get("j-a", profile=PROFILE)
    assert record is not None and record["connector"] == "A"
    assert str(n) not in record
    assert [h.get("connector") for h in record["history"]] == [None, None, "A"]
    assert "connector" not in record["history"][0]


async def test_a_failed_outcome_names_its_connector_too(redis: Redis) -> None:
    ledger = ledger_of(redis)
    owner = await queued(redis, "j-f")
    step = await sending(ledger, "j-f", owner)
    item = outcome("j-f", owner, step, "B", failed=True)
    await ledger.finish(PROFILE, keys.queue(PROFILE), [item])
    record = await ledger.get("j-f", profile=PROFILE)
    assert record is not None and record["status"] == "failed"
    assert record["connector"] == "B" and record["history"][-1]["connector"] == "B"
    assert (await last_event(redis))["connector"] == "B"


async def test_an_outcome_without_a_connector_writes_none(redis: Redis) -> None:
    ledger = ledger_of(redis)
    owner = await queued(redis, "j-none")
    step = await sending(ledger, "j-none", owner)
    await ledger.finish(PROFILE, keys.queue(PROFILE), [outcome("j-none", owner, step, "")])
    stored = await raw(redis, "j-none")
    assert stored["status"] == "sent"
    assert "connector" not in stored and "|" not in stored[str(step + 1)]
    assert "connector" not in await last_event(redis)
    record = await ledger.get("j-none", profile=PROFILE)
    assert record is not None and "connector" not in record
    assert all("connector" not in h for h in record["history"])


async def test_a_retry_names_its_connector_and_the_next_attempt_its_own(redis: Redis) -> None:
    """Failover: the first attempt over A comes back Retry (recorded by `transition`),
    the second goes out over B; each step keeps its own, the record names the latest."""
    ledger = ledger_of(redis)
    owner = await queued(redis, "j-r")
    await sending(ledger, "j-r", owner)
    result = await ledger.transition(
        "j-r", owner, "queued", profile=PROFILE, note="retry 1 in 0.1s: throttled",
        fields={"error_code": "throttled"}, connector="A",
    )  # fmt: skip
    assert result.ok, result
    stored = await raw(redis, "j-r")
    n = int(stored["n"])
    assert stored[str(n)].startswith("q") and stored[str(n)].split("|")[1:] == [
        "A", "retry 1 in 0.1s: throttled",
    ]  # fmt: skip
    assert stored["error_code"] == "throttled"
    event = await last_event(redis)
    assert event["status"] == "queued" and event["connector"] == "A"
    step = await sending(ledger, "j-r", owner)
    await ledger.finish(PROFILE, keys.queue(PROFILE), [outcome("j-r", owner, step, "B")])
    record = await ledger.get("j-r", profile=PROFILE)
    assert record is not None and record["connector"] == "B"
    assert [(h["status"], h.get("connector")) for h in record["history"]] == [
        ("queued", None), ("sending", None), ("queued", "A"), ("sending", None), ("sent", "B"),
    ]  # fmt: skip


async def test_a_transition_without_a_connector_writes_none(redis: Redis) -> None:
    ledger = ledger_of(redis)
    owner = await queued(redis, "j-t")
    result = await ledger.transition("j-t", owner, "scheduled", profile=PROFILE, note="later")
    assert result.ok, result
    stored = await raw(redis, "j-t")
    assert "connector" not in stored
    assert stored[stored["n"]].split("|")[1:] == ["", "later"]
    assert "connector" not in await last_event(redis)


async def test_a_refused_transition_writes_no_connector(redis: Redis) -> None:
    """A duplicate owner changes nothing: no step, so no connector either."""
    ledger = ledger_of(redis)
    await queued(redis, "j-d")
    result = await ledger.transition("j-d", "9-9", "queued", profile=PROFILE, connector="A")
    assert result.verdict == "duplicate"
    assert "connector" not in await raw(redis, "j-d")


def test_a_record_written_before_connectors_decodes_as_it_did() -> None:
    old: dict[Any, Any] = {
        b"status": b"sent", b"n": b"3", b"owner": b"1-1", b"updated_at": b"12.5",
        b"h1": b"queued|10.0|", b"h2": b"sending|11.0|", b"h3": b"sent|12.5|",
        b"segments": b"1",
    }  # fmt: skip
    assert decode_record(old) == {
        "status": "sent", "owner": "1-1", "updated_at": 12.5, "segments": 1,
        "history": [
            {"status": "queued", "at": 10.0, "note": ""},
            {"status": "sending", "at": 11.0, "note": ""},
            {"status": "sent", "at": 12.5, "note": ""},
        ],
    }  # fmt: skip
    legacy = {b"status": b"queued", b"history": b'[["queued", 1.0, "x"]]'}
    assert decode_record(legacy)["history"] == [{"status": "queued", "at": 1.0, "note": "x"}]


def test_decode_record_puts_each_connector_on_its_own_step() -> None:
    """`c<n>` goes to step n whatever the hash order, and leaves the top level."""
    raw_record = {
        "c3": "B", "h3": "sent|3.0|", "h1": "queued|1.0|", "c2": "A",
        "h2": "queued|2.0|retry 1", "n": "3", "status": "sent", "connector": "B",
        "c12": "stray",  # no h12: nothing to put it on, and not a record field either
    }  # fmt: skip
    record = decode_record(raw_record)
    assert record == {
        "status": "sent", "connector": "B",
        "history": [
            {"status": "queued", "at": 1.0, "note": ""},
            {"status": "queued", "at": 2.0, "note": "retry 1", "connector": "A"},
            {"status": "sent", "at": 3.0, "note": "", "connector": "B"},
        ],
    }  # fmt: skip
