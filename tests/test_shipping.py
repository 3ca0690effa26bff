"""The callable ships once: structural facts, checked by counting, not timing."""

from __future__ import annotations

import gc
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from callables import Affine, module_function
from conftest import SharedPools, process_alive

from methodpool import MethodPool
from methodpool._sharedmem import SHARED_MIN_BYTES


class Heavy(Affine):
    """A bound method's instance with ``size`` bytes of state."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.state = os.urandom(size)

    def apply_and_measure(self, x: int) -> tuple[int, int]:
        return self.apply(x), len(self.state)


def shm_names() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith("psm_")}


def sent(pool: MethodPool) -> tuple[int, int, int]:
    counters = pool._counters
    return counters.frames_written, counters.bytes_written, counters.callables_serialized


@pytest.mark.parametrize("chunksize", [1, 7])
def test_one_serialization_per_call_however_many_tasks(pool: MethodPool, chunksize: int) -> None:
    f = Affine(3, 0).apply
    frames0, _, serialized0 = sent(pool)
    assert list(pool.imap(f, range(50), chunksize=chunksize)) == [3 * x for x in range(50)]
    frames1, _, serialized1 = sent(pool)
    assert serialized1 - serialized0 == 1
    assert frames1 - frames0 == -(-50 // chunksize)


def test_module_functions_are_not_serialized_at_all(pool: MethodPool) -> None:
    _, _, serialized0 = sent(pool)
    pool.map(module_function, range(10))
    assert sent(pool)[2] == serialized0


@pytest.mark.timeout(120)
def test_20mb_bound_method_costs_under_1kb_per_task(
    shared_pools: SharedPools, start_method: str
) -> None:
    pool = shared_pools.get(start_method)
    heavy = Heavy(20_000_000)
    frames0, bytes0, _ = sent(pool)
    results = list(pool.imap(heavy.apply_and_measure, range(200)))
    frames1, bytes1, _ = sent(pool)
    assert results == [(2 * x + 1, 20_000_000) for x in range(200)]
    assert (bytes1 - bytes0) / (frames1 - frames0) < 1024


def test_small_callables_travel_inline(pool: MethodPool) -> None:
    created = pool._counters.segments_created
    pool.map(Heavy(100).apply, range(10))
    assert pool._counters.segments_created == created


def test_unchanged_callable_reuses_its_segment_and_a_changed_one_does_not(
    pool: MethodPool,
) -> None:
    heavy = Heavy(SHARED_MIN_BYTES)
    created = pool._counters.segments_created
    for _ in range(3):
        assert pool.map(heavy.apply, range(8)) == [2 * x + 1 for x in range(8)]
    assert pool._counters.segments_created == created + 1
    heavy.b = 100  # snapshot semantics: the next call sees the new state
    assert pool.map(heavy.apply, range(8)) == [2 * x + 100 for x in range(8)]
    assert pool._counters.segments_created == created + 2


def test_idle_segments_are_bounded(pool: MethodPool) -> None:
    for size in range(8):
        pool.map(Heavy(SHARED_MIN_BYTES + size).apply, range(4))
    assert len(pool._segments.names()) <= 4


def test_segments_can_be_read_by_their_owner_only(pool: MethodPool) -> None:
    before = set(pool._segments.names())
    umask = os.umask(0)  # the mode must be the pool's own, not the umask's doing
    try:
        assert pool.map(Heavy(SHARED_MIN_BYTES * 2).apply, range(8)) == [
            2 * x + 1 for x in range(8)
        ]
    finally:
        os.umask(umask)
    created = set(pool._segments.names()) - before
    assert created
    for name in created:
        info = os.stat(f"/dev/shm/{name}")
        assert stat.S_IMODE(info.st_mode) == 0o600, oct(info.st_mode)
        assert info.st_uid == os.getuid()


@pytest.mark.parametrize("end", ["terminate", "close_join", "context_manager", "garbage"])
def test_no_segment_outlives_the_pool(ctx: Any, end: str) -> None:
    before = shm_names()
    pool = MethodPool(2, context=ctx)
    result = pool.map_async(Heavy(SHARED_MIN_BYTES * 2).apply, range(20))
    names = set(pool._segments.names())
    assert names and names <= shm_names() - before
    if end == "terminate":
        pool.terminate()
    elif end == "close_join":
        pool.close()
        pool.join()
        assert result.get() == [2 * x + 1 for x in range(20)]
    elif end == "context_manager":
        with pool:
            result.get(timeout=30)
    else:
        result.get(timeout=30)
        pool.close()
        pool.join()  # join collects nothing by itself; drop the last reference:
        del pool, result
        gc.collect()
    assert not names & shm_names()


KILLED_PARENT = textwrap.dedent(
    """
    import multiprocessing, os, sys, time
    from methodpool import MethodPool

    class Heavy:
        def __init__(self):
            self.state = os.urandom(1_000_000)
        def slow(self, x):
            time.sleep(60)

    if __name__ == "__main__":
        pool = MethodPool(2, context=multiprocessing.get_context(sys.argv[1]))
        pool.map_async(Heavy().slow, range(4))
        time.sleep(0.5)
        print(pool._segments.names()[0], *(p.pid for p in pool._pool), flush=True)
        time.sleep(60)
    """
)


@pytest.mark.timeout(60)
def test_killed_parent_leaves_no_workers_and_no_segments(start_method: str, tmp_path: Any) -> None:
    script = tmp_path / "parent.py"
    script.write_text(KILLED_PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script), start_method],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert parent.stdout is not None
    name, *worker_pids = parent.stdout.readline().split()
    assert name in shm_names() and len(worker_pids) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
        name in shm_names() or any(process_alive(int(pid)) for pid in worker_pids)
    ):
        time.sleep(0.1)
    assert not any(process_alive(int(pid)) for pid in worker_pids), "orphaned workers"
    assert name not in shm_names(), "segment left behind"
