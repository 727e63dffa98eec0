"""A message read from a client becomes a job, and the job is enqueued durably.

The steps every door takes, in the order that refuses early and counts only what is
sent: the account (`admit`: its default profile, its allowed senders), the doors'
checks (`Client`: the job decoder and the profile's `JobCheck`, the same the worker
runs), the account's rate and daily quota (`AccountLimits`, shared by every
instance), then the enqueue. `enqueue` returns the job id only once the job is in
Redis (with `replicas_ack` when set): a submit_sm_resp OK carries it, so nothing a
client was told is accepted can be lost. Concurrent submits of every session share
Redis calls (`Client.send_coalesced`).

Refusals, as SMPP statuses:

- ``to``: ESME_RINVDSTADR; ``from`` (not a sender, not one of the profile's numbers,
  not allowed to the account): ESME_RINVSRCADR;
- ``text`` empty or too long for the profile's max_segments: ESME_RINVMSGLEN; any
  other problem (a character the profile's forced alphabet lacks, no profile, a
  template): ESME_RSUBMITFAIL;
- over the account's `tps`: ESME_RTHROTTLED (clients send again later); its
  `daily_quota` reached: ESME_RSUBMITFAIL (the reason is logged);
- Redis unreachable (nothing stored): ESME_RMSGQFUL, which clients retry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, Final, cast

from binds.smpp import pdu
from router.client import Client
from router.config import Settings
from router.policy.accounts import SENDER_NOT_ALLOWED, AccountError, Caller, admit
from router.policy.jobs import Job, JobError, new_job_id
from router.smpp_server.statuses import (
    ESME_RINVDSTADR,
    ESME_RINVSRCADR,
    ESME_RSUBMITFAIL,
    Refused,
)
from router.smpp_server.submit import Part
from router.store.limits import THROTTLED, AccountLimits
from router.store.outages import REDIS_ERRORS

__all__ = ["Intake", "job_refusal"]

# The job meta key that keeps a submit's registered_delivery (for its receipt).
REGISTERED_DELIVERY: Final = "smpp_registered_delivery"

Message = tuple[Part, str, dict[str, Any] | None]  # a submit read: part, text, meta


def job_refusal(exc: JobError) -> Refused:
    """A door check's refusal as the SMPP status naming its field."""
    reason = str(exc)
    if exc.field == "to":
        return Refused(ESME_RINVDSTADR, reason)
    if exc.field == "from":
        return Refused(ESME_RINVSRCADR, reason)
    if exc.field == "text" and "cannot be sent" not in reason:
        return Refused(pdu.ESME_RINVMSGLEN, reason)
    return Refused(ESME_RSUBMITFAIL, reason)


class Intake:
    """Turns clients' messages into enqueued jobs (`enqueue`)."""

    def __init__(self, settings: Settings, client: Client, limits: AccountLimits) -> None:
        self.settings = settings
        self._client = client
        self._limits = limits

    @property
    def client(self) -> Client:
        """The doors' `Client` this intake enqueues with."""
        return self._client

    def configure(self, settings: Settings) -> None:
        """Judge jobs by `settings` from now on (a reload)."""
        self.settings = settings
        self._client.configure(settings)

    async def enqueue(
        self,
        caller: Caller,
        part: Part,
        text: str,
        meta: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> str:
        """Enqueue the message `part` starts (its `text` decoded, the whole of a long
        one) for `caller`, as `job_id` when given (a new id otherwise); its job id once
        it is durably in Redis, Refused otherwise."""
        wire = self.admitted(caller, part, text, meta, job_id)
        account = caller.account
        taken = False
        try:
            if account.tps > 0 or account.daily_quota is not None:
                # Checked before counting: a job refused here must not use up the quota.
                self._client.validate([wire])
                limited = await self._limits.take(caller)
                if limited is not None:
                    status = pdu.ESME_RTHROTTLED if limited.code == THROTTLED else ESME_RSUBMITFAIL
                    raise Refused(status, limited.reason)
                taken = True
            job_id, _queued = await self._client.send_coalesced(wire)
        except Exception as exc:
            refusal = _refusal(exc)
            if refusal is exc:
                raise  # a refusal of its own (the limits), or a bug
            # A door check's refusal, or nothing stored: the take is given back.
            await self._give_back(caller, taken)
            raise refusal from None
        return job_id

    async def enqueue_many(
        self, caller: Caller, messages: Sequence[Message]
    ) -> list[str | Exception]:
        """`enqueue` of each message (part, text, meta) of `caller`, together: each
        one's job id once durable, or its Refused (or the error that failed it).

        An account with a rate or a daily quota takes each message from them on its
        own, as `enqueue` does; any other's messages are checked here and enqueued in
        one shared Redis call (`Client.send_coalesced_many`), with no task per message.
        """
        account = caller.account
        if account.tps > 0 or account.daily_quota is not None:
            each = await asyncio.gather(
                *(self.enqueue(caller, part, text, meta) for part, text, meta in messages),
                return_exceptions=True,
            )
            return [_surfaced(outcome) for outcome in each]
        results: list[str | Exception | None] = [None] * len(messages)
        wires: list[dict[str, Any]] = []
        places: list[int] = []
        for index, (part, text, meta) in enumerate(messages):
            try:
                wires.append(self.admitted(caller, part, text, meta))
            except Refused as exc:
                results[index] = exc
            else:
                places.append(index)
        if wires:
            sent = await self._client.send_coalesced_many(wires)
            for index, outcome in zip(places, sent, strict=True):
                results[index] = outcome[0] if isinstance(outcome, tuple) else _refusal(outcome)
        return cast(list[str | Exception], results)  # every place filled

    def admitted(
        self,
        caller: Caller,
        part: Part,
        text: str,
        meta: dict[str, Any] | None,
        job_id: str | None = None,
    ) -> dict[str, Any]:
        """The wire map of the job `part` makes, admitted by `caller`'s account
        (Refused: a sender or profile it does not allow)."""
        job = Job(
            id=job_id or new_job_id(),
            to=part.destination,
            text=text,
            sender=part.sender,
            send_at=part.send_at,
            expires_at=part.expires_at,
            meta=dict(meta or {}),
        )
        if part.registered_delivery:
            job.meta[REGISTERED_DELIVERY] = part.registered_delivery
        try:
            admit(caller, job, self.settings)
        except AccountError as exc:
            status = ESME_RINVSRCADR if exc.code == SENDER_NOT_ALLOWED else ESME_RSUBMITFAIL
            raise Refused(status, str(exc)) from None
        return job.to_wire()

    async def _give_back(self, caller: Caller, taken: bool) -> None:
        """Nothing was stored after a take: the account is not charged for it (if Redis
        is away for that too, the charge stays)."""
        if taken:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._limits.give_back(caller)


def _refusal(exc: Exception) -> Exception:
    """What `enqueue` raises for a job its shared enqueue failed with `exc`: a door
    check's refusal, ESME_RMSGQFUL when nothing was stored, else `exc` itself (a bug)."""
    if isinstance(exc, JobError):
        return job_refusal(exc)
    if isinstance(exc, REDIS_ERRORS) or (
        isinstance(exc, RuntimeError) and str(exc).startswith("not stored")
    ):
        return _not_stored(exc)
    return exc


def _not_stored(exc: BaseException) -> Refused:
    """ESME_RMSGQFUL (clients retry): Redis was unreachable, or the shared enqueue was
    cancelled (shutting down); nothing stored either way."""
    if isinstance(exc, RuntimeError):
        return Refused(pdu.ESME_RMSGQFUL, str(exc))
    return Refused(pdu.ESME_RMSGQFUL, f"not stored, Redis unreachable: {type(exc).__name__}")


def _surfaced(outcome: str | BaseException) -> str | Exception:
    """One of `gather`'s outcomes as `enqueue_many` hands it back (a cancellation is
    raised: the session is going away)."""
    if isinstance(outcome, Exception | str):
        return outcome
    raise outcome
