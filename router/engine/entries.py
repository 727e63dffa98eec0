"""The per-entry path: every entry that does not go out through the pipeline.

Each such entry gets a task of its own (`EntryPath.take`, or the pipeline's
`Handoff` callbacks), which waits out Redis outages and dead-letters, named, an
entry whose handling fails for anything else. The steps, by name:

- `_dead_letter`: a bad job (or one delivered too often) is recorded ``rejected``
  and moved to the dead-letter stream, to be replayed once fixed;
- `_forward`: a job that names another profile moves to that profile's stream;
- `_expire`: validity passed before sending: ``expired``;
- `_schedule`: a send_at in the future: ``scheduled``, to the schedule;
- `_refuse`: the rules refused the pick: ``rejected`` with the normalised code;
- `_defer_past_cap`: a full daily cap the profile defers past: to the next UTC day;
- `_retry_later`: a Retry outcome from a bind: the next attempt goes to the
  schedule, or the job is given up (``failed``, ``expired``);
- `_drop`: a duplicate job id, or a record already final: acknowledged, not sent;
- `_give_up`: an error no redelivery would cure: dead-lettered, named.

Every status change goes through `_transition`, the one call of
`Ledger.transition` for a single entry.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import assert_never

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from binds.base import Retry
from router.config import QueueSettings
from router.engine.pipeline import Ready
from router.engine.plan import Plan, job_of, when
from router.errors import RouterError
from router.metrics import ProfileMetrics
from router.policy.jobs import Job, JobError, encode_job
from router.policy.rules import Refusal
from router.store import keys
from router.store.ledger import Ack, Ledger, Transition
from router.store.outages import REDIS_DOWN, Pause, RedisOutages, backoff
from router.store.queue import Entry, WorkQueue

log = structlog.get_logger("router.worker")

Step = Callable[[], Awaitable[None]]


class Rejection(RouterError):
    """A job that cannot be sent as it is (a bad field, a template it does not fill);
    it is recorded ``rejected`` and dead-lettered, to be replayed once fixed."""


class EntryPath:
    """The per-entry path of one profile (see the module docstring); also the
    pipeline's `Handoff`.

    `held` and `freed` are the worker's: the entries it holds (an entry on this path
    is held as its task) and the event set whenever one is let go."""

    def __init__(
        self,
        *,
        redis: Redis,
        name: str,
        queue: WorkQueue,
        ledger: Ledger,
        settings: QueueSettings,
        profiles: set[str],
        outages: RedisOutages,
        metrics: ProfileMetrics | None,
        held: dict[str, Entry | asyncio.Task[None] | Ready],
        freed: asyncio.Event,
    ) -> None:
        self.name = name
        self.queue = queue
        self.ledger = ledger
        self.settings = settings
        self.outages = outages
        self.metrics = metrics
        self.closed = False  # set by the worker's drain: late entries stay pending
        self._redis = redis
        self._profiles = profiles
        self._held = held
        self._freed = freed
        self._log = log.bind(profile=name)

    # -- entrances ---------------------------------------------------------------------

    def take(self, entry: Entry, job: Job | JobError, plan: Plan, reason: str | Refusal) -> None:
        """Start the per-entry step `plan` names for this entry."""
        self._start(entry, partial(self._follow, entry, job, plan, reason))

    # The pipeline's `Handoff`.

    def retry(self, ready: Ready, outcome: Retry) -> None:
        """A Retry outcome from a bind: the next attempt is scheduled per entry."""
        self._start(
            ready.entry,
            lambda: self._retry_later(ready.entry, ready.job, outcome, ready.connector),
        )

    def skip(self, ready: Ready, result: Transition) -> None:
        """Not sent (a duplicate job id, or already final): acknowledged per entry."""
        self._start(
            ready.entry,
            lambda: self._drop(ready.entry, ready.job, result.verdict, result.previous),
        )

    def fail(self, ready: Ready, exc: Exception) -> None:
        """A non-Redis error while recording this entry: dead-lettered, named."""
        self._start(ready.entry, lambda: self._give_up(ready.entry, ready.job, exc))

    def release(self, entries: Sequence[Entry]) -> None:
        """These entries are done with."""
        for entry in entries:
            self._held.pop(entry.entry_id, None)
        self._freed.set()

    # -- the entry's task --------------------------------------------------------------

    def _start(self, entry: Entry, step: Step) -> None:
        if self.closed:
            self._held.pop(entry.entry_id, None)  # left pending for the next start
            return
        task = asyncio.create_task(self._run(entry, step))
        self._held[entry.entry_id] = task

    async def _run(self, entry: Entry, step: Step) -> None:
        pause = Pause(self.outages)
        try:
            while True:
                try:
                    await step()
                except REDIS_DOWN as exc:
                    # Redis went away mid-entry: wait for it, then handle the entry again
                    # (the ledger knows how far it got; a resend is counted as a possible
                    # duplicate). The outage is logged once, by `RedisOutages`.
                    await pause.after_error(f"handling {self.name}'s entries", exc)
                    continue
                pause.reset()
                return
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError):
            # A Redis error that is not an outage (a refused script, a bare socket
            # error): the entry stays pending, comes back after claim_idle and is
            # dead-lettered after max_deliveries.
            self._log.exception("entry left pending after an error", entry=entry.entry_id)
        except Exception as exc:
            # Anything else fails the same way on every redelivery (a poison job, or a
            # bug it triggers), so the entry goes to the dead letters, named, at once.
            job = job_of(entry, self.name)
            await self._give_up(entry, job, exc)
        finally:
            if self._held.get(entry.entry_id) is asyncio.current_task():
                del self._held[entry.entry_id]
            self._freed.set()

    async def _follow(
        self, entry: Entry, job: Job | JobError, plan: Plan, reason: str | Refusal
    ) -> None:
        """The step `plan` names (worked out by `Planner`, or the rules)."""
        if isinstance(job, JobError):
            await self._dead_letter(entry, None, str(reason))
            return
        match plan:
            case Plan.DEAD:
                await self._dead_letter(entry, job, str(reason))
            case Plan.FORWARD:
                try:
                    await self._forward(entry, job)
                except Rejection as exc:
                    await self._dead_letter(entry, job, str(exc))
            case Plan.EXPIRED:
                await self._expire(entry, job, str(reason))
            case Plan.SCHEDULE:
                await self._schedule(entry, job, str(reason))
            case Plan.REFUSE:
                assert isinstance(reason, Refusal)
                await self._refuse(entry, job, reason)
            case Plan.DEFER:
                assert isinstance(reason, Refusal)
                await self._defer_past_cap(entry, job, reason)
            case Plan.SEND:
                raise AssertionError("a job to send goes to the pipeline")
            case _:
                assert_never(plan)

    # -- the steps -----------------------------------------------------------------------

    async def _dead_letter(self, entry: Entry, job: Job | None, reason: str) -> None:
        if job is not None:
            # Tell `status ID` why; a replayed job may leave `rejected` again.
            fields = {"error_code": "rejected", "error": reason, "to": job.to}
            result = await self._transition(
                entry, job, "rejected", reason, fields, any_rejected=True
            )
            if self.metrics is not None and result.ok:
                self.metrics.count("rejected")
        await self.queue.dead_letter(entry, reason)
        self._log.warning(
            "dead-lettered", entry=entry.entry_id, id=job.id if job else None, reason=reason
        )

    async def _forward(self, entry: Entry, job: Job) -> None:
        """A job that names another profile moves to that profile's stream."""
        if job.profile not in self._profiles:
            raise Rejection(f"job.profile: unknown profile {job.profile!r}")
        assert job.profile is not None
        # Two slots, so not atomic: a crash in between leaves a second entry with the
        # same origin, which the ledger then treats as the same job (no double send).
        body = {"job": encode_job(job.to_wire()), "origin": entry.owner}
        await self._redis.xadd(keys.queue(job.profile), body)  # type: ignore[arg-type]
        await self.queue.ack(entry.entry_id)
        self._log.info("forwarded", id=job.id, to_profile=job.profile)

    async def _expire(self, entry: Entry, job: Job, reason: str) -> None:
        await self._record_final(entry, job, "expired", note=reason)

    async def _schedule(self, entry: Entry, job: Job, reason: str) -> None:
        assert job.send_at is not None
        if await self._record_and_defer(
            entry, job, "scheduled", note=reason, attempt=entry.attempt, due=job.send_at
        ):
            self._log.debug("scheduled", id=job.id, send_at=job.send_at)

    async def _refuse(self, entry: Entry, job: Job, refusal: Refusal) -> None:
        """The rules said no: `rejected` with the normalised code, acknowledged. Not a
        dead letter: the job is well formed, and replaying it would meet the same rule."""
        fields = {"error_code": refusal.code, "error": refusal.reason, "to": job.to}
        event = {**self._event(job), "error_code": refusal.code}
        result = await self._transition(
            entry, job, "rejected", refusal.reason, fields, event=event, ack=True
        )
        if not result.ok:
            await self._drop(entry, job, result.verdict, result.previous, acked=True)
            return
        await self._redis.hincrby(keys.stats(self.name), f"rejected_{refusal.code}", 1)
        if self.metrics is not None:
            self.metrics.count("rejected")
        self._log.info("rejected", id=job.id, code=refusal.code, reason=refusal.reason)

    async def _defer_past_cap(self, entry: Entry, job: Job, refusal: Refusal) -> None:
        due = _next_utc_day()
        note = f"deferred to {when(due).removeprefix('send at ')}: {refusal.reason}"
        fields = {"error_code": refusal.code, "error": refusal.reason}
        if await self._record_and_defer(
            entry, job, "scheduled", note=note, fields=fields, attempt=entry.attempt, due=due
        ):
            self._log.info("deferred past the daily cap", id=job.id, until=due)

    async def _retry_later(
        self, entry: Entry, job: Job, outcome: Retry, connector: str = ""
    ) -> None:
        # A submit the provider never saw (no bound session, held while throttled) is
        # not an attempt: an SMSC outage or a throttling storm must not use up
        # max_attempts. It comes back after a short pause; while no bind is ready,
        # `serve` leaves it unread on the stream.
        attempt = entry.attempt + 1 if outcome.attempted else entry.attempt
        if self.metrics is not None:
            self.metrics.retry(outcome.code)
        if outcome.maybe_sent:
            # It may have reached the provider; the next attempt may deliver it twice.
            await self._redis.hincrby(keys.stats(self.name), "possible_duplicates", 1)
        errors = {"error_code": outcome.code, "error_raw": outcome.raw, "error": outcome.reason}
        if outcome.attempted and attempt >= self.settings.max_attempts:
            note = f"gave up after {attempt} attempts: {outcome.reason}"
            await self._record_final(
                entry, job, "failed", note=note, fields=errors, connector=connector
            )
            self._log.warning(
                "failed after retries", id=job.id, attempts=attempt, reason=outcome.reason
            )
            return
        delay = backoff(
            max(1, attempt) if outcome.attempted else 1,
            self.settings.retry_base,
            self.settings.retry_max,
        )
        if outcome.after is not None:
            delay = max(delay, min(outcome.after, self.settings.retry_max))
        due = time.time() + delay
        if job.expires_at is not None and due >= job.expires_at:
            note = f"validity ends before retry: {outcome.reason}"
            await self._record_final(
                entry, job, "expired", note=note, fields=errors, connector=connector
            )
            return
        note = (
            f"retry {attempt} in {delay:.1f}s: {outcome.reason}"
            if outcome.attempted
            else f"held, not sent ({delay:.1f}s): {outcome.reason}"
        )
        if await self._record_and_defer(
            entry,
            job,
            "queued",
            note=note,
            fields=errors,
            attempt=attempt,
            due=due,
            connector=connector,
        ):
            self._log.debug(
                "retry scheduled",
                id=job.id,
                attempt=attempt,
                delay=round(delay, 2),
                reason=outcome.reason,
            )

    async def _drop(
        self, entry: Entry, job: Job, verdict: str, previous: str, *, acked: bool = False
    ) -> None:
        """Not ours to send: a duplicate job id, or a record already final."""
        if verdict == "duplicate":
            await self._redis.hincrby(keys.stats(self.name), "duplicates_dropped", 1)
            self._log.info("duplicate job id dropped", id=job.id, entry=entry.entry_id)
        else:
            self._log.info("already final, not sent again", id=job.id, status=previous)
        if not acked:
            await self.queue.ack(entry.entry_id)

    async def _give_up(self, entry: Entry, job: Job | JobError, exc: Exception) -> None:
        what = str(exc) if isinstance(exc, JobError) else type(exc).__name__
        reason = f"failed while handling the job: {what}"
        # The traceback is for whoever fixes the bug; the message may hold provider
        # output, so the reason carries only the exception's type.
        self._log.exception("dead-lettering after an error", entry=entry.entry_id)
        try:
            pending = await self._redis.xpending_range(
                self.queue.key, keys.GROUP, entry.entry_id, entry.entry_id, 1
            )
            if not pending:
                return  # the outcome was recorded and acknowledged before the error
            await self._dead_letter(entry, job if isinstance(job, Job) else None, reason)
        except (RedisError, OSError):
            self._log.warning("entry left pending: redis error while dead-lettering")
        except Exception:
            # Recording `rejected` failed too (the record or event cannot be written):
            # still move the entry, or max_deliveries would hit the same wall forever.
            try:
                await self.queue.dead_letter(entry, reason)
            except (RedisError, OSError):
                self._log.warning("entry left pending: redis error while dead-lettering")

    # -- recording -----------------------------------------------------------------------

    async def _record_final(
        self,
        entry: Entry,
        job: Job,
        status: str,
        *,
        note: str = "",
        fields: Mapping[str, str | int] | None = None,
        connector: str = "",
    ) -> None:
        """Record a final status and acknowledge the entry, in one atomic step."""
        result = await self._transition(
            entry, job, status, note, fields, ack=True, connector=connector
        )
        if not result.ok:
            await self._drop(entry, job, result.verdict, result.previous, acked=True)
        elif self.metrics is not None:
            self.metrics.count(status)

    async def _record_and_defer(
        self,
        entry: Entry,
        job: Job,
        status: str,
        *,
        note: str,
        fields: Mapping[str, str | int] | None = None,
        attempt: int,
        due: float,
        connector: str = "",
    ) -> bool:
        """Record a status, then move the entry to the schedule until `due`; False (and
        the entry acknowledged) if the record is not ours to change."""
        result = await self._transition(entry, job, status, note, fields, connector=connector)
        if not result.ok:
            await self._drop(entry, job, result.verdict, result.previous)
            return False
        if self.metrics is not None and status != "queued":  # a retry: counted apart
            self.metrics.count(status)
        await self.queue.defer(entry, encode_job(job.to_wire()), entry.owner, attempt, due)
        return True

    async def _transition(
        self,
        entry: Entry,
        job: Job,
        status: str,
        note: str,
        fields: Mapping[str, str | int] | None,
        *,
        event: Mapping[str, str] | None = None,
        ack: bool = False,
        any_rejected: bool = False,
        connector: str = "",
    ) -> Transition:
        """The ledger step of one entry: its job's record to `status` if the entry owns
        it, with the status event (the job's part by default), and with `ack` the entry
        acknowledged in the same step. A record `rejected` may be left by a replayed
        entry, or by any with `any_rejected`. `connector`: the one the attempt went
        over (on the record and its history step)."""
        return await self.ledger.transition(
            job.id,
            entry.owner,
            status,
            profile=self.name,
            note=note,
            fields=fields,
            allow_rejected=any_rejected or entry.replay,
            event=self._event(job) if event is None else event,
            ack=Ack(self.queue.key, keys.GROUP, entry.entry_id) if ack else None,
            connector=connector,
        )

    def _event(self, job: Job) -> dict[str, str]:
        """The job's part of a per-entry status event (the sender is on the record)."""
        event = {"to": job.to}
        if job.meta:
            event["meta"] = json.dumps(job.meta, default=str)
        return event


def _next_utc_day() -> float:
    """The start of the next UTC day (daily caps start again then)."""
    return (time.time() // 86_400 + 1) * 86_400
