"""The hot path of one profile: batches recorded `sending`, sent, recorded again.

    ready batch ──► ledger.sending (one call) ──► bind.send per message (no task)
      ──► outcomes collected by callback ──► ledger.finish (one call per flush:
          records, events, provider-id index, early reports, acks)

The worker decides which entries are ready to send (decoded, checked, due, sender
assigned) and hands them over as `Ready`; everything else (dead letters, schedules,
retries, duplicates) stays on the worker's per-entry path, which this module calls
back through `Handoff`. A flush takes whatever outcomes arrived while the previous
one was in flight, so batches grow with load and a lone message is not delayed.

The gate (`_pump`) counts two kinds of message sent and not yet recorded:

- in flight: handed to a bind, no outcome yet; at most `windows` (the binds' windows),
  freed as soon as the provider answers, as SMPP intends;
- answered: the outcome is in the outbox or in a flush, not yet in Redis; together
  with those in flight at most `windows` + `unsettled_max`.

Both are recorded `sending`, so if the process dies they are sent again at the next
start and each is counted in ``possible_duplicates`` (sending.lua). The most a crash
can send twice is therefore `windows` + `unsettled_max`: per bind, its window plus its
`unsettled_max` (one window unless configured; in sync mode `SYNC_UNSETTLED`, so that
the one submit outstanding goes on while the outcomes behind it are recorded in
batches). Without the second bound a slow Redis would let answered outcomes pile up
without limit; with it a window is not held hostage by the outcome flush, so the rate
is window / SMSC answer time while the flushes keep up, and each bind adds its window.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

import structlog

from binds.base import Accepted, Crashed, Failed, OutboundMessage, Outcome, Retry
from router.engine.connectors import route_level
from router.engine.receipts import Reports
from router.engine.routing import Routing
from router.metrics import ProfileMetrics
from router.policy.jobs import Job
from router.policy.routes import Matched
from router.store.health import Outcome as FinalOutcome
from router.store.ledger import Finished, Ledger, Sending, Transition
from router.store.outages import REDIS_DOWN, Pause, RedisOutages
from router.store.queue import Entry

log = structlog.get_logger("router.pipeline")

T = TypeVar("T")

FLUSH_MAX = 500  # outcomes per finish call (bounds one script's time inside Redis)
FLUSHES = 3  # outcome flushes in flight at once (see `Pipeline.run`)
# Seconds the first outcome of an outbox may wait for others to share its flush (while
# more answers are coming; see `Pipeline.run`).
FLUSH_WAIT = 0.002
# Messages per `sending` call: Redis runs one script at a time, and outcome flushes
# queued behind a long one wait (measured: 32 drains ~15 % faster than 100).
SENDING_CHUNK = 32
AHEAD = 64  # least messages recorded `sending` ahead of the gate (see `Pipeline.ahead`)


@dataclass(slots=True)
class Ready:
    """One entry ready to send: decoded, checked, due, with its sender number."""

    entry: Entry
    job: Job
    sender: str
    url: str  # status_callback_url ('' for none)
    meta: str  # the job's meta as JSON ('' for none), made once for both records
    step: int = 0  # history index of its `sending` step
    # A new sticky mapping (recipient -> sender) to write with the `sending` record:
    # its key and TTL in seconds ('' and 0 for none).
    sticky_key: str = ""
    sticky_ttl: int = 0
    handed_at: float = 0.0  # monotonic time it went to a bind (metrics: submit latency)
    # The connector it went out over (recorded with its outcome: the record's
    # `connector` and its history step), '' until it is handed to one.
    connector: str = ""
    route: Matched | None = None  # its route (None: an inline profile's own connector)
    tried: tuple[str, ...] = ()  # connectors that answered it at the route level


class Handoff(Protocol):
    """What the pipeline hands back to the worker's per-entry path."""

    def retry(self, ready: Ready, outcome: Retry) -> None:
        """A Retry outcome: schedule the next attempt (or give up)."""

    def skip(self, ready: Ready, result: Transition) -> None:
        """Not sent: a duplicate job id, or a record already final."""

    def fail(self, ready: Ready, exc: Exception) -> None:
        """A non-Redis error while recording this entry: dead-letter it, named."""

    def release(self, entries: Sequence[Entry]) -> None:
        """These entries are done (recorded and acknowledged, or left pending)."""


class Pipeline:
    """Records and sends batches for one profile (see the module docstring)."""

    def __init__(
        self,
        *,
        profile: str,
        stream: str,
        ledger: Ledger,
        routing: Routing,
        reports: Reports | None,
        outages: RedisOutages,
        store_text: bool,
        handoff: Handoff,
        metrics: ProfileMetrics | None = None,
    ) -> None:
        self.profile = profile
        self._metrics = metrics
        self._stream = stream
        self._ledger = ledger
        self._routing = routing
        self._reports = reports
        self._outages = outages
        self._store_text = store_text
        self._handoff = handoff
        self._outbox: list[tuple[Ready, Accepted | Failed]] = []
        self._wake = asyncio.Event()
        # Recorded `sending`, waiting for the gate (never sent if the process dies now).
        self._queue: deque[Ready] = deque()
        # Handed to a bind, no outcome yet (within `windows`), and answered, outcome not
        # recorded yet (the outbox and the flushes): if the process dies now, these may
        # reach the provider twice. Together within `windows` + `unsettled_max`: that
        # is the bound on duplicates per crash.
        self.in_flight = 0
        self.answered = 0
        self.peak_unsettled = 0  # the most of both at once (tests, benchmarks)
        self._outbox_since = 0.0  # when the outbox's first outcome arrived (monotonic)
        self._recording = 0  # in `sending` calls right now
        self._flushes: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()

    @property
    def windows(self) -> int:
        """The most messages in flight at the binds at once."""
        return self._routing.windows

    @property
    def unsettled_max(self) -> int:
        """How many more than `windows` may be sent with their outcome not recorded."""
        return self._routing.unsettled_max

    @property
    def unsettled(self) -> int:
        """Sent, outcome not recorded: what a crash now could send twice."""
        return self.in_flight + self.answered

    @property
    def ahead(self) -> int:
        """Messages recorded `sending` ahead of the gate at most: what a crash can leave
        counted as possible duplicates though never sent. As many as the gate lets out
        unrecorded, windows + `unsettled_max` (at least `AHEAD`), keep it fed while the
        next call is made: with slots freed by the answers a window's worth ran dry
        within one `sending` round trip (measured: drains 20-35 % slower)."""
        return max(self.windows + self.unsettled_max, AHEAD)

    async def send(self, batch: Sequence[Ready], stopping: asyncio.Event) -> None:
        """Record `sending` in one call per chunk, then queue the messages for the
        gate (`_pump`). The chunks that fit within `ahead` go out together (one round
        trip, not one after the other); the rest wait for room."""
        size = min(self.ahead, SENDING_CHUNK)
        chunks = [batch[i : i + size] for i in range(0, len(batch), size)]
        while chunks:
            room = self.ahead - len(self._queue) - self._recording
            wave: list[Sequence[Ready]] = []
            while chunks and (len(chunks[0]) <= room or not (wave or self._queue)):
                room -= len(chunks[0])
                wave.append(chunks.pop(0))
            if not wave:
                self._room.clear()
                await self._room.wait()
                continue
            self._recording += sum(len(c) for c in wave)
            try:
                await asyncio.gather(*(self._send(c, stopping) for c in wave))
            finally:
                self._recording -= sum(len(c) for c in wave)

    async def _send(self, batch: Sequence[Ready], stopping: asyncio.Event) -> None:
        items: list[Sending] = [self._sending_item(r) for r in batch]
        results = await self._record(
            "recording sending", lambda: self._ledger.sending(self.profile, items), stopping
        )
        if results is None:
            # Stopping while Redis is away: the entries stay pending for the next start.
            self._handoff.release([r.entry for r in batch])
            return
        if isinstance(results, Exception):
            await self._one_by_one_sending(batch, stopping)
            return
        self._dispatch(batch, results)

    def _pump(self) -> None:
        """Hand queued messages to the binds while fewer than the windows are in flight
        and fewer than the windows + `unsettled_max` are unsettled (sent, outcome not
        recorded)."""
        queue, routing = self._queue, self._routing
        windows = routing.windows
        total = windows + routing.unsettled_max if queue else 0
        pick = routing.pick
        # One clock read per pump: the messages it hands over go out together.
        now = time.monotonic() if self._metrics is not None and queue else 0.0
        # Checked per message: a bind may answer at once (not bound, not encodable), and
        # that outcome's callback pumps again from inside this loop.
        while queue and self.in_flight < windows and self.in_flight + self.answered < total:
            ready = queue.popleft()
            ready.handed_at = now
            self.in_flight += 1
            if self.in_flight + self.answered > self.peak_unsettled:
                self.peak_unsettled = self.in_flight + self.answered
            job = ready.job
            connector = pick(ready.route, job.to, ready.tried)
            ready.connector = connector.name
            connector.took()
            message = OutboundMessage(
                job.id,
                ready.sender,
                job.to,
                job.text or "",
                job.meta,
                job.expires_at,
                () if job.fallback else job.media,
            )
            connector.bind().send(message, _Collect(self, ready))
        self._room.set()

    def _settled(self, count: int) -> None:
        """`count` answered messages have their outcome recorded (or handed on)."""
        self.answered -= count
        self._pump()

    async def run(self, idle: asyncio.Event) -> None:
        """Record outcomes as they come, until `idle` is set and nothing is waiting.

        `idle` means no entry is left in flight (the worker's drain is over). Window
        slots are freed by the answers, not by the flushes: what waits for a flush only
        uses up `unsettled_max`, and the gate stops handing over once that is spent. So
        the outbox is measured against it (`_flush_size`), early enough that a flush's
        round trip does not spend it, late enough that batches stay big (one script
        call per batch is what makes recording cheap):

        - with no flush in flight, one starts once the outbox holds `_flush_size`, or
          nothing is in flight at the binds (no answer is coming to share it), or the
          gate is shut by `unsettled_max`, or its first outcome has waited `FLUSH_WAIT`;
        - while others are in flight, another starts once the outbox holds
          `_flush_size` (at most `FLUSHES` at once).

        Before answers freed the slots the flush itself freed them, in bulk, and a flush
        started at once whenever none was in flight; with a steady flow of answers that
        would record them a few at a time."""
        flushes = self._flushes
        loop = asyncio.get_running_loop()
        while True:
            for task in [t for t in flushes if t.done()]:
                flushes.discard(task)
                task.result()  # a bug in a flush ends the flusher (and the daemon)
            outbox = self._outbox
            wait = 0.0  # seconds until the outbox is due (no flush in flight)
            if not outbox:
                ready = False
            elif flushes:
                ready = len(flushes) < FLUSHES and len(outbox) >= self._flush_size()
            else:
                ready = len(outbox) >= self._flush_size() or not self.in_flight or self._shut()
                if not ready:
                    wait = self._outbox_since + FLUSH_WAIT - time.monotonic()
                    ready = wait <= 0.0
            if not ready:
                if idle.is_set() and not outbox and not flushes:
                    return
                self._wake.clear()
                timer = loop.call_later(wait, self._wake.set) if wait > 0.0 else None
                await self._wake.wait()
                if timer is not None:
                    timer.cancel()
                continue
            taken, self._outbox = outbox[:FLUSH_MAX], outbox[FLUSH_MAX:]
            task = asyncio.create_task(self._flush(taken))
            task.add_done_callback(lambda _: self._wake.set())
            flushes.add(task)

    def _flush_size(self) -> int:
        """Outcomes an outbox waits for before its flush starts: an eighth of
        `unsettled_max`, or all of it but eight windows' worth when that is more. What
        a flush's round trip must leave room for is the answers that come meanwhile,
        about a window per SMSC round trip: with small windows and a large
        `unsettled_max` (sync mode: 1 and `SYNC_UNSETTLED` per bind) an eighth would
        flush a few at a time (measured: 4.8 outcomes per call in sync mode, 14 with
        this). Never more than one call takes (`FLUSH_MAX`): with flushes in flight a
        further one waits for this many."""
        unsettled = self.unsettled_max
        return min(FLUSH_MAX, max(1, unsettled // 8, unsettled - 8 * self.windows))

    def _shut(self) -> bool:
        """Whether messages wait for the gate only because of unrecorded outcomes."""
        return bool(self._queue) and self.unsettled >= self.windows + self.unsettled_max

    def wake(self) -> None:
        """Have `run` look again (the worker set `idle`)."""
        self._wake.set()

    async def cancel_flushes(self) -> None:
        """Cancel flushes still waiting (for Redis, at the end of the grace): their
        entries stay pending and are handled again at the next start."""
        for task in list(self._flushes):
            task.cancel()
        await asyncio.gather(*self._flushes, return_exceptions=True)

    # -- recording ------------------------------------------------------------------

    # The two records of every message are built by position, in their fields' order
    # (keywords would cost ~0.4 us more each, per message): tests/store/test_record_fields.py
    # checks that each field gets its namesake's value.

    def _sending_item(self, r: Ready) -> Sending:
        job = r.job
        return Sending(
            job.id,
            r.entry.owner,
            "1" if r.entry.replay else "",  # replay
            r.sender,
            job.to,
            (job.text or "") if self._store_text else "",
            r.meta,
            r.url,
            r.sticky_key,
            r.sticky_ttl,
            *_mms_fields(job),
        )

    def _dispatch(self, batch: Sequence[Ready], results: Sequence[Transition]) -> None:
        resent = 0
        for ready, result in zip(batch, results, strict=True):
            if not result.ok:
                self._handoff.skip(ready, result)
                continue
            if result.previous == "sending":
                resent += 1
            ready.step = result.step
            self._queue.append(ready)
        self._pump()
        if resent:
            log.warning(
                "resending messages that were in flight at a crash (counted as possible "
                "duplicates)",
                profile=self.profile,
                count=resent,
            )

    def collect(self, ready: Ready, outcome: Outcome | Crashed) -> None:
        """A bind's outcome for one message (called by the bind, on the loop): its window
        slot is free now; an outcome to record waits in the outbox, counted `answered`
        until its flush."""
        self.in_flight -= 1
        if self._metrics is not None and ready.handed_at:
            self._metrics.latency.observe(time.monotonic() - ready.handed_at)
        if isinstance(outcome, Crashed):
            self._handoff.fail(ready, outcome.error)
            self._pump()
            return
        connector = self._routing.connectors[ready.connector]
        connector.outcome(outcome)
        if connector.recent is not None and isinstance(outcome, Accepted):
            ids = self._indexed_ids(outcome, connector.name)
            connector.recent.remember(ids, self.profile)
        if not isinstance(outcome, Accepted) and route_level(outcome, connector.route_codes):
            other = self._routing.next(ready.route, ready.job.to, (*ready.tried, connector.name))
            if other is not None:
                # The carrier never took it: the route's next connector gets it now,
                # the same attempt (its `sending` step stands).
                ready.tried += (connector.name,)
                self._queue.appendleft(ready)
                self._pump()
                return
        if isinstance(outcome, Retry):
            # The retry path records it: a message the provider may have taken (a
            # time-out) is counted as a possible duplicate there.
            self._handoff.retry(ready, outcome)
            self._pump()
            return
        self.answered += 1
        first = not self._outbox
        if first:
            self._outbox_since = time.monotonic()
        self._outbox.append((ready, outcome))
        if self._queue:
            self._pump()  # (a bind may answer at once: `collect` again, from inside)
        # `run` looks again only when this outcome can make a flush due: the first of
        # an outbox (`run` sets its timer), one that fills it to `_flush_size`, none in
        # flight after it (no answer is coming), or the gate shut. In sync mode each
        # answer comes in a loop turn of its own, and waking `run` for each (a task
        # step, a timer set and cancelled) cost more than the rest of `collect`.
        outbox = len(self._outbox)
        if first or not self.in_flight or outbox >= self._flush_size() or self._shut():
            self._wake.set()

    async def _flush(self, taken: list[tuple[Ready, Accepted | Failed]]) -> None:
        items = [self._finished_item(r, o) for r, o in taken]
        finals = await self._record(
            "recording outcomes",
            lambda: self._ledger.finish(self.profile, self._stream, items),
            None,  # outcomes are recorded even while stopping: the grace bounds it
        )
        if isinstance(finals, Exception):
            await self._one_by_one_finish(taken, items)
            self._settled(len(taken))
            return
        self._settled(len(taken))
        failed = [o for _, o in taken if isinstance(o, Failed)]
        if self._metrics is not None and finals is not None:
            self._metrics.count("sent", len(taken) - len(failed))
            self._metrics.count("failed", len(failed))
            for status in finals:  # early delivery reports applied
                if status:
                    self._metrics.count(status)
        if finals and self._reports is not None:
            # Counted like the reports report.lua applies (quality, number health).
            self._reports.count_later(landed(items, finals))
        if failed:
            log.warning(
                "messages refused by the provider",
                profile=self.profile,
                count=len(failed),
                first=failed[0].reason,
                code=failed[0].code,
            )
        self._handoff.release([r.entry for r, _ in taken])

    def _finished_item(self, r: Ready, outcome: Accepted | Failed) -> Finished:
        ids: list[str] = []
        forms: list[str] = []
        if isinstance(outcome, Failed):
            status, note, segments = "failed", outcome.reason, 0
            code, raw, error = outcome.code, outcome.raw, outcome.reason
        else:
            status, note, segments = "sent", "", outcome.segments
            code = raw = error = ""
            ids = self._indexed_ids(outcome, r.connector)
            if self._reports is not None:
                space = self._namespace(r.connector)
                for part in ids:
                    for form in self._reports.forms(part[len(space) :]):
                        forms += (part, space + form)
        job = r.job
        return Finished(
            job.id,
            r.entry.entry_id,
            r.step + 1,  # step
            status,
            note,
            r.url,
            job.to,
            r.sender,
            r.meta,
            segments,
            code,
            raw,
            error,
            ids,
            forms,
            r.connector,
            self._price(r.connector, job.to) * segments,
        )

    def _indexed_ids(self, outcome: Accepted, connector_name: str) -> list[str]:
        """The provider ids of an accepted message as reports find them: normalised,
        and after a shared connector's namespace (router/engine/shared.py)."""
        ids = [i for i in outcome.part_ids or (outcome.provider_message_id,) if i]
        if self._reports is not None:
            ids = [n for n in map(self._reports.normalise, ids) if n]
        space = self._namespace(connector_name)
        return [space + i for i in ids] if space else ids

    def _price(self, connector_name: str, to: str) -> float:
        """One part's price to `to` over the connector (0.0: unknown)."""
        connector = self._routing.connectors.get(connector_name)
        price = connector.price(to) if connector is not None else None
        return price or 0.0

    def _namespace(self, connector_name: str) -> str:
        connector = self._routing.connectors.get(connector_name)
        return connector.namespace if connector is not None else ""

    async def _record(
        self,
        doing: str,
        call: Callable[[], Awaitable[T]],
        stopping: asyncio.Event | None,
    ) -> T | Exception | None:
        """Run a ledger call, waiting out Redis outages (logged once, by `RedisOutages`).

        Returns the result, the exception for a non-Redis failure (the caller retries
        item by item to find the culprit), or None when `stopping` is set meanwhile."""
        pause = Pause(self._outages)
        while True:
            try:
                result = await call()
            except REDIS_DOWN as exc:
                if stopping is not None and stopping.is_set():
                    return None
                await pause.after_error(f"{doing} for {self.profile}", exc, stopping)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                return exc
            pause.reset()
            return result

    async def _one_by_one_sending(self, batch: Sequence[Ready], stopping: asyncio.Event) -> None:
        for ready in batch:
            item = [self._sending_item(ready)]
            result = await self._record(
                "recording sending", partial(self._ledger.sending, self.profile, item), stopping
            )
            if result is None:
                self._handoff.release([ready.entry])
            elif isinstance(result, Exception):
                self._handoff.fail(ready, result)
            else:
                self._dispatch([ready], result)

    async def _one_by_one_finish(
        self, taken: list[tuple[Ready, Accepted | Failed]], items: list[Finished]
    ) -> None:
        for (ready, _), item in zip(taken, items, strict=True):
            result = await self._record(
                "recording outcomes",
                partial(self._ledger.finish, self.profile, self._stream, [item]),
                None,
            )
            if isinstance(result, Exception):
                self._handoff.fail(ready, result)
            else:
                if self._metrics is not None and result is not None:
                    self._metrics.count(item.status)
                    for status in result:
                        if status:
                            self._metrics.count(status)
                if result and self._reports is not None:
                    self._reports.count_later(landed([item], result))
                self._handoff.release([ready.entry])


def landed(items: Sequence[Finished], finals: Sequence[str]) -> list[FinalOutcome]:
    """The messages an early delivery report made final in `finish`, to count
    (quality and number health)."""
    return [
        FinalOutcome(final, it.to, it.sender, it.connector)
        for it, final in zip(items, finals, strict=True)
        if final
    ]


class _Collect:
    """The `done` callback of one message: cheaper than a closure per message to read
    in a profile, and names what it is."""

    __slots__ = ("pipeline", "ready")

    def __init__(self, pipeline: Pipeline, ready: Ready) -> None:
        self.pipeline = pipeline
        self.ready = ready

    def __call__(self, outcome: Outcome | Crashed) -> None:
        self.pipeline.collect(self.ready, outcome)


_SMS = ("", "", "")


def _mms_fields(job: Job) -> tuple[str, str, str]:
    """A `Sending` record's media, mms and note: an MMS's URLs (JSON), whether they go
    as media or as links in the text (``mms_fallback``), and why as links."""
    if not job.media:
        return _SMS
    media = json.dumps(list(job.media), separators=(",", ":"))
    if job.fallback:
        return media, "link", f"MMS sent as SMS with links: {job.fallback}"
    return media, "mms", ""
