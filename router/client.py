"""`Client`: enqueue jobs from Python.

A job is one ``XADD`` of a msgpack map to the profile's work stream; this
class adds validation, pipelining for bulk sends, a `queued` record written in the
same step as the ``XADD`` (so a record's history starts with `queued`), and
idempotency: sending a job whose `id` already has a record creates no second message.

Validation is the wire decoder and, given the settings, the profile's own checks
(`checks.JobCheck`: template, variables, length, sender) that the worker runs
again when it plans the job: a job the worker would dead-letter is refused here,
with the same reason, before anything is enqueued.

A door that authenticated an account passes its `Caller`: each job is then admitted
by the account (`router.policy.accounts.admit`: its default and allowed profiles, its
senders; `Refused` names the job) and the batch is taken from the account's rate and
daily quota (`router.store.limits`; `OverLimit`, nothing enqueued) before it is
enqueued, with the account recorded on each message (record field ``account``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, cast

import structlog
from redis.asyncio import Redis

from router.config import Settings
from router.errors import RouterError
from router.policy.accounts import AccountError, Caller, admit
from router.policy.checks import JobCheck, check_sender
from router.policy.jobs import Job, JobError, decode_job, encode_job, new_job_id
from router.store.batching import Batcher
from router.store.ledger import Ledger
from router.store.limits import QUOTA, AccountLimits, Limited
from router.store.outages import REDIS_ERRORS

__all__ = ["Client", "OverLimit", "Refused"]

log = structlog.get_logger("router.client")

Prepared = tuple[str, str, dict[str, Any]]  # (profile, job id, wire map)


class Refused(AccountError):
    """Job `index` of a batch is one its account does not allow (`code` and message as
    `AccountError`'s: the message names the field)."""

    def __init__(self, index: int, cause: AccountError) -> None:
        super().__init__(cause.code, str(cause))
        self.index = index


class OverLimit(RouterError):
    """The account is over its rate or its daily quota (`limited` says which, why and
    when to try again); nothing was enqueued."""

    def __init__(self, limited: Limited) -> None:
        super().__init__(limited.reason)
        self.limited = limited


class Client:
    """Enqueue SMS jobs on a router's Redis."""

    def __init__(
        self,
        redis: Redis,
        *,
        default_profile: str | None = None,
        profiles: Collection[str] | None = None,
        retention: float = 7 * 86400,
        store_text: Collection[str] = (),
        numbers: Mapping[str, Collection[str]] | None = None,
        events_maxlen: int = 1_000_000,
        replicas_ack: int = 0,
        replicas_ack_timeout_ms: int = 100,
        settings: Settings | None = None,
    ) -> None:
        """`replicas_ack`: answer an enqueue only once that many replicas hold it
        (``[router] replicas_ack``; `from_settings` passes it). `settings`: the
        profiles, their numbers and checks, overriding the arguments that give them."""
        self._redis = redis
        self._settings = settings
        self._limits = AccountLimits(redis)
        # The UTC day each account's quota refusal was last logged (once a day each).
        self._quota_logged: dict[str, str] = {}
        self.default_profile = default_profile
        self.profiles = set(profiles) if profiles is not None else None
        # Profiles whose records keep the text from `queued` on. Any other profile's
        # text is recorded by the worker when sending, if its `store_text` allows.
        self.store_text = set(store_text)
        self.duplicates_dropped = 0
        # Each profile's sender numbers, when known: a `from` outside them fails here,
        # at once, instead of becoming a dead letter later.
        self._numbers = {p: frozenset(n) for p, n in (numbers or {}).items()}
        self._ledger = Ledger(
            redis,
            retention=retention,
            events_maxlen=events_maxlen,
            replicas_ack=replicas_ack,
            replicas_ack_timeout_ms=replicas_ack_timeout_ms,
        )
        # Each profile's checks (`JobCheck`), when the settings are known.
        self._checks: dict[str, JobCheck] = {}
        if settings is not None:
            self.configure(settings)
        self._coalesced: Batcher[Prepared, tuple[str, bool]] = Batcher(self._enqueue)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> Client:
        """A client that knows the configured profiles and the global one."""
        return cls(
            redis,
            retention=settings.queue.retention,
            events_maxlen=settings.queue.events_maxlen,
            replicas_ack=settings.router.replicas_ack,
            replicas_ack_timeout_ms=settings.router.replicas_ack_timeout_ms,
            settings=settings,
        )

    def configure(self, settings: Settings) -> None:
        """Take the profiles, their numbers, templates and checks from `settings` (at
        start, and again when the daemon reloads its configuration, so the doors judge
        jobs by the configuration the workers run)."""
        self._settings = settings
        # The recipient index ([queue] recipient_index) the doors' records go into.
        self._ledger.recipient_index = settings.queue.recipient_index
        self.default_profile = settings.global_profile
        self.profiles = set(settings.profiles)
        self.store_text = {name for name, p in settings.profiles.items() if p.store_text}
        self._numbers = {name: frozenset(p.numbers) for name, p in settings.profiles.items()}
        self._checks = {
            name: JobCheck(name, profile, settings.templates)
            for name, profile in settings.profiles.items()
        }

    @property
    def redis(self) -> Redis:
        """The Redis this client enqueues on."""
        return self._redis

    @property
    def ledger(self) -> Ledger:
        """The ledger its enqueues record through (with `replicas_ack` when set)."""
        return self._ledger

    async def send(
        self,
        to: str,
        text: str | None = None,
        *,
        profile: str | None = None,
        sender: str | None = None,
        id: str | None = None,
        **fields: Any,
    ) -> str:
        """Enqueue one message; returns its job id. Extra wire fields go in `fields`
        (``media=[url, ...]`` makes it an MMS, `text` then optional; no text and no
        media: the profile's default template)."""
        job: dict[str, Any] = {"to": to, **fields}
        if text is not None:
            job["text"] = text
        if sender is not None:
            job["from"] = sender
        if id is not None:
            job["id"] = id
        if profile is not None:
            job["profile"] = profile
        return (await self.send_many([job]))[0]

    def validate(
        self,
        jobs: Iterable[Mapping[str, Any]],
        *,
        offset: int = 0,
        caller: Caller | None = None,
    ) -> None:
        """Raise `JobError` (naming the job and field) if any job is malformed or would
        certainly be refused by its profile (template, variables, length, sender), and
        `Refused` if `caller`'s account does not allow one."""
        self._prepare(jobs, offset, caller)

    def problems(
        self, jobs: Iterable[Mapping[str, Any]], *, caller: Caller | None = None
    ) -> list[tuple[int, JobError]]:
        """Every malformed job, as (index, error naming the field); empty when all are
        good. With `caller`, each job is read as that account sends it (its default
        profile); what the account does not allow is not listed (`Refused` says it)."""
        found: list[tuple[int, JobError]] = []
        for index, raw in enumerate(jobs):
            try:
                self._prepare_one(raw, caller)
            except JobError as exc:
                found.append((index, exc))
            except AccountError:
                pass
        return found

    async def send_many(
        self, jobs: Iterable[Mapping[str, Any]], *, caller: Caller | None = None
    ) -> list[str]:
        """Enqueue many jobs in one round trip; returns their ids in order.

        Each job is a wire map (docs/wire-format.md); ``profile`` picks the stream and
        defaults to the global profile. Raises `JobError` before enqueuing anything
        if any job is malformed. A job whose id has a record already is left out and
        counted in `duplicates_dropped`. `caller`: the account submitting (see
        `send_each`).
        """
        return [job_id for job_id, _queued in await self.send_each(jobs, caller=caller)]

    async def send_each(
        self, jobs: Iterable[Mapping[str, Any]], *, caller: Caller | None = None
    ) -> list[tuple[str, bool]]:
        """`send_many`, telling for each job its id and whether it was enqueued (False:
        its id had a record already, so nothing new will be sent).

        With `caller` (the account a door authenticated): each job is admitted by the
        account (`Refused`: job `index` is not allowed), then the whole batch is taken
        from the account's rate and daily quota (`OverLimit`); either way nothing is
        enqueued. A duplicate counts against the limits like any job (the take comes
        before the enqueue that recognises it)."""
        prepared = self._prepare(jobs, 0, caller)
        if caller is None:
            return await self._enqueue(prepared)
        await self._take(caller, len(prepared))
        try:
            return await self._enqueue(prepared)
        except BaseException:
            await self._give_back(caller, len(prepared))
            raise

    async def send_coalesced(
        self, job: Mapping[str, Any], *, caller: Caller | None = None
    ) -> tuple[str, bool]:
        """`send_each` of one job, sharing its Redis call with the jobs other callers
        send meanwhile (`Batcher`): many concurrent single-job requests (the HTTP API)
        cost Redis one call per batch. A malformed job raises JobError for itself only;
        with `caller`, AccountError or `OverLimit`."""
        prepared = self._prepare_one(job, caller)
        if caller is None:
            return await self._coalesced.submit(prepared)
        await self._take(caller, 1)
        try:
            return await self._coalesced.submit(prepared)
        except BaseException:
            await self._give_back(caller, 1)
            raise

    async def send_coalesced_many(
        self, jobs: Sequence[Mapping[str, Any]]
    ) -> list[tuple[str, bool] | Exception]:
        """`send_coalesced` of each job (no account: the caller admitted them), as one
        caller: each job's (id, enqueued), or what refused it (JobError for itself
        only) or failed its batch's Redis call. For a door that read many jobs at once
        (the SMPP server: the submits of one read), with no task per job."""
        results: list[tuple[str, bool] | Exception | None] = [None] * len(jobs)
        prepared: list[Prepared] = []
        places: list[int] = []
        for index, job in enumerate(jobs):
            try:
                prepared.append(self._prepare_one(job))
            except Exception as exc:  # JobError; anything else fails this job only
                results[index] = exc
            else:
                places.append(index)
        if prepared:
            for index, outcome in zip(
                places, await self._coalesced.submit_many(prepared), strict=True
            ):
                results[index] = outcome
        return cast(list[tuple[str, bool] | Exception], results)  # every place filled

    async def _give_back(self, caller: Caller, count: int) -> None:
        """The enqueue after a take failed (nothing stored): give the take back, so the
        account is not charged; if Redis is away for that too, the charge stays."""
        with contextlib.suppress(*REDIS_ERRORS):
            await self._limits.give_back(caller, count)

    async def _take(self, caller: Caller, count: int) -> None:
        """Take `count` messages from the account's limits, or raise OverLimit."""
        limited = await self._limits.take(caller, count)
        if limited is None:
            return
        if limited.code == QUOTA:
            # Logged once a day per account: a client that keeps trying must not
            # flood the log (each refusal is answered to it with the reason anyway).
            day = time.strftime("%Y-%m-%d", time.gmtime())
            if self._quota_logged.get(caller.name) != day:
                self._quota_logged[caller.name] = day
                log.warning("account over its daily quota", account=caller.name,
                            reason=limited.reason)  # fmt: skip
        raise OverLimit(limited)

    async def _enqueue(self, prepared: list[Prepared]) -> list[tuple[str, bool]]:
        enqueued = await self._ledger.enqueue(
            [
                (job_id, profile, encode_job(wire), self._record_fields(profile, wire))
                for profile, job_id, wire in prepared
            ]
        )
        self.duplicates_dropped += enqueued.count(False)
        return [
            (job_id, queued)
            for (_profile, job_id, _wire), queued in zip(prepared, enqueued, strict=True)
        ]

    def _prepare(
        self, jobs: Iterable[Mapping[str, Any]], offset: int, caller: Caller | None = None
    ) -> list[Prepared]:
        prepared: list[Prepared] = []
        for index, raw in enumerate(jobs, offset):
            try:
                prepared.append(self._prepare_one(raw, caller))
            except JobError as exc:
                numbered = JobError("", f"job {index}: {exc}")
                numbered.field = exc.field
                raise numbered from None
            except AccountError as exc:
                raise Refused(index, exc) from None
        return prepared

    def _prepare_one(self, raw: Mapping[str, Any], caller: Caller | None = None) -> Prepared:
        wire = dict(raw)
        if wire.get("id") is None:
            wire["id"] = new_job_id()
        if caller is None:
            profile = self._profile_for(wire)
            wire.pop("profile", None)
            job = decode_job(_encode(wire), default_id=wire["id"])
        else:
            job = self._admitted(caller, wire)
            profile = self._profile_for({"profile": job.profile})
            job.profile = None  # the stream says which profile
        check = self._checks.get(profile)
        if check is not None:
            # Composed for the verdict only: the job goes on the stream as it came (the
            # worker composes it once, with the configuration it runs).
            check.text(job)
        else:
            pool = self._numbers.get(profile)
            if pool is not None:
                check_sender(job, profile, pool)
        return profile, job.id, job.to_wire()

    def _admitted(self, caller: Caller, wire: dict[str, Any]) -> Job:
        """`wire` decoded and admitted by `caller`'s account (its profile, its sender;
        AccountError otherwise), the account recorded on it."""
        if self._settings is None:
            raise RuntimeError("a Client without settings cannot admit an account's jobs")
        named = wire.pop("profile", None)
        if named is not None and not isinstance(named, str):
            raise JobError("profile", f"{named!r} is not a profile name")
        wire.pop("account", None)  # who sends is the caller, whatever the job says
        job = decode_job(_encode(wire), default_id=wire["id"])
        job.profile = named or None
        admit(caller, job, self._settings)
        return job

    def _profile_for(self, wire: Mapping[str, Any]) -> str:
        profile = wire.get("profile") or self.default_profile
        if not profile:
            raise JobError("profile", "required (no global profile configured)")
        if not isinstance(profile, str) or set(profile) - _NAME_CHARS:
            raise JobError("profile", f"{profile!r} is not a profile name")
        if self.profiles is not None and profile not in self.profiles:
            raise JobError("profile", f"unknown profile {profile!r}")
        return profile

    def _record_fields(self, profile: str, wire: Mapping[str, Any]) -> dict[str, str]:
        fields = {"profile": profile, "to": str(wire["to"])}
        if wire.get("text") is not None and profile in self.store_text:
            fields["text"] = str(wire["text"])
        if wire.get("from"):
            fields["from"] = str(wire["from"])
        if wire.get("meta"):
            fields["meta"] = _RECORD_JSON.encode(wire["meta"])
        if wire.get("status_callback_url"):
            fields["status_callback_url"] = str(wire["status_callback_url"])
        if wire.get("account"):
            fields["account"] = str(wire["account"])
        if wire.get("media"):
            # An MMS: its URLs from `queued` on (the record's and the event's ``media``).
            fields["media"] = json.dumps(list(wire["media"]), separators=(",", ":"))
        return fields


def _encode(wire: dict[str, Any]) -> bytes:
    """`encode_job`, or JobError naming the field msgpack cannot carry (an integer
    beyond 64 bits, an object)."""
    try:
        return encode_job(wire)
    except (OverflowError, TypeError, ValueError) as exc:
        for name, value in wire.items():
            try:
                encode_job({name: value})
            except (OverflowError, TypeError, ValueError):
                raise JobError(name, f"cannot be encoded ({exc})") from None
        raise JobError("", f"job cannot be encoded ({exc})") from None


# How a record keeps `meta`: json.dumps(meta, default=str), its encoder made once.
_RECORD_JSON = json.JSONEncoder(default=str)
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
