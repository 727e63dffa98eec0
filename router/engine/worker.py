"""The worker of one profile: stream entries in, outcomes recorded, entries out.

It reads a batch and moves it through the stages: decode and check, compose
(template, language, smart encoding: `compose`), screen the recipients (opt-out,
block and allow lists: `audience`), pick sender numbers under the profile's
rules and daily caps (`senders`, `rules`); the entries ready to send go to the
`Pipeline` (record ``sending``, submit, record the outcome and acknowledge, in
batches). The rest take the per-entry path here: bad jobs go to the dead-letter
stream; jobs the rules refuse are recorded ``rejected`` with their code; retries,
scheduled sends and jobs deferred past a full cap go to the schedule; duplicates
are acknowledged. The worker
holds at most its binds' windows plus two batches (`capacity`), so unread work
stays on the stream for other instances.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from binds.base import Bind, Retry
from router.config import Settings
from router.engine.pipeline import Pipeline, Ready
from router.engine.receipts import Reports
from router.metrics import ProfileMetrics
from router.policy.audience import KEYWORD_REPLY_PREFIX, Audience
from router.policy.checks import JobCheck
from router.policy.jobs import Job, JobError, decode_job, encode_job
from router.policy.rules import Refusal, SenderRules
from router.policy.senders import SenderPool, Want
from router.store import keys
from router.store.ledger import Ack, Ledger, Transition
from router.store.outages import REDIS_DOWN, REDIS_ERRORS, Pause, RedisOutages, backoff
from router.store.queue import Entry, WorkQueue

log = structlog.get_logger("router.worker")

BIND_POLL = 0.2  # seconds between looks at the binds while none is ready
MAX_DISPATCHING = 1  # batches being decoded and recorded `sending` while the next is read


class Rejection(Exception):
    """A job that cannot be sent as it is (a bad field, a template it does not fill);
    it is recorded ``rejected`` and dead-lettered, to be replayed once fixed."""


# What the per-entry path does with an entry (`_handle`), worked out by `_plan`.
DEAD, FORWARD, EXPIRED, SCHEDULE, SEND, REFUSE, DEFER = (
    "dead", "forward", "expired", "schedule", "send", "refuse", "defer"
)  # fmt: skip


class ProfileWorker:
    """Consumes one profile's work stream and sends through its binds."""

    def __init__(
        self,
        *,
        redis: Redis,
        name: str,
        settings: Settings,
        binds: Sequence[Bind],
        ledger: Ledger,
        consumer: str,
        reports: Reports | None = None,
        outages: RedisOutages | None = None,
        metrics: ProfileMetrics | None = None,
    ) -> None:
        self.name = name
        self.metrics = metrics
        self.outages = outages or RedisOutages()
        self.reports = reports
        profile = settings.profiles[name]
        self.profile = profile
        self.settings = settings.queue
        # The same checks every door runs before enqueuing (router/client.py).
        self.check = JobCheck(name, profile, settings.templates)
        self.binds = list(binds)
        self.ledger = ledger
        self.queue = WorkQueue(redis, name, consumer)
        self.rules = SenderRules(name, profile.numbers, settings)
        self.senders = SenderPool(redis, name, profile, self.rules)
        self.audience = Audience(redis, name, profile)
        self._redis = redis
        self._profiles = set(settings.profiles)
        # Entries held: read (being dispatched), a task on the per-entry path, or a
        # `Ready` in the pipeline.
        self._active: dict[str, Entry | asyncio.Task[None] | Ready] = {}
        self._slot_freed = asyncio.Event()
        self._log = log.bind(profile=name)
        self.pipeline = Pipeline(
            profile=name,
            stream=self.queue.key,
            ledger=ledger,
            binds=self.binds,
            reports=reports,
            outages=self.outages,
            store_text=profile.store_text,
            handoff=self,
            metrics=metrics,
        )
        self._idle = asyncio.Event()  # set by `drain`: the pipeline's flusher may end
        self._closed = False  # after `drain`: late outcomes leave their entries pending
        self._flusher: asyncio.Task[None] | None = None
        self._no_stop = asyncio.Event()
        self._dispatching: set[asyncio.Task[None]] = set()
        self._dispatch_errors: list[BaseException] = []

    @property
    def capacity(self) -> int:
        """Entries this worker may hold at once: its binds' windows plus two reads.

        While one window's worth is on the wire, the next batches are being read
        and recorded `sending` and the last outcomes are being recorded: each of
        those steps is a Redis round trip, and with only a window's worth the
        window would run dry at every batch boundary."""
        return self.pipeline.windows + 2 * self.settings.batch

    @property
    def in_progress(self) -> int:
        return len(self._active)

    @property
    def ready(self) -> bool:
        """Whether some bind can send now (an SMPP session is bound)."""
        return any(b.ready for b in self.binds)

    async def backlog(self) -> dict[str, int]:
        """Messages waiting for this profile: on the stream (of which `pending` are read
        and not finished) and in the schedule (send-at and retries). Shown in health."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self.queue.key)
            pipe.xpending(self.queue.key, keys.GROUP)
            pipe.zcard(keys.schedule(self.name))
            stream, pending, scheduled = await pipe.execute(raise_on_error=False)
        return {
            "stream": stream if isinstance(stream, int) else 0,
            "pending": int(pending["pending"]) if isinstance(pending, dict) else 0,
            "scheduled": scheduled if isinstance(scheduled, int) else 0,
        }

    def wake(self) -> None:
        """Wake a reader waiting for window room (used when stopping)."""
        self._slot_freed.set()

    async def start(self) -> None:
        """Create the consumer group and take back this consumer's unfinished entries."""
        await self.queue.ensure_group()
        if self._flusher is None:
            self._flusher = asyncio.create_task(self.pipeline.run(self._idle))
            self._flusher.add_done_callback(lambda _: self._slot_freed.set())
        after = "0"
        while True:
            await self._wait_for_room()
            entries = await self.queue.read_own_pending(self._free(), after)
            if not entries:
                break
            after = entries[-1].entry_id
            self._log.info("recovering pending entries", count=len(entries))
            await self.dispatch(entries)

    async def serve(self, stopping: asyncio.Event) -> None:
        """Read new entries until `stopping` is set."""
        pause = Pause(self.outages)
        while not stopping.is_set():
            await self._wait_for_room(stopping)
            await self._wait_for_bind(stopping)
            self._check_flusher()
            if stopping.is_set():
                break
            count = min(self.settings.batch, self._free())
            try:
                entries = await self.queue.read_new(count, self.settings.block_ms)
            except (RedisError, OSError) as exc:
                await pause.after_error(f"reading {self.name}'s work stream", exc, stopping)
                continue
            pause.reset()
            if entries and not stopping.is_set():
                # Decoding and recording `sending` take a round trip of their own: the
                # next read does not wait for them (at most MAX_DISPATCHING at once).
                for entry in entries:
                    self._active[entry.entry_id] = entry
                await self._start_dispatch(entries, stopping)
            # Entries read after the stop signal stay pending for the next start.
        # A batch still dispatching (waiting for window room, say) is the drain's to
        # wait for, within the grace: serving ends now.
        self._raise_dispatch_errors()

    async def _start_dispatch(self, entries: list[Entry], stopping: asyncio.Event) -> None:
        # Woken when a dispatch ends and when stopping (`wake`): the entries of a batch
        # not started then stay pending for the next start.
        while len(self._dispatching) >= MAX_DISPATCHING and not stopping.is_set():
            self._slot_freed.clear()
            await self._slot_freed.wait()
            self._raise_dispatch_errors()
        if stopping.is_set():
            self.release(entries)
            return
        task = asyncio.create_task(self._dispatch_batch(entries, stopping))
        self._dispatching.add(task)
        task.add_done_callback(self._dispatch_done)

    def _dispatch_done(self, task: asyncio.Task[None]) -> None:
        self._dispatching.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._dispatch_errors.append(task.exception())  # type: ignore[arg-type]
        self._slot_freed.set()

    def _raise_dispatch_errors(self) -> None:
        if self._dispatch_errors:
            raise self._dispatch_errors[0]

    async def _dispatch_batch(self, entries: list[Entry], stopping: asyncio.Event) -> None:
        """`dispatch`, waiting out Redis outages (the entries stay ours meanwhile)."""
        pause = Pause(self.outages)
        while True:
            try:
                await self.dispatch(entries, stopping)
                return
            except REDIS_ERRORS as exc:
                if stopping.is_set():
                    self.release(entries)  # pending for the next start
                    return
                await pause.after_error(f"assigning {self.name}'s senders", exc, stopping)

    async def maintain(self, stopping: asyncio.Event) -> None:
        """Promote due scheduled jobs, claim idle entries, keep ours from being claimed."""
        claim_every = max(1.0, self.settings.claim_idle / 4)
        beat_every = max(1.0, self.settings.claim_idle / 3)
        next_claim = next_beat = time.monotonic()
        pause = Pause(self.outages)
        while not stopping.is_set():
            try:
                await self.queue.promote_due()
                if self.reports is not None:
                    await self.reports.sweep()
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + beat_every
                    await self.queue.heartbeat(self._active)
                if now >= next_claim and self._free() > 0:
                    next_claim = now + claim_every
                    claimed = await self.queue.autoclaim(self.settings.claim_idle, self._free())
                    claimed = [e for e in claimed if e.entry_id not in self._active]
                    if claimed:
                        self._log.warning("claimed idle entries", count=len(claimed))
                        await self.dispatch(claimed)
            except (RedisError, OSError) as exc:
                await pause.after_error(f"maintaining {self.name}'s queue", exc, stopping)
                continue
            pause.reset()
            try:
                await asyncio.wait_for(stopping.wait(), self.settings.schedule_poll)
            except TimeoutError:
                pass

    async def drain(self, grace: float) -> int:
        """Let in-flight work finish within `grace` s; cancel the rest (it stays pending).
        Returns how many entries were left unfinished."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._active:
            self._log.info("waiting for in-flight messages", count=len(self._active), grace=grace)
        while self._active and loop.time() < deadline and not self._flusher_dead():
            self._slot_freed.clear()
            try:
                await asyncio.wait_for(self._slot_freed.wait(), deadline - loop.time())
            except TimeoutError:
                break
        left = len(self._active)
        self._closed = True
        tasks = [t for t in self._active.values() if isinstance(t, asyncio.Task)]
        tasks += self._dispatching
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._idle.set()
        self.pipeline.wake()
        if self._flusher is not None:
            # Outcomes still being recorded get what is left of the grace (at least a
            # second); a flush waiting for Redis after that is given up (left pending).
            await asyncio.wait({self._flusher}, timeout=max(1.0, deadline - loop.time()))
            if not self._flusher.done():
                self._flusher.cancel()
                await self.pipeline.cancel_flushes()
            await asyncio.gather(self._flusher, return_exceptions=True)
        return left

    async def dispatch(self, entries: list[Entry], stopping: asyncio.Event | None = None) -> None:
        """Move a batch through the stages: plan each entry (decode, check, compose), then
        for those to send now screen the recipients and pick sender numbers in one
        round trip (two when a capped campaign is involved). What is ready
        goes to the pipeline; every other entry takes the per-entry path. A Redis error
        before the hand-on leaves the batch for the caller to try again."""
        plans = [self._plan(entry) for entry in entries]
        sends = [(e, j) for e, j, kind, _ in plans if kind == SEND and isinstance(j, Job)]
        refused: dict[str, Refusal] = {}
        ready: list[Ready] = []
        if sends:
            picks, remember = await self._pick([job for _, job in sends])
            for index, ((entry, job), pick) in enumerate(zip(sends, picks, strict=True)):
                if isinstance(pick, Refusal):
                    refused[entry.entry_id] = pick
                    continue
                item = self._to_ready(entry, job, pick)
                if index in remember:
                    item.sticky_key = keys.sticky(self.name, job.to)
                    item.sticky_ttl = self.senders.sticky_ttl
                ready.append(item)
                self._active[entry.entry_id] = item
        for entry, planned, kind, note in plans:
            reason: str | Refusal = note
            if kind == SEND:
                refusal = refused.get(entry.entry_id)
                if refusal is None:
                    continue
                later = refusal.code == "daily_cap_reached" and self.profile.over_cap == "defer"
                kind, reason = (DEFER if later else REFUSE), refusal
            self._spawn(entry, partial(self._handle, entry, planned, kind, reason))
        if ready:
            await self.pipeline.send(ready, stopping or self._no_stop)

    def _plan(self, entry: Entry) -> tuple[Entry, Job | JobError, str, str]:
        """What to do with one entry: (entry, job, kind, reason). Composes the text of
        a job to send (so the rules and the record see what is sent)."""
        job = _job_of(entry, self.name)
        if entry.deliveries > self.settings.max_deliveries:
            reason = (
                f"delivered {entry.deliveries} times without an outcome "
                f"(queue.max_deliveries = {self.settings.max_deliveries})"
            )
            return entry, job, DEAD, reason
        if isinstance(job, JobError):
            return entry, job, DEAD, str(job)
        if job.profile and job.profile != self.name:
            return entry, job, FORWARD, ""
        try:
            # The text replaces the template on the job: it is what is recorded, sent
            # and retried (and so composed once).
            job.text = self.check.text(job)
            job.template = None
        except JobError as exc:
            return entry, job, DEAD, str(exc)
        now = time.time()
        if job.expires_at is not None and now >= job.expires_at:
            return entry, job, EXPIRED, "validity passed before sending"
        if job.send_at is not None and job.send_at > now + 0.5:
            return entry, job, SCHEDULE, _when(job.send_at)
        return entry, job, SEND, ""

    async def _pick(self, jobs: Sequence[Job]) -> tuple[list[str | Refusal], set[int]]:
        """Screen the recipients and choose a sender for each job (or say why not); and
        which picks are new sticky mappings (written with the `sending` record)."""
        default_use_case = self.profile.default_use_case
        wants = [Want(job.to, job.use_case or default_use_case, job.sender) for job in jobs]
        recipients = [job.to for job in jobs]
        async with self._redis.pipeline(transaction=False) as pipe:
            count = self.senders.commands(pipe, wants)
            self.audience.commands(pipe, recipients)
            replies = await pipe.execute()
        verdicts = await self.audience.verdicts(recipients, replies[count:])
        for job, want, verdict in zip(jobs, wants, verdicts, strict=True):
            if verdict is None:
                continue
            code, reason = verdict
            if code == "opted_out" and job.id.startswith(KEYWORD_REPLY_PREFIX):
                continue  # the answer to the STOP itself reaches who sent it
            want.refused = Refusal(code, reason)
        picks, remember = await self.senders.pick(wants, replies[:count])
        return picks, set(remember)

    def _to_ready(self, entry: Entry, job: Job, sender: str) -> Ready:
        url = job.status_callback_url or self.profile.status_callback_url
        meta = json.dumps(job.meta, default=str) if job.meta else ""
        return Ready(entry, job, sender, str(url) if url else "", meta)

    # -- the pipeline's handoff (see `pipeline.Handoff`) -------------------------------

    def retry(self, ready: Ready, outcome: Retry) -> None:
        """A Retry outcome from a bind: the next attempt is scheduled per entry."""
        self._spawn(ready.entry, lambda: self._retry(ready.entry, ready.job, outcome))

    def skip(self, ready: Ready, result: Transition) -> None:
        """Not sent (a duplicate job id, or already final): acknowledged per entry."""
        self._spawn(
            ready.entry,
            lambda: self._skip(ready.entry, ready.job, result.verdict, result.previous),
        )

    def fail(self, ready: Ready, exc: Exception) -> None:
        """A non-Redis error while recording this entry: dead-lettered, named."""
        self._spawn(ready.entry, lambda: self._give_up(ready.entry, ready.job, exc))

    def release(self, entries: Sequence[Entry]) -> None:
        """These entries are done with."""
        for entry in entries:
            self._active.pop(entry.entry_id, None)
        self._slot_freed.set()

    def _spawn(self, entry: Entry, step: Callable[[], Awaitable[None]]) -> None:
        if self._closed:
            self._active.pop(entry.entry_id, None)  # left pending for the next start
            return
        task = asyncio.create_task(self._run(entry, step))
        self._active[entry.entry_id] = task

    async def _run(self, entry: Entry, step: Callable[[], Awaitable[None]]) -> None:
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
            job = _job_of(entry, self.name)
            await self._give_up(entry, job, exc)
        finally:
            if self._active.get(entry.entry_id) is asyncio.current_task():
                del self._active[entry.entry_id]
            self._slot_freed.set()

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

    async def _handle(
        self, entry: Entry, job: Job | JobError, kind: str, reason: str | Refusal
    ) -> None:
        """The per-entry path: what `_plan` (or the rules) decided for this entry."""
        if kind == DEAD or isinstance(job, JobError):
            await self._dead_letter(entry, job if isinstance(job, Job) else None, str(reason))
        elif kind == FORWARD:
            try:
                await self._forward(entry, job)
            except Rejection as exc:
                await self._dead_letter(entry, job, str(exc))
        elif kind == EXPIRED:
            await self._finish(entry, job, "expired", note=str(reason))
        elif kind == SCHEDULE:
            if await self._record(entry, job, "scheduled", note=str(reason)):
                assert job.send_at is not None
                await self.queue.defer(
                    entry, encode_job(job.to_wire()), entry.owner, entry.attempt, job.send_at
                )
                self._log.debug("scheduled", id=job.id, send_at=job.send_at)
        elif kind == REFUSE:
            assert isinstance(reason, Refusal)
            await self._refuse(entry, job, reason)
        elif kind == DEFER:
            assert isinstance(reason, Refusal)
            due = _next_utc_day()
            note = f"deferred to {_when(due).removeprefix('send at ')}: {reason.reason}"
            fields = {"error_code": reason.code, "error": reason.reason}
            if await self._record(entry, job, "scheduled", note=note, fields=fields):
                await self.queue.defer(
                    entry, encode_job(job.to_wire()), entry.owner, entry.attempt, due
                )
                self._log.info("deferred past the daily cap", id=job.id, until=due)

    async def _refuse(self, entry: Entry, job: Job, refusal: Refusal) -> None:
        """The rules said no: `rejected` with the normalised code, acknowledged. Not a
        dead letter: the job is well formed, and replaying it would meet the same rule."""
        fields = {"error_code": refusal.code, "error": refusal.reason, "to": job.to}
        ack = Ack(self.queue.key, keys.GROUP, entry.entry_id)
        result = await self.ledger.transition(
            job.id,
            entry.owner,
            "rejected",
            profile=self.name,
            note=refusal.reason,
            fields=fields,
            allow_rejected=entry.replay,
            event={**self._event(job), "error_code": refusal.code},
            ack=ack,
        )
        if not result.ok:
            await self._skip(entry, job, result.verdict, result.previous, acked=True)
            return
        await self._redis.hincrby(keys.stats(self.name), f"rejected_{refusal.code}", 1)
        if self.metrics is not None:
            self.metrics.count("rejected")
        self._log.info("rejected", id=job.id, code=refusal.code, reason=refusal.reason)

    async def _retry(self, entry: Entry, job: Job, outcome: Retry) -> None:
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
            await self._finish(entry, job, "failed", note=note, fields=errors)
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
            await self._finish(
                entry,
                job,
                "expired",
                note=f"validity ends before retry: {outcome.reason}",
                fields=errors,
            )
            return
        note = (
            f"retry {attempt} in {delay:.1f}s: {outcome.reason}"
            if outcome.attempted
            else f"held, not sent ({delay:.1f}s): {outcome.reason}"
        )
        if await self._record(entry, job, "queued", note=note, fields=errors):
            await self.queue.defer(entry, encode_job(job.to_wire()), entry.owner, attempt, due)
            self._log.debug(
                "retry scheduled",
                id=job.id,
                attempt=attempt,
                delay=round(delay, 2),
                reason=outcome.reason,
            )

    async def _finish(
        self,
        entry: Entry,
        job: Job,
        status: str,
        *,
        note: str = "",
        fields: Mapping[str, str | int] | None = None,
    ) -> None:
        """Record a final status and acknowledge the entry, in one atomic step."""
        ack = Ack(self.queue.key, keys.GROUP, entry.entry_id)
        result = await self.ledger.transition(
            job.id,
            entry.owner,
            status,
            profile=self.name,
            note=note,
            fields=fields,
            allow_rejected=entry.replay,
            event=self._event(job),
            ack=ack,
        )
        if not result.ok:
            await self._skip(entry, job, result.verdict, result.previous, acked=True)
        elif self.metrics is not None:
            self.metrics.count(status)

    async def _record(
        self,
        entry: Entry,
        job: Job,
        status: str,
        *,
        note: str = "",
        fields: Mapping[str, str | int] | None = None,
    ) -> bool:
        """Record a status; False (and the entry acknowledged) if it is not ours to change."""
        result = await self.ledger.transition(
            job.id,
            entry.owner,
            status,
            profile=self.name,
            note=note,
            fields=fields,
            allow_rejected=entry.replay,
            event=self._event(job),
        )
        if not result.ok:
            await self._skip(entry, job, result.verdict, result.previous)
        elif self.metrics is not None and status != "queued":  # a retry: counted apart
            self.metrics.count(status)
        return result.ok

    async def _skip(
        self, entry: Entry, job: Job, verdict: str, previous: str, *, acked: bool = False
    ) -> None:
        if verdict == "duplicate":
            await self._redis.hincrby(keys.stats(self.name), "duplicates_dropped", 1)
            self._log.info("duplicate job id dropped", id=job.id, entry=entry.entry_id)
        else:
            self._log.info("already final, not sent again", id=job.id, status=previous)
        if not acked:
            await self.queue.ack(entry.entry_id)

    async def _dead_letter(self, entry: Entry, job: Job | None, reason: str) -> None:
        if job is not None:
            # Tell `status ID` why; a replayed job may leave `rejected` again.
            result = await self.ledger.transition(
                job.id,
                entry.owner,
                "rejected",
                profile=self.name,
                note=reason,
                fields={"error_code": "rejected", "error": reason, "to": job.to},
                allow_rejected=True,
                event=self._event(job),
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

    def _event(self, job: Job) -> dict[str, str]:
        """The job's part of a per-entry status event (the sender is on the record)."""
        event = {"to": job.to}
        if job.meta:
            event["meta"] = json.dumps(job.meta, default=str)
        return event

    def _flusher_dead(self) -> bool:
        return self._flusher is not None and self._flusher.done()

    def _check_flusher(self) -> None:
        """The outcome flusher ending on its own is a bug: end serving with it (and so
        is a batch's dispatch failing for anything but Redis)."""
        self._raise_dispatch_errors()
        if self._flusher_dead() and not self._idle.is_set():
            assert self._flusher is not None
            error = None if self._flusher.cancelled() else self._flusher.exception()
            raise RuntimeError(f"the outcome flusher of {self.name} ended: {error!r}")

    def _free(self) -> int:
        return max(0, self.capacity - len(self._active))

    async def _wait_for_bind(self, stopping: asyncio.Event) -> None:
        """Leave new work on the stream while no bind can send (an SMSC outage)."""
        while not self.ready and not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), BIND_POLL)
            except TimeoutError:
                pass

    async def _wait_for_room(self, stopping: asyncio.Event | None = None) -> None:
        """Until a read is worth its round trip: a quarter of the capacity (at most a
        batch) is free, or the work in hand is down to what the windows hold."""
        while not (stopping and stopping.is_set()):
            free = self._free()
            if free > 0 and (
                free >= min(self.settings.batch, self.capacity // 4)
                or len(self._active) <= self.pipeline.windows
            ):
                return
            self._check_flusher()
            self._slot_freed.clear()
            await self._slot_freed.wait()


def _job_of(entry: Entry, profile: str) -> Job | JobError:
    try:
        return decode_job(entry.raw_job, default_id=f"{profile}.{entry.owner}")
    except JobError as exc:
        return exc


def _next_utc_day() -> float:
    """The start of the next UTC day (daily caps start again then)."""
    return (time.time() // 86_400 + 1) * 86_400


def _when(at: float) -> str:
    return "send at " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
