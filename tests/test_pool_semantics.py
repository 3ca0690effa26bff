"""The stdlib Pool's documented behaviour, kept (the ground of CPython's ``_TestPool``).

Each test runs on MethodPool under every start method; where it matters, the
same assertion is made of ``multiprocessing.Pool`` so a divergence would show.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import time
import warnings
from typing import Any

import pytest
from callables import module_function
from faults import pid_of_worker, sleep_then_square, square

from methodpool import MethodPool, RemoteTraceback


def raise_value_error(x: int) -> int:
    if x == 5:
        raise ValueError(f"bad {x}")
    return x


def test_results_keep_input_order(pool: MethodPool) -> None:
    xs = list(range(50))
    assert pool.map(square, xs) == [x * x for x in xs]
    assert pool.map(square, xs, chunksize=7) == [x * x for x in xs]
    assert list(pool.imap(square, xs, chunksize=3)) == [x * x for x in xs]
    assert sorted(pool.imap_unordered(square, xs)) == [x * x for x in xs]
    assert pool.starmap(pow, [(x, 2) for x in xs]) == [x * x for x in xs]
    assert pool.apply(divmod, (7, 2)) == (3, 1)


def test_empty_input(pool: MethodPool) -> None:
    assert pool.map(square, []) == []
    assert list(pool.imap(square, [])) == []
    assert list(pool.imap_unordered(square, [], chunksize=4)) == []
    assert pool.starmap_async(pow, []).get(timeout=10) == []


def test_get_timeout_and_ready_wait_successful(pool: MethodPool) -> None:
    result = pool.apply_async(sleep_then_square, (0.5,))
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.05)
    assert not result.ready()
    with pytest.raises(ValueError):
        result.successful()  # not ready yet: the stdlib raises ValueError
    result.wait(10)
    assert result.ready() and result.successful() and result.get() == 0.25


def test_imap_next_timeout(pool: MethodPool) -> None:
    results = pool.imap(sleep_then_square, [0.5, 0.0])
    with pytest.raises(multiprocessing.TimeoutError):
        results.next(timeout=0.05)
    assert results.next(timeout=10) == 0.25
    assert results.next() == 0.0
    with pytest.raises(StopIteration):
        results.next()


def test_exception_has_the_remote_traceback_as_cause(pool: MethodPool) -> None:
    with pytest.raises(ValueError, match="bad 5") as info:
        pool.map(raise_value_error, range(10))
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "raise_value_error" in str(info.value.__cause__)


def test_imap_stops_at_the_failing_item(pool: MethodPool) -> None:
    results = pool.imap(raise_value_error, range(10))
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        next(results)
    assert list(results) == [6, 7, 8, 9]  # as in the stdlib, iteration goes on


def test_callbacks_run_with_results(pool: MethodPool) -> None:
    got: list[Any] = []
    errors: list[BaseException] = []
    pool.map_async(square, [1, 2], callback=got.append).wait(10)
    pool.apply_async(raise_value_error, (5,), error_callback=errors.append).wait(10)
    time.sleep(0.1)
    assert got == [[1, 4]] and isinstance(errors[0], ValueError)


def test_close_join_and_state_errors(ctx: Any) -> None:
    pool = MethodPool(2, context=ctx)
    with pytest.raises(ValueError, match="Pool is still running"):
        pool.join()
    result = pool.map_async(sleep_then_square, [0.1] * 4)
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(square, [1])
    with pytest.raises(ValueError, match="Pool not running"), pool:
        pass
    pool.join()
    assert result.get() == pytest.approx([0.01] * 4)  # close() lets work finish


def test_context_manager_terminates(ctx: Any) -> None:
    with MethodPool(2, context=ctx) as pool:
        assert pool.map(square, [3]) == [9]
    assert pool._state == "TERMINATE"
    pool.join()
    assert not any(p.is_alive() for p in pool._pool)


def test_maxtasksperchild_replaces_workers(ctx: Any) -> None:
    with MethodPool(2, maxtasksperchild=2, context=ctx) as pool:
        pids = pool.map(pid_of_worker, range(12), chunksize=1)
        assert len(set(pids)) >= 4  # each worker served at most two tasks
        assert max(pids.count(pid) for pid in set(pids)) <= 2
        assert pool.map(module_function, range(20)) == [2 * x + 1 for x in range(20)]


def set_marker(value: int) -> None:
    os.environ["METHODPOOL_MARKER"] = str(value)


def read_marker(_: Any) -> str | None:
    return os.environ.get("METHODPOOL_MARKER")


def test_initializer_and_initargs_run_in_each_worker(ctx: Any) -> None:
    with MethodPool(2, initializer=set_marker, initargs=(7,), context=ctx) as pool:
        assert set(pool.map(read_marker, range(8), chunksize=1)) == {"7"}


def test_the_context_argument_is_honoured(start_method: str) -> None:
    ctx = multiprocessing.get_context(start_method)
    with MethodPool(1, context=ctx) as pool:
        assert pool._ctx is ctx
        assert pool._pool[0]._start_method == start_method


def test_invalid_arguments_like_the_stdlib() -> None:
    for pool_class in (MethodPool, multiprocessing.pool.Pool):
        with pytest.raises(ValueError, match="Number of processes must be at least 1"):
            pool_class(0)
        with pytest.raises(ValueError, match="maxtasksperchild must be a positive int"):
            pool_class(1, maxtasksperchild=0)
        with pytest.raises(TypeError, match="initializer must be a callable"):
            pool_class(1, initializer=3)


def test_imap_chunksize_must_be_positive(pool: MethodPool) -> None:
    with pytest.raises(ValueError, match="Chunksize must be 1"):
        pool.imap(square, [1], chunksize=0)


def test_unclosed_pool_warns_like_the_stdlib(ctx: Any) -> None:
    pool = MethodPool(1, context=ctx)
    pool.map(square, [1])
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        pool.__del__()
    pool.terminate()
    pool.join()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool.__del__()  # terminated: no warning


def test_pool_refuses_to_be_pickled(pool: MethodPool) -> None:
    import pickle

    with pytest.raises(NotImplementedError, match="pool objects cannot be passed"):
        pickle.dumps(pool)
