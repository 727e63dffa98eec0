"""The records the router hands its Lua scripts are named once on each side: a NamedTuple
in router/store/ledger.py, a `fields{...}` table in router/store/lua/common.lua. These
tests keep the two in step (same names, same order) through a real Redis, so a field
added on one side only fails here, not in production as a value read from the wrong
place; and they check that the record scripts read no record by a bare position.

Real Redis (the `redis` fixture)."""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Sequence
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis

from binds.base import Accepted, Failed, Retry
from router.engine.pipeline import Pipeline, Ready
from router.engine.receipts import Reports
from router.policy.jobs import Job
from router.store import keys, scripts
from router.store.ledger import LUA_RECORDS, Ledger, Transition
from router.store.outages import RedisOutages
from router.store.queue import Entry

# Records that only Lua reads and writes (kept in Redis by the scripts themselves).
LUA_ONLY = {"DLR"}
# The scripts the ledger runs (common.lua prepended to each).
RECORD_SCRIPTS = ("transition", "report", "missing", "enqueue", "sending", "finish", "early")
# Records passed as plain ARGV; the others go msgpacked in ARGV[1].
ARGV_RECORDS = {"TRANSITION", "MISSING", "EARLY"}


def lua_tables() -> dict[str, list[str]]:
    """common.lua's `local NAME = fields{'a', 'b', ...}` tables, their names in order."""
    found = re.findall(r"local (\w+) = fields\{([^}]*)\}", scripts.source("common"))
    return {name: re.findall(r"'(\w+)'", body) for name, body in found}


def sample(record: type[tuple[Any, ...]]) -> tuple[Any, ...]:
    """An instance whose every field holds a value no other field holds."""
    values: list[Any] = []
    for i, (name, kind) in enumerate(typing.get_type_hints(record).items()):
        origin = typing.get_origin(kind) or kind
        if kind is int:
            values.append(1000 + i)
        elif kind is bytes:
            values.append(f"b-{name}".encode())
        elif origin in (list, Sequence):
            values.append([f"l-{name}"])
        else:
            values.append(f"s-{name}")
    return record(*values)


def test_every_python_record_has_its_lua_table_with_the_same_fields_in_order() -> None:
    tables = lua_tables()
    for lua_name, record in LUA_RECORDS.items():
        assert tables.get(lua_name) == list(record._fields), (lua_name, record.__name__)  # type: ignore[attr-defined]
    assert set(tables) - set(LUA_RECORDS) == LUA_ONLY, "a Lua table without its NamedTuple"


@pytest.mark.parametrize("lua_name", sorted(LUA_RECORDS))
async def test_lua_reads_each_field_by_name_where_python_packed_it(
    redis: Redis, lua_name: str
) -> None:
    """Each field, packed as the ledger packs it (msgpack array, or plain ARGV), read in
    Redis by its name in common.lua, comes back with its own value."""
    record = LUA_RECORDS[lua_name]
    item = sample(record)
    if lua_name in ARGV_RECORDS:
        read, args = "local it = ARGV", list(item)
    else:
        packed = msgpack.packb(item, use_bin_type=False)  # as the ledger packs records
        read, args = "local it = cmsgpack.unpack(ARGV[1])", [packed]
    body = f"""
{read}
local out = {{}}
for name, at in pairs({lua_name}) do
  if name ~= '_count' then out[name] = it[at] end
end
return cjson.encode({{fields = out, count = {lua_name}._count}})
"""
    reply = json.loads(await redis.eval(scripts.source("common") + body, 0, *args))
    expected = {
        name: (str(value) if lua_name in ARGV_RECORDS else value)
        for name, value in item._asdict().items()  # type: ignore[attr-defined]
    }
    expected = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in expected.items()}
    assert reply == {"fields": expected, "count": len(item)}


@pytest.mark.parametrize("name", RECORD_SCRIPTS)
def test_record_scripts_read_no_record_field_by_a_bare_position(name: str) -> None:
    """`it[3]` or `ARGV[7]` in a record script would be a field read past its name (only
    ARGV[1], the packed call itself, is read by position)."""
    lua = scripts.source(name)
    code = "\n".join(line.split("--")[0] for line in lua.splitlines())
    bare = re.findall(r"\b(?:it|r|args|ARGV)\[\d+\]", code)
    assert [b for b in bare if b != "ARGV[1]"] == [], name


class _Unused:
    """The pipeline's Handoff: building records never hands anything back."""

    def retry(self, ready: Ready, outcome: Retry) -> None:
        raise AssertionError("not called")

    def skip(self, ready: Ready, result: Transition) -> None:
        raise AssertionError("not called")

    def fail(self, ready: Ready, exc: Exception) -> None:
        raise AssertionError("not called")

    def release(self, entries: Sequence[Entry]) -> None:
        raise AssertionError("not called")


async def test_the_pipeline_fills_each_record_field_with_its_namesake(redis: Redis) -> None:
    """The hot path builds `Sending` and `Finished` by position (cheaper than keywords):
    a field swapped with another of the same type would pass mypy, so each is checked
    here by name, from a message whose every value differs."""
    ledger = Ledger(redis, retention=60, events_maxlen=100)
    reports = Reports(redis, ledger, "sms", id_format="hex")
    pipeline = Pipeline(profile="sms", stream=keys.queue("sms"), ledger=ledger, binds=[],
                        reports=reports, outages=RedisOutages(), store_text=True,
                        handoff=_Unused())  # fmt: skip
    entry = Entry("7-1", {"origin": b"5-1", "replay": b"1"})
    ready = Ready(entry, Job(id="j1", to="+447911123456", text="the text"), "+16501112345",
                  url="https://cb.example/x", meta='{"m":1}', step=4, sticky_key="sticky:k",
                  sticky_ttl=77)  # fmt: skip
    assert pipeline._sending_item(ready)._asdict() == {
        "id": "j1", "owner": "5-1", "replay": "1", "sender": "+16501112345",
        "to": "+447911123456", "text": "the text", "meta": '{"m":1}',
        "url": "https://cb.example/x", "sticky_key": "sticky:k", "sticky_ttl": 77,
    }  # fmt: skip
    common = {"id": "j1", "entry": "7-1", "step": 5, "url": "https://cb.example/x",
              "to": "+447911123456", "sender": "+16501112345", "meta": '{"m":1}'}  # fmt: skip
    sent = pipeline._finished_item(ready, Accepted("0A", segments=2, part_ids=("0A", "0B")))
    assert sent._asdict() == {
        **common, "status": "sent", "note": "", "segments": 2, "error_code": "",
        "error_raw": "", "error": "", "part_ids": ["a", "b"], "forms": ["a", "a", "b", "b"],
    }  # fmt: skip
    failed = pipeline._finished_item(ready, Failed("no route", "invalid_destination", "0x0B"))
    assert failed._asdict() == {
        **common, "status": "failed", "note": "no route", "segments": 0,
        "error_code": "invalid_destination", "error_raw": "0x0B", "error": "no route",
        "part_ids": [], "forms": [],
    }  # fmt: skip
