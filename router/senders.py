"""Sender selection: which of a profile's numbers sends the next message."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from . import keys


class SenderPool:
    """Round-robin over a profile's numbers, shared by every router instance.

    One ``INCRBY`` per batch reserves a run of positions in the rotation, so
    over any stretch of messages each number is used equally often (300
    messages over 3 numbers: 100 each) whichever instance sends them.
    """

    def __init__(self, redis: Redis, profile: str, numbers: Sequence[str]) -> None:
        if not numbers:
            raise ValueError(f"profile {profile!r} has no sender numbers")
        self._redis = redis
        self._key = keys.round_robin(profile)
        self.numbers = tuple(numbers)
        self._owned = frozenset(numbers)

    def owns(self, number: str) -> bool:
        """Whether `number` is one of this profile's sender numbers."""
        return number in self._owned

    async def assign(self, count: int) -> list[str]:
        """The next `count` numbers of the rotation."""
        if count <= 0:
            return []
        end = int(await self._redis.incrby(self._key, count))
        size = len(self.numbers)
        return [self.numbers[i % size] for i in range(end - count, end)]
