"""Move the keys of the old layout to the per-profile, cluster-safe one (router/store/keys.py).

Old → new:

* ``sms:msg:<id>`` → ``sms:{P}:msg:<id>`` (DUMP + RESTORE with the TTL, then DEL: works
  across cluster slots, unlike RENAME; found by id alone by looking in the configured
  profiles, as every record is);
* ``sms:events`` → ``sms:{P}:events``, one stream per profile, in the same order;
* ``sms:callbacks`` → ``sms:{P}:callbacks`` (every entry left is pending or unread: all
  are copied, so the new version posts them) and ``sms:callbacks:dlq`` →
  ``sms:{P}:callbacks:dlq``.

Run it with every instance stopped. It is idempotent and resumable: a record whose new
key exists is not overwritten (its old key is just deleted); each profile's copy of an
old stream advances a cursor (``sms:{P}:migrate:<stream>``) in the same transaction as
the entries it copied, so a rerun continues where the last one stopped. An old stream
is deleted only once all its entries are copied. Stream entry ids are kept (XADD with
the old id) unless a new stream already holds newer ids, e.g. because the new version
ran already: then that profile's copies get fresh ids (after the newer entries).

Records are never printed or logged: they hold message texts and callback URLs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from router.errors import RouterError
from router.store import keys, roundtrip
from router.store.connections import as_text

# The old layout's names (gone from router/store/keys.py).
OLD_RECORD_PREFIX = "sms:msg:"
OLD_EVENTS = "sms:events"
OLD_CALLBACKS = "sms:callbacks"
OLD_CALLBACK_DEAD_LETTERS = "sms:callbacks:dlq"
POSTERS = "posters"  # consumer group of the callback streams
# Name of the copy of each old stream (in its cursor keys) -> that old stream.
_OLD_STREAMS = {
    "events": OLD_EVENTS,
    "callbacks": OLD_CALLBACKS,
    "callbacks:dlq": OLD_CALLBACK_DEAD_LETTERS,
}

SHOWN_UNRESOLVED = 10  # unresolved record ids listed in the report

Progress = Callable[[str, int], None]


@dataclass
class MigrationReport:
    """What one run moved (or, with ``dry_run``, would move)."""

    dry_run: bool = False
    records_moved: int = 0
    # New key present already (an interrupted run): the old key was (would be) deleted.
    records_already_moved: int = 0
    # Of the records moved: those without a `profile` field, placed by their events.
    records_resolved_from_events: int = 0
    records_unresolved: int = 0  # no profile anywhere: left under sms:msg:<id>
    unresolved_ids: list[str] = field(default_factory=list)  # the first few
    events_moved: dict[str, int] = field(default_factory=dict)  # per profile
    event_ids_preserved: bool = True
    callbacks_moved: int = 0
    callback_dead_letters_moved: int = 0
    callback_ids_preserved: bool = True
    # Old stream -> its entries without a `profile` field; that stream is left in place.
    left_behind: dict[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """Whether there was anything to move."""
        return bool(
            self.records_moved
            or self.records_already_moved
            or any(self.events_moved.values())
            or self.callbacks_moved
            or self.callback_dead_letters_moved
        )


async def migrate_keys(
    redis: Redis, *, dry_run: bool = False, batch: int = 500, progress: Progress | None = None
) -> MigrationReport:
    """Move every key of the old layout to the new one; see the module docstring.

    `batch` bounds what is held at once (records per SCAN batch, entries per XRANGE
    chunk); `progress(stage, done)` is called after each batch."""
    report = MigrationReport(dry_run=dry_run)
    step = _Step(redis, dry_run, batch, progress or (lambda _stage, _done: None))
    # Records without a profile field (rare) wait for the events stream to name theirs.
    orphans = await step.records(report)
    found: dict[str, str] = {}
    events = await step.stream(OLD_EVENTS, keys.events, "events", report, orphans, found)
    report.events_moved = events.moved
    report.event_ids_preserved = events.preserved
    await step.orphans(orphans, found, report)
    # The old events stream goes only now: a run interrupted while placing the orphans
    # finds their profiles in it again.
    await step.finish(OLD_EVENTS, events, report)
    callbacks = await step.stream(OLD_CALLBACKS, keys.callbacks, "callbacks", report)
    await step.finish(OLD_CALLBACKS, callbacks, report)
    report.callbacks_moved = sum(callbacks.moved.values())
    report.callback_ids_preserved = callbacks.preserved
    letters = await step.stream(
        OLD_CALLBACK_DEAD_LETTERS, keys.callback_dead_letters, "callbacks:dlq", report
    )
    await step.finish(OLD_CALLBACK_DEAD_LETTERS, letters, report)
    report.callback_dead_letters_moved = sum(letters.moved.values())
    await step.cleanup()
    return report


def _cursor(profile: str, stream: str) -> str:
    """Last old entry id copied to the profile's new stream (same slot as that stream)."""
    return f"sms:{{{profile}}}:migrate:{stream}"


@dataclass
class _Copy:
    """Per-profile state of one old stream's copy."""

    after: str | None  # the cursor: old entries up to this id are copied already
    preserve: bool  # XADD with the old ids (else `*`)


@dataclass
class _Split:
    """What copying one old stream did."""

    exists: bool = False
    moved: dict[str, int] = field(default_factory=dict)
    preserved: bool = True
    without_profile: int = 0


class _Step:
    def __init__(self, redis: Redis, dry_run: bool, batch: int, progress: Progress) -> None:
        self.redis = redis
        self.dry_run = dry_run
        self.batch = max(1, batch)
        self.progress = progress

    # -- records ---------------------------------------------------------------------

    async def records(self, report: MigrationReport) -> set[str]:
        """Move every old record that names its profile; the ids of those that don't."""
        orphans: set[str] = set()
        done = 0
        chunk: list[str] = []
        async for raw in self.redis.scan_iter(match=f"{OLD_RECORD_PREFIX}*", count=self.batch):
            chunk.append(as_text(raw))
            if len(chunk) >= self.batch:
                done += await self._records_chunk(chunk, orphans, report)
                self.progress("records", done)
                chunk = []
        if chunk:
            done += await self._records_chunk(chunk, orphans, report)
            self.progress("records", done)
        return orphans

    async def _records_chunk(
        self, chunk: list[str], orphans: set[str], report: MigrationReport
    ) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in chunk:
                pipe.hget(key, "profile")
            profiles: list[Any] = await pipe.execute()
        placed: list[tuple[str, str]] = []
        for key, profile in zip(chunk, profiles, strict=True):
            job_id = key[len(OLD_RECORD_PREFIX) :]
            if profile:
                placed.append((job_id, as_text(profile)))
            else:
                orphans.add(job_id)  # (or it expired since the SCAN: skipped later)
        moved, already = await self._move(placed)
        report.records_moved += moved
        report.records_already_moved += already
        return len(chunk)

    async def orphans(
        self, orphans: set[str], found: dict[str, str], report: MigrationReport
    ) -> None:
        """Move the records placed by their events; count the rest as unresolved."""
        placed = sorted((job_id, found[job_id]) for job_id in orphans if job_id in found)
        for start in range(0, len(placed), self.batch):
            moved, already = await self._move(placed[start : start + self.batch])
            report.records_moved += moved
            report.records_already_moved += already
            report.records_resolved_from_events += moved + already
        unresolved = sorted(job_id for job_id in orphans if job_id not in found)
        if unresolved:  # those that expired meanwhile are not unresolved
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in unresolved:
                    pipe.exists(OLD_RECORD_PREFIX + job_id)
                present: list[Any] = await pipe.execute()
            unresolved = [j for j, here in zip(unresolved, present, strict=True) if here]
        report.records_unresolved += len(unresolved)
        report.unresolved_ids = unresolved[:SHOWN_UNRESOLVED]

    async def _move(self, placed: list[tuple[str, str]]) -> tuple[int, int]:
        """DUMP + RESTORE (with the remaining TTL) + DEL each (job id, profile). A new
        key present already is kept as it is."""
        if not placed:
            return 0, 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, _profile in placed:
                pipe.pttl(OLD_RECORD_PREFIX + job_id)
                if self.dry_run:
                    pipe.exists(keys.record(_profile, job_id))
                else:
                    pipe.dump(OLD_RECORD_PREFIX + job_id)
            read: list[Any] = await pipe.execute()
        # (job id, profile, ttl in ms or 0 = none, payload or whether the new key exists)
        items = [
            (job_id, profile, max(0, read[2 * i]), read[2 * i + 1])
            for i, (job_id, profile) in enumerate(placed)
            if read[2 * i] != -2  # expired since it was seen
        ]
        if self.dry_run:
            already = sum(1 for item in items if item[3])
            return len(items) - already, already
        items = [item for item in items if item[3] is not None]
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, profile, ttl, payload in items:
                pipe.restore(keys.record(profile, job_id), ttl, payload)
            restored: list[Any] = await pipe.execute(raise_on_error=False)
        moved = already = 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for (job_id, _profile, _ttl, _payload), outcome in zip(items, restored, strict=True):
                if isinstance(outcome, ResponseError):
                    if "BUSYKEY" not in str(outcome):
                        raise MigrationError(f"RESTORE of record {job_id} failed: {outcome}")
                    already += 1  # moved by an interrupted run: keep the new key as it is
                else:
                    moved += 1
                pipe.delete(OLD_RECORD_PREFIX + job_id)  # only now that the new key exists
            await pipe.execute()
        return moved, already

    # -- streams ---------------------------------------------------------------------

    async def stream(
        self,
        old: str,
        new: Callable[[str], str],
        name: str,
        report: MigrationReport,
        wanted: set[str] | None = None,
        found: dict[str, str] | None = None,
    ) -> _Split:
        """Copy each entry of `old` to ``new(its profile)``, oldest first, in chunks;
        note in `found` the profile of each event whose `id` is in `wanted`."""
        split = _Split(exists=bool(await self.redis.exists(old)))
        copies: dict[str, _Copy] = {}
        start = "-"
        done = 0
        while split.exists:
            rows: Any = await self.redis.xrange(old, start, "+", count=self.batch)
            if not rows:
                break
            start = "(" + as_text(rows[-1][0])
            per_profile: dict[str, list[tuple[str, dict[Any, Any]]]] = {}
            for raw_id, raw in rows:
                profile = as_text(raw.get(b"profile", b""))
                if not profile:
                    split.without_profile += 1
                    continue
                if wanted and found is not None:
                    job_id = as_text(raw.get(b"id", b""))
                    if job_id in wanted:
                        found.setdefault(job_id, profile)
                per_profile.setdefault(profile, []).append((as_text(raw_id), raw))
            for profile, entries in per_profile.items():
                if profile not in copies:
                    copies[profile] = await self._begin(profile, new(profile), name, entries)
                    split.preserved = split.preserved and copies[profile].preserve
                copy = copies[profile]
                todo = [e for e in entries if copy.after is None or _newer(e[0], copy.after)]
                if todo:
                    await self._append(profile, new(profile), name, copy, todo)
                split.moved[profile] = split.moved.get(profile, 0) + len(todo)
            done += len(rows)
            self.progress(name, done)
        if split.without_profile:
            report.left_behind[old] = split.without_profile
        return split

    async def _begin(
        self, profile: str, new: str, name: str, entries: list[tuple[str, Any]]
    ) -> _Copy:
        """The profile's cursor, and whether its copies can keep the old ids: only if
        the new stream has generated no id at or after the first one to copy."""
        raw = await self.redis.get(_cursor(profile, name))
        after = as_text(raw) if raw else None
        try:
            info: Any = await self.redis.xinfo_stream(new)
            last = as_text(info["last-generated-id"])
        except ResponseError:  # no such key
            last = "0-0"
        first = next((e[0] for e in entries if after is None or _newer(e[0], after)), None)
        # (no entry to copy in this chunk: the later ones are newer still; judge by the
        # cursor, which is the last id copied with preserved ids if they were kept)
        pivot = first or after or entries[-1][0]
        preserve = _newer(pivot, last) or (after is not None and last == after)
        if name == "callbacks" and not self.dry_run:
            # From 0, so the new version's posters read every copied entry.
            try:
                await self.redis.xgroup_create(new, POSTERS, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        return _Copy(after=after, preserve=preserve)

    async def _append(
        self, profile: str, new: str, name: str, copy: _Copy, todo: list[tuple[str, Any]]
    ) -> None:
        """XADD the entries and advance the cursor in one transaction (one slot)."""
        if self.dry_run:
            return
        commands: list[roundtrip.Command] = [
            (
                "XADD",
                new,
                entry_id if copy.preserve else "*",
                *[x for kv in fields.items() for x in kv],
            )
            for entry_id, fields in todo
        ]
        commands.append(("SET", _cursor(profile, name), todo[-1][0]))
        try:
            await roundtrip.execute(self.redis, commands, transaction=True)
        except ResponseError as exc:
            # Is an instance of the new version running? The migration needs them stopped.
            raise MigrationError(f"copying to {new} failed: {exc}") from None
        copy.after = todo[-1][0]

    async def finish(self, old: str, split: _Split, report: MigrationReport) -> None:
        """Delete the old stream once every entry is copied; one with entries naming no
        profile stays (they are counted in `left_behind`)."""
        if split.exists and not self.dry_run and old not in report.left_behind:
            await self.redis.delete(old)

    async def cleanup(self) -> None:
        """Delete the copy cursors of the old streams that are gone (this run's, or those
        of a run interrupted after the DEL). `{` is no glob character."""
        if self.dry_run:
            return
        cursors: list[str] = []
        async for raw in self.redis.scan_iter(match=_cursor("*", "*"), count=1000):
            name = as_text(raw).partition("}:migrate:")[2]
            if name in _OLD_STREAMS and not await self.redis.exists(_OLD_STREAMS[name]):
                cursors.append(as_text(raw))
        for start in range(0, len(cursors), self.batch):
            await _delete(self.redis, cursors[start : start + self.batch])


class MigrationError(RouterError, RuntimeError):
    """A write of the migration failed (it never carries record contents)."""


def _newer(entry_id: str, than: str) -> bool:
    """Whether stream entry id `entry_id` > `than` (ids are ``ms-seq``)."""
    return _id(entry_id) > _id(than)


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def _delete(redis: Redis, names: Iterable[Any]) -> None:
    # One DEL per key: in a cluster, a multi-key DEL must stay in one slot.
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.delete(name)
        await pipe.execute()
