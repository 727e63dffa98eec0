"""Delivery reports: match a receipt to its message and roll parts up to a final status.

The provider id -> job id index lives in Redis (written with the `sent` status),
so a report for a message sent before a restart, or by another instance, still
matches. A report that arrives before its message is recorded `sent` (the SMSC
sent the receipt before the submit_sm_resp, or the worker has not flushed the
outcome yet: with a fast SMSC that is most reports) is kept in the profile's
early-report hash ``sms:{P}:early`` with its own deadline in ``sms:{P}:early:due``
(`EARLY_TTL`: after that its message was sent again under another id, or never will
be), and applied by the script that records `sent`; both steps are Lua scripts, so
one of them always sees the other.

Ids: with ``message_id_format = "auto"`` a receipt's id is looked up in each form the
SMSC may have written the submit_sm_resp id in (`message_id_candidates`), in the
same script call, so the lookup stays one round trip.

Sent messages that expect a report wait in ``sms:{P}:awaiting`` (joined in the same
step as `sent`, left in the same step as the final report); `sweep` gives the
overdue ones a ``no delivery report`` note and event.

A session hands over the receipts of one read together (`handle_many`): their reports
go to Redis in one script call with whatever else is waiting (`BATCH` per call), and
each deliver_sm is answered only once its report is recorded, kept early or found
useless; a batch Redis did not take is answered for resend, every receipt of it.

Each report that makes its message final is counted, per connector and destination
country (the ``quality`` strategy) and per sender number (number health), by one
more pipelined round trip (router/store/health.py), made beside the report path: at
most one per `COUNT_EVERY`, the outcomes of the batches recorded meanwhile together,
and a read's receipts are answered without waiting for it (`apply` and `handle`,
one report each, return once it is counted). Counting is best-effort: the report is
recorded first, and a count Redis did not take is logged and lost, never retried
(that would count twice); a daemon stopped meanwhile loses the count in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Final, Literal

import structlog
from redis.asyncio import Redis

from binds.smpp.codec import decode_text
from binds.smpp.pdu import ESME_ROK, TAG_MESSAGE_STATE, TAG_RECEIPTED_MESSAGE_ID, ShortMessage
from binds.smpp.receipt import (
    IdFormat,
    message_id_candidates,
    normalise_message_id,
    receipt_fields,
    receipt_status,
)
from router.metrics import ProfileMetrics
from router.store.batching import Batcher
from router.store.health import Outcome, OutcomeCounter
from router.store.ledger import Ledger, Report, ReportResult
from router.store.outages import REDIS_ERRORS

log = structlog.get_logger("router.reports")

# How long an early report waits for its message to be recorded sent. That normally
# takes milliseconds; a message not recorded within response_timeout is sent again
# (under a new id), so after this the report can only be an orphan.
EARLY_TTL: Final = 600
MISSING_NOTE: Final = "no delivery report"
# Seconds between two looks at the awaiting set (the maintenance loop runs faster).
SWEEP_EVERY: Final = 1.0
BATCH: Final = 500  # reports per script call
# Seconds between two counts of outcomes on the report path: the readers (quality
# routes, number health) refresh every few seconds, so counts may gather a while.
COUNT_EVERY: Final = 0.25


# message_state TLV values (SMPP 3.4 section 5.2.28) that end a message.
_STATES = {
    2: "delivered",
    3: "undelivered",
    4: "undelivered",
    5: "undelivered",
    7: "undelivered",
    8: "undelivered",
}
_STATE_NAMES = {2: "DELIVRD", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIV", 7: "UNKNOWN", 8: "REJECTD"}
# A receipt's stat, read (`receipt_status`), to the outcome it records; pending: none.
_OUTCOMES: dict[str, str] = {"delivered": "delivered", "undelivered": "undelivered"}


class Reports:
    """Delivery reports of one profile."""

    def __init__(
        self,
        redis: Redis,
        ledger: Ledger,
        profile: str,
        *,
        id_format: IdFormat,
        report_timeout: float = 0.0,
        early_ttl: float = EARLY_TTL,
        metrics: ProfileMetrics | None = None,
        outcomes: OutcomeCounter | None = None,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        # Where final outcomes are counted (quality and number health).
        self._outcomes = outcomes if outcomes is not None else OutcomeCounter(redis)
        self._ledger = ledger
        self.profile = profile
        self.id_format: IdFormat = id_format
        self._early_ttl = max(1, int(early_ttl))
        self._next_sweep = 0.0
        self._batcher: Batcher[Report, ReportResult] = Batcher(self._store, BATCH)
        # Outcomes of reports recorded, not counted yet, and the task counting them.
        self._uncounted: list[Outcome] = []
        self._counting: asyncio.Task[None] | None = None
        self._count_now = asyncio.Event()  # `counted` is waiting: no pause before a count
        # Sent messages join the awaiting set in the ledger's `sent` step.
        ledger.expect_reports(profile, report_timeout)

    def normalise(self, provider_id: str, side: Literal["resp", "receipt"] = "resp") -> str:
        """The form both submit_sm_resp ids and receipt ids are compared in."""
        return normalise_message_id(provider_id, self.id_format, side)

    async def handle(self, message: ShortMessage, namespace: str = "") -> int:
        """A deliver_sm that is a receipt; returns the deliver_sm_resp status (always OK:
        a receipt we cannot use is logged, never refused, or the SMSC would resend it).
        `namespace`: the prefix a shared connector's provider ids are indexed with."""
        report = self.report(message, namespace)
        if report is not None:
            await self._submit(report)
            await self.counted()
        return ESME_ROK

    async def handle_many(self, messages: Sequence[ShortMessage], namespace: str = "") -> list[int]:
        """`handle` for the receipts of one read: their reports go to Redis together (with
        whatever else is waiting, `BATCH` per script call), each answered OK once its
        batch is recorded. Raises what recording raised: then none is answered OK and
        the SMSC sends them again (applying a report twice changes nothing)."""
        batch = [r for r in (self.report(m, namespace) for m in messages) if r is not None]
        if batch:
            for applied in await self._batcher.submit_many(batch):
                if isinstance(applied, Exception):
                    raise applied
        return [ESME_ROK] * len(messages)

    def report(self, message: ShortMessage, namespace: str = "") -> Report | None:
        """The report a receipt carries, or None when there is nothing to record: no
        message id (logged), or an intermediate state (ENROUTE, ACCEPTD, ...).

        The ids and the state come from the TLVs when the SMSC sets them, stat and err
        from the text (read for those two only, `receipt_fields`)."""
        tlvs = message.tlvs
        raw_id = tlvs.get(TAG_RECEIPTED_MESSAGE_ID)
        provider_id = raw_id.rstrip(b"\0").decode("latin-1") if raw_id else ""
        text = _receipt_text(message)
        fields = receipt_fields(text)
        if not provider_id:
            provider_id = fields[0] if fields is not None else ""
            if not provider_id:
                log.warning(
                    "receipt without a message id ignored", profile=self.profile, text=text[:80]
                )
                return None
        raw_state = tlvs.get(TAG_MESSAGE_STATE)
        state = int.from_bytes(raw_state, "big") if raw_state else 0
        stat, err = (fields[1], fields[2]) if fields is not None else ("", "")
        if not stat:
            stat = _STATE_NAMES.get(state, "")
        outcome = _STATES.get(state)
        if outcome is None and fields is not None:
            outcome = _OUTCOMES.get(receipt_status(fields[1]))
        if outcome is None:
            log.info(
                "intermediate receipt", profile=self.profile, provider_id=provider_id, stat=stat
            )
            return None
        return Report(outcome, stat, err or "000", self.candidates(provider_id, namespace))

    def receipt_id(self, message: ShortMessage) -> str:
        """The provider id a receipt reports on ('' when it names none)."""
        found = message.tlv_text(TAG_RECEIPTED_MESSAGE_ID)
        if found:
            return found
        fields = receipt_fields(_receipt_text(message))
        return fields[0] if fields is not None else ""

    def forms(self, provider_id: str) -> list[str]:
        """Forms of a normalised submit_sm_resp id an early report may be kept under."""
        return message_id_candidates(provider_id, self.id_format)

    def candidates(self, receipt_id: str, namespace: str = "") -> list[str]:
        """Forms of a receipt's id to look up, best first (several only in ``auto``),
        each after `namespace` (see `handle`)."""
        forms = message_id_candidates(self.normalise(receipt_id, "receipt"), self.id_format)
        return [namespace + form for form in forms] if namespace else forms

    async def apply(self, candidates: Sequence[str], outcome: str, stat: str, err: str) -> None:
        """Apply one part's report now, or keep it until its message is recorded sent.

        `candidates` are the forms of its id to look up, best first (`candidates`).
        Reports that arrive while a call is in flight go together in the next one, so
        a burst of receipts costs one script call per batch, not one each."""
        if candidates:
            await self._submit(Report(outcome, stat, err, list(candidates)))
            await self.counted()

    async def _submit(self, report: Report) -> None:
        applied = await self._batcher.submit(report)
        if applied.result.verdict == "ok":
            log.debug(
                applied.result.previous, id=applied.job, profile=self.profile, stat=report.stat
            )

    async def _store(self, batch: list[Report]) -> list[ReportResult]:
        results = await self._ledger.reports(self.profile, batch, keep_for=self._early_ttl)
        # A final status written: `previous` holds it.
        final = [r for r in results if r.result.verdict == "ok"]
        if self._metrics is not None:
            for applied in final:
                self._metrics.count(applied.result.previous)
        if final:
            self.count_later(
                [Outcome(r.result.previous, r.to, r.sender, r.connector) for r in final]
            )
        return results

    def count_later(self, outcomes: Sequence[Outcome]) -> None:
        """`count` without waiting for it: with the other outcomes of the next
        `COUNT_EVERY` (`counted` waits for them)."""
        self._uncounted += outcomes
        if self._counting is None or self._counting.done():
            self._counting = asyncio.create_task(self._count_uncounted())

    async def _count_uncounted(self) -> None:
        """Count what the report batches made final, off the path of the deliver_sm_resp:
        the first at once, then at most one count per `COUNT_EVERY` (what the batches
        made final meanwhile goes together), unless `counted` is waiting."""
        loop = asyncio.get_running_loop()
        while self._uncounted:
            outcomes, self._uncounted = self._uncounted, []
            began = loop.time()
            await self.count(outcomes)
            pause = began + COUNT_EVERY - loop.time()
            if self._uncounted and pause > 0 and not self._count_now.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._count_now.wait(), pause)
        self._count_now.clear()

    async def counted(self) -> None:
        """Until the outcomes of the reports recorded so far are counted (or failed to
        be: counting is best-effort)."""
        while self._counting is not None and not self._counting.done():
            self._count_now.set()
            await asyncio.shield(self._counting)

    async def count(self, outcomes: Sequence[Outcome]) -> None:
        """Count messages made final by their reports (quality and number health), in
        one round trip; best-effort (see the module's docstring)."""
        try:
            await self._outcomes.count(self.profile, outcomes)
        except REDIS_ERRORS as exc:
            log.warning(
                "delivery outcomes not counted", profile=self.profile, count=len(outcomes),
                error=repr(exc),
            )  # fmt: skip

    async def sweep(self) -> int:
        """Note sent messages whose report is overdue; at most once per `SWEEP_EVERY`.
        Returns how many were noted."""
        now = time.monotonic()
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + SWEEP_EVERY
        dropped = await self._ledger.drop_early_reports(self.profile)
        if dropped:
            log.info("early reports dropped unused", profile=self.profile, count=dropped)
        noted = await self._ledger.note_missing_reports(self.profile, note=MISSING_NOTE)
        if noted:
            log.warning(
                "sent messages without a delivery report", profile=self.profile, count=noted
            )
        return noted


def _receipt_text(message: ShortMessage) -> str:
    # Receipts come in the SMSC's coding of choice; UCS2 ones exist.
    text, binary = decode_text(message.text_bytes, message.data_coding)
    return message.text_bytes.decode("latin-1") if binary else text
