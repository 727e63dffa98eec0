"""`Client`: enqueue jobs from Python.

A job is one ``XADD`` of a msgpack map to the profile's work stream; this
class adds validation, pipelining for bulk sends, a `queued` record written in the
same step as the ``XADD`` (so a record's history starts with `queued`), and
idempotency: sending a job whose `id` already has a record creates no second message.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from redis.asyncio import Redis

from .config import Settings
from .jobs import JobError, decode_job, encode_job, new_job_id
from .ledger import Ledger


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
    ) -> None:
        self._redis = redis
        self.default_profile = default_profile
        self.profiles = set(profiles) if profiles is not None else None
        # Profiles whose records keep the text from `queued` on. Any other profile's
        # text is recorded by the worker when sending, if its `store_text` allows.
        self.store_text = set(store_text)
        self.duplicates_dropped = 0
        self._ledger = Ledger(redis, retention=retention, events_maxlen=1_000_000)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> Client:
        """A client that knows the configured profiles and the global one."""
        return cls(
            redis,
            default_profile=settings.global_profile,
            profiles=settings.profiles.keys(),
            retention=settings.queue.retention,
            store_text=[name for name, p in settings.profiles.items() if p.store_text],
        )

    async def send(
        self,
        to: str,
        text: str,
        *,
        profile: str | None = None,
        sender: str | None = None,
        id: str | None = None,
        **fields: Any,
    ) -> str:
        """Enqueue one message; returns its job id. Extra wire fields go in `fields`."""
        job: dict[str, Any] = {"to": to, "text": text, **fields}
        if sender is not None:
            job["from"] = sender
        if id is not None:
            job["id"] = id
        if profile is not None:
            job["profile"] = profile
        return (await self.send_many([job]))[0]

    def validate(self, jobs: Iterable[Mapping[str, Any]], *, offset: int = 0) -> None:
        """Raise `JobError` (naming the job and field) if any job is malformed."""
        self._prepare(jobs, offset)

    async def send_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[str]:
        """Enqueue many jobs in one round trip; returns their ids in order.

        Each job is a wire map (see the README); ``profile`` picks the stream and
        defaults to the global profile. Raises `JobError` before enqueuing anything
        if any job is malformed. A job whose id has a record already is left out and
        counted in `duplicates_dropped`.
        """
        prepared = self._prepare(jobs, 0)
        enqueued = await self._ledger.enqueue(
            [
                (job_id, profile, encode_job(wire), self._record_fields(profile, wire))
                for profile, job_id, wire in prepared
            ]
        )
        self.duplicates_dropped += enqueued.count(False)
        return [job_id for _profile, job_id, _wire in prepared]

    def _prepare(
        self, jobs: Iterable[Mapping[str, Any]], offset: int
    ) -> list[tuple[str, str, dict[str, Any]]]:
        prepared: list[tuple[str, str, dict[str, Any]]] = []
        for index, raw in enumerate(jobs, offset):
            wire = dict(raw)
            if wire.get("id") is None:
                wire["id"] = new_job_id()
            profile = self._profile_for(wire, index)
            wire.pop("profile", None)
            try:
                job = decode_job(encode_job(wire), default_id=wire["id"])
            except JobError as exc:
                raise JobError(exc.field, f"job {index}: {exc}") from None
            prepared.append((profile, job.id, job.to_wire()))
        return prepared

    def _profile_for(self, wire: Mapping[str, Any], index: int) -> str:
        profile = wire.get("profile") or self.default_profile
        if not profile:
            raise JobError("profile", f"job {index}: required (no global profile configured)")
        if self.profiles is not None and profile not in self.profiles:
            raise JobError("profile", f"job {index}: unknown profile {profile!r}")
        if not isinstance(profile, str) or set(profile) - _NAME_CHARS:
            raise JobError("profile", f"job {index}: {profile!r} is not a profile name")
        return profile

    def _record_fields(self, profile: str, wire: Mapping[str, Any]) -> dict[str, str]:
        fields = {"profile": profile, "to": str(wire["to"])}
        if wire.get("text") is not None and profile in self.store_text:
            fields["text"] = str(wire["text"])
        if wire.get("from"):
            fields["from"] = str(wire["from"])
        if wire.get("meta"):
            fields["meta"] = json.dumps(wire["meta"], default=str)
        if wire.get("status_callback_url"):
            fields["status_callback_url"] = str(wire["status_callback_url"])
        return fields


_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
