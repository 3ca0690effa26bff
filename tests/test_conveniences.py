"""Progress bars, per-call statistics and asyncio."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
from typing import Any

import pytest
from callables import Affine, module_function
from faults import sleep_then_square, square
from tqdm import tqdm

from methodpool import MethodPool

XS = list(range(100))


def test_progress_true_draws_a_bar_to_the_end(pool: MethodPool, capsys: Any) -> None:
    assert pool.map(square, XS, chunksize=7, progress=True) == [x * x for x in XS]
    err = capsys.readouterr().err
    assert "100/100" in err and "100%" in err
    assert "square" in err  # labelled with the callable


@pytest.mark.parametrize("chunksize", [1, 9])
def test_progress_counts_items_not_chunks(pool: MethodPool, chunksize: int) -> None:
    bar = tqdm(file=io.StringIO())
    results = list(pool.imap(square, iter(XS), chunksize=chunksize, progress=bar))
    assert results == [x * x for x in XS]
    assert bar.n == 100
    bar.close()


def test_progress_with_tqdm_options_and_on_every_method(pool: MethodPool) -> None:
    out = io.StringIO()
    pool.starmap(pow, [(x, 2) for x in XS], progress={"file": out, "desc": "powers"})
    assert "powers" in out.getvalue() and "100/100" in out.getvalue()
    for call in (
        lambda bar: pool.map_async(square, XS, progress=bar).get(timeout=30),
        lambda bar: pool.starmap_async(pow, [(x, 2) for x in XS], progress=bar).get(timeout=30),
        lambda bar: sorted(pool.imap_unordered(square, XS, chunksize=4, progress=bar)),
        lambda bar: [pool.apply_async(square, (x,), progress=bar).get(timeout=30) for x in XS],
    ):
        bar = tqdm(total=100, file=io.StringIO())
        call(bar)
        assert bar.n == 100
        bar.close()


def test_progress_without_tqdm_says_how_to_install_it(
    pool: MethodPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls_before = len(pool.stats())
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r"pip install 'methodpool\[progress\]'"):
        pool.map(square, XS, progress=True)
    with pytest.raises(TypeError, match="progress= takes True"):
        pool.map(square, XS, progress="yes")
    # A big callable's segment is shared before the bar is made: refused, the
    # call keeps no reference to it, and records no call in stats().
    with pytest.raises(TypeError, match="progress= takes True"):
        big = Affine()
        big.payload = bytes(1 << 20)  # type: ignore[attr-defined]
        pool.imap(big.apply, XS, progress=42)
    assert len(pool.stats()) == calls_before
    segments = pool._segments._segments.values()  # type: ignore[attr-defined]
    assert all(not s.reserved and not s.jobs for s in segments)


class Ticks:
    """The least a progress object needs: ``update(n)``, and no ``refresh``."""

    def __init__(self) -> None:
        self.n = 0

    def update(self, k: int) -> None:
        self.n += k


class BrokenTicks(Ticks):
    def update(self, k: int) -> None:
        raise RuntimeError("progress bug")


def test_progress_object_with_only_update_leaves_the_pool_working(pool: MethodPool) -> None:
    ticks = Ticks()
    assert pool.map(square, XS, progress=ticks) == [x * x for x in XS]
    assert ticks.n == 100
    # The result-handler thread survived the bar's end: later calls return.
    assert pool.map_async(square, XS).get(timeout=30) == [x * x for x in XS]
    ticks = Ticks()
    assert pool.apply_async(square, (3,), progress=ticks).get(timeout=30) == 9
    assert sorted(pool.imap_unordered(square, XS, progress=ticks)) == [x * x for x in XS]
    assert pool.map_async(square, XS).get(timeout=30) == [x * x for x in XS]


def test_progress_object_that_raises_is_logged_and_the_result_delivered(
    pool: MethodPool, caplog: pytest.LogCaptureFixture
) -> None:
    squares = [x * x for x in XS]
    with caplog.at_level(logging.ERROR, logger="methodpool"):
        assert pool.map_async(square, XS, progress=BrokenTicks()).get(timeout=30) == squares
        assert pool.apply_async(square, (4,), progress=BrokenTicks()).get(timeout=30) == 16
        assert list(pool.imap(square, XS, chunksize=7, progress=BrokenTicks())) == squares
    logged = [r for r in caplog.records if r.name == "methodpool" and r.exc_info]
    assert len(logged) == 3  # once per bar, not once per update
    assert "progress bug" in caplog.text and "still delivered" in caplog.text
    assert pool.map_async(square, XS).get(timeout=30) == squares


class SlowToRefresh(Ticks):
    """Records whether the call's end reached the bar, a moment after it does."""

    def __init__(self) -> None:
        super().__init__()
        self.refreshed = 0

    def refresh(self) -> None:
        time.sleep(0.1)
        self.refreshed += 1


def test_the_bar_is_closed_before_the_call_returns(pool: MethodPool) -> None:
    for call in (
        lambda bar: pool.map(square, XS, chunksize=10, progress=bar),
        lambda bar: pool.starmap_async(pow, [(x, 2) for x in XS], progress=bar).get(timeout=30),
        lambda bar: pool.apply_async(square, (2,), progress=bar).get(timeout=30),
        lambda bar: list(pool.imap(square, XS, progress=bar)),
        lambda bar: list(pool.imap_unordered(square, XS, chunksize=8, progress=bar)),
    ):
        bar = SlowToRefresh()
        call(bar)
        assert bar.refreshed == 1


def test_stats_of_a_chunked_map(pool: MethodPool) -> None:
    pool.map(module_function, XS, chunksize=10)
    stats = pool.stats()[-1]
    assert (stats.method, stats.tasks, stats.items, stats.done) == ("map", 10, 100, True)
    assert stats.callable_bytes == 0  # a module-level function goes by reference
    assert stats.bytes_sent > 0 and stats.wall_seconds > 0


def test_stats_time_the_tasks_and_find_the_slowest(pool: MethodPool) -> None:
    durations = [0.02] * 8
    durations[5] = 0.4
    results = pool.imap(sleep_then_square, durations)
    assert list(results) == pytest.approx([d * d for d in durations])
    stats = pool.stats()[-1]
    assert stats.method == "imap" and stats.tasks == 8
    assert stats.slowest[0][0] == 5 and stats.slowest[0][1] == pytest.approx(0.4, abs=0.15)
    assert stats.task_seconds == pytest.approx(sum(durations), abs=0.3)
    assert 0 < stats.utilisation <= 1.05


def test_stats_count_the_callable_once(pool: MethodPool) -> None:
    pool.map(Affine().apply, XS, chunksize=5)
    stats = pool.stats()[-1]
    assert stats.callable_bytes > 0 and stats.serialize_seconds > 0
    assert stats.tasks == 20


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


def test_chunked_imap_keeps_next_with_timeout(pool: MethodPool) -> None:
    import multiprocessing

    results = pool.imap(sleep_then_square, [0.01, 0.01, 2.0, 0.01], chunksize=2)
    assert [results.next(timeout=10), results.next(timeout=10)] == pytest.approx([1e-4, 1e-4])
    started = time.monotonic()
    with pytest.raises(multiprocessing.TimeoutError):
        results.next(timeout=0.2)
    assert time.monotonic() - started < 1.5
    assert list(results) == pytest.approx([4.0, 1e-4])
