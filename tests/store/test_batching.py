"""The call coalescer used for delivery reports and inbound stores."""

from __future__ import annotations

import asyncio

import pytest

from router.store.batching import Batcher


async def test_items_arriving_during_a_call_share_the_next_call() -> None:
    calls: list[list[int]] = []

    async def call(items: list[int]) -> list[int]:
        calls.append(items)
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(call, limit=50)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(120)))
    assert results == [i * 10 for i in range(120)]
    assert [len(c) for c in calls] == [1, 50, 50, 19]  # the first alone, then batches
    assert sorted(i for c in calls for i in c) == list(range(120))


async def test_a_failed_call_fails_only_its_own_batch() -> None:
    async def call(items: list[int]) -> list[int]:
        await asyncio.sleep(0.01)
        if 3 in items:
            raise ConnectionError("redis went away")
        return items

    batcher: Batcher[int, int] = Batcher(call)
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0)  # the first call is in flight
    rest = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]
    assert await first == 0
    for task in rest:
        with pytest.raises(ConnectionError):
            await task
    assert await batcher.submit(4) == 4  # still usable afterwards


async def test_cancelled_flusher_fails_waiting_items_instead_of_leaving_them() -> None:
    started = asyncio.Event()

    async def call(items: list[int]) -> list[int]:
        started.set()
        await asyncio.sleep(10)
        return items

    batcher: Batcher[int, int] = Batcher(call)
    flusher = asyncio.ensure_future(batcher.submit(0))
    await started.wait()
    waiting = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0)
    flusher.cancel()
    with pytest.raises(RuntimeError, match="stopping"):
        await asyncio.wait_for(waiting, 1)
