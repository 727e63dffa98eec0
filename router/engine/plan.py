"""Planning: what happens to each entry the worker reads.

`Planner.plan` decodes an entry's job, checks and composes it, and says what to do
with it: a `Plan`. Jobs to send now have their recipients screened (opt-out, block
and allow lists: `audience`) and a sender number picked under the profile's rules
and daily caps (`senders`, `rules`) by `Planner.pick` (a message with media: after the
MMS stage has checked its media and said which numbers may send it as one, or turned
it into an SMS with links: `mms`), for the whole batch in one
round trip (which also stores the batch's tracked links when the profile shortens its
URLs: `shorten`); a pick the rules refuse turns into `Plan.REFUSE` (or `Plan.DEFER` past a
full daily cap, when the profile says so). The worker hands `SEND` entries to the
pipeline as `Ready`s and every other entry to the per-entry path (`entries`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from enum import Enum

from redis.asyncio import Redis

from router.config import Settings
from router.engine.pipeline import Ready
from router.engine.shorten import Shortener
from router.policy.audience import KEYWORD_REPLY_PREFIX, Audience
from router.policy.checks import JobCheck
from router.policy.jobs import Job, JobError, decode_job
from router.policy.mms import MmsStage
from router.policy.routes import RouteTable
from router.policy.rules import Refusal, SenderRules
from router.policy.senders import SenderPool, Want
from router.policy.spend import SpendLimit
from router.store import keys
from router.store.queue import Entry


class Plan(Enum):
    """What to do with an entry: send it now (the pipeline), or one of the steps of
    the per-entry path (`entries.EntryPath.follow`)."""

    SEND = "send"  # to the pipeline, once a sender is picked
    DEAD = "dead"  # a bad job, or one delivered too often: dead-lettered
    FORWARD = "forward"  # names another profile: moved to that profile's stream
    EXPIRED = "expired"  # its validity passed before it was sent
    SCHEDULE = "schedule"  # a send_at in the future: to the schedule
    REFUSE = "refuse"  # the rules refused its pick: recorded `rejected`
    DEFER = "defer"  # a full daily cap, and the profile defers: to the next UTC day


# An entry, its job (or why it does not decode), its plan and the reason given with
# it (the record's note).
Planned = tuple[Entry, Job | JobError, Plan, str]

# Looked up per message: a module name is quicker to read than an Enum member.
SEND = Plan.SEND


class Planner:
    """Plans the entries of one profile (see the module docstring)."""

    def __init__(
        self, *, redis: Redis, name: str, settings: Settings, table: RouteTable | None = None
    ) -> None:
        self.name = name
        self.profile = settings.profiles[name]
        self.queue = settings.queue
        # The same checks every door runs before enqueuing (router/client.py).
        self.check = JobCheck(name, self.profile, settings.templates)
        self.rules = SenderRules(name, self.profile.numbers, settings)
        self.senders = SenderPool(redis, name, self.profile, self.rules)
        self.audience = Audience(redis, name, self.profile)
        self.spend = SpendLimit(name, self.profile, settings.all_connectors())
        # Tracked links (`shorten = true`): None when the profile does not shorten.
        self.shortener = Shortener.of(redis, name, settings)
        # Messages with media: MMS, links or refused (`mms`); `table`: the routes the
        # worker sends by (made from `settings` when not given).
        self.mms = MmsStage(name, settings, self.rules, table or RouteTable(settings))
        self._redis = redis

    async def close(self) -> None:
        """Close what the planner holds open (the media checks' HTTP session)."""
        await self.mms.close()

    def plan(self, entry: Entry) -> Planned:
        """What to do with one entry: (entry, job, plan, reason). Composes the text of
        a job to send (so the rules and the record see what is sent)."""
        job = job_of(entry, self.name)
        if entry.deliveries > self.queue.max_deliveries:
            reason = (
                f"delivered {entry.deliveries} times without an outcome "
                f"(queue.max_deliveries = {self.queue.max_deliveries})"
            )
            return entry, job, Plan.DEAD, reason
        if isinstance(job, JobError):
            return entry, job, Plan.DEAD, str(job)
        if job.profile and job.profile != self.name:
            return entry, job, Plan.FORWARD, ""
        try:
            # The text replaces the template on the job: it is what is recorded, sent
            # and retried (and so composed once).
            job.text = self.check.text(job)
            job.template = None
        except JobError as exc:
            return entry, job, Plan.DEAD, str(exc)
        now = time.time()
        if job.expires_at is not None and now >= job.expires_at:
            return entry, job, Plan.EXPIRED, "validity passed before sending"
        if job.send_at is not None and job.send_at > now + 0.5:
            return entry, job, Plan.SCHEDULE, when(job.send_at)
        return entry, job, SEND, ""

    async def pick(self, jobs: Sequence[Job]) -> tuple[list[str | Refusal], set[int]]:
        """Screen the recipients and choose a sender for each job (or say why not); and
        which picks are new sticky mappings (written with the `sending` record). With
        ``shorten`` on, the jobs' texts get their short links first (`Shortener`), in
        the same round trip."""
        default_use_case = self.profile.default_use_case
        wants = [Want(job.to, job.use_case or default_use_case, job.sender) for job in jobs]
        # Media checked, MMS senders chosen or the fallback's links in the text, before
        # the links are shortened and the texts' segments counted.
        await self.mms.screen(jobs, wants)
        recipients = [job.to for job in jobs]
        # The compose stage's links (`shorten`) ride in the same round trip: their
        # writes first, so the texts are short before anything counts their segments.
        links = self.shortener.prepare(jobs) if self.shortener is not None else None
        writes = Shortener.commands(links)
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in writes:
                pipe.execute_command(*command)
            count = self.senders.commands(pipe, wants)
            self.audience.commands(pipe, recipients)
            replies = await pipe.execute()
        if links is not None:
            assert self.shortener is not None
            await self.shortener.settle(links, replies[: len(writes)])
            replies = replies[len(writes) :]
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

    def ready(self, entry: Entry, job: Job, sender: str, sticky: bool) -> Ready:
        """A job to send from `sender`, as the pipeline takes it; `sticky`: the pick is
        a new sticky mapping, written with the `sending` record."""
        url = job.status_callback_url or self.profile.status_callback_url
        meta = json.dumps(job.meta, default=str) if job.meta else ""
        item = Ready(entry, job, sender, str(url) if url else "", meta)
        if sticky:
            item.sticky_key = keys.sticky(self.name, job.to)
            item.sticky_ttl = self.senders.sticky_ttl
        return item

    def refused(self, refusal: Refusal) -> Plan:
        """The plan for a job whose pick the rules refused: rejected, or deferred to the
        next UTC day past a full daily cap when the profile says so."""
        later = refusal.code == "daily_cap_reached" and self.profile.over_cap == "defer"
        return Plan.DEFER if later else Plan.REFUSE


def job_of(entry: Entry, profile: str) -> Job | JobError:
    """The entry's job, or why it does not decode."""
    try:
        return decode_job(entry.raw_job, default_id=f"{profile}.{entry.owner}")
    except JobError as exc:
        return exc


def when(at: float) -> str:
    """A send_at as the record's note says it."""
    return "send at " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
