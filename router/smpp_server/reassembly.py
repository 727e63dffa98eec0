"""Long messages from clients put together again, their parts held in Redis, before
they become one job.

Each part (8-bit or 16-bit UDH reference, or SAR) is checked as far as a part can be
(the account's profile and sender, the destination and source, as `Intake` checks a
whole message: a refusal answers that part and stores nothing), then stored in one
Lua step (``lua/parts_add.lua``) in a hash of the account's hash tag,
``sms:{acct:NAME}:parts:<source>:<destination>:<reference>:<total>:<bits8|bits16|sar>``,
with `replicas_ack` honoured as for an enqueue. The first part to arrive names the
job id; every part's submit_sm_resp is ESME_ROK with that id once the part is durably
in Redis, and a part sent again is answered with the same id. So the parts of one
message may come over any of the account's sessions on any instance, and a part
acknowledged survives a crash of the instance that took it.

The part that completes the set gets the parts back (once: the script marks the set
complete) and its instance enqueues the message (`Intake.enqueue` with that job id;
the ledger takes a job id once, so a second enqueue of the same message is a no-op).
A message the checks refuse then (text too long, the quota reached, the account
gone) was acknowledged part by part already: it is recorded ``rejected`` with the
reason under its job id, so query_sm answers it and the client gets its receipt if
it asked. A refusal for now (the account's rate, Redis away) tries again a moment
later.

A sweeper on every instance running the server (`start`, at the latest with the
first part; stopped by `close`) takes the messages past due from each account's set
``sms:{acct:NAME}:parts:due`` (scored on Redis' clock: first part +
`reassembly_timeout`; once complete, a lease while it is being enqueued; a part sent
again after the lease passed takes the message over at once). ``lua/parts_take.lua``
moves a taken message's score on by a lease, so one instance decides it and another
takes it over only if that one dies.
An incomplete message is recorded ``rejected`` ("incomplete long message: 2 of 3
parts in 60 s"); a complete one (its instance died between the last part and the
enqueue) is enqueued. ``lua/parts_done.lua`` then drops the parts, keeping the job id
for a while so a part sent again still gets it. The sweeper waits out Redis outages
like every loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgpack
import structlog
from redis.asyncio import Redis

from binds.smpp import pdu
from router.policy.accounts import Caller
from router.policy.jobs import JobError, new_job_id
from router.smpp_server.intake import REGISTERED_DELIVERY, Intake, job_refusal
from router.smpp_server.statuses import ESME_RSUBMITFAIL, Refused
from router.smpp_server.submit import Part, text_of
from router.store import keys, scripts
from router.store.connections import as_text
from router.store.outages import REDIS_ERRORS, Pause, RedisOutages
from router.store.replicas import ReplicaWait

__all__ = ["Answer", "Reassembly", "pack_part", "unpack_part"]

log = structlog.get_logger("router.smpp_server")

# Answers one part's submit: (command_status, message_id).
Answer = Callable[[int, str], None]

LEASE: Final = 10.0  # seconds one instance has to enqueue or reject a message it took
RETRY: Final = 1.0  # seconds before a message refused for now (rate, Redis) is tried again
KEEP_MIN: Final = 60.0  # a decided message's id is kept at least this long for resends
INCOMPLETE: Final = "incomplete"  # error_code of a message whose parts did not all come
REFUSED: Final = "refused"  # error_code of a whole message the checks refused
# Refusals of the moment: the message is tried again, not rejected.
_FOR_NOW: Final = frozenset({pdu.ESME_RTHROTTLED, pdu.ESME_RMSGQFUL})
_PLACEHOLDER: Final = "-"  # a part's checks run on a job with this text (the text comes last)


def pack_part(part: Part) -> bytes:
    """A part as its parts hash keeps it (msgpack)."""
    packed: bytes = msgpack.packb(
        [
            part.octets,
            part.data_coding,
            part.registered_delivery,
            part.send_at,
            part.expires_at,
            part.sender,
            part.destination,
            part.source_addr,
        ],
        use_bin_type=True,
    )
    return packed


def unpack_part(packed: bytes) -> Part:
    """A part as `pack_part` kept it."""
    octets, coding, registered, send_at, expires_at, sender, destination, source = msgpack.unpackb(
        packed, raw=False
    )
    return Part(
        destination=destination,
        sender=sender,
        source_addr=source,
        octets=octets,
        data_coding=coding,
        registered_delivery=registered,
        send_at=send_at,
        expires_at=expires_at,
    )


def _asking(parts: Sequence[Part]) -> Part:
    """The first part, with the registered_delivery the message asks for: the first
    part's that asks for a receipt (clients ask on the first part, on every part or on
    the last one only); bits 0-1 ask for the receipt, the others (intermediate
    notifications, SME acknowledgements) alone do not."""
    asked = next((p.registered_delivery for p in parts if p.registered_delivery & 3), 0)
    if not asked:
        asked = parts[0].registered_delivery
    return dataclasses.replace(parts[0], registered_delivery=asked)


def _text(parts: Sequence[Part]) -> str:
    """The whole message's text: decoded once when every part has one coding, so a
    character cut between two parts comes out whole; Refused when it is not text."""
    if len({part.data_coding for part in parts}) == 1:
        return text_of(b"".join(part.octets for part in parts), parts[0].data_coding)
    return "".join(text_of(part.octets, part.data_coding) for part in parts)


class Reassembly:
    """Long messages being put together, in Redis, for every instance."""

    def __init__(
        self, intake: Intake, timeout: float, *, outages: RedisOutages | None = None
    ) -> None:
        """`outages`: the daemon's, which the sweeper reports Redis outages to."""
        self.intake = intake
        self.timeout = timeout
        self.lease = LEASE
        redis: Redis = intake.client.redis
        self._redis = redis
        self._add = redis.register_script(scripts.source("parts_add"))
        self._take = redis.register_script(scripts.source("parts_take"))
        self._done = redis.register_script(scripts.source("parts_done"))
        router = intake.settings.router
        self._replicas = ReplicaWait(redis, router.replicas_ack, router.replicas_ack_timeout_ms)
        self._outages = outages if outages is not None else RedisOutages(redis)
        self._storing = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self.stored = 0  # parts stored by this instance
        self.enqueued = 0  # long messages this instance enqueued
        self.rejected = 0  # long messages this instance recorded rejected

    @property
    def held(self) -> int:
        """Parts being stored by this instance now (not answered yet); the parts
        waiting for the rest of their message are in Redis, answered."""
        return self._storing

    # -- parts ---------------------------------------------------------------------

    def add(self, owner: object, caller: Caller, part: Part, answer: Answer) -> None:
        """Take `part` (its `concat` set) from session `owner`; `answer` is called once:
        ESME_ROK with the message's job id once the part is in Redis, or a refusal."""
        try:
            self._check(caller, part)
        except Refused as exc:
            log.info(
                "long message's part refused",
                account=caller.name,
                status=pdu.status_name(exc.status),
                reason=exc.reason,
            )
            answer(exc.status, "")
            return
        if self._sweeper is None and not self._stopping.is_set():
            self.start()  # at the latest with the first part, if the server did not
        self._storing += 1
        task = asyncio.get_running_loop().create_task(self._store(caller, part, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, owner: object) -> None:
        """Session `owner` is gone. Nothing to drop: its parts are answered as soon as
        they are in Redis, where they wait for the rest of their message."""

    def _check(self, caller: Caller, part: Part) -> None:
        """What a part says of its whole message, checked as the intake checks it (the
        account's profile and sender, the addresses; the text is judged once whole):
        Refused naming the field."""
        wire = self.intake.admitted(caller, part, _PLACEHOLDER, None)
        try:
            self.intake.client.validate([wire])
        except JobError as exc:
            raise job_refusal(exc) from None

    async def _store(self, caller: Caller, part: Part, answer: Answer) -> None:
        concat = part.concat
        assert concat is not None
        kind = "sar" if part.sar else f"bits{concat.ref_bits}"
        group = keys.long_message_parts(
            caller.name,
            part.source_addr,
            part.destination,
            concat.reference,
            concat.total,
            kind,
        )
        args = [
            concat.seq,
            pack_part(part),
            concat.total,
            new_job_id(),
            int(self.timeout * 1000),
            int(self.lease * 1000),
            self._retention(),
        ]
        try:
            try:
                reply = await self._run(
                    self._add, [group, keys.long_message_due(caller.name)], args, caller.name
                )
            finally:
                self._storing -= 1
        except REDIS_ERRORS as exc:
            log.warning("long message's part not stored: Redis unreachable", error=str(exc))
            answer(pdu.ESME_RMSGQFUL, "")
            return
        except Exception:
            log.exception("long message's part not stored", account=caller.name)
            answer(pdu.ESME_RSYSERR, "")
            return
        job_id, state = as_text(reply[0]), as_text(reply[1])
        self.stored += 1
        if state == "complete":
            # The last part is answered once the message is decided (normally enqueued),
            # so a query_sm right after its answer finds the record. It is stored either
            # way: whatever happens here, its answer is OK.
            try:
                await self._decide(caller.name, group, job_id, [bytes(p) for p in reply[2:]])
            except REDIS_ERRORS as exc:
                # The set is marked complete and due after the lease: a sweeper enqueues it.
                log.warning("long message left to the sweeper: Redis unreachable", error=str(exc))
        answer(pdu.ESME_ROK, job_id)

    async def _run(self, script: Any, script_keys: list[str], args: list[Any], account: str) -> Any:
        """The script's reply; with `replicas_ack`, once the replicas hold it too."""
        if not self._replicas.wanted:
            return await script(keys=script_keys, args=args)
        return await self._replicas.run(
            script, script_keys, args, profile=self._profile(account) or account, messages=1
        )

    # -- deciding a message -----------------------------------------------------------

    async def _decide(self, account: str, group: str, job_id: str, packed: list[bytes]) -> None:
        """Enqueue the complete message `packed` as `job_id`, or record it rejected;
        then drop its parts (a refusal for now leaves it due again soon)."""
        parts = [unpack_part(p) for p in packed]
        config = self.intake.settings.accounts.get(account)
        try:
            if config is None:
                raise Refused(ESME_RSUBMITFAIL, f"account {account!r} is no longer configured")
            text = _text(parts)
            whole = _asking(parts)
            await self.intake.enqueue(Caller(account, config), whole, text, job_id=job_id)
        except Refused as exc:
            if exc.status in _FOR_NOW:
                log.info("long message not enqueued yet", account=account, reason=exc.reason)
                await self._finish(group, account, "retry", RETRY)
                return
            await self._reject(account, job_id, _asking(parts), REFUSED, exc.reason)
            await self._finish(group, account, "expired", self._keep())
            return
        except REDIS_ERRORS:
            raise
        except Exception:
            # A bug: left due (the lease) rather than lost; logged each time it is tried.
            log.exception("long message not enqueued", account=account, id=job_id)
            return
        self.enqueued += 1
        await self._finish(group, account, "done", self._keep())

    async def _reject(self, account: str, job_id: str, part: Part, code: str, reason: str) -> None:
        """Record the message `job_id` rejected (its parts were acknowledged, so it gets a
        final status, its event and the client its receipt), in the profile `admit` would
        have put it in (so query_sm, which looks in the configured profiles, finds it)."""
        profile = self._profile(account)
        if profile is None:
            log.error(
                "long message rejected with no profile to record it in",
                account=account,
                id=job_id,
                reason=reason,
            )
            return
        fields: dict[str, str] = {
            "error_code": code,
            "error": reason,
            "to": part.destination,
            "account": account,
        }
        event = {"to": part.destination, "error_code": code, "account": account}
        if part.sender:
            fields["from"] = part.sender
        if part.registered_delivery:
            meta = json.dumps({REGISTERED_DELIVERY: part.registered_delivery})
            fields["meta"] = event["meta"] = meta
        result = await self.intake.client.ledger.transition(
            job_id, "", "rejected", profile=profile, note=reason, fields=fields, event=event
        )
        if result.ok:
            self.rejected += 1
            log.info("long message rejected", account=account, id=job_id, reason=reason)

    async def _finish(self, group: str, account: str, state: str, keep: float) -> None:
        await self._run(
            self._done,
            [group, keys.long_message_due(account)],
            [state, int(keep * 1000)],
            account,
        )

    def _profile(self, account: str) -> str | None:
        """The profile an account's message is recorded in (as `admit` picks it)."""
        settings = self.intake.settings
        config = settings.accounts.get(account)
        if config is not None and config.profiles:
            return config.profiles[0]
        return settings.global_profile

    def _retention(self) -> int:
        return max(1, int(self.intake.settings.queue.retention))

    def _keep(self) -> float:
        return max(KEEP_MIN, 2 * self.timeout)

    # -- the sweeper ------------------------------------------------------------------

    def start(self) -> None:
        """Start the sweeper (the server's start; else the first part starts it)."""
        if self._sweeper is None or self._sweeper.done():
            self._stopping.clear()
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_loop(), name="smpp-long-messages"
            )

    async def close(self) -> None:
        """Stop: the sweeper ends after the message it is deciding; parts being stored
        are answered and completed messages enqueued. What waits in Redis stays."""
        self._stopping.set()
        if self._sweeper is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _sweep_loop(self) -> None:
        pause = Pause(self._outages)
        while not self._stopping.is_set():
            try:
                await self.sweep()
                pause.reset()
            except REDIS_ERRORS as exc:
                await pause.after_error("sweeping long messages", exc, self._stopping)
                continue
            except Exception:
                log.exception("long messages not swept")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), min(1.0, max(0.05, self.timeout / 4)))

    async def sweep(self) -> int:
        """Decide each account's long messages past due now; how many were decided."""
        accounts = list(self.intake.settings.accounts)
        if not accounts:
            return 0
        seconds, micros = await self._redis.time()
        now_ms = seconds * 1000 + micros // 1000
        async with self._redis.pipeline(transaction=False) as pipe:
            for account in accounts:
                pipe.zrangebyscore(keys.long_message_due(account), "-inf", now_ms, start=0, num=100)
            rows = await pipe.execute()
        decided = 0
        for account, members in zip(accounts, rows, strict=True):
            for member in members:
                if self._stopping.is_set():
                    return decided
                if await self._sweep_one(account, as_text(member)):
                    decided += 1
        return decided

    async def _sweep_one(self, account: str, group: str) -> bool:
        due = keys.long_message_due(account)
        taken = await self._take(keys=[due, group], args=[int(self.lease * 1000)])
        if not taken:
            return False  # not due on Redis' clock, or another instance took it
        fields = {as_text(k): v for k, v in zip(taken[::2], taken[1::2], strict=True)}
        job_id = as_text(fields["id"])
        total = int(fields["total"])
        held = {int(name[1:]): bytes(v) for name, v in fields.items() if name[:1] == "p"}
        if "complete" in fields and "expired" not in fields:
            log.info("long message completed earlier; enqueuing it", account=account, id=job_id)
            await self._decide(account, group, job_id, [held[seq] for seq in range(1, total + 1)])
            return True
        if held:
            reason = f"incomplete long message: {len(held)} of {total} parts in {self.timeout:g} s"
            first = _asking([unpack_part(held[seq]) for seq in sorted(held)])
            await self._reject(account, job_id, first, INCOMPLETE, reason)
        await self._finish(group, account, "expired", self._keep())
        return True
