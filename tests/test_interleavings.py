"""Random interleavings of calls, worker kills and waits never hang or lose a result.

A hypothesis state machine drives one pool: it submits work through every
method, kills workers at random moments, and collects results in random order.
Every result must be the right value, or ``WorkerLostError`` for a task that
was running on a killed worker; nothing may hang.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from typing import Any

import pytest
from faults import sleep_then_square
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from methodpool import MethodPool, WorkerLostError

DELAYS = st.lists(st.sampled_from([0.0, 0.001, 0.01, 0.05]), min_size=1, max_size=6)


class PoolUnderFire(RuleBasedStateMachine):
    start_method = "fork"

    def __init__(self) -> None:
        super().__init__()
        self.pool = MethodPool(2, context=multiprocessing.get_context(self.start_method))
        self.pending: list[tuple[str, Any, list[float]]] = []
        self.kills = 0

    @rule(delays=DELAYS)
    def map_async(self, delays: list[float]) -> None:
        self.pending.append(("map", self.pool.map_async(sleep_then_square, delays, 1), delays))

    @rule(delays=DELAYS, chunksize=st.integers(1, 3))
    def imap(self, delays: list[float], chunksize: int) -> None:
        results = self.pool.imap(sleep_then_square, delays, chunksize)
        self.pending.append(("imap", results, delays))

    @rule(delay=st.sampled_from([0.0, 0.01, 0.05]))
    def apply_async(self, delay: float) -> None:
        self.pending.append(("apply", self.pool.apply_async(sleep_then_square, (delay,)), [delay]))

    @rule(which=st.integers(0, 1))
    def kill_a_worker(self, which: int) -> None:
        workers = [p for p in self.pool._pool if p.pid is not None and p.is_alive()]
        if workers:
            with contextlib.suppress(ProcessLookupError):  # it may have just exited
                os.kill(workers[which % len(workers)].pid, signal.SIGKILL)
            self.kills += 1

    @precondition(lambda self: self.pending)
    @rule(index=st.integers(0, 100))
    def collect(self, index: int) -> None:
        kind, result, delays = self.pending.pop(index % len(self.pending))
        expected = [d * d for d in delays]
        try:
            if kind == "imap":
                got = list(result)  # a killed chunk ends the iteration with the error
            else:
                got = result.get(timeout=30)
                got = got if kind == "map" else [got]
        except WorkerLostError:
            assert self.kills, "WorkerLostError although no worker was killed"
            return
        assert got == expected

    @invariant()
    def pool_is_running(self) -> None:
        assert self.pool._state == "RUN"

    def teardown(self) -> None:
        while self.pending:
            self.collect(0)
        assert self.pool.map(sleep_then_square, [0.0] * 4) == [0.0] * 4  # still works
        self.pool.terminate()
        self.pool.join()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_random_interleavings(start_method: str) -> None:
    machine = type(
        f"PoolUnderFire_{start_method}", (PoolUnderFire,), {"start_method": start_method}
    )
    test_case = machine.TestCase
    test_case.settings = settings(
        max_examples=8, stateful_step_count=12, deadline=None, derandomize=False
    )
    test_case().runTest()
