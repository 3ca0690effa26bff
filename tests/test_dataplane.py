"""The data plane: big buffers of arguments and results through shared memory.

Structural, not timed: what goes through the pipes (``PoolCounters``), copy
semantics, and that no segment is left in ``/dev/shm`` after any fault.
Every test runs under each start method.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dataplane_tasks as tasks
import pytest

from methodpool import MethodPool, PoolTerminatedError, ProcessPoolExecutor, WorkerLostError
from methodpool._backend import MaybeEncodingError
from methodpool._transport import _buffers

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not _buffers.AVAILABLE, reason="no POSIX shared memory"),
]

try:
    import numpy as np
except ImportError:  # the bytearray / PickleBuffer tests still run
    np = None  # type: ignore[assignment]
needs_numpy = pytest.mark.skipif(np is None, reason="numpy is not installed")

MB8 = 8 * 1024 * 1024
N8 = MB8 // 8  # float64 items in 8 MB
SHM = Path("/dev/shm")


def arrays(count: int, n: int = N8) -> list[Any]:
    return [np.full(n, float(i)) for i in range(count)]


def worker_pids(pool: MethodPool) -> set[int]:
    return {process.pid for process in pool._pool if process.pid is not None}


class Segments:
    """The names of the segments a pool's parent and workers make."""

    def __init__(self, pool: MethodPool) -> None:
        self.pool = pool
        self.pids: set[int] = set()
        self.arguments: set[str] = set()

    def note(self) -> None:
        """Remember the pool's workers and argument segments as they are now."""
        self.pids |= worker_pids(self.pool)
        self.arguments |= {segment.name for segment in self.pool._buffers._segments}

    def left(self) -> list[str]:
        """The ones still in /dev/shm."""
        prefixes = tuple(f"{self.pool._buffers.result_prefix}{pid}_" for pid in self.pids)
        return sorted(
            name
            for name in os.listdir(SHM)
            if name in self.arguments or (prefixes and name.startswith(prefixes))
        )

    def results(self) -> list[str]:
        prefixes = tuple(f"{self.pool._buffers.result_prefix}{pid}_" for pid in self.pids)
        return [name for name in os.listdir(SHM) if prefixes and name.startswith(prefixes)]


@pytest.fixture
def data_pool(ctx: multiprocessing.context.BaseContext) -> Iterator[MethodPool]:
    pool = MethodPool(2, context=ctx)
    yield pool
    pool.terminate()
    pool.join()


def wait_until_gone(segments: Segments, seconds: float = 10.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while segments.left() and time.monotonic() < deadline:
        time.sleep(0.05)
    return segments.left()


# -- what travels where --------------------------------------------------------


@needs_numpy
def test_an_8mb_array_in_and_out_puts_under_1kb_per_task_on_the_pipes(
    data_pool: MethodPool,
) -> None:
    data_pool.map(tasks.echo, arrays(2), chunksize=1)  # workers started
    counters = data_pool._counters
    written, read, frames = counters.bytes_written, counters.bytes_read, counters.frames_written
    inputs = arrays(8)
    outputs = data_pool.map(tasks.echo, inputs, chunksize=1)
    assert all((out == array).all() for out, array in zip(outputs, inputs, strict=True))
    sent = counters.frames_written - frames
    assert sent == 8
    assert (counters.bytes_written - written) / sent < 1024
    assert (counters.bytes_read - read) / sent < 1024
    stats = data_pool.stats()[-1]
    assert stats.bytes_out_of_band == 2 * 8 * MB8
    assert stats.pipe_fallbacks == 0


@needs_numpy
def test_small_arrays_stay_in_band(data_pool: MethodPool) -> None:
    small = [np.ones(1000) for _ in range(4)]  # 8 KB each
    assert [out.sum() for out in data_pool.map(tasks.echo, small)] == [1000.0] * 4
    assert data_pool._counters.bytes_out_of_band == 0


@needs_numpy
def test_shared_buffers_false_sends_everything_through_the_pipe(
    ctx: multiprocessing.context.BaseContext,
) -> None:
    with MethodPool(2, context=ctx, shared_buffers=False) as pool:
        outputs = pool.map(tasks.echo, arrays(2), chunksize=1)
        assert [float(out[0]) for out in outputs] == [0.0, 1.0]
        assert pool._counters.bytes_out_of_band == 0
        assert pool._counters.bytes_written > 2 * MB8
        assert pool._counters.bytes_read > 2 * MB8


def test_pickle_buffers_go_out_of_band_without_numpy(data_pool: MethodPool) -> None:
    big = pickle.PickleBuffer(bytearray(b"x" * (1 << 20)))
    assert data_pool.apply(tasks.describe, (big,)) == ("bytearray", 1 << 20, True)
    result = data_pool.apply(tasks.big_bytearray, (1 << 20,))
    assert type(result) is bytearray and result == b"r" * (1 << 20)
    assert data_pool._counters.bytes_out_of_band == 2 << 20


def test_plain_bytes_go_in_band(data_pool: MethodPool) -> None:
    # pickle writes bytes and bytearray objects into the pickle itself
    assert data_pool.apply(tasks.describe, (bytes(1 << 20),)) == ("bytes", 1 << 20, False)
    assert data_pool._counters.bytes_out_of_band == 0


@needs_numpy
@pytest.mark.parametrize("serializer", ["pickle", "auto"])
def test_every_serializer_uses_the_data_plane(
    ctx: multiprocessing.context.BaseContext, serializer: str
) -> None:
    with MethodPool(2, context=ctx, serializer=serializer) as pool:
        outputs = pool.map(tasks.echo, arrays(3), chunksize=1)
        assert [float(out[-1]) for out in outputs] == [0.0, 1.0, 2.0]
        assert pool._counters.bytes_out_of_band == 2 * 3 * MB8


@needs_numpy
def test_process_pool_executor_uses_the_data_plane(
    ctx: multiprocessing.context.BaseContext,
) -> None:
    with ProcessPoolExecutor(2, mp_context=ctx) as executor:
        inputs = arrays(3)
        outputs = list(executor.map(tasks.echo, inputs))
        assert all((out == array).all() for out, array in zip(outputs, inputs, strict=True))
        assert executor._core.pool._counters.bytes_out_of_band == 2 * 3 * MB8


# -- copy semantics ------------------------------------------------------------


@needs_numpy
def test_a_task_writing_into_its_argument_leaves_the_callers_array_alone(
    data_pool: MethodPool,
) -> None:
    inputs = arrays(4)
    assert data_pool.map(tasks.zero_and_sum, inputs, chunksize=1) == [0.0] * 4
    assert [float(array.sum()) for array in inputs] == [i * N8 for i in range(4)]


@needs_numpy
def test_results_are_private_writable_arrays_valid_after_the_pool_is_gone(
    ctx: multiprocessing.context.BaseContext,
) -> None:
    pool = MethodPool(2, context=ctx)
    inputs = arrays(6)
    # More results than a worker has segments: each result is its own copy.
    outputs = pool.map(tasks.echo, inputs, chunksize=1)
    made = pool.map(tasks.ones, [N8] * 6, chunksize=1)
    pool.terminate()
    pool.join()
    for i, (out, array) in enumerate(zip(outputs, inputs, strict=True)):
        assert out.flags.writeable and not np.shares_memory(out, array)
        assert (out == i).all()
        out[:] = -1
        assert (array == i).all()
    assert all((m == 1).all() for m in made)
    made[0][:] = 7
    assert (made[1] == 1).all()


# -- lifetime --------------------------------------------------------------------


@needs_numpy
def test_nothing_is_left_after_join(ctx: multiprocessing.context.BaseContext) -> None:
    pool = MethodPool(2, context=ctx)
    segments = Segments(pool)
    pool.map(tasks.echo, arrays(6), chunksize=1)
    segments.note()
    assert segments.arguments and segments.results()  # there was something to clean
    pool.close()
    pool.join()
    assert segments.left() == []


@needs_numpy
def test_nothing_is_left_after_terminate_with_tasks_in_flight(
    ctx: multiprocessing.context.BaseContext,
) -> None:
    pool = MethodPool(2, context=ctx)
    segments = Segments(pool)
    pool.map(tasks.echo, arrays(2), chunksize=1)
    pending = pool.map_async(tasks.sleep_then_first, arrays(6), chunksize=1)
    time.sleep(0.5)
    segments.note()
    pool.terminate()
    pool.join()
    with pytest.raises(PoolTerminatedError):
        pending.get(5)
    assert segments.left() == []


@needs_numpy
def test_raising_task_and_unpicklable_result_leave_nothing(
    ctx: multiprocessing.context.BaseContext,
) -> None:
    pool = MethodPool(2, context=ctx, serializer="pickle")
    segments = Segments(pool)
    with pytest.raises(ValueError, match=f"task saw {N8} items"):
        pool.apply(tasks.raise_with, (arrays(1)[0],))
    with pytest.raises(MaybeEncodingError):
        pool.apply(tasks.unpicklable_with, (arrays(1)[0],))
    assert float(pool.apply(tasks.echo, (arrays(2)[1],))[0]) == 1.0  # it goes on
    segments.note()
    pool.terminate()
    pool.join()
    assert segments.left() == []


@needs_numpy
@pytest.mark.parametrize(
    ("initializer", "task", "argument"),
    [
        (tasks.die_while_reading_arguments, tasks.first, "array"),
        (tasks.die_while_writing_results, tasks.ones, N8),
    ],
    ids=["reading-arguments", "writing-results"],
)
def test_worker_killed_mid_copy_leaves_nothing(
    ctx: multiprocessing.context.BaseContext, initializer: Any, task: Any, argument: Any
) -> None:
    pool = MethodPool(1, context=ctx, initializer=initializer)
    segments = Segments(pool)
    try:
        segments.note()
        victim = next(iter(segments.pids))
        arg = arrays(1)[0] if argument == "array" else argument
        with pytest.raises(WorkerLostError):
            pool.apply(task, (arg,))
        segments.note()
        # Its results pipe has ended: the parent has unlinked what it could have
        # made, and its task's argument segment, while the pool runs on.
        assert wait_until_gone(segments) == []
        assert victim not in worker_pids(pool) or not _alive(victim)
        assert pool.apply(tasks.pid) != victim
    finally:
        pool.terminate()
        pool.join()
    assert segments.left() == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@needs_numpy
def test_worker_killed_between_tasks_leaves_nothing(data_pool: MethodPool) -> None:
    segments = Segments(data_pool)
    data_pool.map(tasks.ones, [N8] * 4, chunksize=1)
    segments.note()
    assert segments.results()
    for victim in worker_pids(data_pool):
        os.kill(victim, signal.SIGKILL)
    assert wait_until_gone(segments) == []
    assert data_pool.apply(tasks.first, (arrays(1)[0],)) == 0.0


def write_script(path: Path, template: str, start_method: str) -> Path:
    """``template`` filled in (this folder, the start method, 8 MB's items), at ``path``."""
    tests_dir = str(Path(__file__).parent)
    path.write_text(textwrap.dedent(template.format(tests=tests_dir, method=start_method, n=N8)))
    return path


PARENT_SCRIPT = """
import os, sys, time, multiprocessing
import numpy as np
sys.path.insert(0, {tests!r})
import dataplane_tasks as tasks
from methodpool import MethodPool

if __name__ == "__main__":
    pool = MethodPool(2, context=multiprocessing.get_context({method!r}))
    n = {n}
    pool.map(tasks.ones, [n] * 4, chunksize=1)  # the workers have result segments
    pool.map_async(tasks.sleep_then_first, [np.ones(n) for _ in range(6)], chunksize=1)
    time.sleep(0.5)  # argument segments in flight
    names = [segment.name for segment in pool._buffers._segments]
    pids = [process.pid for process in pool._pool]
    print(repr((names, pids, pool._buffers.result_prefix)), flush=True)
    time.sleep(60)
"""


@needs_numpy
def test_parent_killed_leaves_nothing(start_method: str, tmp_path: Path) -> None:
    script = write_script(tmp_path / "parent.py", PARENT_SCRIPT, start_method)
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = parent.stdout.readline()  # type: ignore[union-attr]
        assert line, parent.stderr.read()  # type: ignore[union-attr]
        names, pids, result_prefix = eval(line)
        prefixes = tuple(f"{result_prefix}{pid}_" for pid in pids)
        assert names and any(name.startswith(prefixes) for name in os.listdir(SHM))
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 20  # the workers notice, then the tracker cleans
        while time.monotonic() < deadline:
            left = [n for n in os.listdir(SHM) if n in names or n.startswith(prefixes)]
            if not left:
                break
            time.sleep(0.1)
        assert left == []
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()  # type: ignore[union-attr]
        parent.stderr.close()  # type: ignore[union-attr]


FALLBACK_SCRIPT = """
import multiprocessing, resource, signal, sys
import numpy as np
sys.path.insert(0, {tests!r})
import dataplane_tasks as tasks
from methodpool import MethodPool

if __name__ == "__main__":
    # No file of this process or its workers may grow past 1 MiB: every
    # segment fails to be made (EFBIG), as on a full /dev/shm (ENOSPC).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    with MethodPool(2, context=multiprocessing.get_context({method!r})) as pool:
        inputs = [np.full({n}, float(i)) for i in range(3)]
        outputs = pool.map(tasks.echo, inputs, chunksize=1)
        assert all((o == i).all() for o, i in zip(outputs, inputs, strict=True))
        stats = pool.stats()[-1]
        counters = pool._counters
        print(stats.pipe_fallbacks, counters.pipe_fallbacks, counters.bytes_out_of_band)
"""


@needs_numpy
def test_no_shared_memory_falls_back_to_the_pipe(start_method: str, tmp_path: Path) -> None:
    script = write_script(tmp_path / "fallback.py", FALLBACK_SCRIPT, start_method)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr
    # 3 arguments and 3 results, each through the pipe, counted
    assert done.stdout.split() == ["6", "6", "0"], done.stderr


@needs_numpy
def test_imap_with_buffersize_holds_bounded_shared_memory(data_pool: MethodPool) -> None:
    segments = Segments(data_pool)
    made = []

    def inputs() -> Iterator[Any]:
        for i in range(40):
            made.append(i)
            yield np.full(N8 // 4, float(i))  # 2 MB each

    results = data_pool.imap(tasks.echo, inputs(), buffersize=3)
    most = 0
    for i, out in enumerate(results):
        assert float(out[0]) == i
        assert len(made) <= i + 1 + 3
        segments.note()
        most = max(most, len(data_pool._buffers._segments))
        time.sleep(0.005)  # a slow consumer
    assert most <= 3 + _buffers.IDLE_SEGMENTS
    assert len(segments.results()) <= 2 * _buffers.RESULT_SEGMENTS
    assert data_pool._counters.segments_created <= 3 + _buffers.IDLE_SEGMENTS


@needs_numpy
def test_a_pool_without_work_gives_its_argument_segments_up(
    data_pool: MethodPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_buffers, "IDLE_GRACE", 1.0)
    segments = Segments(data_pool)
    assert len(data_pool.map(tasks.first, arrays(4), chunksize=1)) == 4
    segments.note()
    made = set(segments.arguments)
    assert made, "the arguments did not go through shared memory"
    # Calls in a row reuse them (the next may need one more: more tasks in
    # flight at once)...
    assert len(data_pool.map(tasks.first, arrays(4), chunksize=1)) == 4
    assert {segment.name for segment in data_pool._buffers._segments} & made
    # ...and a pool left alone holds none: given up, emptied, unlinked.
    deadline = time.monotonic() + 10
    while data_pool._buffers._segments and time.monotonic() < deadline:
        time.sleep(0.05)
    assert data_pool._buffers._segments == []
    assert not made & set(os.listdir(SHM))
    assert len(data_pool.map(tasks.first, arrays(2), chunksize=1)) == 2  # new ones then


def test_pools_whose_workers_share_a_pid_keep_off_each_others_result_segments() -> None:
    # Two containers that share /dev/shm can each have a worker with pid 7:
    # a pool unlinks the segments of its own worker with that pid, never
    # those of another pool's.
    from methodpool._stats import PoolCounters

    ours, theirs = (
        _buffers.TaskSegments(_buffers.OUT_OF_BAND_MIN_BYTES, PoolCounters()) for _ in "ab"
    )
    assert ours.result_prefix != theirs.result_prefix
    assert len("/" + ours.result_prefix + "4194304_3") <= 31  # pid_max; macOS's name limit
    segments = {pool: _buffers.ResultSegments(*pool.worker_settings()) for pool in (ours, theirs)}
    message = {}
    for pool, worker in segments.items():
        gathered = worker.gatherer
        pickled = pickle.dumps(
            pickle.PickleBuffer(bytearray(MB8 // 16)), protocol=5, buffer_callback=gathered
        )
        message[pool] = worker.place(pickled, gathered)
        gathered.buffers.clear()
    names = {pool: message[pool].name for pool in segments}  # type: ignore[union-attr]
    try:
        assert names[ours] != names[theirs]
        ours.worker_gone(os.getpid())  # "its" worker with this pid is gone
        assert not (SHM / names[ours]).exists()
        assert (SHM / names[theirs]).exists()
        assert bytes(theirs.load_result(1, message[theirs])) == bytes(MB8 // 16)
    finally:
        theirs.worker_gone(os.getpid())
        ours.close()
        theirs.close()
    assert not (SHM / names[theirs]).exists()
