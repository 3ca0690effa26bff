"""pool.stats(): per-call statistics (tasks, items, bytes sent, the callable's
size, task times and the slowest tasks).
"""

from __future__ import annotations

import pytest
from callables import Affine, module_function
from faults import sleep_then_square

from methodpool import MethodPool

XS = list(range(100))


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
    # A sleep lasts at least as long as asked, and longer on a loaded machine:
    # lower bounds from the durations, upper bounds from the call's wall time.
    assert stats.slowest[0][0] == 5 and 0.39 <= stats.slowest[0][1] <= stats.wall_seconds
    assert sum(durations) - 0.01 <= stats.task_seconds <= 2 * stats.wall_seconds
    assert 0 < stats.utilisation <= 1.05


def test_stats_count_the_callable_once(pool: MethodPool) -> None:
    pool.map(Affine().apply, XS, chunksize=5)
    stats = pool.stats()[-1]
    assert stats.callable_bytes > 0 and stats.serialize_seconds > 0
    assert stats.tasks == 20
