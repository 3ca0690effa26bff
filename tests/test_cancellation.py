"""TaskResult.cancel(): a task still waiting never runs, a running one has its
worker killed; get() raises concurrent.futures.CancelledError.
"""

from __future__ import annotations

import time
from concurrent.futures import CancelledError
from typing import Any

import pytest
from faults import sleep_then_square, square, still_works

from methodpool import MethodPool


def test_cancel_a_running_task(fresh_pool: MethodPool) -> None:
    running = fresh_pool.apply_async(sleep_then_square, (30,))
    time.sleep(0.5)
    started = time.monotonic()
    assert running.cancel()
    with pytest.raises(CancelledError):
        running.get(timeout=10)
    assert time.monotonic() - started < 5
    assert not running.cancel()  # already settled
    still_works(fresh_pool)


def test_cancel_a_pending_task_before_it_runs(ctx: Any, tmp_path: Any) -> None:
    marker = tmp_path / "ran"
    with MethodPool(1, context=ctx) as pool:
        blocker = pool.apply_async(sleep_then_square, (1.0,))
        queued = [pool.apply_async(sleep_then_square, (0.01,)) for _ in range(5)]
        pending = pool.apply_async(marker.touch)
        assert pending.cancel()
        with pytest.raises(CancelledError):
            pending.get(timeout=10)
        assert blocker.get(timeout=30) == 1.0  # the running task was not disturbed
        assert [q.get(timeout=30) for q in queued] == [0.0001] * 5
        still_works(pool)
    assert not marker.exists()


def test_cancel_after_the_result_changes_nothing(pool: MethodPool) -> None:
    done = pool.apply_async(square, (3,))
    assert done.get(timeout=30) == 9
    assert not done.cancel()
    assert done.get() == 9
