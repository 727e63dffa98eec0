"""A long value written again shorter leaves none of the old value's pieces.

Values over 64 bytes are kept in pieces (`text`, `text~2`, ...: lua/common.lua's
put_long) and readers join every piece they find, so a value written again with fewer
pieces — a text whose links were shortened between `queued` and `sending`, a later
attempt's shorter error, a message sent again with other part ids — must take the old
value's last pieces away. Real Redis (the `redis` fixture)."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from router import Client
from router.store import keys
from router.store.connections import as_text
from router.store.ledger import Finished, Ledger, Sending

PROFILE = "sms"
LONG = "Your parcel is on its way: https://tracking.example.com/parcels/" + "A1b2C3d4" * 12
SHORT = "Your parcel is on its way: https://s.example.com/l/smXk7PqRz2Wd"


def sending(job_id: str, owner: str, text: str) -> Sending:
    return Sending(id=job_id, owner=owner, replay="", sender="+16501112345",
                   to="+447911123456", text=text, meta="", url="", sticky_key="",
                   sticky_ttl=0)  # fmt: skip


def finished(job_id: str, owner: str, step: int, **fields: Any) -> Finished:
    base: dict[str, Any] = dict(id=job_id, entry=owner, step=step, status="failed",
                                note="", url="", to="+447911123456",
                                sender="+16501112345", meta="", segments=1,
                                error_code="", error_raw="", error="", part_ids=[],
                                forms=[], connector="smsc-a", price=0.0)  # fmt: skip
    base.update(fields)
    return Finished(**base)


async def pieces(redis: Redis, job_id: str, name: str) -> list[str]:
    stored: Any = await redis.hkeys(keys.record(PROFILE, job_id))
    return sorted(as_text(k) for k in stored if as_text(k).startswith(name + "~"))


async def test_a_text_shortened_before_sending_reads_as_sent(redis: Redis) -> None:
    ledger = Ledger(redis, retention=3600, events_maxlen=1000)
    await Client(redis, default_profile=PROFILE).send("+447911123456", LONG, id="j-1")
    owner = as_text(await redis.hget(keys.record(PROFILE, "j-1"), "owner") or b"")
    # An attempt that went out with the text as written, then (the process died before
    # its outcome was recorded) the message composed again with its links shortened.
    [result] = await ledger.sending(PROFILE, [sending("j-1", owner, LONG)])
    assert len(await pieces(redis, "j-1", "text")) >= 2
    [result] = await ledger.sending(PROFILE, [sending("j-1", owner, SHORT)])
    assert result.ok
    assert await pieces(redis, "j-1", "text") == []
    record = await ledger.get("j-1", profile=PROFILE)
    assert record is not None and record["text"] == SHORT
    # Longer again, then shorter but still in pieces: always the value last written.
    for text in (LONG + LONG, LONG):
        [result] = await ledger.sending(PROFILE, [sending("j-1", owner, text)])
        record = await ledger.get("j-1", profile=PROFILE)
        assert record is not None and record["text"] == text


async def test_a_later_attempts_shorter_error_and_part_ids_read_as_written(
    redis: Redis,
) -> None:
    ledger = Ledger(redis, retention=3600, events_maxlen=1000)
    await Client(redis, default_profile=PROFILE).send("+447911123456", "hi", id="j-2")
    owner = as_text(await redis.hget(keys.record(PROFILE, "j-2"), "owner") or b"")
    long_error = "provider answered 503: " + "upstream overloaded, retry later; " * 5
    [result] = await ledger.sending(PROFILE, [sending("j-2", owner, "hi")])
    first = finished("j-2", owner, result.step + 1, status="failed", error_code="throttled",
                     error_raw="503 " + "x" * 150, error=long_error)  # fmt: skip
    await ledger.finish(PROFILE, keys.queue(PROFILE), [first])
    assert await pieces(redis, "j-2", "error")
    # The same record failing again with a short error (the replay of a failed job).
    await redis.hset(keys.record(PROFILE, "j-2"), "status", "sending")
    again = finished("j-2", owner, result.step + 2, status="failed", error_code="throttled",
                     error_raw="429", error="too many requests")  # fmt: skip
    await ledger.finish(PROFILE, keys.queue(PROFILE), [again])
    assert await pieces(redis, "j-2", "error") == []
    assert await pieces(redis, "j-2", "error_raw") == []
    record = await ledger.get("j-2", profile=PROFILE)
    assert record is not None
    assert (record["error"], record["error_raw"]) == ("too many requests", "429")
    # Part ids of a long message sent twice (a crash between): the second send's.
    many = [f"{n:040d}" for n in range(6)]
    await ledger.finish(PROFILE, keys.queue(PROFILE),
                        [finished("j-2", owner, result.step + 3, status="sent",
                                  segments=6, part_ids=many)])  # fmt: skip
    assert await pieces(redis, "j-2", "part_ids")
    await ledger.finish(PROFILE, keys.queue(PROFILE),
                        [finished("j-2", owner, result.step + 4, status="sent",
                                  segments=2, part_ids=["p1", "p2"])])  # fmt: skip
    assert await pieces(redis, "j-2", "part_ids") == []
    record = await ledger.get("j-2", profile=PROFILE)
    assert record is not None and json.loads(record["part_ids"]) == ["p1", "p2"]


async def test_the_slow_path_writing_again_leaves_no_pieces(redis: Redis) -> None:
    ledger = Ledger(redis, retention=3600, events_maxlen=1000)
    fields = {"text": "y" * 200, "to": "+1"}
    assert (await ledger.transition("kw-1", "", "queued", profile=PROFILE, fields=fields)).ok
    assert await pieces(redis, "kw-1", "text")
    result = await ledger.transition(
        "kw-1", "", "rejected", profile=PROFILE, note="no", fields={"text": "short", "to": "+1"}
    )
    assert result.ok
    assert await pieces(redis, "kw-1", "text") == []
    record = await ledger.get("kw-1", profile=PROFILE)
    assert record is not None and record["text"] == "short"
