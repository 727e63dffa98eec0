"""Message records and status events.

One Redis hash per job (``sms:msg:<id>``) holds its status, the history of
every change with its time, the sender used, provider id, attempts and errors.
Every change goes through one Lua script that also decides ownership: a record
belongs to the stream entry that first reached it (its *owner*), so a second
entry with the same job id is recognised as a duplicate, and a redelivered
entry whose record is already final is acknowledged without being sent again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from . import keys
from .connections import as_text

FINAL = frozenset({"sent", "delivered", "undelivered", "failed", "rejected", "expired"})
STATUSES = ("queued", "scheduled", "sending", *sorted(FINAL))

# One round trip per status change, and atomic: the record, its event and (for a final
# status) the acknowledgement of the work entry happen together or not at all.
# KEYS: record, event stream, [work stream to ack], [provider-id index key].
# ARGV: owner, now, status, ttl, mode ('' | 'replay' | 'create'), note, events maxlen,
# field count, event count, ack group ('' = no ack), ack entry, index value,
# then field pairs, then event pairs. Returns {verdict, previous status};
# verdict: ok | duplicate | done. The ack happens whatever the verdict: a duplicate
# or an already-final record has nothing left to do either.
_TRANSITION = """
if ARGV[10] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[10], ARGV[11])
  redis.call('XDEL', KEYS[3], ARGV[11])
end
local cur = redis.call('HMGET', KEYS[1], 'status', 'owner')
local st, own = cur[1], cur[2]
if st then
  if own and own ~= ARGV[1] then return {'duplicate', st} end
  if ARGV[5] == 'create' or st == 'sent' or st == 'delivered' or st == 'undelivered'
     or st == 'failed' or st == 'expired' or (st == 'rejected' and ARGV[5] ~= 'replay') then
    return {'done', st}
  end
else
  st = ''
  redis.call('HSET', KEYS[1], 'created_at', ARGV[2])
end
local h = redis.call('HGET', KEYS[1], 'history')
local hist = {}
if h then hist = cjson.decode(h) end
hist[#hist + 1] = {ARGV[3], tonumber(ARGV[2]), ARGV[6]}
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'owner', ARGV[1], 'updated_at', ARGV[2],
           'history', cjson.encode(hist))
if ARGV[3] == 'sending' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
local first = 13
local nfields, nevent = tonumber(ARGV[8]), tonumber(ARGV[9])
for i = first, first + 2 * nfields - 1, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[12] ~= '' then redis.call('SET', KEYS[4], ARGV[12], 'EX', ARGV[4]) end
local ev = {}
for i = first + 2 * nfields, first + 2 * (nfields + nevent) - 1 do ev[#ev + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', unpack(ev))
return {'ok', st}
"""


@dataclass(frozen=True, slots=True)
class Ack:
    """A work entry to acknowledge and delete in the same step as a status change."""

    stream: str
    group: str
    entry_id: str


@dataclass(frozen=True, slots=True)
class Transition:
    """What the ledger said to a requested status change."""

    verdict: str  # ok | duplicate | done
    previous: str  # status before the change ('' for a new record)

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


class Ledger:
    """Records every status change of every message and publishes it as an event."""

    def __init__(self, redis: Redis, *, retention: float, events_maxlen: int) -> None:
        self._redis = redis
        self._retention = max(1, int(retention))
        self._events_maxlen = events_maxlen
        self._script = redis.register_script(_TRANSITION)

    async def transition(
        self,
        job_id: str,
        owner: str,
        status: str,
        *,
        profile: str,
        note: str = "",
        fields: Mapping[str, str | int | float] | None = None,
        allow_rejected: bool = False,
        create_only: bool = False,
        event: Mapping[str, str] | None = None,
        ack: Ack | None = None,
        index: str | None = None,
    ) -> Transition:
        """Move a record to `status` if `owner` may, and publish the event, atomically.

        `allow_rejected` lets a replayed dead letter leave `rejected`; `create_only`
        writes only a record that does not exist yet (a producer's `queued`).
        `ack` acknowledges and deletes a work entry in the same step (whatever the
        verdict); `index` is a key set to the job id with the record's retention
        (the provider-id lookup of delivery reports).
        """
        script_keys, args = self._call(
            job_id,
            owner,
            status,
            profile,
            note,
            fields,
            allow_rejected,
            create_only,
            event,
            ack,
            index,
        )
        verdict, previous = await self._script(keys=script_keys, args=args)
        return Transition(as_text(verdict), as_text(previous))

    async def create_queued(
        self, items: list[tuple[str, str, str, Mapping[str, str]]]
    ) -> list[bool]:
        """Create `queued` records for freshly enqueued jobs, pipelined.

        Each item is (job id, owner entry, profile, fields). A record that exists
        already is left alone (the worker got there first, or it is a duplicate).
        """
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id, owner, profile, fields in items:
                event = {k: v for k, v in fields.items() if k in ("to", "from", "meta")}
                script_keys, args = self._call(
                    job_id, owner, "queued", profile, "", fields, False, True, event, None, None
                )
                await self._script(keys=script_keys, args=args, client=pipe)
            replies = await pipe.execute()
        return [as_text(verdict) == "ok" for verdict, _previous in replies]

    def _call(
        self,
        job_id: str,
        owner: str,
        status: str,
        profile: str,
        note: str,
        fields: Mapping[str, str | int | float] | None,
        allow_rejected: bool,
        create_only: bool,
        event: Mapping[str, str] | None,
        ack: Ack | None,
        index: str | None,
    ) -> tuple[list[str], list[str | int | float]]:
        now = f"{time.time():.6f}"
        body: dict[str, str] = {"id": job_id, "profile": profile, "status": status, "at": now}
        if note:
            body["note"] = note
        body.update({k: v for k, v in (event or {}).items() if v})
        pairs = list((fields or {}).items())
        script_keys = [keys.record(job_id), keys.EVENTS]
        script_keys += [ack.stream if ack else keys.EVENTS, index or keys.EVENTS]
        args: list[str | int | float] = [
            owner,
            now,
            status,
            self._retention,
            "create" if create_only else "replay" if allow_rejected else "",
            note,
            self._events_maxlen,
            len(pairs),
            len(body),
            ack.group if ack else "",
            ack.entry_id if ack else "",
            job_id if index else "",
        ]
        for name, value in pairs:
            args += [name, value]
        for name, text in body.items():
            args += [name, text]
        return script_keys, args

    async def get(self, job_id: str) -> dict[str, Any] | None:
        """The record of one job, decoded, or None."""
        raw = await self._redis.hgetall(keys.record(job_id))
        return {"id": job_id, **decode_record(raw)} if raw else None

    async def get_many(self, job_ids: list[str]) -> list[dict[str, Any] | None]:
        """Records of several jobs in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(keys.record(job_id))
            rows = await pipe.execute()
        return [
            {"id": job_id, **decode_record(row)} if row else None
            for job_id, row in zip(job_ids, rows, strict=True)
        ]


def decode_record(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """A record hash as plain Python values (history and meta parsed)."""
    record: dict[str, Any] = {as_text(k): as_text(v) for k, v in raw.items()}
    history = json.loads(record.get("history") or "[]")
    record["history"] = [
        {"status": item[0], "at": float(item[1]), "note": item[2]} for item in history
    ]
    if "meta" in record:
        record["meta"] = json.loads(record["meta"])
    for name in ("attempts", "segments"):
        if name in record:
            record[name] = int(record[name])
    for name in ("created_at", "updated_at"):
        if name in record:
            record[name] = float(record[name])
    return record
