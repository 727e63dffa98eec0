"""Message records and status events.

One Redis hash per job (``sms:{P}:msg:<id>``, in its profile's slot) holds its
status, the history of every change with its time (one field per step, named by its
index: ``1``, ``2``...), the sender used, the connector each attempt went over (in its
step), provider id and errors, in a compact shape (lua/common.lua): a record is kept
for the whole retention, so its bytes are the router's memory. What can be derived is
not stored, and `decode_record` puts it back (it reads the older shapes too). Every
change goes through a Lua script (``router/store/lua``) that also decides ownership: a
record belongs to the stream entry that first reached it (its *owner*), so a second
entry with the same job id is recognised as a duplicate, and a redelivered entry whose
record is already final is acknowledged without being sent again.

The scripts take their data as records, NamedTuples below (msgpack packs them as arrays),
each field named once here and once in ``lua/common.lua`` (``SENDING_TO``): a new field
is added in both and read by name on both sides.

The hot path writes in batches: `sending` records a batch in one call, `finish`
records a batch's outcomes, events, provider-id index and acknowledgements in
another. The other changes (scheduled, retries, rejections) go one by one through
`transition`. Every script's keys are one profile's and passed in KEYS, so each runs
on Redis Cluster. A record is found by job id alone by looking in each configured
profile (`find`): a job id is unique within its profile, and one used in two profiles is
found in the first given that has it. Versions before this one also wrote a locator
(``sms:loc:<id>`` -> profile) per job; those still present are read for the ids the
profiles do not hold.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from router.store import keys, roundtrip, scripts
from router.store.connections import as_text
from router.store.replicas import ReplicaWait

SPEND_TTL = 8 * 86_400  # a day's spend is kept a week (health, the API) and a day
# Probes (ids x profiles) from which `Ledger.find` on a single server looks in one
# find.lua call rather than a pipelined HGETALL each (see `Ledger._probe`).
FIND_SCRIPT_PROBES = 32
# Seconds a report that came before its message's `sent` step waits for it, until a
# `reports` call names it (router/engine/receipts.py's EARLY_TTL).
EARLY_KEEP = 600

FINAL = frozenset({"sent", "delivered", "undelivered", "failed", "rejected", "expired"})
STATUSES = ("queued", "scheduled", "sending", *sorted(FINAL))


@dataclass(frozen=True, slots=True)
class Ack:
    """A work entry to acknowledge and delete in the same step as a status change."""

    stream: str
    group: str
    entry_id: str


# The records the scripts read. Each is packed by msgpack as a plain array (in C, as a
# tuple would be), so the wire to Lua costs what it did; its fields are named once here
# and once in lua/common.lua (same names, same order: tests/store/test_record_fields.py
# checks), and read by name on both sides. Text fields carry '' where absent.


class Sending(NamedTuple):
    """One message of a `sending` batch (sending.lua; common.lua's ``SENDING_*``)."""

    id: str  # job id
    owner: str  # the work entry that owns the record
    replay: str  # '1' lets a replayed dead letter leave `rejected`, else ''
    sender: str  # the number it is sent from (`from` on the record)
    to: str
    text: str  # '' unless the profile stores texts
    meta: str  # JSON
    url: str  # status_callback_url
    sticky_key: str  # a sticky mapping (recipient -> sender) to set with the record
    sticky_ttl: int  # its TTL in seconds
    media: str = ""  # an MMS's media URLs as a JSON list ('' for an SMS)
    mms: str = ""  # with media: 'mms' (sent with it) or 'link' (as an SMS with its links)
    note: str = ""  # the `sending` step's note ('' for none: why an MMS went as links)


class Finished(NamedTuple):
    """One outcome of a `finish` batch (finish.lua; common.lua's ``FINISHED_*``)."""

    id: str  # job id
    entry: str  # its work entry, acknowledged in the same step
    step: int  # history index of this step (the `sending` one's + 1)
    status: str  # sent | failed
    note: str
    url: str  # status_callback_url
    to: str
    sender: str
    meta: str  # JSON
    segments: int
    error_code: str  # error_*: a failed outcome's
    error_raw: str
    error: str
    part_ids: list[str]  # the parts' provider ids (a sent outcome's)
    # (part id, id form) pairs flattened: the forms an early report for the part may
    # be kept under.
    forms: list[str]
    connector: str  # the connector it went out over ('' for none)
    price: float  # segments x the connector's price for `to` (0.0: unknown); spend counts it


class Report(NamedTuple):
    """One part's delivery report (report.lua; common.lua's ``REPORT_*``)."""

    outcome: str  # delivered | undelivered
    stat: str
    err: str
    candidates: list[str]  # the provider ids it may be indexed under, best first
    job: str = ""  # the job the caller found through the index ('' = none yet)


class Reported(NamedTuple):
    """What report.lua answers for one report (7 values each, in this order)."""

    verdict: str  # ok | partial | early | done | retry
    status: str  # ok: the final status written; else the record's status ('' = none)
    job: str  # '' when no record was found
    part: str  # the candidate id that matched
    # Of the record, for `ok` only ('' otherwise): what its outcome is counted by.
    to: str
    sender: str  # its `from`
    connector: str  # its latest attempt's


class ReportResult(NamedTuple):
    """A delivery report applied (`Ledger.reports`): the verdict — ``ok`` (final
    status written; `previous` holds it), ``partial``, ``early`` (kept) or ``done``
    (final already) — the job id ('' if unknown), the candidate id that matched, and,
    when it made its message final, the record's `to`, `from` and connector."""

    result: Transition
    job: str
    part: str
    to: str = ""
    sender: str = ""
    connector: str = ""


class Enqueued(NamedTuple):
    """One job of an `enqueue` call (enqueue.lua; common.lua's ``ENQUEUED_*``)."""

    id: str  # job id
    job: bytes  # the encoded job, the work entry's only field
    fields: list[str]  # record fields and values, flattened


# The heads of the batch calls: ARGV[1] is each packed, its last field the items.


class SendingCall(NamedTuple):
    """sending.lua's argument (common.lua's ``SENDING_CALL_*``)."""

    now: str
    profile: str
    retention: int  # seconds a new record lives
    events_maxlen: int
    # The recipient index's time of the records this call creates (keys.recipient_stamp
    # of `now`; their day's index is the key after the records). '' = no index written.
    index_stamp: str
    items: Sequence[Sending]


class FinishCall(NamedTuple):
    """finish.lua's argument (common.lua's ``FINISH_CALL_*``)."""

    now: str
    profile: str
    retention: int  # seconds the provider-id index lives (0: no index written)
    events_maxlen: int
    group: str  # the consumer group the entries are acknowledged in
    report_deadline: str  # when a `sent` message's report is due ('' = not awaited)
    spend_ttl: int  # seconds the day's spend hash (the last key) lives
    items: Sequence[Finished]


class ReportCall(NamedTuple):
    """report.lua's argument (common.lua's ``REPORT_CALL_*``)."""

    now: str
    events_maxlen: int
    profile: str
    early_expires: int  # when the early-report hash written (this time bucket's) expires
    reports: Sequence[Report]


class EnqueueCall(NamedTuple):
    """enqueue.lua's argument (common.lua's ``ENQUEUE_CALL_*``)."""

    now: str
    retention: int
    events_maxlen: int
    profile: str
    index_stamp: str  # as SendingCall's ('' = no recipient index written)
    items: Sequence[Enqueued]


# The scripts called with plain arguments (ARGV): the fixed ones, by position.


class TransitionArgs(NamedTuple):
    """transition.lua's fixed ARGV (common.lua's ``TRANSITION_*``); the record's field
    pairs follow, then the event's."""

    owner: str
    now: str
    status: str
    retention: int
    mode: str  # '' | 'replay' (a replayed dead letter may leave `rejected`) | 'unsent'
    note: str
    events_maxlen: int
    field_count: int  # field pairs that follow
    event_count: int  # event pairs after them
    group: str  # ack group ('' = no ack)
    entry: str  # the work entry to ack
    job: str  # job id
    report_deadline: str  # '' = no report awaited
    # The connector the attempt went over ('' = none): in the new history step (the
    # record's `connector` reads the latest such).
    connector: str


class MissingArgs(NamedTuple):
    """missing.lua's fixed ARGV (common.lua's ``MISSING_*``); the due job ids follow."""

    now: str
    events_maxlen: int
    profile: str
    note: str


class EarlyArgs(NamedTuple):
    """early.lua's ARGV (common.lua's ``EARLY_*``)."""

    now: str
    batch: int


# Every record above, by its constants' prefix in common.lua (``SENDING_TO``...).
LUA_RECORDS: dict[str, type[tuple[Any, ...]]] = {
    "SENDING": Sending,
    "FINISHED": Finished,
    "REPORT": Report,
    "ENQUEUED": Enqueued,
    "SENDING_CALL": SendingCall,
    "FINISH_CALL": FinishCall,
    "REPORT_CALL": ReportCall,
    "ENQUEUE_CALL": EnqueueCall,
    "TRANSITION": TransitionArgs,
    "MISSING": MissingArgs,
    "EARLY": EarlyArgs,
}


@dataclass(frozen=True, slots=True)
class Transition:
    """What the ledger said to a requested status change."""

    verdict: str  # ok | duplicate | done
    previous: str  # status before the change ('' for a new record)
    step: int = 0  # history index of the change (batch steps only)

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


class Ledger:
    """Records every status change of every message and publishes it as an event."""

    def __init__(
        self,
        redis: Redis,
        *,
        retention: float,
        events_maxlen: int,
        replicas_ack: int = 0,
        replicas_ack_timeout_ms: int = 100,
        recipient_index: bool = True,
    ) -> None:
        self._redis = redis
        # `[queue] recipient_index`: whether the records created are indexed by
        # recipient (keys.recipient_index); the daemon sets it again on a reload.
        self.recipient_index = recipient_index
        self._replicas = ReplicaWait(redis, replicas_ack, replicas_ack_timeout_ms)
        self._retention = max(1, int(retention))
        self._events_maxlen = events_maxlen
        self._script = redis.register_script(scripts.with_common("transition"))
        self._report = redis.register_script(scripts.with_common("report"))
        self._missing = redis.register_script(scripts.with_common("missing"))
        self._enqueue = redis.register_script(scripts.with_common("enqueue"))
        self._sending = redis.register_script(scripts.with_common("sending"))
        self._finish = redis.register_script(scripts.with_common("finish"))
        self._early = redis.register_script(scripts.with_common("early"))
        self._find = redis.register_script(scripts.source("find"))
        # Profiles whose sent messages expect a delivery report, and within how long.
        self._report_waits: dict[str, float] = {}
        # Per profile, the seconds an early report is kept (its time buckets' width).
        self._early_keep: dict[str, int] = {}
        # Profiles whose sent messages get no provider-id index (no report can come).
        self._unindexed: set[str] = set()
        # `stored_profiles`' last answer and when (time.monotonic) it was read.
        self._stored: list[str] = []
        self._stored_at = -math.inf

    def expect_reports(self, profile: str, within: float) -> None:
        """From now on, a message of `profile` recorded `sent` joins the profile's
        awaiting set (in the same step) with a deadline `within` seconds later;
        `within` <= 0 stops that."""
        if within > 0:
            self._report_waits[profile] = within
        else:
            self._report_waits.pop(profile, None)

    def index_provider_ids(self, profile: str, wanted: bool) -> None:
        """Whether `profile`'s messages recorded `sent` by `finish` get a provider-id
        index entry (the default). A profile whose provider sends no delivery report
        (SMPP ``registered_delivery = 0``, an HTTP provider without status callbacks)
        is spared its memory: a report that came anyway would find no message (it is
        kept early, then dropped)."""
        if wanted:
            self._unindexed.discard(profile)
        else:
            self._unindexed.add(profile)

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
        connector: str = "",
        only_unsent: bool = False,
    ) -> Transition:
        """Move a record to `status` if `owner` may, and publish the event, atomically.

        `allow_rejected` lets a replayed dead letter leave `rejected`; `only_unsent`
        changes only a record still ``queued`` or ``scheduled`` (a client's cancel:
        verdict ``done`` once a worker has begun sending it).
        `connector` names the connector an attempt went over (a Retry outcome's): it
        goes in the new history step (so it becomes the record's `connector`) and the
        event's; '' records none.
        `ack` acknowledges and deletes a work entry in the same step (whatever the
        verdict; with `replicas_ack`, the step is followed by a WAIT for replicas); each
        of `indexes` is a key set to the job id with the record's retention
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
            connector,
            "unsent" if only_unsent else "",
        )
        if ack is None or not self._replicas.wanted:
            verdict, previous = await self._script(keys=script_keys, args=args)
        else:
            verdict, previous = await self._replicas.run(
                self._script, script_keys, args, profile=profile, messages=1
            )
        return Transition(as_text(verdict), as_text(previous))

    async def reports(
        self, profile: str, batch: Sequence[Report], *, keep_for: float
    ) -> list[ReportResult]:
        """Record a batch of delivery reports in one call (report.lua); each is one
        part's, the final status written once every part reported.

        A report whose message is not recorded `sent` yet is kept for `keep_for`
        seconds and applied by the step that records `sent` (`finish`). One
        `ReportResult` per report, in order.
        """
        answers: list[ReportResult | None] = [None] * len(batch)
        todo = list(range(len(batch)))
        width = len(Reported._fields)
        # The record's key comes from the index, so the index is read first; a report
        # whose index changed in between (its `sent` was just recorded) goes again.
        for _attempt in range(5):
            index = [keys.provider_id(profile, c) for i in todo for c in batch[i].candidates]
            found = iter(await self._redis.mget(index) if index else [])
            jobs = []
            for i in todo:
                named = [as_text(j) for j in (next(found) for _ in batch[i].candidates) if j]
                jobs.append(named[0] if named else "")
            reply = await self._reports_call(profile, [batch[i] for i in todo], jobs, keep_for)
            again = []
            for n, i in enumerate(todo):
                got = Reported(*(as_text(x) for x in reply[width * n : width * (n + 1)]))
                if got.verdict == "retry":
                    again.append(i)
                else:
                    answers[i] = ReportResult(
                        Transition(got.verdict, got.status),
                        got.job,
                        got.part,
                        got.to,
                        got.sender,
                        got.connector,
                    )
            todo = again
            if not todo:
                break
        else:
            raise RuntimeError(f"delivery reports of {profile}: the index kept changing")
        return [a for a in answers if a is not None]

    async def _reports_call(
        self, profile: str, batch: Sequence[Report], jobs: Sequence[str], keep_for: float
    ) -> Any:
        now = time.time()
        width = self._early_keep[profile] = max(1, int(keep_for))
        bucket = int(now) // width
        early = keys.early_bucket(profile, bucket)
        script_keys = [
            keys.events(profile),
            keys.awaiting_reports(profile),
            early,
            keys.callbacks(profile),
        ]
        found: list[Report] = []
        for report, job in zip(batch, jobs, strict=True):
            script_keys += [keys.provider_id(profile, c) for c in report.candidates]
            script_keys.append(keys.record(profile, job) if job else early)
            found.append(Report(report.outcome, report.stat, report.err, report.candidates, job))
        # Kept a bucket after its own ends: `finish` looks in this bucket and the one
        # before, so a report waits between one and two widths.
        expires = (bucket + 2) * width
        payload = msgpack.packb(
            ReportCall(f"{now:.6f}", self._events_maxlen, profile, expires, found)
        )
        return await self._report(keys=script_keys, args=[payload])

    async def drop_early_reports(self, profile: str, batch: int = 1000) -> int:
        """Drop early reports of the older layout whose time is up (kept before an
        upgrade; those kept since expire with their time bucket's hash); returns how
        many."""
        total = 0
        while True:
            dropped = int(
                await self._early(
                    keys=[keys.early_reports(profile), keys.early_deadlines(profile)],
                    args=list(EarlyArgs(f"{time.time():.3f}", batch)),
                )
            )
            total += dropped
            if dropped < batch:
                return total

    async def sending(self, profile: str, items: Sequence[Sending]) -> list[Transition]:
        """Record `sending` for a batch in one call (sending.lua); one `Transition` per
        item, its `step` the history index the outcome's step follows."""
        now = f"{time.time():.6f}"
        stamp = keys.recipient_stamp(now) if self.recipient_index else ""
        payload = msgpack.packb(
            SendingCall(now, profile, self._retention, self._events_maxlen, stamp, items)
        )
        record = keys.record(profile, "")
        script_keys = [keys.events(profile), keys.callbacks(profile), keys.stats(profile)]
        script_keys += [record + it.id for it in items]
        if stamp:
            script_keys.append(keys.recipient_index(profile, keys.recipient_day(float(now))))
        script_keys += [it.sticky_key for it in items if it.sticky_key]
        reply = await self._sending(keys=script_keys, args=[payload])
        return [
            Transition(as_text(reply[i]), as_text(reply[i + 1]), int(reply[i + 2]))
            for i in range(0, len(reply), 3)
        ]

    async def finish(self, profile: str, stream: str, items: Sequence[Finished]) -> list[str]:
        """Record a batch's outcomes (`sent` or `failed`), their events and provider-id
        index, apply early reports, and acknowledge the entries, in one call
        (finish.lua), followed by a WAIT for replicas when `replicas_ack` asks for it.
        Returns, per item, the final status an early report wrote ('' = none)."""
        wait = self._report_waits.get(profile, 0.0)
        now = time.time()
        payload = msgpack.packb(
            FinishCall(
                f"{now:.6f}",
                profile,
                0 if profile in self._unindexed else self._retention,
                self._events_maxlen,
                keys.GROUP,
                f"{now + wait:.3f}" if wait else "",
                SPEND_TTL,
                items,
            )
        )
        record, index = keys.record(profile, ""), keys.provider_id(profile, "")
        width = self._early_keep.get(profile, EARLY_KEEP)
        bucket = int(now) // width
        script_keys = [
            keys.events(profile),
            keys.callbacks(profile),
            stream,
            keys.awaiting_reports(profile),
            keys.early_reports(profile),
            keys.early_deadlines(profile),
            keys.early_bucket(profile, bucket),
            keys.early_bucket(profile, bucket - 1),
            # (another instance's clock a little ahead may have kept one in the next)
            keys.early_bucket(profile, bucket + 1),
        ]
        script_keys += [record + it.id for it in items]
        if profile not in self._unindexed:
            script_keys += [index + p for it in items if it.status == "sent" for p in it.part_ids]
        # Last: today's spend (UTC), counted by the messages recorded sent.
        script_keys.append(keys.spend(profile, keys.utc_day(now)))
        if self._replicas.wanted:
            finals = await self._replicas.run(
                self._finish, script_keys, [payload], profile=profile, messages=len(items)
            )
        else:
            finals = await self._finish(keys=script_keys, args=[payload])
        out = [""] * len(items)
        for i in range(0, len(finals), 2):
            out[int(finals[i]) - 1] = as_text(finals[i + 1])
        return out

    async def note_missing_reports(self, profile: str, *, note: str, batch: int = 500) -> int:
        """Note every overdue sent message of `profile` (see missing.lua); returns how many
        records got the note. Runs in batches so one call never blocks Redis long."""
        total = 0
        awaiting = keys.awaiting_reports(profile)
        while True:
            now = f"{time.time():.6f}"
            due = [
                as_text(j) for j in await self._redis.zrangebyscore(awaiting, "-inf", now, 0, batch)
            ]
            if not due:
                return total
            total += int(
                await self._missing(
                    keys=[
                        awaiting,
                        keys.events(profile),
                        keys.stats(profile),
                        keys.callbacks(profile),
                        *(keys.record(profile, job) for job in due),
                    ],
                    args=[*MissingArgs(now, self._events_maxlen, profile, note), *due],
                )
            )
            if len(due) < batch:
                return total

    async def enqueue(
        self, items: Sequence[tuple[str, str, bytes, Mapping[str, str]]]
    ) -> list[bool]:
        """Record `queued` and add each job to its work stream, atomically per profile,
        in one round trip.

        Each item is (job id, profile, encoded job, record fields). A job whose id has
        a record already in its profile is not enqueued (False in the answer). No
        locator is written: `find` looks for an id in the configured profiles (a
        locator cost ~170 bytes of Redis per message, for the whole retention).
        """
        groups = _by_profile(items)
        calls = [
            self._enqueue_call(
                profile,
                [(job_id, job, fields) for job_id, _p, job, fields in (items[i] for i in chunk)],
            )
            for profile, chunk in groups
        ]
        commands = [roundtrip.evalsha(self._enqueue, k, a) for k, a in calls]
        counts = Counter(profile for _job_id, profile, _job, _fields in items)
        # The producer is told "queued" only once a replica holds the job too: a
        # fail-over cannot lose it (or it is counted short, as for the outcomes). One
        # WAIT after everything on a single server; on a cluster one per profile, on the
        # master holding its queue (a WAIT covers only its own node's writes).
        waits: list[tuple[Mapping[str, int], roundtrip.Command]] = []
        if self._replicas.wanted and roundtrip.is_cluster(self._redis):
            waits = [({p: n}, self._replicas.command(keys.queue(p))) for p, n in counts.items()]
        elif self._replicas.wanted:
            waits = [(counts, self._replicas.command())]
        commands += [wait for _counts, wait in waits]
        replies = await roundtrip.execute(self._redis, commands, [self._enqueue])
        acks = replies[len(replies) - len(waits) :]
        for (covered, _wait), acked in zip(waits, acks, strict=True):
            await self._replicas.note(int(acked), covered)
        verdicts = [False] * len(items)
        for (_profile, chunk), reply in zip(groups, replies[: len(calls)], strict=True):
            for n, i in enumerate(chunk):
                verdicts[i] = as_text(reply[2 * n]) == "ok"
        return verdicts

    def enqueue_command(
        self, profile: str, items: Sequence[tuple[str, bytes, Mapping[str, str]]]
    ) -> roundtrip.Command:
        """The command of one `enqueue` call for `items` (job id, encoded job, record
        fields) of `profile`, for the caller's pipeline (so it can share a MULTI with
        other writes of the profile; `enqueue_script` must be among its scripts). Its
        reply is a flat list: verdict (ok | duplicate), entry id, per item (as
        `enqueue`'s)."""
        script_keys, args = self._enqueue_call(profile, items)
        return roundtrip.evalsha(self._enqueue, script_keys, args)

    @property
    def enqueue_script(self) -> AsyncScript:
        """The script `enqueue_command` runs."""
        return self._enqueue

    def _enqueue_call(
        self, profile: str, items: Sequence[tuple[str, bytes, Mapping[str, str]]]
    ) -> tuple[list[str], list[bytes]]:
        record = keys.record(profile, "")
        script_keys = [keys.events(profile), keys.callbacks(profile), keys.queue(profile)]
        script_keys += [record + job_id for job_id, _job, _fields in items]
        now = f"{time.time():.6f}"
        stamp = keys.recipient_stamp(now) if self.recipient_index else ""
        if stamp:  # (one key, the call's day: every record it creates is made `now`)
            script_keys.append(keys.recipient_index(profile, keys.recipient_day(float(now))))
        payload = msgpack.packb(
            EnqueueCall(
                now,
                self._retention,
                self._events_maxlen,
                profile,
                stamp,
                [Enqueued(job_id, job, [x for kv in fields.items() for x in kv])
                 for job_id, job, fields in items],
            ),
            use_bin_type=False,  # Redis' cmsgpack reads no bin type: jobs go as raw
        )  # fmt: skip
        return script_keys, [payload]

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
        connector: str,
        mode: str = "",
    ) -> tuple[list[str], list[str | int | float]]:
        now = f"{time.time():.6f}"
        body: dict[str, str] = {"id": job_id, "profile": profile, "status": status, "at": now}
        if note:
            body["note"] = note
        if connector:
            body["connector"] = connector
        body.update({k: v for k, v in (event or {}).items() if v})
        pairs = list((fields or {}).items())
        wait = self._report_waits.get(profile, 0.0) if status == "sent" else 0.0
        events = keys.events(profile)
        script_keys = [keys.record(profile, job_id), events, ack.stream if ack else events]
        script_keys += [keys.awaiting_reports(profile) if wait else events]
        script_keys += [keys.callbacks(profile), *indexes]
        args: list[str | int | float] = [
            *TransitionArgs(
                owner=owner,
                now=now,
                status=status,
                retention=self._retention,
                mode="replay" if allow_rejected else mode,
                note=note,
                events_maxlen=self._events_maxlen,
                field_count=len(pairs),
                event_count=len(body),
                group=ack.group if ack else "",
                entry=ack.entry_id if ack else "",
                job=job_id,
                report_deadline=f"{time.time() + wait:.3f}" if wait else "",
                connector=connector,
            )
        ]
        for name, value in pairs:
            args += [name, value]
        for name, text in body.items():
            args += [name, text]
        return script_keys, args

    async def get(
        self, job_id: str, *, profile: str | None = None, profiles: Sequence[str] = ()
    ) -> dict[str, Any] | None:
        """The record of one job, decoded, or None; without `profile`, found as `find`
        finds it in `profiles`."""
        if profile is not None:
            raw = await self._redis.hgetall(keys.record(profile, job_id))
            return {"id": job_id, **decode_record(raw, profile)} if raw else None
        return (await self.find([job_id], profiles=profiles))[0]

    async def find(
        self, job_ids: Sequence[str], *, profiles: Sequence[str] = ()
    ) -> list[dict[str, Any] | None]:
        """Records of jobs known by id alone, in order (None: not found).

        Each id is looked for in each of `profiles` (the configured ones, in the
        configuration's order): an HGETALL per id and profile, all in one round trip
        (`_probe`; a miss costs Redis what an EXISTS would, and a hit needs no second
        read). A job id is unique within its profile; one used in two profiles is found
        in the first of `profiles` that holds it. An id found in none is looked up
        through its locator (``sms:loc:<id>``), which versions before this one wrote
        for every job: one more round trip, and one more when a locator names a
        profile not probed (a record of a profile no longer configured). Read second,
        as only old records of such profiles need it: a lookup of a record written
        since costs the probe's round trip alone.

        Without `profiles` (a tool that knows no configuration), they are the profiles
        Redis holds a work or event stream of (`stored_profiles`: a SCAN of the
        keyspace, made again at most once a second, when an id is not found)."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return []
        looked = list(dict.fromkeys(profiles))
        if not looked:
            looked = (
                list(self._stored) if self._stored_at > -math.inf else await self.stored_profiles()
            )
        found = await self._probe(ids, looked)
        if not profiles and len(found) < len(ids) and self._stored_at < time.monotonic() - 1:
            # A profile whose first message came since the last SCAN.
            more = [p for p in await self.stored_profiles() if p not in looked]
            found.update(await self._probe([j for j in ids if j not in found], more))
            looked += more
        unknown = [j for j in ids if j not in found]
        if unknown:
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in unknown:
                    pipe.get(keys.locator(job_id))
                located = await pipe.execute()
            pairs = [
                (as_text(p), j)
                for j, p in zip(unknown, located, strict=True)
                if p is not None and as_text(p) not in looked
            ]
            if pairs:
                rows = await self.get_many(pairs)
                found.update({j: r for (_p, j), r in zip(pairs, rows, strict=True) if r})
        return [found.get(j) for j in job_ids]

    async def _probe(self, ids: Sequence[str], profiles: Sequence[str]) -> dict[str, Any]:
        """The records of `ids` found in `profiles` (the first that holds each), by id:
        one round trip, a pipelined HGETALL per id and profile. Many of them on a single
        server go as one find.lua call instead: the pipeline costs redis-py ~15 us a
        command against Redis' ~0.5, the script Redis ~2.5 per probe and ~8 per call
        (bench/lookup.py: 100 ids in 10 profiles 15-21 ms of client, 0.5 ms of Redis
        piped; 3-4.5 ms and 1.4-1.7 ms by the script; one id in 10 profiles 7 us of Redis
        piped, 30 by the script, the client's time alike). Not on a cluster, where an
        id's keys are in several slots."""
        found: dict[str, Any] = {}
        if not ids or not profiles:
            return found
        probes_many = len(ids) * len(profiles) >= FIND_SCRIPT_PROBES and len(profiles) > 1
        if probes_many and not roundtrip.is_cluster(self._redis):
            script_keys = [keys.record(p, j) for j in ids for p in profiles]
            rows = await self._find(keys=script_keys, args=[len(profiles)])
            for job_id, row in zip(ids, rows, strict=True):
                if row:
                    profile = profiles[int(row[0]) - 1]
                    fields = dict(zip(row[1::2], row[2::2], strict=True))
                    found[job_id] = {"id": job_id, **decode_record(fields, profile)}
            return found
        probes = [(p, j) for j in ids for p in profiles]
        for (_p, job_id), record in zip(probes, await self.get_many(probes), strict=True):
            if record is not None:
                found.setdefault(job_id, record)
        return found

    async def stored_profiles(self) -> list[str]:
        """The profiles Redis holds a work stream (``sms:{P}:q``) or an event stream
        (``sms:{P}:events``) of, sorted: found by a SCAN of the whole keyspace (on a
        cluster, of every master), so for tools and tests that know no configuration;
        the router's own lookups pass the configured profiles."""
        names: set[str] = set()
        async for key in self._redis.scan_iter(match="sms:{*}:*", count=1000, _type="stream"):
            if found := _STREAM_OF_PROFILE.fullmatch(as_text(key)):
                names.add(found.group(1))
        self._stored = sorted(names)
        self._stored_at = time.monotonic()
        return list(self._stored)

    async def get_many(self, jobs: Sequence[tuple[str, str]]) -> list[dict[str, Any] | None]:
        """Records of several jobs, each given as (profile, job id), in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for profile, job_id in jobs:
                pipe.hgetall(keys.record(profile, job_id))
            rows = await pipe.execute()
        return [
            {"id": job_id, **decode_record(row, profile)} if row else None
            for (profile, job_id), row in zip(jobs, rows, strict=True)
        ]


def _by_profile(
    items: Sequence[tuple[str, str, bytes, Mapping[str, str]]],
) -> list[tuple[str, list[int]]]:
    """The jobs' positions grouped by profile (one script call each: a profile's keys
    share a slot), 500 per call at most, so one call never holds Redis long."""
    groups: dict[str, list[int]] = {}
    for i, (_job_id, profile, _job, _fields) in enumerate(items):
        groups.setdefault(profile, []).append(i)
    return [
        (profile, chunk[start : start + 500])
        for profile, chunk in groups.items()
        for start in range(0, len(chunk), 500)
    ]


# The one-letter status of a history step (lua/common.lua's `status_code`).
STEP_CODES: dict[str, str] = {
    "q": "queued",
    "c": "scheduled",
    "g": "sending",
    "s": "sent",
    "d": "delivered",
    "u": "undelivered",
    "f": "failed",
    "r": "rejected",
    "x": "expired",
}
# A profile's work or event stream (router/store/keys.py's `queue` and `events`).
_STREAM_OF_PROFILE = re.compile(r"sms:\{(.+)\}:(?:q|events)", re.S)
# A delivery report's step note (lua/common.lua's apply_report).
_REPORT_NOTE = re.compile(r"stat (.*) err (.*)", re.S)


def _bytes(value: Any) -> bytes:
    """A value as Redis holds it (a test may hand decode_record text)."""
    return value if isinstance(value, bytes) else str(value).encode()


def decode_record(raw: Mapping[Any, Any], profile: str | None = None) -> dict[str, Any]:
    """A record hash as plain Python values (history and meta parsed), with what the
    compact shape leaves out put back: `updated_at` (the latest step's time),
    `connector` (the latest step's that names one), `attempts` (the `sending` steps),
    `profile` (given: it is the key's), `provider_message_id` (stored as ``pmid``),
    `segments` of a sent message when it is 1 (not stored), a delivery report's
    `dlr_stat` and `dlr_err` (from its step's note), and a long value (a text, a URL)
    whole (stored in pieces of 64 bytes, so the hash stays a listpack). A compact step's time is in
    microseconds after `created_at`.

    `history` is a list of steps, oldest first, each ``{"status", "at", "note"}`` plus
    ``"connector"`` when the step names the connector it went over (a `sent` or
    `failed` outcome, a retry); a step without one has no ``connector`` key.

    Records of the older shapes read the same: steps as ``h<n>`` = "status|time|note"
    with ``c<n>`` beside, and `updated_at`, `connector`, `attempts`, `profile`,
    `provider_message_id`, `dlr_*` stored; older still, the history as one JSON list;
    and a record one version began and the other went on with."""
    record: dict[str, Any] = {as_text(k): v for k, v in raw.items()}
    # Long values in pieces (lua/common.lua's put_long): joined as bytes, then read.
    pieces: dict[str, list[tuple[int, Any]]] = {}
    for name in [k for k in record if "~" in k]:
        field, _, nth = name.partition("~")
        if nth.isdigit():
            pieces.setdefault(field, []).append((int(nth), record.pop(name)))
    for field, more in pieces.items():
        if field in record:
            ordered = [record[field], *(v for _, v in sorted(more, key=lambda p: p[0]))]
            record[field] = b"".join(_bytes(v) for v in ordered)
    record = {k: as_text(v) for k, v in record.items()}
    # Records written before the step fields kept the history as one JSON list.
    history = [
        {"status": item[0], "at": float(item[1]), "note": item[2]}
        for item in json.loads(record.pop("history", None) or "[]")
    ]
    steps: list[tuple[int, dict[str, Any]]] = []
    compact = False
    via = {int(k[1:]): record.pop(k) for k in list(record) if k[:1] == "c" and k[1:].isdigit()}
    base = _micros(record.get("created_at", "0"))
    for name in list(record):
        if name.isdigit():  # the compact step: <code><time, base 36>[|connector[|note]]
            compact = True
            head, _, rest = record.pop(name).partition("|")
            connector, _, note = rest.partition("|")
            micros = base + int(head[1:], 36)
            # The same text as the event's `at` (6 decimals), so the same float.
            at = float(f"{micros // 1_000_000}.{micros % 1_000_000:06d}")
            item: dict[str, Any] = {"status": STEP_CODES[head[:1]], "at": at, "note": note}
            if connector:
                item["connector"] = connector
            steps.append((int(name), item))
        elif name[:1] == "h" and name[1:].isdigit():
            status, at_text, note = record.pop(name).split("|", 2)
            item = {"status": status, "at": float(at_text), "note": note}
            if (connector := via.get(int(name[1:]))) is not None:
                item["connector"] = connector
            steps.append((int(name[1:]), item))
    steps.sort(key=lambda s: s[0])
    history += [item for _, item in steps]
    record["history"] = history
    record.pop("n", None)
    if compact:
        # What the compact shape does not store (a record of the older shape has it
        # stored, and reads as it always did; one both versions wrote has it stale).
        record["updated_at"] = steps[-1][1]["at"]
        connectors = [step["connector"] for step in history if "connector" in step]
        if connectors:
            record["connector"] = connectors[-1]
        record.pop("attempts", None)
        if attempts := sum(1 for step in history if step["status"] == "sending"):
            record["attempts"] = attempts
        # A report's step is the last one (its status is final), noted by apply_report.
        if found := _REPORT_NOTE.fullmatch(history[-1]["note"]):
            record["dlr_stat"], record["dlr_err"] = found.group(1), found.group(2)
    if profile is not None:
        record.setdefault("profile", profile)
    if "pmid" in record:  # (the compact shape's: a sent outcome's)
        record["provider_message_id"] = record.pop("pmid")
        record.setdefault("segments", "1")
    if "meta" in record:
        record["meta"] = json.loads(record["meta"])
    # An MMS: its media URLs (a JSON list, from the door) and how many.
    if "media" in record:
        record["media"] = json.loads(record["media"])
        record["num_media"] = len(record["media"])
    for name in ("attempts", "segments"):
        if name in record:
            record[name] = int(record[name])
    for name in ("created_at", "updated_at"):
        if name in record:
            record[name] = float(record[name])
    return record


def _micros(text: str) -> int:
    """A time as the scripts write it ("<seconds>.<microseconds>") in microseconds, by
    the same operations as lua/common.lua's `micros` (0 for anything else: a record
    without one)."""
    try:
        return math.floor(float(text) * 1_000_000 + 0.5)
    except (ValueError, OverflowError):  # not a number; inf or nan
        return 0
