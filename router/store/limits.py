"""An account's rate (`tps`) and daily quota (`daily_quota`), shared by every instance.

Each take is one Lua step (``lua/limit.lua``) on two keys of the account's own hash
tag, so it is atomic and runs on Redis Cluster:

- ``sms:{acct:NAME}:rate``: the rate, a token bucket kept as GCRA (one number: the
  time the bucket is next full, on Redis' clock). Chosen over a sliding window because
  it is one small key and O(1) per take whatever the rate or the batch size (a sliding
  log holds one entry per message), it admits a steady `tps` exactly and a burst of
  one second's worth (at least one message) after a pause, and a batch larger than
  that burst is admitted when the bucket is full and paid for by waiting afterwards,
  rather than refused for ever. Redis' clock (``TIME``) is the only clock, so
  instances with skewed clocks still share one rate.
- ``sms:{acct:NAME}:quota``: a hash, field = the UTC day (YYYY-MM-DD) on Redis'
  clock, value = messages counted that day. The script works the day out from
  ``TIME`` (as the rate does), so instances whose clocks disagree near midnight still
  count one day; a take that counts removes the other days' fields (one field
  remains). One declared key rather than a key per day: the script cannot declare a
  key whose name it computes, and Redis Cluster wants every key declared. A take that
  would pass `daily_quota` is refused and not counted, so the day stops at exactly
  its number.

A refused take counts nothing against either limit, and a door whose enqueue failed
after the take gives it back (`give_back`, ``lua/limit_return.lua``).
"""

from __future__ import annotations

from typing import Final, NamedTuple

from redis.asyncio import Redis

from router.policy.accounts import Caller
from router.store import keys, scripts
from router.store.connections import as_text

__all__ = ["AccountLimits", "Limited", "quota_key", "rate_key", "used_today"]

THROTTLED: Final = "throttled"
QUOTA: Final = "quota"

# The day's arithmetic (utc_day) goes before each quota script.
_LIMIT = scripts.source("limit_day") + scripts.source("limit")
_RETURN = scripts.source("limit_day") + scripts.source("limit_return")
_DAY = 86_400
_BURST = 1.0  # seconds of the rate a bucket holds: one second's worth of messages


class Limited(NamedTuple):
    """Why a take was refused: `code` "throttled" (the rate) or "quota" (the day's
    number), a reason naming the limit, and when to try again (seconds)."""

    code: str
    reason: str
    retry_after: float


def rate_key(account: str) -> str:
    """The account's token bucket (GCRA: when it is next full, µs on Redis' clock)."""
    return f"sms:{{acct:{account}}}:rate"


def quota_key(account: str) -> str:
    """Hash: UTC day (YYYY-MM-DD, Redis' clock) -> messages counted against the
    account's quota that day (only the latest day is kept)."""
    return f"sms:{{acct:{account}}}:quota"


async def used_today(redis: Redis, account: str) -> int:
    """Messages counted against `account`'s quota today (the UTC day on Redis' clock)."""
    seconds, _micro = await redis.time()
    value = await redis.hget(quota_key(account), keys.utc_day(seconds))
    return int(value or 0)


class AccountLimits:
    """Takes an account's messages from its limits in Redis."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_LIMIT)
        self._return = redis.register_script(_RETURN)
        # The UTC day (Redis' clock) each account's last take counted in, so a give
        # back just after midnight returns it to the day it was taken from.
        self._days: dict[str, str] = {}

    async def give_back(self, caller: Caller, count: int = 1) -> None:
        """Undo a successful `take` of `count` whose jobs were not stored (the enqueue
        failed), so the account is not charged for them: to the day of this
        instance's last take of the account (today on Redis' clock if none)."""
        account = caller.account
        if account.tps <= 0 and account.daily_quota is None:
            return
        interval = 1_000_000 / account.tps if account.tps > 0 else 0.0
        await self._return(
            keys=[rate_key(caller.name), quota_key(caller.name)],
            args=[count, repr(interval), self._days.get(caller.name, "")],
        )

    async def take(self, caller: Caller, count: int = 1) -> Limited | None:
        """Count `count` messages of `caller`'s account; None when allowed (counted),
        else why not (nothing counted)."""
        account = caller.account
        quota = account.daily_quota
        if account.tps <= 0 and quota is None:
            return None
        interval = 1_000_000 / account.tps if account.tps > 0 else 0.0
        # At least one message's worth, so a tps below 1 still admits one at a time.
        burst = max(interval, _BURST * 1_000_000)
        code, value, *rest = await self._script(
            keys=[rate_key(caller.name), quota_key(caller.name)],
            args=[count, repr(interval), repr(burst), -1 if quota is None else quota, 2 * _DAY],
        )
        code = int(code)
        if code == 0:
            self._days[caller.name] = as_text(value)
            return None
        if code == 1:
            return Limited(
                THROTTLED,
                f"account {caller.name!r} is over its rate of {account.tps:g} messages/s",
                int(value) / 1_000_000,
            )
        used = int(value)
        return Limited(
            QUOTA,
            f"account {caller.name!r} reached its daily quota of {quota} messages "
            f"({used} sent today, {count} more asked)",
            int(rest[0]),  # seconds to Redis' next UTC midnight
        )
