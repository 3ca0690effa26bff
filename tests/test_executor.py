"""methodpool.ProcessPoolExecutor behaves as concurrent.futures.ProcessPoolExecutor.

The ground of CPython's own tests of the process executor
(``Lib/test/test_concurrent_futures/``: executor, test_process_pool, test_wait,
test_as_completed, test_shutdown, test_deadlock, test_init), ported to real
worker processes under every start method, with methodpool's deliberate
differences asserted where they are (docs/migration.md, docs/faults.md): a
dead worker fails only its own future, callables of any kind, serialization
errors from ``submit``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.process
import functools
import gc
import itertools
import multiprocessing
import operator
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    BrokenExecutor,
    CancelledError,
    Future,
)
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
from conftest import process_alive

import methodpool
from methodpool import (
    ExecutorInitializerError,
    ExecutorWorkerLostError,
    InitializerError,
    MaybeEncodingError,
    ProcessPoolExecutor,
    RemoteTaskError,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
)

# -- tasks (module level: every start method imports them by name) ------------


def mul(x: int, y: int) -> int:
    return x * y


def capture(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    return args, kwargs


def sleep_and_return(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def sleep_and_raise(seconds: float) -> None:
    time.sleep(seconds)
    raise Exception("this is an exception")


def touch_after(seconds: float, path: str) -> str:
    time.sleep(seconds)
    Path(path).touch()
    return path


def raise_timeout_on_one(x: int) -> int:
    if x == 1:
        raise TimeoutError
    return x


def traceback_source() -> None:
    raise RuntimeError(123)  # some comment


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crash_with_data(data: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def exit_now() -> None:
    sys.exit(1)


def write_pid_and_sleep(path: str, seconds: float) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)


def put_and_wait(path: str) -> None:
    Path(path).touch()
    time.sleep(30)


class MyObject:
    def my_method(self) -> None:
        pass


def make_dummy_object(_: Any) -> MyObject:
    return MyObject()


class FalseyBoolException(Exception):
    def __bool__(self) -> bool:
        return False


class FalseyLenException(Exception):
    def __len__(self) -> int:
        return 0


def raiser(exception: type[BaseException], msg: str) -> None:
    raise exception(msg)


INITIALIZER_STATUS = "uninitialized"


def init(x: str) -> None:
    global INITIALIZER_STATUS
    INITIALIZER_STATUS = x


def get_init_status() -> str:
    return INITIALIZER_STATUS


def init_fail() -> None:
    time.sleep(0.1)  # let some futures be scheduled
    raise ValueError("error in initializer")


class Scorer:
    """A bound method whose instance plain pickle cannot carry (it holds a lock)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.lock = threading.Lock()

    def score(self, x: int) -> int:
        with self.lock:
            return self.k * x


class CrashAtUnpickle:
    def __reduce__(self) -> Any:
        return die, ()


class CrashAtPickle:
    def __reduce__(self) -> Any:
        die()
        return None


class ErrorAtPickle:
    def __reduce__(self) -> Any:
        raise pickle.PicklingError("Error in pickle")


def _raise_unpickling_error() -> None:
    raise pickle.UnpicklingError("Error in unpickle")


class ErrorAtUnpickle:
    def __reduce__(self) -> Any:
        return _raise_unpickling_error, ()


def return_instance(cls: type) -> Any:
    return cls()


# -- fixtures ------------------------------------------------------------------


class SharedExecutors:
    """One running 2-worker executor per start method, for tests that only use it."""

    def __init__(self) -> None:
        self._executors: dict[str, ProcessPoolExecutor] = {}

    def get(self, start_method: str) -> ProcessPoolExecutor:
        executor = self._executors.get(start_method)
        if executor is None or executor._core.shut_down:
            context = multiprocessing.get_context(start_method)
            executor = ProcessPoolExecutor(2, mp_context=context)
            self._executors[start_method] = executor
        return executor

    def close_all(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def shared_executors() -> Iterator[SharedExecutors]:
    executors = SharedExecutors()
    yield executors
    executors.close_all()


@pytest.fixture
def executor(shared_executors: SharedExecutors, start_method: str) -> ProcessPoolExecutor:
    return shared_executors.get(start_method)


@pytest.fixture
def fresh(ctx: multiprocessing.context.BaseContext) -> Iterator[ProcessPoolExecutor]:
    """An executor of its own (2 workers, ready), for tests that shut it down or break it."""
    executor = ProcessPoolExecutor(2, mp_context=ctx)
    executor.submit(int).result(timeout=30)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


def workers_of(executor: ProcessPoolExecutor) -> list[Any]:
    return executor._core.pool.workers()


def all_gone(pids: list[int], within: float = 10) -> bool:
    deadline = time.monotonic() + within
    while any(process_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def run_script(
    code: str, start_method: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``code`` as a fresh interpreter's ``-c`` program, with ``START_METHOD`` defined."""
    program = f"START_METHOD = {start_method!r}\n" + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=timeout
    )


# -- construction ----------------------------------------------------------------


def test_is_an_executor_and_its_results_are_futures(executor: ProcessPoolExecutor) -> None:
    assert isinstance(executor, concurrent.futures.Executor)
    future = executor.submit(pow, 2, 8)
    assert type(future) is Future
    assert future.result(timeout=30) == 256


@pytest.mark.parametrize("number", [0, -1])
def test_max_workers_negative(number: int) -> None:
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        ProcessPoolExecutor(max_workers=number)


def test_default_max_workers_is_the_stdlib_s() -> None:
    expected = getattr(os, "process_cpu_count", os.cpu_count)() or 1
    with ProcessPoolExecutor(mp_context=multiprocessing.get_context("fork")) as executor:
        assert executor._max_workers == expected
        assert len(workers_of(executor)) == expected


def test_initializer_must_be_callable() -> None:
    with pytest.raises(TypeError, match="initializer must be a callable"):
        ProcessPoolExecutor(1, initializer=5)  # type: ignore[arg-type]


def test_max_tasks_per_child_is_checked_as_in_the_stdlib() -> None:
    spawn = multiprocessing.get_context("spawn")
    with pytest.raises(TypeError, match="max_tasks_per_child must be an integer"):
        ProcessPoolExecutor(1, spawn, max_tasks_per_child=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tasks_per_child must be >= 1"):
        ProcessPoolExecutor(1, spawn, max_tasks_per_child=0)
    with pytest.raises(ValueError, match="incompatible with the 'fork'"):
        ProcessPoolExecutor(1, multiprocessing.get_context("fork"), max_tasks_per_child=3)


def test_max_tasks_per_child_defaults_to_spawn() -> None:
    with ProcessPoolExecutor(1, max_tasks_per_child=3) as executor:
        assert executor._mp_context.get_start_method() == "spawn"


def test_unknown_serializer_and_bad_task_timeout() -> None:
    with pytest.raises(ValueError):
        ProcessPoolExecutor(1, serializer="no-such-serializer")
    with pytest.raises(ValueError, match="task_timeout"):
        ProcessPoolExecutor(1, task_timeout=0)


# -- submit ----------------------------------------------------------------------


def test_submit(executor: ProcessPoolExecutor) -> None:
    assert executor.submit(pow, 2, 8).result(timeout=30) == 256


def test_submit_keyword(executor: ProcessPoolExecutor) -> None:
    assert executor.submit(mul, 2, y=8).result(timeout=30) == 16
    future = executor.submit(capture, 1, self=2, fn=3)
    assert future.result(timeout=30) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=capture, arg=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        executor.submit(arg=1)  # type: ignore[call-arg]


def test_submit_any_callable(executor: ProcessPoolExecutor) -> None:
    k = 3
    scorer = Scorer(5)

    def closure(x: int) -> int:
        return k * x

    callables = [scorer.score, lambda x: x * k, closure, functools.partial(mul, 7)]
    futures = [executor.submit(fn, 2) for fn in callables]
    assert [f.result(timeout=30) for f in futures] == [10, 6, 6, 14]


def test_unserializable_callable_raises_from_submit(ctx: Any) -> None:
    with ProcessPoolExecutor(1, mp_context=ctx, serializer="pickle") as executor:
        with pytest.raises(SerializationError, match="cloudpickle"):
            executor.submit(lambda: 1)
        with pytest.raises(TypeError, match="must be callable"):
            executor.submit(5)  # type: ignore[arg-type]
        assert executor.submit(pow, 2, 3).result(timeout=30) == 8


def test_unpicklable_argument_fails_its_future(executor: ProcessPoolExecutor) -> None:
    # stdlib: the future fails with the PicklingError (test_error_at_task_pickle)
    with pytest.raises(pickle.PicklingError):
        executor.submit(id, ErrorAtPickle()).result(timeout=30)


def test_traceback(executor: ProcessPoolExecutor) -> None:
    future = executor.submit(traceback_source)
    with pytest.raises(RuntimeError) as info:
        future.result(timeout=30)
    assert info.value.args == (123,)
    assert "raise RuntimeError(123)  # some comment" in info.value.__cause__.tb  # type: ignore[union-attr]


def _future_raises_falsey_exceptions() -> bool:
    # concurrent.futures.Future.result() skipped an exception that is false
    # (``if self._exception:``) until gh-132063 (3.14, 3.13.4).
    future: Future[None] = Future()
    future.set_exception(FalseyBoolException())
    try:
        future.result()
    except FalseyBoolException:
        return True
    return False


def test_swallows_no_falsey_exceptions(executor: ProcessPoolExecutor) -> None:
    for error, message in ((FalseyBoolException, "boolbool"), (FalseyLenException, "lenlen")):
        future = executor.submit(raiser, error, message)
        assert type(future.exception(timeout=30)) is error
        if _future_raises_falsey_exceptions():
            with pytest.raises(error, match=message):
                future.result()


def test_no_stale_references(executor: ProcessPoolExecutor) -> None:
    my_object = MyObject()
    collected = threading.Event()
    reference = weakref.ref(my_object, lambda _: collected.set())
    executor.submit(my_object.my_method)  # the future deliberately discarded
    del my_object
    assert collected.wait(timeout=10), "stale reference not collected"
    assert reference() is None


def test_asyncio_wrap_future(executor: ProcessPoolExecutor) -> None:
    async def main() -> list[int]:
        futures = [asyncio.wrap_future(executor.submit(mul, x, x)) for x in range(5)]
        return list(await asyncio.gather(*futures))

    assert asyncio.run(main()) == [0, 1, 4, 9, 16]


def test_run_in_executor(executor: ProcessPoolExecutor) -> None:
    async def main() -> int:
        return await asyncio.get_running_loop().run_in_executor(executor, mul, 6, 7)  # type: ignore[no-any-return]

    assert asyncio.run(main()) == 42


def test_done_callback_may_submit(executor: ProcessPoolExecutor) -> None:
    chained: list[Future[int]] = []
    first = executor.submit(mul, 2, 3)
    first.add_done_callback(lambda f: chained.append(executor.submit(mul, f.result(), 7)))
    assert first.result(timeout=30) == 6
    deadline = time.monotonic() + 10
    while not chained and time.monotonic() < deadline:
        time.sleep(0.01)
    assert chained[0].result(timeout=30) == 42


# -- cancel ------------------------------------------------------------------------


def test_cancel_a_waiting_future_before_it_runs(fresh: ProcessPoolExecutor, tmp_path: Path) -> None:
    # Two slow tasks keep both workers busy, and the hand-over of the next ones
    # waits: those are still PENDING, so cancel() stops them for good.
    busy = [fresh.submit(sleep_and_return, 1.0) for _ in range(2)]
    waiting = [fresh.submit(touch_after, 0, str(tmp_path / f"w{i}")) for i in range(8)]
    last = waiting[-1]
    assert last.cancel()
    assert last.cancelled() and last.done()
    with pytest.raises(CancelledError):
        last.result(timeout=0)
    fresh.shutdown(wait=True)
    assert not (tmp_path / "w7").exists()  # it never ran
    assert all(f.result() is None for f in busy)
    assert [f.result() for f in waiting[:-1]] == [str(tmp_path / f"w{i}") for i in range(7)]


def test_cancel_a_running_future_returns_false_and_it_finishes(
    executor: ProcessPoolExecutor,
) -> None:
    future = executor.submit(sleep_and_return, 0.3, "done")
    deadline = time.monotonic() + 10
    while not future.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert future.running()
    assert not future.cancel()
    assert future.result(timeout=30) == "done"


def test_cancelled_futures_count_as_done_for_wait(fresh: ProcessPoolExecutor) -> None:
    futures = [fresh.submit(sleep_and_return, 0.2) for _ in range(20)]
    fresh.shutdown(wait=False, cancel_futures=True)
    _, not_done = concurrent.futures.wait(futures, timeout=30)
    assert not not_done
    assert sum(f.cancelled() for f in futures) > 10


# -- map -------------------------------------------------------------------------


def test_map(executor: ProcessPoolExecutor) -> None:
    expected = list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(10), range(10))) == expected
    assert list(executor.map(pow, range(10), range(10), chunksize=3)) == expected


def test_map_any_callable(executor: ProcessPoolExecutor) -> None:
    k = 3
    assert list(executor.map(lambda x: x * k, range(6), chunksize=4)) == [0, 3, 6, 9, 12, 15]
    assert list(executor.map(Scorer(2).score, range(4))) == [0, 2, 4, 6]
    assert list(executor.map(lambda x, y: x - y, [5, 6], [1, 2, 3])) == [4, 4]


def test_map_chunksize(executor: ProcessPoolExecutor) -> None:
    expected = list(map(pow, range(40), range(40)))
    for chunksize in (6, 40, 50):
        assert list(executor.map(pow, range(40), range(40), chunksize=chunksize)) == expected
    with pytest.raises(ValueError, match="chunksize must be >= 1"):
        executor.map(pow, range(40), range(40), chunksize=-1)


def test_map_exception_ends_the_iteration(executor: ProcessPoolExecutor) -> None:
    results = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(results) == (0, 1)
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)
    with pytest.raises(StopIteration):
        next(results)
    chunked = executor.map(divmod, [5, 5, 5, 5], [2, 0, 3, 5], chunksize=3)
    with pytest.raises(ZeroDivisionError):  # the failed chunk's first item
        next(chunked)
    with pytest.raises(StopIteration):
        next(chunked)


def test_map_timeout_counts_from_the_call(fresh: ProcessPoolExecutor) -> None:
    # Two workers: items 0 and 1 end at 0.6 s, item 2 at 1.2 s, past the
    # timeout of 1 s measured from the call (not from each next()).
    results: list[Any] = []
    iterator = fresh.map(sleep_and_return, [0.6, 0.6, 0.6], timeout=1.0)
    with pytest.raises(concurrent.futures.TimeoutError):
        for result in iterator:
            results.append(result)
    assert results in ([None, None], [None], [])
    with pytest.raises(StopIteration):  # the rest is cancelled: the iterator is done
        next(iterator)


def test_map_timeout_from_the_callable_is_not_map_s(executor: ProcessPoolExecutor) -> None:
    for timeout in (None, 30):
        results = executor.map(raise_timeout_on_one, [0, 1, 2, 3], timeout=timeout)
        assert next(results) == 0
        with pytest.raises(TimeoutError) as info:
            next(results)
        assert type(info.value) is TimeoutError  # the task's own


def test_map_close_runs_nothing_more(executor: ProcessPoolExecutor) -> None:
    results = executor.map(divmod, [5, 5, 5, 5], [2, 0, 3, 5])
    assert next(results) == (2, 1)
    results.close()  # type: ignore[attr-defined]
    with pytest.raises(StopIteration):
        next(results)
    read: list[int] = []

    def source() -> Iterator[int]:
        for x in itertools.count():
            read.append(x)
            yield x

    results = executor.map(abs, source(), buffersize=2)
    assert next(results) == 0
    results.close()  # type: ignore[attr-defined]
    assert len(read) <= 4


def test_map_reads_its_input_now_without_buffersize(executor: ProcessPoolExecutor) -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise KeyError("input broke")

    with pytest.raises(KeyError, match="input broke"):
        executor.map(abs, failing())


@pytest.mark.parametrize("buffersize", ["foo", 2.0])
def test_map_buffersize_type_validation(executor: ProcessPoolExecutor, buffersize: Any) -> None:
    with pytest.raises(TypeError, match="buffersize must be an integer or None"):
        executor.map(str, range(4), buffersize=buffersize)


@pytest.mark.parametrize("buffersize", [0, -1])
def test_map_buffersize_value_validation(executor: ProcessPoolExecutor, buffersize: int) -> None:
    with pytest.raises(ValueError, match="buffersize must be None or > 0"):
        executor.map(str, range(4), buffersize=buffersize)


def test_map_buffersize(executor: ProcessPoolExecutor) -> None:
    for buffersize in (1, 2, 4, 8):
        assert list(executor.map(str, range(4), buffersize=buffersize)) == ["0", "1", "2", "3"]
        results = executor.map(operator.add, range(4), range(4), buffersize=buffersize)
        assert list(results) == [0, 2, 4, 6]
        chunked = executor.map(str, range(10), buffersize=buffersize, chunksize=3)
        assert list(chunked) == [str(x) for x in range(10)]


def test_map_buffersize_on_infinite_iterables(executor: ProcessPoolExecutor) -> None:
    results = executor.map(str, itertools.count(), buffersize=2)
    assert [next(results) for _ in range(3)] == ["0", "1", "2"]
    sums = executor.map(operator.add, itertools.count(), itertools.count(), buffersize=2)
    assert [next(sums) for _ in range(3)] == [0, 2, 4]


def test_map_buffersize_on_empty_input(executor: ProcessPoolExecutor) -> None:
    assert next(executor.map(str, [], buffersize=2), None) is None
    assert next(executor.map(str, buffersize=2), None) is None


def test_map_buffersize_bounds_what_is_read_ahead(executor: ProcessPoolExecutor) -> None:
    read: list[int] = []

    def source() -> Iterator[int]:
        for x in range(100):
            read.append(x)
            yield x

    for chunksize in (1, 4):
        read.clear()
        results = executor.map(abs, source(), buffersize=3, chunksize=chunksize)
        assert len(read) == 3 * chunksize  # read at the call, as the stdlib does
        for consumed in range(1, 40):
            assert next(results) == consumed - 1
            assert len(read) <= consumed + (3 + 1) * chunksize
        results.close()  # type: ignore[attr-defined]


def test_map_buffersize_when_buffer_is_full(fresh: ProcessPoolExecutor) -> None:
    ints = iter(range(4))
    fresh.map(str, ints, buffersize=2)
    fresh.shutdown(wait=True)
    assert next(ints) == 2, "should have read only buffersize items"


def test_map_buffersize_after_shutdown_fails_once_its_results_run_out(
    fresh: ProcessPoolExecutor,
) -> None:
    results = fresh.map(str, range(10), buffersize=2)
    fresh.shutdown(wait=True)
    assert next(results) == "0"
    assert next(results) == "1"
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        next(results)
    complete = ProcessPoolExecutor(1, mp_context=fresh._mp_context)
    results = complete.map(str, range(2), buffersize=2)
    complete.shutdown(wait=True)
    assert list(results) == ["0", "1"]  # nothing was left: no error


def test_map_progress_and_stats(executor: ProcessPoolExecutor) -> None:
    assert list(executor.map(abs, [-1, -2], progress=False)) == [1, 2]
    executor.submit(abs, -3).result(timeout=30)
    methods = [stats.method for stats in executor.stats()]
    assert methods[-2:] == ["imap", "submit"]


def test_free_reference(executor: ProcessPoolExecutor) -> None:
    for obj in executor.map(make_dummy_object, range(10)):
        reference = weakref.ref(obj)
        del obj
        gc.collect()
        assert reference() is None


def test_shutdown_race_issue12456(fresh: ProcessPoolExecutor) -> None:
    fresh.map(str, [2] * 3)
    fresh.shutdown()


# -- wait and as_completed ----------------------------------------------------------


def test_wait_first_completed(executor: ProcessPoolExecutor) -> None:
    future1 = executor.submit(mul, 21, 2)
    future2 = executor.submit(sleep_and_return, 1.0)
    done, not_done = concurrent.futures.wait([future1, future2], return_when=FIRST_COMPLETED)
    assert done == {future1} and not_done == {future2}
    future2.result(timeout=30)


def test_wait_first_exception(executor: ProcessPoolExecutor) -> None:
    future1 = executor.submit(mul, 2, 21)
    future2 = executor.submit(sleep_and_raise, 0.3)
    future3 = executor.submit(sleep_and_return, 2.0)
    done, not_done = concurrent.futures.wait(
        [future1, future2, future3], return_when=FIRST_EXCEPTION
    )
    assert done == {future1, future2} and not_done == {future3}
    future3.result(timeout=30)


def test_wait_all_completed_and_timeout(executor: ProcessPoolExecutor) -> None:
    future1 = executor.submit(divmod, 2, 0)
    future2 = executor.submit(mul, 2, 21)
    done, not_done = concurrent.futures.wait([future1, future1, future2], return_when=ALL_COMPLETED)
    assert done == {future1, future2} and not not_done
    slow = executor.submit(sleep_and_return, 0.5)
    done, not_done = concurrent.futures.wait([slow], timeout=0.05)
    assert not done and not_done == {slow}
    slow.result(timeout=30)


def test_as_completed(executor: ProcessPoolExecutor) -> None:
    futures = {executor.submit(mul, 2, 21), executor.submit(mul, 7, 6)}
    assert {f.result() for f in concurrent.futures.as_completed(futures, timeout=30)} == {42}
    slow = executor.submit(sleep_and_return, 0.5)
    with pytest.raises(concurrent.futures.TimeoutError):
        list(concurrent.futures.as_completed([slow], timeout=0.05))
    assert len(list(concurrent.futures.as_completed([slow, slow], timeout=30))) == 1


# -- faults ----------------------------------------------------------------------


def test_killed_worker_fails_only_its_future(fresh: ProcessPoolExecutor, tmp_path: Path) -> None:
    # stdlib: every pending future and every later submit raise BrokenProcessPool.
    pid_file = tmp_path / "pid"
    running = fresh.submit(write_pid_and_sleep, str(pid_file), 30)
    others = [fresh.submit(mul, x, x) for x in range(6)]
    deadline = time.monotonic() + 30
    # Until the pid is in the file, not only the file there (it is written after).
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    with pytest.raises(ExecutorWorkerLostError, match=r"worker process \d+ was killed by SIGKILL"):
        running.result(timeout=30)
    error = running.exception()
    assert isinstance(error, WorkerLostError) and isinstance(error, BrokenProcessPool)
    assert [f.result(timeout=30) for f in others] == [x * x for x in range(6)]
    assert fresh.submit(pow, 2, 8).result(timeout=30) == 256  # replaced, goes on


def test_worker_dying_in_map_fails_the_map_at_its_item(fresh: ProcessPoolExecutor) -> None:
    data = "a" * 1_000_000  # more than a pipe holds (gh-94777)
    with pytest.raises(BrokenProcessPool):
        list(fresh.map(crash_with_data, [data] * 10))
    assert list(fresh.map(abs, [-1, -2])) == [1, 2]


@pytest.mark.parametrize(
    ("func", "args", "error"),
    [
        # stdlib: BrokenProcessPool for the first two, SystemExit for the third
        (id, (CrashAtUnpickle(),), ExecutorWorkerLostError),
        (die, (), ExecutorWorkerLostError),
        (exit_now, (), RemoteTaskError),
        (return_instance, (CrashAtPickle,), ExecutorWorkerLostError),
        # stdlib: PicklingError, then BrokenProcessPool
        (return_instance, (ErrorAtPickle,), MaybeEncodingError),
        (return_instance, (ErrorAtUnpickle,), methodpool.DeserializationError),
    ],
    ids=[
        "crash-at-task-unpickle",
        "crash-during-task",
        "exit-during-task",
        "crash-at-result-pickle",
        "error-at-result-pickle",
        "error-at-result-unpickle",
    ],
)
def test_task_faults_fail_their_future_only(
    executor: ProcessPoolExecutor, func: Any, args: tuple[Any, ...], error: type[BaseException]
) -> None:
    with pytest.raises(error):
        executor.submit(func, *args).result(timeout=30)
    assert executor.submit(pow, 2, 8).result(timeout=30) == 256


def test_worker_dying_after_shutdown(ctx: Any) -> None:
    with ProcessPoolExecutor(2, mp_context=ctx) as executor:
        future = executor.submit(sleep_and_return, 0.2)
        crash = executor.submit(die)
        executor.shutdown(wait=True)
        with pytest.raises(BrokenProcessPool):
            crash.result()
        assert future.result() is None


def test_task_timeout(ctx: Any) -> None:
    with ProcessPoolExecutor(2, mp_context=ctx, task_timeout=1) as executor:
        assert list(executor.map(abs, [-1, -2], chunksize=1)) == [1, 2]  # both workers ready
        slow = executor.submit(sleep_and_return, 30)
        with pytest.raises(TaskTimeoutError, match=r"task_timeout of 1 s"):
            slow.result(timeout=30)
        # A builtin: the replacement worker may still be importing this test
        # module, which counts against its first task's second (on a loaded machine).
        assert executor.submit(pow, 6, 2).result(timeout=30) == 36
        assert list(executor.map(abs, [-1, -2])) == [1, 2]
        with pytest.raises(TaskTimeoutError):
            list(executor.map(sleep_and_return, [0, 30], task_timeout=0.3))


def test_initializer(ctx: Any) -> None:
    with ProcessPoolExecutor(2, ctx, init, ("initialized",)) as executor:
        futures = [executor.submit(get_init_status) for _ in range(2)]
        assert [f.result(timeout=30) for f in futures] == ["initialized"] * 2
    with ProcessPoolExecutor(2, ctx, lambda: init("by a lambda")) as executor:
        assert executor.submit(get_init_status).result(timeout=30) == "by a lambda"


def test_failing_initializer_breaks_the_executor(ctx: Any) -> None:
    # stdlib: BrokenProcessPool (a BrokenExecutor) from the future, then from submit.
    with ProcessPoolExecutor(2, ctx, init_fail) as executor:
        try:
            future = executor.submit(get_init_status)
        except BrokenExecutor:
            pass
        else:
            with pytest.raises(ExecutorInitializerError, match="error in initializer") as info:
                future.result(timeout=30)
            assert isinstance(info.value, InitializerError)
            assert isinstance(info.value, BrokenProcessPool)
            assert isinstance(info.value.__cause__, ValueError)
        with pytest.raises(BrokenExecutor):
            executor.submit(get_init_status)
        with pytest.raises(BrokenExecutor):
            executor.map(abs, [1])


def test_max_tasks_per_child(ctx: Any) -> None:
    if ctx.get_start_method() == "fork":
        pytest.skip("refused with fork (test_max_tasks_per_child_is_checked_as_in_the_stdlib)")
    with ProcessPoolExecutor(1, ctx, max_tasks_per_child=3) as executor:
        pids = [executor.submit(os.getpid).result(timeout=30) for _ in range(4)]
    assert pids[0] == pids[1] == pids[2] != pids[3]


def test_max_tasks_early_shutdown(ctx: Any) -> None:
    if ctx.get_start_method() == "fork":
        pytest.skip("refused with fork")
    executor = ProcessPoolExecutor(3, ctx, max_tasks_per_child=1)
    futures = [executor.submit(mul, i, i) for i in range(6)]
    executor.shutdown()
    assert [f.result() for f in futures] == [i * i for i in range(6)]


# -- shutdown ----------------------------------------------------------------------


def test_run_after_shutdown(fresh: ProcessPoolExecutor) -> None:
    fresh.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        fresh.submit(pow, 2, 5)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        fresh.map(abs, [1])
    fresh.shutdown()  # again: harmless


def test_shutdown_waits_for_pending_and_leaves_no_process(ctx: Any) -> None:
    executor = ProcessPoolExecutor(2, mp_context=ctx)
    futures = [executor.submit(sleep_and_return, 0.05, i) for i in range(20)]
    pids = [p.pid for p in workers_of(executor)]
    executor.shutdown()
    assert [f.result(timeout=0) for f in futures] == list(range(20))
    assert all_gone(pids, within=0.5)


def test_context_manager_shutdown(ctx: Any) -> None:
    with ProcessPoolExecutor(2, mp_context=ctx) as executor:
        pids = [p.pid for p in workers_of(executor)]
        assert list(executor.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    assert all_gone(pids, within=0.5)


def test_shutdown_no_wait_returns_at_once(ctx: Any) -> None:
    executor = ProcessPoolExecutor(2, mp_context=ctx)
    results = executor.map(abs, range(-5, 5))
    slow = executor.submit(sleep_and_return, 1.0, "slow")
    pids = [p.pid for p in workers_of(executor)]
    started = time.monotonic()
    executor.shutdown(wait=False)
    assert time.monotonic() - started < 0.5
    assert list(results) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    assert slow.result(timeout=30) == "slow"
    assert all_gone(pids)
    executor.shutdown(wait=True)  # waits for what shutdown(wait=False) left


def test_cancel_futures(fresh: ProcessPoolExecutor) -> None:
    futures = [fresh.submit(sleep_and_return, 0.1) for _ in range(40)]
    fresh.shutdown(cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    others = [f for f in futures if not f.cancelled()]
    assert len(cancelled) > 20
    assert others, "some had started and ran to their end"
    for future in others:
        assert future.done() and future.exception() is None


def test_cancel_futures_stops_maps(fresh: ProcessPoolExecutor) -> None:
    results = fresh.map(sleep_and_return, [0.05] * 200)
    fresh.shutdown(wait=False, cancel_futures=True)
    delivered = []
    with pytest.raises(CancelledError):
        for result in results:
            delivered.append(result)
    assert len(delivered) < 200


def test_submitted_then_cancelled_right_before_shutdown_gh94440(ctx: Any) -> None:
    executor = ProcessPoolExecutor(1, mp_context=ctx)
    executor.submit(int).result(timeout=30)
    executor.submit(int).cancel()
    executor.shutdown(wait=True)  # does not hang (the suite's timeout would tell)


def test_collected_executor_finishes_its_work(ctx: Any) -> None:
    executor = ProcessPoolExecutor(2, mp_context=ctx)
    results = executor.map(abs, range(-5, 5))
    future = executor.submit(sleep_and_return, 0.2, "kept")
    pids = [p.pid for p in workers_of(executor)]
    reference = weakref.ref(executor)
    del executor
    gc.collect()
    assert reference() is None
    assert list(results) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    assert future.result(timeout=30) == "kept"
    assert all_gone(pids)


@pytest.mark.parametrize(
    ("operation", "sig"), [("terminate_workers", signal.SIGTERM), ("kill_workers", signal.SIGKILL)]
)
def test_force_shutdown_workers(ctx: Any, tmp_path: Path, operation: str, sig: int) -> None:
    executor = ProcessPoolExecutor(1, mp_context=ctx)
    started = tmp_path / "started"
    running = executor.submit(put_and_wait, str(started))
    # The first few are handed to the worker (RUNNING, as in the stdlib's call queue).
    pending = [executor.submit(mul, 2, 3) for _ in range(10)]
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    worker = workers_of(executor)[0]
    getattr(executor, operation)()  # returns once the workers are gone
    assert worker.exitcode == -sig
    with pytest.raises((WorkerLostError, methodpool.PoolTerminatedError)):
        running.result(timeout=30)
    assert pending[-1].cancelled()
    for future in pending:
        assert future.cancelled() or isinstance(
            future.exception(timeout=30), (WorkerLostError, methodpool.PoolTerminatedError)
        )
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(mul, 1, 1)
    executor.shutdown()
    assert all_gone([worker.pid])


@pytest.mark.parametrize("operation", ["terminate_workers", "kill_workers"])
def test_force_shutdown_after_a_worker_died(fresh: ProcessPoolExecutor, operation: str) -> None:
    with pytest.raises(BrokenProcessPool):
        fresh.submit(os._exit, 1).result(timeout=30)
    getattr(fresh, operation)()  # does not raise


def test_big_callable_leaves_no_shared_memory(ctx: Any) -> None:
    big = Scorer(2)
    big.ballast = bytes(200_000)  # type: ignore[attr-defined]
    with ProcessPoolExecutor(2, mp_context=ctx) as executor:
        assert executor.submit(big.score, 21).result(timeout=30) == 42
        assert list(executor.map(big.score, range(3))) == [0, 2, 4]
        segments = list(executor._core.pool._segments._segments)
    assert not any(os.path.exists(f"/dev/shm/{name}") for name in segments)


# -- the interpreter's exit (fresh interpreters) --------------------------------------


EXIT_PRELUDE = """
import multiprocessing, sys, time
from methodpool import ProcessPoolExecutor

def sleep_and_print(t, msg):
    time.sleep(t)
    print(msg)
    sys.stdout.flush()

context = multiprocessing.get_context(START_METHOD)
"""


def test_pending_work_finishes_at_interpreter_exit(start_method: str) -> None:
    result = run_script(
        EXIT_PRELUDE
        + """
if __name__ == "__main__":
    executor = ProcessPoolExecutor(3, mp_context=context)
    executor.submit(sleep_and_print, 0.5, "apple")
""",
        start_method,
    )
    assert result.stdout.strip() == "apple", result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_shutdown_no_wait_at_exit_gh83386(start_method: str) -> None:
    # The stdlib's process executor hangs here; this one finishes the task.
    result = run_script(
        EXIT_PRELUDE
        + """
if __name__ == "__main__":
    executor = ProcessPoolExecutor(3, mp_context=context)
    executor.submit(sleep_and_print, 0.5, "apple")
    executor.shutdown(wait=False)
""",
        start_method,
    )
    assert result.stdout.strip() == "apple", result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_submit_after_interpreter_shutdown(start_method: str) -> None:
    result = run_script(
        EXIT_PRELUDE
        + """
import atexit

@atexit.register
def run_last():
    try:
        executor.submit(id, None)
    except RuntimeError:
        print("runtime-error")
        raise

if __name__ == "__main__":
    executor = ProcessPoolExecutor(2, mp_context=context)
    executor.submit(id, 42).result()
""",
        start_method,
    )
    assert "RuntimeError: cannot schedule new futures" in result.stderr
    assert result.stdout.strip() == "runtime-error"


# -- patch() -----------------------------------------------------------------------


def test_patch_covers_the_executor() -> None:
    stdlib = concurrent.futures.process.ProcessPoolExecutor
    had_attribute = "ProcessPoolExecutor" in vars(concurrent.futures)
    methodpool.patch()
    try:
        assert concurrent.futures.ProcessPoolExecutor is ProcessPoolExecutor
        assert concurrent.futures.process.ProcessPoolExecutor is ProcessPoolExecutor
        from concurrent.futures import ProcessPoolExecutor as imported

        assert imported is ProcessPoolExecutor
    finally:
        methodpool.unpatch()
    assert concurrent.futures.process.ProcessPoolExecutor is stdlib
    assert ("ProcessPoolExecutor" in vars(concurrent.futures)) == had_attribute
    assert concurrent.futures.ProcessPoolExecutor is stdlib


def test_patched_executor_runs_lambdas(start_method: str) -> None:
    result = run_script(
        """
import concurrent.futures, multiprocessing
import methodpool

methodpool.patch()
if __name__ == "__main__":
    context = multiprocessing.get_context(START_METHOD)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as executor:
        k = 3
        print(type(executor).__module__, list(executor.map(lambda x: x * k, range(4))))
""",
        start_method,
    )
    assert result.stdout.split() == ["methodpool._executor", "[0,", "3,", "6,", "9]"], result.stderr
