"""Sender selection: which of a profile's numbers sends each message of a batch.

Strategies (``sender`` of a profile): ``round_robin`` rotates over the numbers that
may send the message; ``geomatch`` prefers a number of the recipient's area code,
then of its country, then any; ``sticky`` gives a recipient the number it had
before (kept in Redis for `sticky_ttl`), choosing a new one with the other strategy
when there is none or it may no longer send; ``sticky+geomatch`` combines them. A
profile's ``sender_preference`` (kinds of sender) comes first: the strategy chooses
among the allowed numbers of the most preferred kind, the others only when none may. An
explicit ``from`` wins when the rules allow it. Numbers of a capped campaign are
skipped once the campaign's day is full (caps.lua, atomic across instances).

Number health: with ``skip_unhealthy``, a number whose delivery ratio over
``health_window`` is below ``health_threshold`` (from ``health_min_sample`` reports
on) goes to the end of every message's candidates: it sends only when no healthy
number may (all unhealthy, or the healthy ones' campaigns full). Passing over every
number would stop the profile for what may be the carriers' fault, not the numbers';
an explicit ``from`` is never passed over. The ratios are read every few seconds
within the batch's round trip below (router/store/health.py), not per message.

Per batch: one round trip for the rotation counter, the sticky mappings and, when
due, the numbers' health (the caller may add its own reads to it, see `commands`),
then one for the caps, only when a capped campaign is involved. New sticky mappings
are returned by `pick` for the pipeline to write with the `sending` record
(sending.lua).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from router.config import Profile
from router.policy.rules import Capable, Refusal, SenderRules
from router.store import keys, scripts
from router.store.connections import as_text
from router.store.health import NumberHealth

__all__ = ["SenderPool", "Want"]

_CAPS = scripts.source("caps")
_DAY = 86_400


@dataclass(slots=True)
class Want:
    """A message that needs a sender: its recipient, use case and explicit ``from``."""

    to: str
    use_case: str | None = None
    sender: str | None = None
    refused: Refusal | None = None  # screened out before choosing (opt-out, lists)
    # Only these numbers may send it (an MMS: those that can, `router.policy.mms`).
    only: frozenset[str] | None = None


class SenderPool:
    """The numbers of one profile and its strategy, shared by every router instance.

    Over any stretch of messages that every number may send, round robin uses each
    equally often (300 messages over 3 numbers: 100 each) whichever instance sends:
    one ``INCRBY`` per batch reserves a run of positions in the rotation.
    """

    def __init__(self, redis: Redis, name: str, profile: Profile, rules: SenderRules) -> None:
        if not profile.numbers:
            raise ValueError(f"profile {name!r} has no sender numbers")
        self._redis = redis
        self.name = name
        self.numbers = tuple(profile.numbers)
        self._owned = frozenset(self.numbers)
        self.rules = rules
        self.sticky = profile.sender.startswith("sticky")
        self.geomatch = profile.sender.endswith("geomatch")
        self.preference = bool(profile.sender_preference)
        self.sticky_ttl = int(profile.sticky_ttl)
        self._rr = keys.round_robin(name)
        self._caps = rules.caps()
        self._caps_script = redis.register_script(_CAPS)
        # Number health (skip_unhealthy): the numbers passed over, as last read.
        self.health: NumberHealth | None = None
        if profile.skip_unhealthy:
            self.health = NumberHealth(name, profile.health_window)
        self._threshold = profile.health_threshold
        self._min_sample = profile.health_min_sample
        self.unhealthy: frozenset[str] = frozenset()

    def owns(self, number: str) -> bool:
        """Whether `number` is one of this profile's sender numbers."""
        return number in self._owned

    def commands(self, pipe: Pipeline, wants: Sequence[Want]) -> int:
        """Queue this batch's reads on `pipe` (the caller's round trip); returns how many."""
        pipe.incrby(self._rr, len(wants))
        count = 1
        if self.sticky:
            # MGET as a plain command: a cluster pipeline refuses the `mget` method (the
            # keys share the profile's slot, so one node answers it).
            pipe.execute_command("MGET", *[keys.sticky(self.name, w.to) for w in wants])
            count = 2
        if self.health is not None and self.health.due():
            count += self.health.commands(pipe)
        return count

    async def pick(
        self, wants: Sequence[Want], replies: Sequence[Any]
    ) -> tuple[list[str | Refusal], list[int]]:
        """A number or a `Refusal` per want, and which picks are new sticky mappings for
        the caller to write (the pipeline writes them with the `sending` record: no
        round trip of their own)."""
        end = int(replies[0])
        mapped: list[str | None] = [None] * len(wants)
        if self.sticky:
            mapped = [as_text(v) if v else None for v in replies[1]]
        health = replies[2 if self.sticky else 1 :]
        if self.health is not None and health:
            self.health.take(health)
            self.unhealthy = self.health.unhealthy(self._threshold, self._min_sample)
        first: dict[str, int] = {}
        start = end - len(wants)
        choices: list[list[str] | Refusal] = []
        capped: list[dict[str, str]] = []  # per want: capable number -> its capped campaign
        for i, want in enumerate(wants):
            capable = self.rules.capable(want.to, want.use_case)
            capped.append(capable.campaign)
            sticky_to = mapped[i]
            if self.sticky and sticky_to is None and want.sender is None:
                # A recipient twice in one batch keeps the number its first message gets.
                earlier = choices[first[want.to]] if want.to in first else None
                first.setdefault(want.to, i)
                if isinstance(earlier, list):
                    sticky_to = earlier[0]
            choices.append(self._candidates(want, capable, start + i, sticky_to))
        return await self._pick(wants, choices, mapped, capped)

    def _candidates(
        self, want: Want, capable: Capable, position: int, mapped: str | None
    ) -> list[str] | Refusal:
        """The numbers that may send `want`, best first."""
        if want.refused is not None:
            return want.refused
        if want.sender is not None:
            refusal = capable.refusals.get(want.sender)
            return refusal if refusal is not None else [want.sender]
        if capable.refusal is not None:
            return capable.refusal
        if self.geomatch:
            groups: Sequence[Sequence[str]] = capable.tiers
        elif self.preference:
            groups = capable.ranked
        else:
            groups = (capable.numbers,)
        unhealthy = self.unhealthy
        if unhealthy and not unhealthy.isdisjoint(capable.numbers):
            # Last, not gone: they send only when no healthy number may. The healthy
            # ones rotate among themselves, so each still gets its share.
            groups = [
                *([n for n in g if n not in unhealthy] for g in groups),
                *([n for n in g if n in unhealthy] for g in groups),
            ]
        order = [n for group in groups if group for n in _rotated(group, position)]
        if want.only is not None:
            order = [n for n in order if n in want.only]
        if mapped is not None and mapped != order[0] and mapped in order:
            if mapped not in unhealthy:  # an unhealthy one: the recipient gets another
                order.remove(mapped)
                order.insert(0, mapped)
        return order

    async def _pick(
        self,
        wants: Sequence[Want],
        choices: list[list[str] | Refusal],
        mapped: list[str | None],
        campaigns: list[dict[str, str]],
    ) -> tuple[list[str | Refusal], list[int]]:
        """The first candidate of each want, or the first whose campaign has room today;
        and the wants whose pick is a new sticky mapping. `campaigns`: per want, its
        capable numbers' capped campaigns."""
        capped = [isinstance(c, list) and c[0] in campaigns[i] for i, c in enumerate(choices)]
        counted: list[int] = []
        if any(capped):
            args: list[Any] = [2 * _DAY, len(self._caps)]
            for campaign, cap in self._caps.items():
                args += [campaign, cap]
            for i, choice in enumerate(choices):
                if capped[i]:
                    assert isinstance(choice, list)
                    row = []
                    for number in choice:
                        row.append(campaigns[i].get(number, ""))
                        if row[-1] == "":
                            break  # always has room: the rest are never reached
                    args += [len(row), *row]
            counted = await self._caps_script(keys=[keys.campaign_counts(_today())], args=args)
        results = iter(counted)
        picks: list[str | Refusal] = []
        remember: list[int] = []
        known: dict[str, str] = {}  # recipient -> number remembered in this batch
        for i, choice in enumerate(choices):
            if isinstance(choice, Refusal):
                picks.append(choice)
                continue
            index = int(next(results)) if capped[i] else 1
            if index == 0:
                picks.append(self._full(campaigns[i], choice))
                continue
            number = choice[index - 1]
            picks.append(number)
            to = wants[i].to
            if self.sticky and wants[i].sender is None and number != mapped[i]:
                if known.get(to) != number:
                    known[to] = number
                    remember.append(i)
        return picks, remember

    def _full(self, campaigns: dict[str, str], choice: list[str]) -> Refusal:
        full = sorted({campaigns[n] for n in choice if n in campaigns})
        caps = ", ".join(f"{c} ({self._caps[c]} a day)" for c in full)
        return Refusal(
            "daily_cap_reached",
            f"campaign {caps} reached its daily cap; numbers {', '.join(choice)}",
        )


def _rotated(numbers: Sequence[str], position: int) -> list[str]:
    k = position % len(numbers)
    return [*numbers[k:], *numbers[:k]]


def _today() -> str:
    return time.strftime("%Y%m%d", time.gmtime())
