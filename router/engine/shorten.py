"""The compose stage's tracked links: each URL of a batch's texts made a short link.

For a profile with ``shorten = true`` (and ``[links] base_url``), every http(s) URL
of an outbound text is replaced with ``{base_url}/<code>`` (`router.links`) before
anything counts its segments: the spend screen, the bind and the record all see the
short text, which is what the handset receives. The record keeps that text; the
original URL is in the link (field <code> of ``sms:{P}:links:<hour>``), which lives
``[queue] retention`` after the hour the message was composed in, as its record does.

The writes go out in the planner's round trip for the batch (`Planner.pick`: the
sender picks and the opt-out reads), so shortening costs no round trip of its own:
`prepare` makes the texts and the commands (three per batch: the links are fields of
their hour's hash, `router.links`), `settle` puts the texts on the jobs once Redis
answered. A code already taken (about 2^-58 a link) is put back and made again for
that text, in a round trip of its own (`Links.shorten_many`).

A job whose text holds no URL costs a substring test. A job already shortened (a
retry, whose text is the short one) keeps its links: a URL of ours is left as it is.
A short text longer than the original that no longer fits the profile
(``max_segments``, a forced alphabet) is sent as it was written, unshortened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from router.config import Settings
from router.engine.callbacks import kannel_target
from router.links import Links, LinkWrite, Prepared, ToShorten, write_commands
from router.policy.checks import text_problem
from router.policy.jobs import Job
from router.store.roundtrip import Command

__all__ = ["Batch", "Shortener"]


@dataclass(slots=True)
class Batch:
    """One batch's shortening between `Shortener.prepare` and `Shortener.settle`: the
    jobs with a URL (their positions in the batch), their items and what to write."""

    jobs: list[Job]
    items: list[ToShorten]
    prepared: Prepared

    @property
    def writes(self) -> list[LinkWrite]:
        return self.prepared.writes


class Shortener:
    """Shortens the URLs of one profile's texts (see the module docstring); None from
    `of` when the profile does not shorten."""

    def __init__(self, redis: Redis, name: str, settings: Settings) -> None:
        profile = settings.profiles[name]
        self.name = name
        self.links = Links(
            redis,
            base_url=settings.links.base_url or "",
            profiles=settings.profiles,
            events_maxlen=settings.queue.events_maxlen,
            code_length=settings.links.code_length,
        )
        self.profile = profile
        self.ttl = settings.queue.retention
        self._callback = str(profile.status_callback_url or "")

    @classmethod
    def of(cls, redis: Redis, name: str, settings: Settings) -> Shortener | None:
        """The profile's shortener, or None when it does not shorten."""
        if not settings.profiles[name].shorten or not settings.links.base_url:
            return None
        return cls(redis, name, settings)

    def prepare(self, jobs: Sequence[Job]) -> Batch | None:
        """The short texts of `jobs` and the links to write, or None when no text has a
        URL (no Redis: the caller sends `commands` in its own round trip)."""
        with_urls = [job for job in jobs if job.text and "://" in job.text]
        if not with_urls:
            return None
        items = [
            ToShorten(job.text or "", job.id, self.name, self.ttl, self._url(job))
            for job in with_urls
        ]
        prepared = self.links.prepare(items)
        if not prepared.writes:
            return None  # only links of ours
        return Batch(with_urls, items, prepared)

    @staticmethod
    def commands(batch: Batch | None) -> list[Command]:
        """The writes of `batch`: three commands per hour's hash (`write_commands`)."""
        return [] if batch is None else write_commands(batch.writes)

    async def settle(self, batch: Batch | None, replies: Sequence[object]) -> None:
        """Put the short texts on the jobs, `replies` being those of `commands`; a text
        whose code was taken is shortened again (a round trip of its own)."""
        if batch is None:
            return
        texts = [short.text for short in batch.prepared.texts]
        taken = await self.links.taken(batch.writes, replies)
        if taken:
            again = await self.links.shorten_many([batch.items[i] for i in taken])
            for i, short in zip(taken, again, strict=True):
                texts[i] = short.text
        for job, text in zip(batch.jobs, texts, strict=True):
            original = job.text or ""
            if len(text) > len(original) and text_problem(text, self.profile) is not None:
                continue  # the short text does not fit where the original did
            job.text = text

    async def shorten(self, jobs: Sequence[Job]) -> None:
        """`prepare`, write and `settle` in one round trip of its own."""
        batch = self.prepare(jobs)
        if batch is None:
            return
        replies = await self.links.write(batch.writes)
        await self.settle(batch, replies)

    def _url(self, job: Job) -> str:
        """Where a click's status callback goes: the message's status_callback_url (a
        Kannel dlr-url asks for no clicks: none)."""
        url = str(job.status_callback_url or "") or self._callback
        return "" if url and kannel_target(url) is not None else url
