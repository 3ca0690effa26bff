"""Every fault ends in a clear exception in the caller, never a hang.

Each test names the fault it injects; each runs under fork, spawn and
forkserver.  The stdlib pool hangs on most of them (see docs/faults.md).
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import process_alive
from faults import (
    SQUARES,
    die_on,
    die_with,
    failing_initializer,
    ignore_sigterm_and_sleep,
    map_in_a_pool_of_its_own,
    pid_of_worker,
    sleep_then_square,
    square,
    still_works,
)

from methodpool import (
    InitializerError,
    MethodPool,
    NestedPoolError,
    PoolTerminatedError,
    RemoteTraceback,
    WorkerLostError,
)


@pytest.mark.parametrize(
    ("how", "reported"),
    [
        ("sigkill", "killed by SIGKILL"),
        ("exit", "exited with code 7"),
        # pytest's faulthandler, inherited by forked workers, may turn the
        # crash into an exit code.
        ("segfault", "(killed by SIGSEGV|exited with code)"),
    ],
)
def test_worker_dies_while_running_a_task(fresh_pool: MethodPool, how: str, reported: str) -> None:
    task = functools.partial(die_on, how=how)
    results = [fresh_pool.apply_async(task, (x,)) for x in range(10)]
    for x, result in enumerate(results):
        if x == 3:
            with pytest.raises(WorkerLostError, match=rf"{reported} while running task 0 of job"):
                result.get(timeout=30)
        else:
            assert result.get(timeout=30) == x * x  # nothing else is lost
    still_works(fresh_pool)


@pytest.mark.parametrize("victim", [0, 1, 2_500, 4_999])
def test_worker_dies_in_a_stream_of_tiny_tasks(fresh_pool: MethodPool, victim: int) -> None:
    # Tiny tasks reach a busy worker in batches (several frames per write,
    # some held back until it runs low): a worker killed in the middle of
    # them fails only the task it ran; every other result arrives, once.
    task = functools.partial(die_on, victim=victim)
    outcomes: dict[int, object] = {}
    results = fresh_pool.imap(task, range(5_000))
    for x in range(5_000):
        try:
            outcomes[x] = next(results)
        except WorkerLostError as exc:
            outcomes[x] = exc
    with pytest.raises(StopIteration):
        next(results)
    assert isinstance(outcomes.pop(victim), WorkerLostError)
    assert outcomes == {x: x * x for x in range(5_000) if x != victim}
    counters = fresh_pool._counters
    # Only Linux's channel batches frames this big (~300 bytes: the partial
    # travels in each); the portable one batches up to 512 bytes, Windows's none.
    if fresh_pool._dispatcher._transport.name == "linux":
        assert counters.writes < counters.frames_written / 2, "the tasks were not batched"
    still_works(fresh_pool)


def test_worker_dies_during_map_fails_only_its_chunk(fresh_pool: MethodPool) -> None:
    result = fresh_pool.map_async(die_on, range(10), chunksize=1)
    with pytest.raises(WorkerLostError):
        result.get(timeout=30)
    assert list(fresh_pool.imap(square, range(10))) == SQUARES


def test_idle_worker_killed_between_calls(fresh_pool: MethodPool) -> None:
    pids = set(fresh_pool.map(pid_of_worker, range(8), chunksize=1))
    assert len(pids) == 2
    os.kill(pids.pop(), signal.SIGKILL)
    for _ in range(3):
        still_works(fresh_pool)
        assert sorted(fresh_pool.imap_unordered(square, range(10))) == SQUARES


def test_every_worker_killed_at_once(fresh_pool: MethodPool) -> None:
    pids = set(fresh_pool.map(pid_of_worker, range(8), chunksize=1))
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    still_works(fresh_pool)


def test_initializer_raises(ctx: Any) -> None:
    started = time.monotonic()
    with MethodPool(2, initializer=failing_initializer, context=ctx) as pool:
        with pytest.raises(InitializerError, match="no database today") as info:
            pool.map(square, range(10))
        assert isinstance(info.value.__cause__, ValueError)
        with pytest.raises(InitializerError):  # later calls fail at once
            pool.apply_async(square, (1,))
        deadline = time.monotonic() + 5
        while any(p.is_alive() for p in pool._pool) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert not any(p.is_alive() for p in pool._pool)  # and no endless restarts
    assert time.monotonic() - started < 10


def test_a_pool_created_inside_a_task_says_what_to_do_instead(pool: MethodPool) -> None:
    with pytest.raises(NestedPoolError) as info:
        pool.apply(map_in_a_pool_of_its_own, (-1,))
    error = info.value
    assert isinstance(error, AssertionError)  # what the stdlib raises: still caught
    message = str(error)
    assert "daemonic processes are not allowed to have children" in message
    assert "Return the work to the parent" in message and "ThreadPool" in message
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "in map_in_a_pool_of_its_own" in str(error.__cause__)
    still_works(pool)


def raise_in_callback(_: Any) -> None:
    raise RuntimeError("callback bug")


def test_callback_that_raises_is_logged_and_the_result_delivered(
    pool: MethodPool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="methodpool"):
        result = pool.apply_async(square, (4,), callback=raise_in_callback)
        assert result.get(timeout=30) == 16
        failing = pool.apply_async(die_on, (3,), kwds={"how": "none"}, callback=raise_in_callback)
        assert failing.get(timeout=30) == 9
        mapped = pool.map_async(square, [1, 2], error_callback=raise_in_callback)
        assert mapped.get(timeout=30) == [1, 4]
    assert "callback" in caplog.text and "callback bug" in caplog.text
    still_works(pool)


def test_terminate_while_imap_is_consumed(ctx: Any) -> None:
    pool = MethodPool(2, context=ctx)
    iterator = pool.imap(sleep_then_square, [0.01] * 4 + [30] * 4)
    assert [next(iterator) for _ in range(4)] == [0.0001] * 4
    pool.terminate()
    with pytest.raises(PoolTerminatedError):
        next(iterator)
    pool.join()


def test_terminate_with_pending_map_result(ctx: Any) -> None:
    pool = MethodPool(2, context=ctx)
    result = pool.map_async(sleep_then_square, [30] * 4)
    applied = pool.apply_async(sleep_then_square, (30,))
    time.sleep(0.2)
    pool.terminate()
    for pending in (result, applied):
        with pytest.raises(PoolTerminatedError):
            pending.get(timeout=5)


def test_terminate_is_prompt_when_workers_ignore_sigterm(ctx: Any) -> None:
    pool = MethodPool(2, context=ctx)
    pool.map_async(ignore_sigterm_and_sleep, [60, 60], chunksize=1)
    time.sleep(0.5)
    started = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - started < 5
    assert not any(p.is_alive() for p in pool._pool)


def broken_input() -> Iterator[int]:
    yield 1
    yield 2
    raise OSError("disk on fire")


@pytest.mark.parametrize("call", ["map", "imap", "imap_unordered", "imap_buffered"])
def test_input_generator_raises_midway(pool: MethodPool, call: str) -> None:
    with pytest.raises(OSError, match="disk on fire"):
        if call == "map":
            pool.map(square, broken_input())
        elif call == "imap_buffered":
            list(pool.imap(square, broken_input(), buffersize=2))
        else:
            list(getattr(pool, call)(square, broken_input()))
    still_works(pool)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(240)
def test_soak_a_million_items_each_result_once(shared_pools: Any, start_method: str) -> None:
    pool = shared_pools.get(start_method)
    list(pool.imap_unordered(square, range(1000)))  # warm up: fds and memory settle
    gc.collect()
    fds_before = _open_fds()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seen = bytearray(1_000_000)
    results = pool.imap_unordered(square, range(1_000_000), chunksize=100, buffersize=50)
    for value in results:
        root = int(value**0.5)
        assert seen[root] == 0, f"result for {root} delivered twice"
        seen[root] = 1
    assert seen.count(1) == 1_000_000
    gc.collect()
    assert _open_fds() <= fds_before
    # ru_maxrss is in KiB on Linux: the parent grew by less than 50 MiB.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50 * 1024


CTRL_C = textwrap.dedent(
    """
    import multiprocessing, os, signal, sys, time
    from methodpool import MethodPool
    sys.path.insert(0, sys.argv[2])
    from faults import sleep_then_square

    # As at a terminal, whatever started the tests: a shell starting them in the
    # background (`cmd &`) has them, and so this child, ignore SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def pid_after(seconds):
        time.sleep(seconds)
        return os.getpid()

    if __name__ == "__main__":
        with MethodPool(2, context=multiprocessing.get_context(sys.argv[1])) as pool:
            # Every worker past its start-up (where a Ctrl-C is still Python's to
            # report, as in the stdlib) before the tasks: each has run one.
            pids, seen = {p.pid for p in pool._pool}, set()
            deadline = time.monotonic() + 20
            while not pids <= seen and time.monotonic() < deadline:
                seen.update(pool.map(pid_after, [0.1, 0.1], chunksize=1))
            print(*pids, flush=True)
            try:
                pool.map(sleep_then_square, [30] * 4, chunksize=1)
            except KeyboardInterrupt:
                print("interrupted", time.monotonic(), flush=True)
                raise
    """
)


@pytest.mark.timeout(60)
def test_ctrl_c_during_map(start_method: str, tmp_path: Any) -> None:
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C)
    here = os.path.dirname(__file__)
    child = subprocess.Popen(
        [sys.executable, str(script), start_method, here],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal would make
    )
    assert child.stdout is not None
    worker_pids = [int(pid) for pid in child.stdout.readline().split()]
    time.sleep(1.0)  # the tasks are running
    sent_at = time.monotonic()
    os.killpg(child.pid, signal.SIGINT)  # what Ctrl-C does: the whole group
    out, err = child.communicate(timeout=30)
    interrupted_at = float(out.split()[1])
    assert interrupted_at - sent_at < 0.5
    assert child.returncode != 0
    assert err.count("Traceback") == 1, err  # the parent's, not one per worker
    assert "KeyboardInterrupt" in err
    deadline = time.monotonic() + 5
    while any(process_alive(pid) for pid in worker_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(process_alive(pid) for pid in worker_pids)


def test_worker_dying_on_a_task_larger_than_the_pipe_buffer(fresh_pool: MethodPool) -> None:
    payload = b"x" * 300_000  # frames larger than a pipe's 64 KiB
    result = fresh_pool.map_async(die_with, [payload] * 3, chunksize=1)
    with pytest.raises(WorkerLostError):
        result.get(timeout=30)
    still_works(fresh_pool)
