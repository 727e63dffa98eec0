"""Spend limits: a profile's `daily_spend_limit` against what today's messages cost.

Each sent message adds its price (parts x its connector's price for the destination)
to the profile's day in Redis (finish.lua: ``sms:{P}:spend:<YYYY-MM-DD>``, UTC). Before
a batch is recorded `sending`, `SpendLimit.screen` reads the day's total once and
refuses (``spend_limit_reached``) each message whose estimate would take the total
past the limit: its parts times the highest price among its route's connectors (a
connector without a price for it counts 0). Instances screen their batches side by
side, so the limit may be passed by what they have in flight at the same moment, at
most a batch each: a soft limit, as every carrier-side budget is.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from router.config import Connector, Profile
from router.policy.checks import segments
from router.policy.routes import Matched
from router.policy.rules import Refusal
from router.store import keys

__all__ = ["SpendLimit", "today"]


today = keys.utc_day  # the UTC day spend is counted in (YYYY-MM-DD)


class SpendLimit:
    """The daily spend limit of one profile (a no-op without one)."""

    def __init__(self, name: str, profile: Profile, connectors: dict[str, Connector]) -> None:
        self.name = name
        self.profile = profile
        self.limit = profile.daily_spend_limit
        self._connectors = connectors

    def estimate(self, text: str, to: str, route: Matched) -> float:
        """What a message may cost: its parts times its route's highest price."""
        prices = [
            price
            for name in route.connectors
            if (c := self._connectors.get(name)) is not None and (price := c.price(to)) is not None
        ]
        return segments(text, self.profile) * max(prices, default=0.0)

    async def screen(
        self, redis: Redis, messages: Sequence[tuple[str, str, Matched]]
    ) -> list[Refusal | None]:
        """For each (text, to, route) in order: None, or the refusal past the limit."""
        limit = self.limit
        if limit is None or not messages:
            return [None] * len(messages)
        spent = keys.spend_amount(await redis.hget(keys.spend(self.name, today()), "total"))
        verdicts: list[Refusal | None] = []
        for text, to, route in messages:
            cost = self.estimate(text, to, route)
            if cost and spent + cost > limit:
                verdicts.append(
                    Refusal(
                        "spend_limit_reached",
                        f"today's spend {spent:.4f} + {cost:.4f} would pass "
                        f"daily_spend_limit = {limit:g} (profile {self.name})",
                    )
                )
                continue
            spent += cost
            verdicts.append(None)
        return verdicts
