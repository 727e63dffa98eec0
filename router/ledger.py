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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from . import keys
from .connections import as_text

FINAL = frozenset({"sent", "delivered", "undelivered", "failed", "rejected", "expired"})
STATUSES = ("queued", "scheduled", "sending", *sorted(FINAL))

# Shared by both scripts: append one step to a record's history and set its status.
_SET_STATUS = """
local function set_status(key, status, now, note)
  local h = redis.call('HGET', key, 'history')
  local hist = {}
  if h then hist = cjson.decode(h) end
  hist[#hist + 1] = {status, tonumber(now), note}
  redis.call('HSET', key, 'status', status, 'updated_at', now, 'history', cjson.encode(hist))
end
-- A message with a status_callback_url also gets the event on the callbacks stream
-- (with the url, which stays out of the event stream: it may carry a token).
local function to_callbacks(key, stream, ev)
  local url = redis.call('HGET', key, 'status_callback_url')
  if url then
    local body = {'url', url}
    for i = 1, #ev do body[#body + 1] = ev[i] end
    redis.call('XADD', stream, '*', unpack(body))
  end
end
"""

# One round trip per status change, and atomic: the record, its event and (for a final
# status) the acknowledgement of the work entry happen together or not at all.
# KEYS: record, event stream, work stream to ack (or a placeholder), the profile's
# awaiting-reports set (or a placeholder), then index keys (provider message ids) each
# set to the job id with the record's retention.
# ARGV: owner, now, status, ttl, mode ('' | 'replay'), note, events maxlen,
# field count, event count, ack group ('' = no ack), ack entry, job id, callbacks
# stream, report deadline ('' = none: the message joins the awaiting set only when the
# change is made), then field pairs, then event pairs. Returns {verdict, previous status};
# verdict: ok | duplicate | done. The ack happens whatever the verdict: a duplicate
# or an already-final record has nothing left to do either.
_TRANSITION = (
    _SET_STATUS
    + """
if ARGV[10] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[10], ARGV[11])
  redis.call('XDEL', KEYS[3], ARGV[11])
end
local cur = redis.call('HMGET', KEYS[1], 'status', 'owner')
local st, own = cur[1], cur[2]
if st then
  if own and own ~= ARGV[1] then return {'duplicate', st} end
  if st == 'sent' or st == 'delivered' or st == 'undelivered'
     or st == 'failed' or st == 'expired' or (st == 'rejected' and ARGV[5] ~= 'replay') then
    return {'done', st}
  end
else
  st = ''
  redis.call('HSET', KEYS[1], 'created_at', ARGV[2])
end
set_status(KEYS[1], ARGV[3], ARGV[2], ARGV[6])
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
if ARGV[3] == 'sending' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
local first = 15
local nfields, nevent = tonumber(ARGV[8]), tonumber(ARGV[9])
for i = first, first + 2 * nfields - 1, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
for k = 5, #KEYS do redis.call('SET', KEYS[k], ARGV[12], 'EX', ARGV[4]) end
if ARGV[14] ~= '' then redis.call('ZADD', KEYS[4], ARGV[14], ARGV[12]) end
local ev = {}
for i = first + 2 * nfields, first + 2 * (nfields + nevent) - 1 do ev[#ev + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', unpack(ev))
to_callbacks(KEYS[1], ARGV[13], ev)
return {'ok', st}
"""
)

# A delivery report for one part of a sent message, found through the provider-id index
# in the same step. The record's final status comes when every part has reported:
# delivered if all were, else undelivered with the first failing part's stat and err.
# KEYS: event stream, awaiting-reports set, the early report to delete once the report
# is used (or a placeholder), then the candidate provider-id index keys, best first
# (the first that exists names the job).
# ARGV: part outcome (delivered | undelivered), stat, err, now, events maxlen, record
# key prefix, callbacks stream, '1' = delete KEYS[3] once used, candidate count, the
# candidate ids (same order as their keys), then event pairs.
# Returns {verdict, status, job id, matched id}; verdict: ok (final status written) |
# partial (waiting for other parts) | early (not sent yet) | unknown (no such id) | done.
_REPORT = (
    _SET_STATUS
    + """
local ncand = tonumber(ARGV[9])
local job, part
for i = 1, ncand do
  job = redis.call('GET', KEYS[3 + i])
  if job then part = ARGV[9 + i]; break end
end
if not job then return {'unknown', '', '', ''} end
local rec = ARGV[6] .. job
local st = redis.call('HGET', rec, 'status')
if not st then return {'unknown', '', job, part} end
if st ~= 'sent' and st ~= 'delivered' and st ~= 'undelivered' and st ~= 'failed'
   and st ~= 'expired' and st ~= 'rejected' then return {'early', st, job, part} end
-- From here the report is used up (applied, or its message is final already).
if ARGV[8] == '1' then redis.call('DEL', KEYS[3]) end
if st ~= 'sent' then return {'done', st, job, part} end
redis.call('HSET', rec, 'dlr:' .. part, cjson.encode({ARGV[1], ARGV[2], ARGV[3]}))
local ids = redis.call('HGET', rec, 'part_ids')
local parts = {part}
if ids then parts = cjson.decode(ids) end
local final, stat, err = 'delivered', ARGV[2], ARGV[3]
for _, p in ipairs(parts) do
  local r = redis.call('HGET', rec, 'dlr:' .. p)
  if not r then return {'partial', st, job, part} end
  r = cjson.decode(r)
  if r[1] ~= 'delivered' and final == 'delivered' then final, stat, err = r[1], r[2], r[3] end
end
redis.call('ZREM', KEYS[2], job)
set_status(rec, final, ARGV[4], 'stat ' .. stat .. ' err ' .. err)
redis.call('HSET', rec, 'dlr_stat', stat, 'dlr_err', err)
if final ~= 'delivered' then
  redis.call('HSET', rec, 'error_code', 'dlr_' .. string.lower(stat), 'error_raw',
             'stat:' .. stat .. ' err:' .. err)
end
local ev = {'id', job, 'status', final, 'at', ARGV[4], 'stat', stat, 'err', err,
            'provider_message_id', part}
for i = 10 + ncand, #ARGV do ev[#ev + 1] = ARGV[i] end
for _, name in ipairs({'to', 'from', 'meta'}) do
  local value = redis.call('HGET', rec, name)
  if value then ev[#ev + 1] = name; ev[#ev + 1] = value end
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', unpack(ev))
to_callbacks(rec, ARGV[7], ev)
return {'ok', final, job, part}
"""
)

# Sent messages whose delivery report is overdue (the SMSC lost it, or its inbound
# queue overflowed): each gets a last note on its `sent` status and an event, so no
# message stays `sent` without anyone knowing; a report that still comes later applies.
# KEYS: awaiting-reports set, event stream, stats hash. ARGV: now, batch size, record
# key prefix, events maxlen, callbacks stream, profile, note.
# Returns {members taken, records noted}.
_MISSING = (
    _SET_STATUS
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local noted = 0
for _, job in ipairs(due) do
  redis.call('ZREM', KEYS[1], job)
  local rec = ARGV[3] .. job
  if redis.call('HGET', rec, 'status') == 'sent' then
    set_status(rec, 'sent', ARGV[1], ARGV[7])
    redis.call('HSET', rec, 'report_timeout', '1')
    local ev = {'id', job, 'profile', ARGV[6], 'status', 'sent', 'at', ARGV[1],
                'note', ARGV[7], 'report_timeout', '1'}
    for _, name in ipairs({'to', 'from', 'provider_message_id', 'meta'}) do
      local value = redis.call('HGET', rec, name)
      if value then ev[#ev + 1] = name; ev[#ev + 1] = value end
    end
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(ev))
    to_callbacks(rec, ARGV[5], ev)
    noted = noted + 1
  end
end
if noted > 0 then redis.call('HINCRBY', KEYS[3], 'reports_missing', noted) end
return {#due, noted}
"""
)

# A producer's job: its `queued` record first, then the stream entry, in one step, so
# no worker can record `sending` before `queued` exists, and a job id that has a record
# already (a repeat) is not enqueued again. The new entry owns the record.
# KEYS: record, event stream, work stream. ARGV: now, ttl, events maxlen, callbacks
# stream, job id, encoded job, field count, then field pairs, then event pairs.
# Returns {verdict, entry id}; verdict: ok | duplicate.
_ENQUEUE = (
    _SET_STATUS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'duplicate', ''} end
local entry = redis.call('XADD', KEYS[3], '*', 'job', ARGV[6])
redis.call('HSET', KEYS[1], 'created_at', ARGV[1], 'owner', entry)
set_status(KEYS[1], 'queued', ARGV[1], '')
local nfields = tonumber(ARGV[7])
for i = 8, 7 + 2 * nfields, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
local ev = {}
for i = 8 + 2 * nfields, #ARGV do ev[#ev + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ev))
to_callbacks(KEYS[1], ARGV[4], ev)
return {'ok', entry}
"""
)


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
        self._report = redis.register_script(_REPORT)
        self._missing = redis.register_script(_MISSING)
        self._enqueue = redis.register_script(_ENQUEUE)
        # Profiles whose sent messages expect a delivery report, and within how long.
        self._report_waits: dict[str, float] = {}

    def expect_reports(self, profile: str, within: float) -> None:
        """From now on, a message of `profile` recorded `sent` joins the profile's
        awaiting set (in the same step) with a deadline `within` seconds later;
        `within` <= 0 stops that."""
        if within > 0:
            self._report_waits[profile] = within
        else:
            self._report_waits.pop(profile, None)

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
        event: Mapping[str, str] | None = None,
        ack: Ack | None = None,
        indexes: Sequence[str] = (),
    ) -> Transition:
        """Move a record to `status` if `owner` may, and publish the event, atomically.

        `allow_rejected` lets a replayed dead letter leave `rejected`.
        `ack` acknowledges and deletes a work entry in the same step (whatever the
        verdict); each of `indexes` is a key set to the job id with the record's retention
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
            event,
            ack,
            indexes,
        )
        verdict, previous = await self._script(keys=script_keys, args=args)
        return Transition(as_text(verdict), as_text(previous))

    async def report(
        self,
        candidates: Sequence[str],
        outcome: str,
        *,
        profile: str,
        stat: str,
        err: str,
        early: str = "",
    ) -> tuple[Transition, str, str]:
        """Record one part's delivery report; the final status once every part reported.

        `candidates` are the provider ids the part may be indexed under, best first
        (the first with an index names the job). `outcome` is ``delivered`` or
        ``undelivered``. `early`, if given, is the key of a kept early report, deleted
        in the same step once the report is used. Returns the verdict — ``ok`` (final
        status written; `previous` holds it), ``partial``, ``early`` (the record is not
        `sent` yet: keep the report), ``unknown`` or ``done`` — the job id ('' if
        unknown) and the candidate that matched.
        """
        now = f"{time.time():.6f}"
        args: list[str | int] = [
            outcome,
            stat,
            err,
            now,
            self._events_maxlen,
            keys.record(""),
            keys.CALLBACKS,
            "1" if early else "",
            len(candidates),
            *candidates,
            "profile",
            profile,
        ]
        script_keys = [keys.EVENTS, keys.awaiting_reports(profile), early or keys.EVENTS]
        script_keys += [keys.provider_id(profile, c) for c in candidates]
        verdict, status, job, part = await self._report(keys=script_keys, args=args)
        return Transition(as_text(verdict), as_text(status)), as_text(job), as_text(part)

    async def note_missing_reports(self, profile: str, *, note: str, batch: int = 500) -> int:
        """Note every overdue sent message of `profile` (see `_MISSING`); returns how many
        records got the note. Runs in batches so one call never blocks Redis long."""
        total = 0
        while True:
            now = f"{time.time():.6f}"
            taken, noted = await self._missing(
                keys=[keys.awaiting_reports(profile), keys.EVENTS, keys.stats(profile)],
                args=[
                    now,
                    batch,
                    keys.record(""),
                    self._events_maxlen,
                    keys.CALLBACKS,
                    profile,
                    note,
                ],
            )
            total += int(noted)
            if int(taken) < batch:
                return total

    async def enqueue(
        self, items: Sequence[tuple[str, str, bytes, Mapping[str, str]]]
    ) -> list[bool]:
        """Record `queued` and add the job to its work stream, atomically, pipelined.

        Each item is (job id, profile, encoded job, record fields). A job whose id has
        a record already is not enqueued (False in the answer).
        """
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id, profile, job, fields in items:
                now = f"{time.time():.6f}"
                event = {"id": job_id, "profile": profile, "status": "queued", "at": now}
                event.update({k: v for k, v in fields.items() if k in ("to", "from", "meta")})
                args: list[str | int | bytes] = [
                    now,
                    self._retention,
                    self._events_maxlen,
                    keys.CALLBACKS,
                    job_id,
                    job,
                    len(fields),
                ]
                for pair in (*fields.items(), *event.items()):
                    args += pair
                await self._enqueue(
                    keys=[keys.record(job_id), keys.EVENTS, keys.queue(profile)],
                    args=args,
                    client=pipe,
                )
            replies = await pipe.execute()
        return [as_text(verdict) == "ok" for verdict, _entry in replies]

    def _call(
        self,
        job_id: str,
        owner: str,
        status: str,
        profile: str,
        note: str,
        fields: Mapping[str, str | int | float] | None,
        allow_rejected: bool,
        event: Mapping[str, str] | None,
        ack: Ack | None,
        indexes: Sequence[str],
    ) -> tuple[list[str], list[str | int | float]]:
        now = f"{time.time():.6f}"
        body: dict[str, str] = {"id": job_id, "profile": profile, "status": status, "at": now}
        if note:
            body["note"] = note
        body.update({k: v for k, v in (event or {}).items() if v})
        pairs = list((fields or {}).items())
        wait = self._report_waits.get(profile, 0.0) if status == "sent" else 0.0
        script_keys = [keys.record(job_id), keys.EVENTS, ack.stream if ack else keys.EVENTS]
        script_keys += [keys.awaiting_reports(profile) if wait else keys.EVENTS, *indexes]
        args: list[str | int | float] = [
            owner,
            now,
            status,
            self._retention,
            "replay" if allow_rejected else "",
            note,
            self._events_maxlen,
            len(pairs),
            len(body),
            ack.group if ack else "",
            ack.entry_id if ack else "",
            job_id,
            keys.CALLBACKS,
            f"{time.time() + wait:.3f}" if wait else "",
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
