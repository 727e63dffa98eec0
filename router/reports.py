"""Delivery reports: match a receipt to its message and roll parts up to a final status.

The provider id -> job id index lives in Redis (written with the `sent` status),
so a report for a message sent before a restart, or by another instance, still
matches. A report that arrives before its message is recorded `sent` (the SMSC
answered the submit_sm with the receipt first) is kept in ``sms:{P}:early`` and
applied when the worker records the message; each side writes first and reads
the other's key second, so one of them always sees the other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Literal

import structlog
from redis.asyncio import Redis

from binds.smpp.codec import decode_text
from binds.smpp.pdu import ESME_ROK, TAG_MESSAGE_STATE, TAG_RECEIPTED_MESSAGE_ID, ShortMessage
from binds.smpp.receipt import IdFormat, normalise_message_id, parse_receipt

from . import keys
from .ledger import Ledger

log = structlog.get_logger("router.reports")


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


class Reports:
    """Delivery reports of one profile."""

    def __init__(
        self, redis: Redis, ledger: Ledger, profile: str, *, id_format: IdFormat, retention: float
    ) -> None:
        self._redis = redis
        self._ledger = ledger
        self.profile = profile
        self.id_format: IdFormat = id_format
        self._retention = int(retention)

    def normalise(self, provider_id: str, side: Literal["resp", "receipt"] = "resp") -> str:
        """The form both submit_sm_resp ids and receipt ids are compared in."""
        return normalise_message_id(provider_id, self.id_format, side)

    async def handle(self, message: ShortMessage) -> int:
        """A deliver_sm that is a receipt; returns the deliver_sm_resp status (always OK:
        a receipt we cannot use is logged, never refused, or the SMSC would resend it)."""
        # Receipts come in the SMSC's coding of choice; UCS2 ones exist.
        text, binary = decode_text(message.text_bytes, message.data_coding)
        if binary:
            text = message.text_bytes.decode("latin-1")
        receipt = parse_receipt(text)
        provider_id = message.tlv_text(TAG_RECEIPTED_MESSAGE_ID) or (
            receipt.message_id if receipt else ""
        )
        if not provider_id:
            log.warning(
                "receipt without a message id ignored", profile=self.profile, text=text[:80]
            )
            return ESME_ROK
        state = message.tlv_int(TAG_MESSAGE_STATE)
        stat = receipt.stat if receipt and receipt.stat else _STATE_NAMES.get(state or 0, "")
        err = receipt.err if receipt else ""
        outcome = _STATES.get(state or 0) if state in _STATES else None
        if outcome is None and receipt is not None and receipt.status != "pending":
            outcome = receipt.status
        if outcome is None:
            log.info(
                "intermediate receipt", profile=self.profile, provider_id=provider_id, stat=stat
            )
            return ESME_ROK
        await self.apply(self.normalise(provider_id, "receipt"), outcome, stat, err or "000")
        return ESME_ROK

    async def apply(self, provider_id: str, outcome: str, stat: str, err: str) -> None:
        """Apply one part's report now, or keep it until its message is recorded sent."""
        if await self._try(provider_id, outcome, stat, err):
            return
        early = keys.early_reports(self.profile)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(early, provider_id, json.dumps([outcome, stat, err]))
            pipe.expire(early, self._retention)
            await pipe.execute()
        # Written first, read second: the worker does the opposite (see module docstring).
        if await self._try(provider_id, outcome, stat, err):
            await self._redis.hdel(early, provider_id)
        else:
            log.info(
                "report kept until its message is sent",
                profile=self.profile,
                provider_id=provider_id,
                stat=stat,
            )

    async def replay_early(self, provider_ids: Iterable[str]) -> None:
        """Apply reports that came in before these ids were recorded (called after `sent`)."""
        ids = list(provider_ids)
        if not ids:
            return
        found = await self._redis.hmget(keys.early_reports(self.profile), ids)
        for provider_id, raw in zip(ids, found, strict=True):
            if raw is None:
                continue
            outcome, stat, err = json.loads(raw)
            if await self._try(provider_id, outcome, stat, err):
                await self._redis.hdel(keys.early_reports(self.profile), provider_id)

    async def _try(self, provider_id: str, outcome: str, stat: str, err: str) -> bool:
        """True once the report is applied (or can never apply: message already final)."""
        result, job = await self._ledger.report(
            keys.provider_id(self.profile, provider_id),
            provider_id,
            outcome,
            profile=self.profile,
            stat=stat,
            err=err,
        )
        if result.verdict == "ok":
            log.info(result.previous, id=job, profile=self.profile, stat=stat, err=err)
        return result.verdict in ("ok", "partial", "done")
