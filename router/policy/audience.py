"""Who may receive from a profile: opt-outs (STOP/START), block and allow lists.

A profile's audience rules live in Redis, shared by every router instance:

- ``sms:{P}:optout``: the numbers that texted a stop keyword (`classify`);
- ``sms:{P}:block`` / ``sms:{P}:allow``: numbers or prefixes added at run time
  (``sms-router lists``), on top of the profile's configured `blocklist` and
  `allowlist`;
- ``sms:{P}:lists:ver``: INCR'd with every list change, in the same step, so an
  `Audience` reloads its cached lists only when they changed.

`Audience` answers for a batch of recipients in the caller's own pipeline
(`commands` then `verdicts`): one round trip per batch, shared with the worker's
other reads. The module-level functions manage the sets (CLI and tests).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from router.config import Profile
from router.numbers import normalise_e164
from router.store import keys, roundtrip, scripts
from router.store.connections import as_text

__all__ = [
    "KEYWORD_REPLY_PREFIX",
    "Audience",
    "Keyword",
    "ListName",
    "add_list_entry",
    "add_opt_out",
    "check_entry",
    "classify",
    "list_opt_outs",
    "remove_list_entry",
    "remove_opt_out",
    "show_lists",
]

# Job ids of the router's own keyword replies: exempt from the opt-out check (a STOP
# confirmation must reach the person who just opted out), not from the lists.
KEYWORD_REPLY_PREFIX = "keyword-reply."

Keyword = Literal["stop", "start", "help"]
ListName = Literal["block", "allow"]
Verdict = tuple[str, str] | None

_ENTRY = re.compile(r"\+\d{1,15}")
# '+' and at most 15 digits: a recipient has at most 16 prefixes worth looking up.
_LONGEST = 16
_UNLOADED = object()


def classify(text: str, profile: Profile) -> Keyword | None:
    """The keyword kind of an inbound text, when the whole text (stripped, any case)
    is one of the profile's keywords; else None ("stop it" is not a keyword)."""
    word = text.strip().casefold()
    if not word or len(word) > 64:  # no keyword is that long: skip the comparisons
        return None
    for kind, words in (
        ("stop", profile.stop_keywords),
        ("start", profile.start_keywords),
        ("help", profile.help_keywords),
    ):
        if any(word == w.strip().casefold() for w in words):
            return kind  # type: ignore[return-value]
    return None


class Audience:
    """Screens recipients for one profile: blocked (lists) first, then opted out.

    The Redis lists are cached and reloaded when the version counter read with a
    batch differs from the cached one; opt-outs are read for every batch.
    """

    def __init__(self, redis: Redis, name: str, profile: Profile) -> None:
        self._redis = redis
        self.name = name
        self._static_block = frozenset(profile.blocklist)
        self._static_allow = frozenset(profile.allowlist)
        self._version: object = _UNLOADED
        self._block = self._static_block
        self._allow = self._static_allow
        self.reloads = 0

    def commands(self, pipe: Pipeline, recipients: Sequence[str]) -> int:
        """Queue this batch's reads on `pipe` (the lists version, then the opt-outs of
        `recipients` when there are any); returns how many commands were queued."""
        pipe.get(keys.lists_version(self.name))
        if not recipients:
            return 1  # SMISMEMBER needs at least one member
        pipe.smismember(keys.opt_outs(self.name), list(recipients))
        return 2

    async def verdicts(
        self, recipients: Sequence[str], replies: Sequence[Any]
    ) -> list[tuple[str, str] | None]:
        """Per recipient: None (may receive) or (code, reason), code ``blocked`` or
        ``opted_out``; `replies` are those of the commands `commands` queued."""
        version = replies[0]
        if version != self._version:
            await self._reload()
        opted = replies[1] if len(replies) > 1 else ()
        block, allow = self._block, self._allow
        found: list[Verdict] = []
        for index, number in enumerate(recipients):
            verdict: Verdict = None
            if block or allow:
                verdict = self._listed(number, block, allow)
            if verdict is None and opted[index]:
                verdict = ("opted_out", f"{number} opted out of profile {self.name}")
            found.append(verdict)
        return found

    async def screen(self, recipients: Sequence[str]) -> list[tuple[str, str] | None]:
        """`commands` and `verdicts` in a pipeline of their own."""
        async with self._redis.pipeline(transaction=False) as pipe:
            self.commands(pipe, recipients)
            replies = await pipe.execute()
        return await self.verdicts(recipients, replies)

    async def _reload(self) -> None:
        # One snapshot: the version read with the sets it describes.
        version, block, allow = await roundtrip.execute(
            self._redis,
            [
                ("GET", keys.lists_version(self.name)),
                ("SMEMBERS", keys.block_list(self.name)),
                ("SMEMBERS", keys.allow_list(self.name)),
            ],
            transaction=True,
        )
        self._block = self._static_block | {as_text(v) for v in block}
        self._allow = self._static_allow | {as_text(v) for v in allow}
        self._version = version
        self.reloads += 1

    def _listed(self, number: str, block: frozenset[str], allow: frozenset[str]) -> Verdict:
        # Longest prefix first: the reason names the most specific entry.
        prefixes = [number[:size] for size in range(min(len(number), _LONGEST), 1, -1)]
        if block:
            for prefix in prefixes:
                if prefix in block:
                    return ("blocked", f"{number} is on profile {self.name}'s blocklist ({prefix})")
        if allow and not any(prefix in allow for prefix in prefixes):
            return ("blocked", f"{number} is not on profile {self.name}'s allowlist")
        return None


# ---------------------------------------------------------------- management


def check_entry(value: str) -> str:
    """A block/allow list entry as given, or ValueError: '+' then 1-15 digits."""
    entry = value.strip()
    if not _ENTRY.fullmatch(entry):
        raise ValueError(f"{value!r} is not a number or prefix ('+' then 1-15 digits)")
    return entry


def _list_key(profile: str, which: ListName) -> str:
    if which == "block":
        return keys.block_list(profile)
    if which == "allow":
        return keys.allow_list(profile)
    raise ValueError(f"{which!r} is not a list (block or allow)")


async def add_opt_out(redis: Redis, profile: str, number: str) -> bool:
    """Opt `number` (normalised to E.164, else ValueError) out of `profile`; True if
    it was not opted out yet."""
    return bool(await redis.sadd(keys.opt_outs(profile), normalise_e164(number)))


async def remove_opt_out(redis: Redis, profile: str, number: str) -> bool:
    """Opt `number` back in; True if it was opted out."""
    return bool(await redis.srem(keys.opt_outs(profile), normalise_e164(number)))


async def list_opt_outs(redis: Redis, profile: str) -> list[str]:
    """Every opted-out number of `profile`, sorted (SSCAN: never one long command)."""
    found = [as_text(v) async for v in redis.sscan_iter(keys.opt_outs(profile), count=1000)]
    return sorted(set(found))  # SSCAN may return a member twice


async def add_list_entry(redis: Redis, profile: str, which: ListName, entry: str) -> bool:
    """Add a number or prefix to the profile's Redis block or allow list; True if new.
    Raises ValueError for a malformed entry."""
    return await _change(redis, profile, which, check_entry(entry), add=True)


async def remove_list_entry(redis: Redis, profile: str, which: ListName, entry: str) -> bool:
    """Remove a number or prefix from the profile's Redis list; True if it was there."""
    return await _change(redis, profile, which, check_entry(entry), add=False)


# The set and its version counter change in one step (lua/list_change.lua).
_CHANGE = scripts.source("list_change")


async def _change(redis: Redis, profile: str, which: ListName, entry: str, *, add: bool) -> bool:
    script = redis.register_script(_CHANGE)
    changed = await script(
        keys=[_list_key(profile, which), keys.lists_version(profile)],
        args=["SADD" if add else "SREM", entry],
    )
    return bool(changed)


async def show_lists(redis: Redis, profile: str) -> dict[ListName, list[str]]:
    """The profile's Redis lists (not the configured ones), each sorted."""
    block, allow = await roundtrip.execute(
        redis,
        [("SMEMBERS", keys.block_list(profile)), ("SMEMBERS", keys.allow_list(profile))],
        transaction=True,
    )
    return {
        "block": sorted(as_text(v) for v in block),
        "allow": sorted(as_text(v) for v in allow),
    }
