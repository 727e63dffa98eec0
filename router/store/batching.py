"""Coalescing calls: whatever arrives while one Redis call is in flight goes in the next.

Used where many small stores race in from the network (delivery reports, inbound
messages): each caller awaits its own answer, and Redis sees one call per batch.
There is no timer and no background task: the first caller that finds no call in
flight makes the calls until nothing is waiting, so a lone item is not held back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Runs `call` on batches of at most `limit` items; `submit` one item, get its result."""

    def __init__(self, call: Callable[[list[T]], Awaitable[Sequence[R]]], limit: int = 500) -> None:
        self._call = call
        self._limit = limit
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._busy = False

    async def submit(self, item: T) -> R:
        """`item`'s result; raises what the call raised for its batch."""
        future = self._add(item)
        await self._serve()
        return await future

    async def submit_many(self, items: Sequence[T]) -> list[R | Exception]:
        """Each item's result, in order, or the exception its batch's call raised (a
        caller that read many items at once waits on them together, with no task or
        coroutine per item)."""
        futures = [self._add(item) for item in items]
        await self._serve()
        results: list[R | Exception] = []
        for future in futures:
            try:
                results.append(await future)
            except Exception as exc:
                results.append(exc)
        return results

    def _add(self, item: T) -> asyncio.Future[R]:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        return future

    async def _serve(self) -> None:
        """Make the calls until nothing waits, unless a call is in flight already (its
        maker takes what waits next)."""
        if self._busy:
            return
        self._busy = True
        try:
            while self._waiting:
                taken = self._waiting[: self._limit]
                del self._waiting[: self._limit]
                await self._run(taken)
        finally:
            self._busy = False
            # Cancelled (shutting down) with items still waiting: nobody will make
            # their call, so they fail rather than wait forever.
            for _, left in self._waiting:
                if not left.done():
                    left.set_exception(RuntimeError("not stored: stopping"))
            self._waiting.clear()

    async def _run(self, taken: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._call([item for item, _ in taken])
        except BaseException as exc:
            for _, future in taken:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if isinstance(exc, Exception):
                return
            raise
        for (_, future), result in zip(taken, results, strict=True):
            if not future.done():
                future.set_result(result)
