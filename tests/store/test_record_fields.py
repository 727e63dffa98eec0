"""The records the router hands its Lua scripts are named once on each side: a NamedTuple
in router/store/ledger.py, a `<RECORD>_<FIELD>` constant per field in
router/store/lua/common.lua. These tests keep the two in step (same names, same order)
through a real Redis, so a field added on one side only fails here, not in production
as a value read from the wrong place; they check that the record scripts read no record
by a bare position, and that the hot path fills each field from its namesake.

Real Redis (the `redis` fixture)."""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis

from binds.base import Accepted, Failed, Retry
from router.config import parse_settings
from router.engine.connectors import ConnectorRuntime
from router.engine.pipeline import Pipeline, Ready
from router.engine.receipts import Reports
from router.engine.routing import Routing
from router.policy.jobs import Job
from router.policy.routes import RouteTable
from router.store import keys, scripts
from router.store.ledger import LUA_RECORDS, Ledger, Transition
from router.store.outages import RedisOutages
from router.store.queue import Entry

from ..conftest import config_dict

# Records that only Lua reads and writes (kept in Redis by the scripts themselves).
LUA_ONLY = {"DLR": ("outcome", "stat", "err")}
# The scripts the ledger runs (common.lua prepended to each).
RECORD_SCRIPTS = ("transition", "report", "missing", "enqueue", "sending", "finish", "early")
# Records passed as plain ARGV; the others go msgpacked in ARGV[1].
ARGV_RECORDS = {"TRANSITION", "MISSING", "EARLY"}


def fields_of(record: str) -> tuple[str, ...]:
    if record in LUA_ONLY:
        return LUA_ONLY[record]
    return tuple(LUA_RECORDS[record]._fields)  # type: ignore[attr-defined]


def constants(record: str) -> dict[str, int]:
    """The Lua constants a record's fields should have: each one's position, then its
    count."""
    names = fields_of(record)
    at = {f"{record}_{name.upper()}": i for i, name in enumerate(names, 1)}
    return {**at, f"{record}_COUNT": len(names)}


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


def test_common_lua_names_every_field_of_every_record_and_nothing_else() -> None:
    """Read as text: common.lua's constants are exactly the records' fields, in order
    (a stray or missing constant, or one numbered out of order, fails)."""
    found = re.findall(r"^local ([A-Z][A-Z_]*) = (\d+)$", scripts.source("common"), re.M)
    wanted: dict[str, int] = {}
    for record in [*LUA_RECORDS, *LUA_ONLY]:
        wanted.update(constants(record))
    assert len(found) == len(wanted), "a constant named twice, or one too many"
    assert {name: int(value) for name, value in found} == wanted


@pytest.mark.parametrize("record", sorted([*LUA_RECORDS, *LUA_ONLY]))
async def test_each_lua_constant_is_its_fields_position(redis: Redis, record: str) -> None:
    """Evaluated by Redis (a constant named twice keeps the last value: caught here)."""
    wanted = constants(record)
    body = f"\nreturn {{{', '.join(wanted)}}}\n"
    reply = await redis.eval(scripts.source("common") + body, 0)
    assert reply == list(wanted.values())


@pytest.mark.parametrize("record", sorted(LUA_RECORDS))
async def test_lua_reads_each_field_by_name_where_python_packed_it(
    redis: Redis, record: str
) -> None:
    """Each field, packed as the ledger packs it (msgpack array, or plain ARGV), read in
    Redis by its constant in common.lua, comes back with its own value."""
    item = sample(LUA_RECORDS[record])
    if record in ARGV_RECORDS:
        read, args = "local it = ARGV", list(item)
    else:
        packed = msgpack.packb(item, use_bin_type=False)  # as the ledger packs records
        read, args = "local it = cmsgpack.unpack(ARGV[1])", [packed]
    names = fields_of(record)
    pairs = ", ".join(f"{name} = it[{record}_{name.upper()}]" for name in names)
    body = f"\n{read}\nreturn cjson.encode({{{pairs}}})\n"
    reply = json.loads(await redis.eval(scripts.source("common") + body, 0, *args))
    expected = {
        name: (str(value) if record in ARGV_RECORDS else value)
        for name, value in item._asdict().items()  # type: ignore[attr-defined]
    }
    expected = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in expected.items()}
    assert reply == expected


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


async def test_the_pipeline_fills_each_record_field_with_its_namesake(
    redis: Redis, tmp_path: Path
) -> None:
    """The hot path builds `Sending` and `Finished` by position (cheaper than keywords):
    a field swapped with another of the same type would pass mypy, so each is checked
    here by name, from a message whose every value differs."""
    ledger = Ledger(redis, retention=60, events_maxlen=100)
    reports = Reports(redis, ledger, "sms", id_format="hex")
    # Building records never picks a connector: the one named on the Ready gives the price.
    settings = parse_settings(config_dict("redis://127.0.0.1:1/0", "http://127.0.0.1:1/send"),
                              env={}, base_dir=tmp_path)  # fmt: skip
    priced = settings.profiles["alerts"].connector
    assert priced is not None
    priced = priced.model_copy(update={"prices": {"+44": 0.25, "default": 1.0}})
    carrier = ConnectorRuntime("carrier-a", priced, [])
    routing = Routing("sms", RouteTable(settings), {})
    routing.connectors["carrier-a"] = carrier
    pipeline = Pipeline(profile="sms", stream=keys.queue("sms"), ledger=ledger,
                        routing=routing, reports=reports, outages=RedisOutages(),
                        store_text=True, handoff=_Unused())  # fmt: skip
    entry = Entry("7-1", {"origin": b"5-1", "replay": b"1"})
    ready = Ready(entry, Job(id="j1", to="+447911123456", text="the text"), "+16501112345",
                  url="https://cb.example/x", meta='{"m":1}', step=4, sticky_key="sticky:k",
                  sticky_ttl=77, connector="carrier-a")  # fmt: skip
    assert pipeline._sending_item(ready)._asdict() == {
        "id": "j1", "owner": "5-1", "replay": "1", "sender": "+16501112345",
        "to": "+447911123456", "text": "the text", "meta": '{"m":1}',
        "url": "https://cb.example/x", "sticky_key": "sticky:k", "sticky_ttl": 77,
        "media": "", "mms": "", "note": "",
    }  # fmt: skip
    mms = Job(id="j2", to="+447911123456", text="t", media=("https://m.example/a.jpg",))
    ready.job = mms
    assert pipeline._sending_item(ready)._asdict() | {"id": "j2"} == {
        **pipeline._sending_item(ready)._asdict(),
        "media": '["https://m.example/a.jpg"]', "mms": "mms", "note": "",
    }  # fmt: skip
    mms.fallback = "no MmsSender"
    item = pipeline._sending_item(ready)
    assert (item.mms, item.note) == ("link", "MMS sent as SMS with links: no MmsSender")
    ready.job = Job(id="j1", to="+447911123456", text="the text")
    common = {"id": "j1", "entry": "7-1", "step": 5, "url": "https://cb.example/x",
              "to": "+447911123456", "sender": "+16501112345", "meta": '{"m":1}',
              "connector": "carrier-a"}  # fmt: skip
    sent = pipeline._finished_item(ready, Accepted("0A", segments=2, part_ids=("0A", "0B")))
    assert sent._asdict() == {
        **common, "status": "sent", "note": "", "segments": 2, "error_code": "",
        "error_raw": "", "error": "", "part_ids": ["a", "b"], "forms": ["a", "a", "b", "b"],
        "price": 0.5,  # 2 parts at the connector's +44 price
    }  # fmt: skip
    failed = pipeline._finished_item(ready, Failed("no route", "invalid_destination", "0x0B"))
    assert failed._asdict() == {
        **common, "status": "failed", "note": "no route", "segments": 0,
        "error_code": "invalid_destination", "error_raw": "0x0B", "error": "no route",
        "part_ids": [], "forms": [], "price": 0.0,
    }  # fmt: skip
