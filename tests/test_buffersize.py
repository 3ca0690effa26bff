"""imap/imap_unordered with buffersize=N read at most N tasks of the input ahead of
the results consumed; failed items and an abandoned iterator stall nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from faults import fail_odd, square

from methodpool import MethodPool


def test_buffersize_bounds_how_far_the_input_is_read(pool: MethodPool) -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        while True:
            pulled += 1
            yield pulled

    results = pool.imap(square, endless(), buffersize=5)
    for expected in range(1, 101):
        assert next(results) == expected * expected
        assert pulled <= expected + 5
    chunked = pool.imap_unordered(square, range(1000), chunksize=10, buffersize=3)
    assert sorted(chunked) == [x * x for x in range(1000)]
    with pytest.raises(ValueError, match="buffersize must be a positive integer"):
        pool.imap(square, [1], buffersize=0)


def test_buffered_imap_goes_on_after_failed_items(pool: MethodPool) -> None:
    results = pool.imap(fail_odd, range(20), buffersize=3)
    got, errors = [], 0
    for _ in range(20):
        try:
            got.append(results.next(timeout=20))
        except ValueError:
            errors += 1
    assert got == list(range(0, 20, 2)) and errors == 10


def test_abandoned_buffered_imap_does_not_block_close_and_join(ctx: Any) -> None:
    pool = MethodPool(2, context=ctx)
    results = pool.imap(square, range(1000), buffersize=4)
    assert next(results) == 0  # and never read again
    pool.close()
    started = time.monotonic()
    pool.join()
    assert time.monotonic() - started < 20
