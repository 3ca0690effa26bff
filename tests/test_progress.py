"""progress=: a tqdm bar (True, a dict of tqdm options, or a bar of one's own) that
counts items, not chunks, on every method; without tqdm, an error saying how to get it.
"""

from __future__ import annotations

import io
import sys
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
