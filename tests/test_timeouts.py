"""task_timeout, pool-wide or per call: an overdue task fails alone with
TaskTimeoutError, its worker replaced; the other tasks are unaffected.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from faults import sleep_then_square, square, still_works

from methodpool import MethodPool, TaskTimeoutError


def test_task_timeout_fails_only_the_overdue_task(ctx: Any) -> None:
    with MethodPool(2, context=ctx, task_timeout=0.5) as pool:
        results = [pool.apply_async(sleep_then_square, (s,)) for s in (0.01, 30, 0.01, 0.02)]
        with pytest.raises(TaskTimeoutError, match=r"task_timeout of 0\.5 s"):
            results[1].get(timeout=20)
        assert [results[i].get(timeout=20) for i in (0, 2, 3)] == [0.0001, 0.0001, 0.0004]
        still_works(pool)


def test_per_call_task_timeout(pool: MethodPool) -> None:
    outcome = pool.map_async(sleep_then_square, [0.01, 30], chunksize=1, task_timeout=0.5)
    with pytest.raises(TaskTimeoutError):
        outcome.get(timeout=20)
    assert pool.apply(sleep_then_square, (0.2,), task_timeout=5) == pytest.approx(0.04)
    with pytest.raises(ValueError, match="task_timeout must be a positive"):
        pool.map(square, [1], task_timeout=0)
    still_works(pool)


def test_task_timeout_fires_on_an_idle_pool_every_time(ctx: Any) -> None:
    # The result thread may be asleep with no deadline when the task is sent.
    with MethodPool(1, context=ctx) as pool:
        still_works(pool)
        for _ in range(4):
            started = time.monotonic()
            with pytest.raises(TaskTimeoutError):
                pool.apply(sleep_then_square, (30,), task_timeout=0.3)
            assert time.monotonic() - started < 5
