"""progress=: a tqdm bar (True, a dict of tqdm options, or a bar of one's own) that
counts items, not chunks, on every method; without tqdm, an error saying how to get it.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from typing import Any

import pytest
from callables import Affine
from faults import square
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
