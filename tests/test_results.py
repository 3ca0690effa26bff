"""The result objects where they go beyond the stdlib's: a chunked imap returns the
result iterator itself (the stdlib, a plain generator), so next(timeout) works on it.
"""

from __future__ import annotations

import time

import pytest
from faults import sleep_then_square

from methodpool import MethodPool


def test_chunked_imap_keeps_next_with_timeout(pool: MethodPool) -> None:
    import multiprocessing

    results = pool.imap(sleep_then_square, [0.01, 0.01, 2.0, 0.01], chunksize=2)
    assert [results.next(timeout=10), results.next(timeout=10)] == pytest.approx([1e-4, 1e-4])
    started = time.monotonic()
    with pytest.raises(multiprocessing.TimeoutError):
        results.next(timeout=0.2)
    assert time.monotonic() - started < 1.5
    assert list(results) == pytest.approx([4.0, 1e-4])
