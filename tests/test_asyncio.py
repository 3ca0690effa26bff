"""Results can be awaited and imap iterators iterated with ``async for``, without
blocking the event loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from faults import sleep_then_square, square

from methodpool import MethodPool

XS = list(range(100))


def test_await_results_without_blocking_the_loop(pool: MethodPool) -> None:
    async def main() -> tuple[Any, ...]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        slow = await pool.apply_async(sleep_then_square, (0.5,))
        mapped = await pool.map_async(square, XS)
        starred = await pool.starmap_async(pow, [(2, 3)])
        streamed = [y async for y in pool.imap(square, XS)]
        chunked = [y async for y in pool.imap(square, XS, chunksize=8)]
        unordered = sorted([y async for y in pool.imap_unordered(square, XS, buffersize=4)])
        ticking.cancel()
        return slow, mapped, starred, streamed, chunked, unordered, ticks

    slow, mapped, starred, streamed, chunked, unordered, ticks = asyncio.run(main())
    squares = [x * x for x in XS]
    assert slow == 0.25 and starred == [8]
    assert mapped == streamed == chunked == unordered == squares
    assert ticks >= 10  # the loop ran while the 0.5 s task did


def test_await_raises_the_task_exception(pool: MethodPool) -> None:
    async def main() -> None:
        await pool.apply_async(square, ("not a number",))

    with pytest.raises(TypeError):
        asyncio.run(main())


def test_cancelling_an_await_cancels_the_task(pool: MethodPool) -> None:
    from concurrent.futures import CancelledError

    submitted = time.monotonic()
    sleeps = [pool.apply_async(time.sleep, (4,)) for _ in range(2)]  # one per worker

    async def main() -> None:
        for result in sleeps:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(result, 0.2)

    asyncio.run(main())
    for result in sleeps:
        with pytest.raises(CancelledError):
            result.get(timeout=5)
    # Both workers are free again (replaced) long before the sleeps would end.
    assert pool.map(square, range(4), chunksize=1) == [0, 1, 4, 9]
    assert time.monotonic() - submitted < 3


def test_cancelling_an_await_of_a_map_leaves_its_tasks_running(pool: MethodPool) -> None:
    mapped = pool.map_async(sleep_then_square, [0.5, 0.5])

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(mapped, 0.1)

    asyncio.run(main())
    assert mapped.get(timeout=30) == [0.25, 0.25]
