"""Inbound keywords of one profile: STOP/START change the opt-out set, and each
keyword may be answered (`stop_text`, `start_text`, `help_text`).

`Keywords.match` recognises a keyword (see `router.policy.audience.classify`) and prepares
its effects; `Keywords.queue` puts them on the caller's MULTI pipeline, next to the
XADD of the inbound message, so the opt-out, the reply job and the stored message
are written together or not at all. Applying the same hit twice changes nothing:
SADD/SREM are idempotent and the reply's job id is deterministic, so the ledger
drops a second one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import structlog
from redis.commands.core import AsyncScript

from router.config import Profile
from router.numbers import normalise_e164
from router.policy.audience import KEYWORD_REPLY_PREFIX, Keyword, classify
from router.policy.jobs import encode_job
from router.store import keys, roundtrip
from router.store.ledger import Ledger

log = structlog.get_logger("router.keywords")

# A redelivered deliver_sm carries nothing stable but its addresses and text, and is
# stored again with a new time: replies to the same keyword from the same number in
# the same window share one job id, so a redelivery (or a sender repeating HELP) is
# answered once.
REPLY_WINDOW = 300.0


@dataclass(frozen=True, slots=True)
class KeywordHit:
    """A keyword found in one inbound message and what it will change."""

    kind: Keyword
    sender: str | None  # E.164 of whoever sent it; None when the source is no number
    reply: tuple[str, bytes, dict[str, str]] | None  # job id, encoded job, record fields


class Keywords:
    """Recognises and applies one profile's inbound keywords."""

    def __init__(self, name: str, profile: Profile, ledger: Ledger) -> None:
        self.name = name
        self.profile = profile
        self._ledger = ledger
        self._numbers = frozenset(profile.numbers)
        self._texts: dict[str, str | None] = {
            "stop": profile.stop_text,
            "start": profile.start_text,
            "help": profile.help_text,
        }

    def match(
        self, source: str, destination: str, received_at: float, text: str
    ) -> KeywordHit | None:
        """The hit when `text` is one of the profile's keywords, else None."""
        kind = classify(text, self.profile)
        if kind is None:
            return None
        sender = _number(source)
        if sender is None:
            log.warning(
                "keyword from an address that is no E.164 number: not applied",
                profile=self.name,
                kind=kind,
                source=source,
            )
            return KeywordHit(kind, None, None)
        reply_text = self._texts[kind]
        reply = None
        if reply_text:
            reply = self._reply(kind, sender, destination, received_at, reply_text)
        return KeywordHit(kind, sender, reply)

    def commands(self, hit: KeywordHit) -> list[roundtrip.Command]:
        """The hit's writes, for a MULTI the caller executes (with `scripts`)."""
        if hit.sender is None:
            return []
        commands: list[roundtrip.Command] = []
        if hit.kind == "stop":
            commands.append(("SADD", keys.opt_outs(self.name), hit.sender))
        elif hit.kind == "start":
            commands.append(("SREM", keys.opt_outs(self.name), hit.sender))
        if hit.reply is not None:
            job_id, job, fields = hit.reply
            commands.append(self._ledger.enqueue_command(self.name, [(job_id, job, fields)]))
        return commands

    @property
    def scripts(self) -> list[AsyncScript]:
        """The scripts `commands` may run."""
        return [self._ledger.enqueue_script]

    def applied(self, hit: KeywordHit) -> None:
        """Log a hit once its writes are in Redis."""
        if hit.sender is not None:
            log.info(
                "inbound keyword applied",
                profile=self.name,
                kind=hit.kind,
                number=hit.sender,
                reply=hit.reply[0] if hit.reply else None,
            )

    def _reply(
        self, kind: str, sender: str, destination: str, received_at: float, text: str
    ) -> tuple[str, bytes, dict[str, str]]:
        window = int(received_at // REPLY_WINDOW)
        seed = f"{self.name}|{sender}|{destination}|{kind}|{window}".encode()
        job_id = KEYWORD_REPLY_PREFIX + hashlib.sha256(seed).hexdigest()[:32]
        wire: dict[str, Any] = {"id": job_id, "to": sender, "text": text, "profile": self.name}
        fields = {"profile": self.name, "to": sender}
        if destination in self._numbers:
            wire["from"] = fields["from"] = destination
        if self.profile.store_text:
            fields["text"] = text
        return job_id, encode_job(wire), fields


def _number(address: str) -> str | None:
    """`address` as E.164, reading bare digits as international (TON unknown); None
    for an alphanumeric or impossible address."""
    candidate = address if address.startswith("+") else "+" + address
    if not candidate[1:].isdigit():
        return None
    try:
        return normalise_e164(candidate)
    except ValueError:
        return None
