"""The worker of one profile: stream entries in, outcomes recorded, entries out.

Its loop reads a batch from the profile's work stream (`WorkQueue`), plans each
entry (`plan`: decode and check, compose, screen the recipients, pick sender
numbers) and hands it on: the entries ready to send go to the `Pipeline` (record
``sending``, submit, record the outcome and acknowledge, in batches); every other
entry takes the per-entry path (`entries`: dead letters, forwards, schedules,
rejections, retries, duplicates). The worker holds at most its binds' windows plus
two batches (`capacity`), so unread work stays on the stream for other instances.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from binds.base import Bind
from router.config import Settings
from router.engine.entries import EntryPath
from router.engine.pipeline import Pipeline, Ready
from router.engine.plan import SEND, Planner
from router.engine.receipts import Reports
from router.engine.routing import Routing, no_route
from router.metrics import ProfileMetrics
from router.policy.jobs import Job
from router.policy.rules import Refusal
from router.store import keys
from router.store.ledger import Ledger
from router.store.outages import REDIS_ERRORS, Pause, RedisOutages
from router.store.queue import Entry, WorkQueue

log = structlog.get_logger("router.worker")

BIND_POLL = 0.2  # seconds between looks at the binds while none is ready
MAX_HANDING_ON = 1  # batches being planned and recorded `sending` while the next is read


class ProfileWorker:
    """Consumes one profile's work stream and sends through its binds."""

    def __init__(
        self,
        *,
        redis: Redis,
        name: str,
        settings: Settings,
        routing: Routing,
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
        self.routing = routing
        self.ledger = ledger
        self.queue = WorkQueue(redis, name, consumer)
        self.planner = Planner(redis=redis, name=name, settings=settings, table=routing.table)
        self._redis = redis
        # Entries held: read (being planned), a task on the per-entry path, or a
        # `Ready` in the pipeline.
        self._held: dict[str, Entry | asyncio.Task[None] | Ready] = {}
        self._slot_freed = asyncio.Event()
        self._log = log.bind(profile=name)
        self.entries = EntryPath(
            redis=redis,
            name=name,
            queue=self.queue,
            ledger=ledger,
            settings=settings.queue,
            profiles=set(settings.profiles),
            outages=self.outages,
            metrics=metrics,
            held=self._held,
            freed=self._slot_freed,
        )
        self.pipeline = Pipeline(
            profile=name,
            stream=self.queue.key,
            ledger=ledger,
            routing=routing,
            reports=reports,
            outages=self.outages,
            store_text=profile.store_text,
            handoff=self.entries,
            metrics=metrics,
        )
        self._idle = asyncio.Event()  # set by `drain`: the pipeline's flusher may end
        self._flusher: asyncio.Task[None] | None = None
        self._no_stop = asyncio.Event()
        self._handing_on: set[asyncio.Task[None]] = set()
        self._hand_on_errors: list[BaseException] = []

    @property
    def capacity(self) -> int:
        """Entries this worker may hold at once: what its binds may have sent and not
        recorded (windows + unsettled_max) plus two reads.

        While one window's worth is on the wire, the next batches are being read
        and recorded `sending` and the last outcomes are being recorded: each of
        those steps is a Redis round trip, and with only a window's worth the
        window would run dry at every batch boundary."""
        return self.pipeline.windows + self.pipeline.unsettled_max + 2 * self.settings.batch

    @property
    def in_progress(self) -> int:
        return len(self._held)

    @property
    def ready(self) -> bool:
        """Whether some connector can send now (an SMPP session is bound)."""
        return self.routing.ready

    @property
    def binds(self) -> list[Bind]:
        """The binds of the connectors this profile sends over."""
        return self.routing.binds

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
            await self.hand_on(entries)

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
                # Planning and recording `sending` take a round trip of their own: the
                # next read does not wait for them (at most MAX_HANDING_ON at once).
                for entry in entries:
                    self._held[entry.entry_id] = entry
                await self._hand_on_in_background(entries, stopping)
            # Entries read after the stop signal stay pending for the next start.
        # A batch still being handed on (waiting for window room, say) is the drain's to
        # wait for, within the grace: serving ends now.
        self._raise_hand_on_errors()

    async def hand_on(self, entries: list[Entry], stopping: asyncio.Event | None = None) -> None:
        """Plan each entry (decode, check, compose); for those to send now, screen the
        recipients and pick sender numbers in one round trip (two when a capped
        campaign is involved). What is ready goes to the pipeline; every other entry
        takes the per-entry path. A Redis error before the hand-on leaves the batch for
        the caller to try again."""
        planner = self.planner
        plans = [planner.plan(entry) for entry in entries]
        sends = [(e, j) for e, j, plan, _ in plans if plan is SEND and isinstance(j, Job)]
        refused: dict[str, Refusal] = {}
        ready: list[Ready] = []
        if sends:
            picks, remember = await planner.pick([job for _, job in sends])
            routing, use_case = self.routing, self.profile.default_use_case
            for index, ((entry, job), pick) in enumerate(zip(sends, picks, strict=True)):
                if isinstance(pick, Refusal):
                    refused[entry.entry_id] = pick
                    continue
                route = routing.match(job.to, pick, job.use_case or use_case, job.kind)
                if route is None:
                    refused[entry.entry_id] = no_route(job.to, pick)
                    continue
                item = planner.ready(entry, job, pick, index in remember)
                item.route = route
                ready.append(item)
            if ready and planner.spend.limit is not None:
                ready = await self._within_spend(ready, refused)
            for item in ready:
                self._held[item.entry.entry_id] = item
        for entry, planned, plan, note in plans:
            reason: str | Refusal = note
            if plan is SEND:
                refusal = refused.get(entry.entry_id)
                if refusal is None:
                    continue
                plan, reason = planner.refused(refusal), refusal
            self.entries.take(entry, planned, plan, reason)
        if ready:
            await self.pipeline.send(ready, stopping or self._no_stop)

    async def _within_spend(self, ready: list[Ready], refused: dict[str, Refusal]) -> list[Ready]:
        """The messages today's spend leaves room for; the others go to `refused`."""
        checks = [(r.job.text or "", r.job.to, r.route) for r in ready if r.route is not None]
        verdicts = await self.planner.spend.screen(self._redis, checks)
        kept: list[Ready] = []
        for item, verdict in zip(ready, verdicts, strict=True):
            if verdict is None:
                kept.append(item)
            else:
                refused[item.entry.entry_id] = verdict
        return kept

    async def _hand_on_in_background(self, entries: list[Entry], stopping: asyncio.Event) -> None:
        # Woken when a hand-on ends and when stopping (`wake`): the entries of a batch
        # not started then stay pending for the next start.
        while len(self._handing_on) >= MAX_HANDING_ON and not stopping.is_set():
            self._slot_freed.clear()
            await self._slot_freed.wait()
            self._raise_hand_on_errors()
        if stopping.is_set():
            self.entries.release(entries)
            return
        task = asyncio.create_task(self._hand_on_through_outages(entries, stopping))
        self._handing_on.add(task)
        task.add_done_callback(self._handed_on)

    def _handed_on(self, task: asyncio.Task[None]) -> None:
        self._handing_on.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._hand_on_errors.append(task.exception())  # type: ignore[arg-type]
        self._slot_freed.set()

    def _raise_hand_on_errors(self) -> None:
        if self._hand_on_errors:
            raise self._hand_on_errors[0]

    async def _hand_on_through_outages(self, entries: list[Entry], stopping: asyncio.Event) -> None:
        """`hand_on`, waiting out Redis outages (the entries stay ours meanwhile)."""
        pause = Pause(self.outages)
        while True:
            try:
                await self.hand_on(entries, stopping)
                return
            except REDIS_ERRORS as exc:
                if stopping.is_set():
                    self.entries.release(entries)  # pending for the next start
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
                    await self.queue.heartbeat(self._held)
                if now >= next_claim and self._free() > 0:
                    next_claim = now + claim_every
                    claimed = await self.queue.autoclaim(self.settings.claim_idle, self._free())
                    claimed = [e for e in claimed if e.entry_id not in self._held]
                    if claimed:
                        self._log.warning("claimed idle entries", count=len(claimed))
                        await self.hand_on(claimed)
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
        if self._held:
            self._log.info("waiting for in-flight messages", count=len(self._held), grace=grace)
        while self._held and loop.time() < deadline and not self._flusher_dead():
            self._slot_freed.clear()
            try:
                await asyncio.wait_for(self._slot_freed.wait(), deadline - loop.time())
            except TimeoutError:
                break
        left = len(self._held)
        self.entries.closed = True
        tasks = [t for t in self._held.values() if isinstance(t, asyncio.Task)]
        tasks += self._handing_on
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._idle.set()
        self.pipeline.wake()
        await self.planner.close()
        if self._flusher is not None:
            # Outcomes still being recorded get what is left of the grace (at least a
            # second); a flush waiting for Redis after that is given up (left pending).
            await asyncio.wait({self._flusher}, timeout=max(1.0, deadline - loop.time()))
            if not self._flusher.done():
                self._flusher.cancel()
                await self.pipeline.cancel_flushes()
            await asyncio.gather(self._flusher, return_exceptions=True)
        return left

    def _flusher_dead(self) -> bool:
        return self._flusher is not None and self._flusher.done()

    def _check_flusher(self) -> None:
        """The outcome flusher ending on its own is a bug: end serving with it (and so
        is a batch's hand-on failing for anything but Redis)."""
        self._raise_hand_on_errors()
        if self._flusher_dead() and not self._idle.is_set():
            assert self._flusher is not None
            error = None if self._flusher.cancelled() else self._flusher.exception()
            raise RuntimeError(f"the outcome flusher of {self.name} ended: {error!r}")

    def _free(self) -> int:
        return max(0, self.capacity - len(self._held))

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
                or len(self._held) <= self.pipeline.windows + self.pipeline.unsettled_max
            ):
                return
            self._check_flusher()
            self._slot_freed.clear()
            await self._slot_freed.wait()
