"""Rules: which of a profile's numbers may send a given message, and why not.

A number may send when it is `sms_enabled` with `SmsSender` or `A2PSmsSender`; a
toll-free number must be `verified`; a destination in another country needs
`InternationalSmsSender`; a US/CA long code needs a campaign that is `Confirmed`
with a `Verified` or `Vetted` brand (10DLC: long codes only); a job's use case must be
among its campaign's `use_cases`. A short code sends only within its `country`; an
alphanumeric sender ID has no country and is refused (`sender_not_allowed`) for the
destinations of ``[router] alphanumeric_refused`` (US and CA by default). The answer
depends only on the destination's country, area code and the use case, so it is
worked out once per such combination and kept: on the hot path a message costs a
dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.config import Campaign, NumberDetails, Settings
from router.numbers import SenderKind, area_code, country_of, region_key, sender_kind

__all__ = ["LOW_VOLUME_CAP", "Capable", "Refusal", "SenderRules"]

# A LowVolume 10DLC campaign: at most this many messages a day across its numbers.
LOW_VOLUME_CAP = 6_000
CAP_COUNTRIES = frozenset({"US", "CA"})
_SENDING = frozenset({"SmsSender", "A2PSmsSender"})
_GOOD_BRANDS = frozenset({"Verified", "Vetted"})
# When every number refuses for different reasons, the job's code is the first of
# these that some number gave (the most specific), else no_capable_sender.
_MAX_KINDS = 20_000  # destination kinds remembered (countries x area codes x use cases)
_CODE_ORDER = (
    "use_case_not_allowed",
    "international_not_enabled",
    "campaign_not_confirmed",
    "sender_not_allowed",
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a job is not sent: a normalised `code` and a `reason` naming number and rule."""

    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Capable:
    """The numbers of a profile that may send to one kind of destination.

    `tiers` are the capable numbers grouped by preference for geomatch (same area
    code, same country, any), each in pool order, within the groups of `ranked` (the
    profile's `sender_preference`: the preferred kinds first; one group without it);
    `numbers` is all of them in pool order. `campaign` maps a capable number to its
    capped campaign when this destination counts against that campaign's daily cap.
    `refusals` says why each other number cannot; `refusal` is the job's when none can.
    """

    numbers: tuple[str, ...]
    tiers: tuple[tuple[str, ...], ...]
    campaign: dict[str, str]
    refusals: dict[str, Refusal]
    refusal: Refusal | None
    ranked: tuple[tuple[str, ...], ...] = ()


class SenderRules:
    """The send-time rules of one profile, over its numbers."""

    def __init__(self, name: str, numbers: Sequence[str], settings: Settings) -> None:
        self.name = name
        self.pool = tuple(numbers)
        self._details = {n: settings.number(n) for n in self.pool}
        self._campaigns = settings.campaigns
        self._kinds: dict[str, SenderKind] = {n: sender_kind(n) for n in self.pool}
        # As `country_of` names them; None for an alphanumeric ID (no country).
        self._countries = {n: self._country(n) for n in self.pool}
        profile = settings.profiles.get(name)
        self._preference = tuple(profile.sender_preference) if profile is not None else ()
        # A number's place in sender_preference (unlisted kinds last).
        self._rank = {
            n: self._preference.index(k) if k in self._preference else len(self._preference)
            for n, k in self._kinds.items()
        }
        self._alpha_refused = frozenset(region_key(r) for r in settings.router.alphanumeric_refused)
        self._areas = {n: area_code(n) for n in self.pool}
        self._static = {n: self._static_refusal(n) for n in self.pool}
        self._mms = {n: self._mms_problem(n) for n in self.pool}
        self._cache: dict[tuple[str, str | None, str | None], Capable] = {}

    def _country(self, number: str) -> str | None:
        kind = self._kinds[number]
        if kind in ("long_code", "toll_free"):
            return country_of(number)
        region = self._details[number].country
        return region_key(region) if kind == "short_code" and region else None

    def kind(self, number: str) -> SenderKind:
        """The kind of sender `number` (of this profile) is."""
        return self._kinds[number]

    def caps(self) -> dict[str, int]:
        """Daily cap of each campaign that has one (LowVolume: 6,000)."""
        out: dict[str, int] = {}
        for number in self.pool:
            campaign_id = self._campaign_of(number)
            if campaign_id is None or campaign_id not in self._campaigns:
                continue
            cap = daily_cap(self._campaigns[campaign_id])
            if cap is not None:
                out[campaign_id] = cap
        return out

    def capable(self, to: str, use_case: str | None) -> Capable:
        """Which numbers may send to `to` for `use_case` (kept per destination kind)."""
        country = country_of(to)
        area = area_code(to)
        key = (country, area, use_case)
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= _MAX_KINDS:
                self._cache.clear()  # use cases are the producers' strings: stay bounded
            found = self._cache[key] = self._work_out(to, country, area, use_case)
        return found

    def refusal(self, number: str, to: str, use_case: str | None) -> Refusal | None:
        """Why `number` (of this profile) may not send to `to`, or None."""
        capable = self.capable(to, use_case)
        return capable.refusals.get(number)

    def _work_out(self, to: str, country: str, area: str | None, use_case: str | None) -> Capable:
        refusals: dict[str, Refusal] = {}
        campaign: dict[str, str] = {}
        capable: list[str] = []
        counted = country in CAP_COUNTRIES
        for number in self.pool:
            refusal = self._static[number] or self._for(number, to, country, use_case)
            if refusal is not None:
                refusals[number] = refusal
                continue
            capable.append(number)
            campaign_id = self._campaign_of(number)
            if counted and campaign_id is not None and campaign_id in self._campaigns:
                if daily_cap(self._campaigns[campaign_id]) is not None:
                    campaign[number] = campaign_id
        # sender_preference: the preferred kinds' numbers first, each group in pool order.
        ranked = tuple(
            group
            for group in (
                tuple(n for n in capable if self._rank[n] == rank)
                for rank in range(len(self._preference) + 1)
            )
            if group
        )
        tiers = tuple(t for group in ranked for t in self._geo_tiers(group, country, area))
        refusal = None if capable else self._overall(to, refusals)
        return Capable(tuple(capable), tiers, campaign, refusals, refusal, ranked)

    def _geo_tiers(
        self, capable: tuple[str, ...], country: str, area: str | None
    ) -> tuple[tuple[str, ...], ...]:
        """`capable` by geomatch preference: same area code, same country, any."""
        same_area = tuple(
            n for n in capable if self._countries[n] == country and area and self._areas[n] == area
        )
        same_country = tuple(
            n for n in capable if self._countries[n] == country and n not in same_area
        )
        rest = tuple(n for n in capable if self._countries[n] != country)
        return tuple(t for t in (same_area, same_country, rest) if t)

    def _overall(self, to: str, refusals: dict[str, Refusal]) -> Refusal:
        codes = {r.code for r in refusals.values()}
        code = codes.pop() if len(codes) == 1 else None
        if code is None:
            given = {r.code for r in refusals.values()}
            code = next((c for c in _CODE_ORDER if c in given), "no_capable_sender")
        why = "; ".join(r.reason for r in refusals.values())
        return Refusal(code, f"no number of profile {self.name!r} may send to {to}: {why}")

    def mms_problem(self, number: str) -> str | None:
        """Why `number` (of this profile) cannot send an MMS (``+1800...: toll-free``), or
        None when it may: it has the `MmsSender` feature and is neither toll-free nor an
        alphanumeric sender ID (carriers take MMS from neither)."""
        return self._mms[number]

    def _mms_problem(self, number: str) -> str | None:
        kind = self._kinds[number]
        if kind == "toll_free":
            return f"{number} is toll-free (no MMS)"
        if kind == "alphanumeric":
            return f"{number} is an alphanumeric sender ID (no MMS)"
        if "MmsSender" not in self._details[number].features:
            return f"{number} has no MmsSender feature"
        return None

    def static_refusal(self, number: str) -> Refusal | None:
        """What rules out `number` (of this profile) whatever the message, or None."""
        return self._static[number]

    def _static_refusal(self, number: str) -> Refusal | None:
        """What rules out `number` whatever the message."""
        details: NumberDetails = self._details[number]
        if not details.sms_enabled:
            return Refusal("no_capable_sender", f"{number}: sms_enabled = false")
        if not _SENDING.intersection(details.features):
            return Refusal("no_capable_sender", f"{number}: no SmsSender or A2PSmsSender feature")
        kind = self._kinds[number]
        if kind == "toll_free":
            if not details.verified:
                return Refusal("no_capable_sender", f"{number}: toll-free and not verified")
            return None
        if kind == "short_code" and self._countries[number] is None:
            return Refusal("no_capable_sender", f"{number}: a short code without a country")
        if kind == "long_code" and self._countries[number] in CAP_COUNTRIES:
            campaign_id = details.campaign
            if campaign_id is None:
                return Refusal(
                    "campaign_not_confirmed", f"{number}: a US/CA long code needs a campaign"
                )
            spec = self._campaigns.get(campaign_id)
            if spec is None or spec.status != "Confirmed":
                status = spec.status if spec is not None else "unknown"
                return Refusal(
                    "campaign_not_confirmed",
                    f"{number}: campaign {campaign_id!r} is {status}, not Confirmed",
                )
            if spec.brand_status not in _GOOD_BRANDS:
                return Refusal(
                    "campaign_not_confirmed",
                    f"{number}: campaign {campaign_id!r} brand is {spec.brand_status}, "
                    "not Verified or Vetted",
                )
        return None

    def _campaign_of(self, number: str) -> str | None:
        """A number's 10DLC campaign: long codes only (the config check refuses others)."""
        return self._details[number].campaign if self._kinds[number] == "long_code" else None

    def _for(self, number: str, to: str, country: str, use_case: str | None) -> Refusal | None:
        details = self._details[number]
        kind = self._kinds[number]
        if kind == "alphanumeric":
            if country in self._alpha_refused:
                return Refusal(
                    "sender_not_allowed",
                    f"{number}: {to}'s country does not accept alphanumeric sender IDs",
                )
            return None  # no home country: no international rule, no campaign
        if kind == "short_code":
            if country != self._countries[number]:
                return Refusal(
                    "sender_not_allowed",
                    f"{number}: a short code sends only within its country, not to {to}",
                )
        elif (
            country != self._countries[number] and "InternationalSmsSender" not in details.features
        ):
            return Refusal(
                "international_not_enabled",
                f"{number}: {to} is in another country and the number has no "
                "InternationalSmsSender feature",
            )
        campaign_id = self._campaign_of(number)
        if use_case is not None and campaign_id is not None:
            spec = self._campaigns.get(campaign_id)
            if spec is not None and use_case not in spec.use_cases:
                allowed = ", ".join(spec.use_cases) or "none"
                return Refusal(
                    "use_case_not_allowed",
                    f"{number}: use case {use_case!r} is not among campaign "
                    f"{campaign_id!r}'s use_cases ({allowed})",
                )
        return None


def daily_cap(campaign: Campaign) -> int | None:
    """A campaign's messages a day to US/CA destinations, or None (unlimited)."""
    if campaign.tier == "LowVolume":
        return min(LOW_VOLUME_CAP, campaign.daily_cap or LOW_VOLUME_CAP)
    return campaign.daily_cap
