"""What arrives on a shared connector: each receipt and inbound message finds its profile.

A connector several profiles route to receives deliver_sm for all of them. A delivery
report belongs to the profile that sent its message: this instance remembers the
provider ids of what it sent over the connector (`Recent`: a report usually comes
within seconds, often before the `sent` step is recorded); a report for a message
another instance sent is found in Redis, by the provider-id index each profile keeps
(``sms:{P}:pmid:<id>``: one GET per profile, each in its own slot, so it runs on
Redis Cluster). A report found nowhere yet (another instance has not recorded its
`sent` step) is kept early by every candidate profile; the one that owns it applies
it with `sent`, the others drop it after `receipts.EARLY_TTL`.

Carriers number their messages independently, so two of them may hand out the same
provider id: a shared connector's ids are indexed as ``<connector>/<id>`` (its
`ConnectorRuntime.namespace`), on the record too; an inline profile's own connector
keeps ids as they are.

An inbound message belongs to the profile owning the number it was sent to; else to
the connector's ``inbound_profile``; else to the first profile routed over it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import structlog
from redis.asyncio import Redis

from binds.smpp.pdu import ESME_ROK, ShortMessage
from router.config import Settings
from router.engine.inbound import Inbound, MediaItem
from router.engine.receipts import Reports
from router.store import keys

log = structlog.get_logger("router.shared")

RECENT_MAX: Final = 200_000  # provider ids remembered per connector (oldest forgotten)


@dataclass
class ProfileSide:
    """What a profile does with what arrives for it: receipts and inbound messages."""

    reports: Reports
    inbound: Inbound | None


class Recent:
    """Provider ids this instance got for messages it sent over a connector, and
    their profile (bounded: the oldest are forgotten first)."""

    def __init__(self, limit: int = RECENT_MAX) -> None:
        self._ids: dict[str, str] = {}
        self._limit = limit

    def remember(self, ids: Sequence[str], profile: str) -> None:
        found = self._ids
        for provider_id in ids:
            found[provider_id] = profile
        if len(found) > self._limit:
            for old in list(found)[: len(found) - self._limit]:
                del found[old]

    def profile(self, forms: Sequence[str]) -> str | None:
        found = self._ids
        for form in forms:
            profile = found.get(form)
            if profile is not None:
                return profile
        return None


class SharedDeliveries:
    """What arrives on a connector shared by several profiles: deliver_sm (`__call__`)
    and, for a Web-URL or Twilio connector, its provider's webhooks (`apply`,
    `handle_text`, as router/api/providers.py calls a profile's own)."""

    def __init__(
        self,
        connector: str,
        *,
        redis: Redis,
        settings: Callable[[], Settings],
        profiles: Callable[[], Sequence[str]],
        sides: Mapping[str, ProfileSide],
        recent: Recent,
    ) -> None:
        self.connector = connector
        self.namespace = f"{connector}/"
        self._redis = redis
        # Read at each delivery: a reload may add profiles or move numbers.
        self._settings = settings
        self._profiles = profiles
        self._sides = sides
        self._recent = recent

    @property
    def profiles(self) -> list[str]:
        """The running profiles routed over this connector, in configuration order."""
        return list(self._profiles())

    async def __call__(self, bind: str, message: ShortMessage) -> int:
        if message.is_receipt:
            return await self.receipt(message)
        return await self.inbound(message)

    async def receipt(self, message: ShortMessage) -> int:
        """Hand a receipt to the profile whose message it reports."""
        sides = self._running()
        if not sides:
            log.warning("receipt on a connector no running profile uses", connector=self.connector)
            return ESME_ROK
        first, namespace = sides[0][1].reports, self.namespace
        receipt_id = first.receipt_id(message)
        if not receipt_id or len(sides) == 1:
            return await first.handle(message, namespace)
        for side in await self._owners(sides, first.candidates(receipt_id, namespace)):
            await side.reports.handle(message, namespace)
        return ESME_ROK

    async def apply(self, candidates: Sequence[str], outcome: str, stat: str, err: str) -> None:
        """A provider webhook's delivery report (ids as the provider gives them)."""
        sides = self._running()
        if not sides:
            log.warning("report on a connector no running profile uses", connector=self.connector)
            return
        forms = [self.namespace + c for c in candidates]
        for side in await self._owners(sides, forms):
            await side.reports.apply(forms, outcome, stat, err)

    async def _owners(
        self, sides: list[tuple[str, ProfileSide]], forms: Sequence[str]
    ) -> list[ProfileSide]:
        """Who a report with id `forms` belongs to: the profile that sent it, or every
        candidate while none is known yet (each keeps it early; see the docstring)."""
        if len(sides) == 1:
            return [sides[0][1]]
        owner = self._recent.profile(forms) or await self._owner_in_redis(
            [p for p, _ in sides], forms
        )
        if owner is not None and owner in self._sides:
            return [self._sides[owner]]
        return [side for _, side in sides]

    def _running(self) -> list[tuple[str, ProfileSide]]:
        return [(p, s) for p in self.profiles if (s := self._sides.get(p)) is not None]

    async def _owner_in_redis(self, profiles: Sequence[str], forms: Sequence[str]) -> str | None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for profile in profiles:
                for form in forms:
                    pipe.exists(keys.provider_id(profile, form))
            found = await pipe.execute()
        per = len(forms)
        for index, profile in enumerate(profiles):
            if any(found[index * per : (index + 1) * per]):
                return profile
        return None

    def _receiver(self, destination: str) -> ProfileSide | None:
        """The side of the profile an inbound message to `destination` belongs to."""
        settings = self._settings()
        owner = settings.profile_of_number(_e164(destination))
        if owner is None or owner not in self._sides:
            connector = settings.connectors.get(self.connector)
            fallback = connector.inbound_profile if connector is not None else None
            owner = fallback if fallback in self._sides else None
        if owner is None:
            owner = next((p for p in self.profiles if p in self._sides), None)
        side = self._sides.get(owner) if owner is not None else None
        if side is None or side.inbound is None:
            log.warning(
                "inbound message on a connector no receiving profile uses; acknowledged "
                "and dropped",
                connector=self.connector,
                to=destination,
            )
            return None
        return side

    async def inbound(self, message: ShortMessage) -> int:
        """Hand an inbound deliver_sm to the profile owning its destination number."""
        side = self._receiver(message.destination)
        if side is None or side.inbound is None:
            return ESME_ROK
        return await side.inbound.handle(message)

    async def handle_text(
        self, source: str, destination: str, text: str, media: Sequence[MediaItem] = ()
    ) -> None:
        """A provider webhook's inbound message (an MMS with its `media`), to the
        profile owning `destination`."""
        side = self._receiver(destination)
        if side is not None and side.inbound is not None:
            await side.inbound.handle_text(source, destination, text, media)


def _e164(address: str) -> str:
    """A deliver_sm destination as our numbers are written (SMSCs often drop the '+')."""
    if address.isdigit() and len(address) > 8:
        return "+" + address
    return address
