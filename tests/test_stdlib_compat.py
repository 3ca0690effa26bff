"""MethodPool behaves like ``multiprocessing.pool.Pool`` for plain picklable functions.

A port of the ground covered by CPython's ``_TestPool``, ``_TestPoolWorkerErrors``
and ``_TestPoolWorkerLifetime`` (Lib/test/_test_multiprocessing.py), run with
``serializer="pickle"`` and with the default serializer, under every start
method.  Every assertion here holds for the stdlib pool too.

Tests that leave a pool running and usable take one of the session's shared
pools; tests that close, terminate or reconfigure a pool make their own with
``make_pool``.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import multiprocessing.pool
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing.reduction import ForkingPickler
from typing import Any

import compat_helpers as h
import pytest
from conftest import SharedPools
from faults import square

from methodpool import MethodPool, SerializationError

SERIALIZERS = ["pickle", "auto"]
TIMEOUT = 30  # for results that should arrive at once: only a hang reaches it


@pytest.fixture(params=SERIALIZERS)
def serializer(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def shared(shared_pools: SharedPools, start_method: str, serializer: str) -> MethodPool:
    """A shared running 2-worker pool: for tests that leave it running and idle."""
    return shared_pools.get(start_method, serializer)


def new_pool(ctx: Any, serializer: str, processes: int | None = 2, **kwargs: Any) -> MethodPool:
    if serializer != "auto":  # "auto" is tested as the default, not passed
        kwargs["serializer"] = serializer
    return MethodPool(processes, context=ctx, **kwargs)


@pytest.fixture
def make_pool(ctx: Any, serializer: str) -> Iterator[Callable[..., MethodPool]]:
    """Pools of the test's own, terminated and joined at the end whatever happens."""
    pools: list[MethodPool] = []

    def make(processes: int | None = 2, **kwargs: Any) -> MethodPool:
        pool = new_pool(ctx, serializer, processes, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.terminate()
        pool.join()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- results and their order ---------------------------------------------------------


def test_apply(shared: MethodPool) -> None:
    assert shared.apply(h.sqr, (5,)) == 25
    assert shared.apply(h.sqr, (), {"x": 3}) == 9
    assert shared.apply(h.mul, (6,), {"y": 7}) == 42


def test_map(shared: MethodPool) -> None:
    assert shared.map(h.sqr, list(range(10))) == [x * x for x in range(10)]
    assert shared.map(h.sqr, list(range(100)), chunksize=20) == [x * x for x in range(100)]
    assert shared.map(h.sqr, range(7), 3) == [x * x for x in range(7)]  # any iterable


def test_map_keeps_input_order_when_tasks_finish_out_of_order(shared: MethodPool) -> None:
    waits = [(0.15, "a"), (0.0, "b"), (0.075, "c"), (0.0, "d")]
    assert shared.starmap(h.sleep_then_return, waits, chunksize=1) == ["a", "b", "c", "d"]
    assert list(shared.imap(h.delayed, waits)) == ["a", "b", "c", "d"]
    assert shared.map_async(h.delayed, waits, chunksize=1).get(TIMEOUT) == ["a", "b", "c", "d"]


def test_starmap(shared: MethodPool) -> None:
    tuples = list(zip(range(10), range(9, -1, -1), strict=True))
    assert shared.starmap(h.mul, tuples) == list(itertools.starmap(h.mul, tuples))
    tuples = list(zip(range(100), range(99, -1, -1), strict=True))
    assert shared.starmap(h.mul, tuples, chunksize=20) == list(itertools.starmap(h.mul, tuples))


def test_starmap_async(shared: MethodPool) -> None:
    tuples = list(zip(range(100), range(99, -1, -1), strict=True))
    expected = list(itertools.starmap(h.mul, tuples))
    assert shared.starmap_async(h.mul, tuples).get(TIMEOUT) == expected
    assert shared.starmap_async(h.mul, tuples, chunksize=7).get(TIMEOUT) == expected


def test_map_async(shared: MethodPool) -> None:
    assert shared.map_async(h.sqr, list(range(10))).get(TIMEOUT) == [x * x for x in range(10)]
    assert shared.map_async(h.sqr, range(30), 4).get(TIMEOUT) == [x * x for x in range(30)]


def test_imap(shared: MethodPool) -> None:
    it = shared.imap(h.sqr, list(range(10)))
    assert list(it) == [x * x for x in range(10)]

    it = shared.imap(h.sqr, list(range(10)))
    for i in range(10):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        next(it)

    it = shared.imap(h.sqr, list(range(1000)), chunksize=100)
    for i in range(1000):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        next(it)

    with pytest.raises(ValueError, match="Chunksize must be 1\\+, not 0"):
        shared.imap(h.sqr, [1], chunksize=0)


def test_imap_unordered(shared: MethodPool) -> None:
    it = shared.imap_unordered(h.sqr, list(range(10)))
    assert sorted(it) == [x * x for x in range(10)]
    it = shared.imap_unordered(h.sqr, list(range(1000)), chunksize=100)
    assert sorted(it) == [x * x for x in range(1000)]


def test_imap_unordered_yields_in_completion_order(shared: MethodPool) -> None:
    # Two idle workers: the slow task is taken first, the fast one finishes first.
    it = shared.imap_unordered(h.delayed, [(0.4, "slow"), (0.0, "fast")])
    assert [it.next(TIMEOUT) for _ in range(2)] == ["fast", "slow"]


def test_empty_iterable(shared: MethodPool) -> None:
    # bpo-12157, and test_map_chunksize: map_async with chunksize on [] must not stall.
    assert shared.map(h.sqr, []) == []
    assert shared.map(h.sqr, [], chunksize=3) == []
    assert shared.starmap(h.mul, []) == []
    assert list(shared.imap(h.sqr, [])) == []
    assert list(shared.imap(h.sqr, [], chunksize=3)) == []
    assert list(shared.imap_unordered(h.sqr, [])) == []
    assert shared.map_async(h.sqr, []).get(TIMEOUT) == []
    try:
        assert shared.map_async(h.sqr, [], chunksize=1).get(timeout=5) == []
    except multiprocessing.TimeoutError:
        pytest.fail("map_async with chunksize stalled on an empty list")


def test_release_task_refs(shared: MethodPool) -> None:
    # bpo-29861: task arguments and results are not kept alive afterwards.
    objs = [h.CountedObject() for _ in range(10)]
    refs = [weakref.ref(o) for o in objs]
    shared.map(h.identity, objs)
    del objs
    assert wait_until(lambda: (gc.collect(), {r() for r in refs})[1] == {None}, timeout=5)
    assert wait_until(lambda: (gc.collect(), h.CountedObject.n_instances)[1] == 0, timeout=5)


# --- chunksize ------------------------------------------------------------------------


def chunks_seen(pids: list[int]) -> list[int]:
    """Lengths of the runs of equal pids: with maxtasksperchild=1, one run per task."""
    return [len(list(run)) for _, run in itertools.groupby(pids)]


def test_chunksize_groups_items_into_one_task(make_pool: Callable[..., MethodPool]) -> None:
    # With maxtasksperchild=1 every task (= chunk) gets a worker of its own, so
    # the pids that ran the items show where the chunks were cut.
    pool = make_pool(2, maxtasksperchild=1)
    used: set[int] = set()

    def run(pids: list[int]) -> list[int]:
        assert not used & set(pids)  # each task in a new worker
        used.update(pids)
        return chunks_seen(pids)

    assert run(pool.map(h.pid_of, range(7), chunksize=3)) == [3, 3, 1]
    assert run(list(pool.imap(h.pid_of, range(3), chunksize=2))) == [2, 1]
    # Default chunksize: ceil(len / (4 * processes)) = ceil(9 / 8) = 2.  The
    # stdlib counts the workers at the time of the call, so first let the pool
    # replace every worker that has done its task.
    assert wait_until(
        lambda: len(pool._pool) == 2 and all(w.is_alive() and w.pid not in used for w in pool._pool)
    )
    pids = pool.map_async(h.pid_of, range(9)).get(TIMEOUT)
    assert run(pids) == [2, 2, 2, 2, 1]
    assert len(set(pids)) == 5


# --- timeouts, AsyncResult ----------------------------------------------------------


def test_async(shared: MethodPool) -> None:
    res = shared.apply_async(h.sqr, (7, 0.2))
    start = time.monotonic()
    assert res.get() == 49
    assert 0.15 < time.monotonic() - start < 10


def test_async_timeout(shared: MethodPool) -> None:
    res = shared.apply_async(h.sqr, (6, 0.5))
    start = time.monotonic()
    with pytest.raises(multiprocessing.TimeoutError):
        res.get(timeout=0.2)
    assert 0.15 < time.monotonic() - start < 3
    assert not res.ready()
    assert res.get(TIMEOUT) == 36  # the task went on, and the pool is idle again


def test_map_async_get_timeout(shared: MethodPool) -> None:
    res = shared.map_async(h.sqr, [1, 2], chunksize=1)
    slow = shared.starmap_async(h.sleep_then_return, [(0.4, "late")])
    with pytest.raises(multiprocessing.TimeoutError):
        slow.get(timeout=0.1)
    assert res.get(TIMEOUT) == [1, 4]
    assert slow.get(TIMEOUT) == ["late"]


def test_imap_next_raises_timeout_error_while_pending(shared: MethodPool) -> None:
    for imap in (shared.imap, shared.imap_unordered):
        it = imap(h.sqr, [5])
        assert it.next(TIMEOUT) == 25
        slow = imap(h.delayed, [(0.3, "late")])
        start = time.monotonic()
        with pytest.raises(multiprocessing.TimeoutError):
            slow.next(timeout=0.1)
        assert time.monotonic() - start < 3
        assert slow.next(TIMEOUT) == "late"
        with pytest.raises(StopIteration):
            slow.next(TIMEOUT)


def test_ready_successful_wait(shared: MethodPool) -> None:
    res = shared.apply_async(h.sqr, (3, 0.3))
    assert not res.ready()
    with pytest.raises(ValueError, match="not ready"):
        res.successful()
    start = time.monotonic()
    assert res.wait(0.1) is None
    assert time.monotonic() - start < 3
    assert not res.ready()
    res.wait(TIMEOUT)
    assert res.ready()
    assert res.successful()
    assert res.get(0) == 9

    bad = shared.apply_async(h.raising)
    bad.wait(TIMEOUT)
    assert bad.ready()
    assert not bad.successful()

    mres = shared.map_async(h.raise_at_3, range(5))
    mres.wait(TIMEOUT)
    assert mres.ready()
    assert not mres.successful()


# --- exceptions -----------------------------------------------------------------------


def test_traceback(shared: MethodPool, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError) as info:
        shared.apply(h.raise_runtime_error)
    exc = info.value
    assert type(exc) is RuntimeError
    assert exc.args == (123,)
    cause = exc.__cause__
    assert type(cause) is multiprocessing.pool.RemoteTraceback
    assert "raise RuntimeError(123)  # some comment" in cause.tb
    assert "compat_helpers.py" in cause.tb

    try:
        raise exc
    except RuntimeError:
        sys.excepthook(*sys.exc_info())
    assert "raise RuntimeError(123)  # some comment" in capsys.readouterr().err


def test_iterable_exception_is_not_a_remote_exception(shared: MethodPool) -> None:
    # _helper_reraises_exception must not make the input's error a remote one.
    with pytest.raises(h.SayWhenError) as info:
        shared.map(h.sqr, h.exception_throwing_generator(1, -1), 1)
    assert type(info.value) is h.SayWhenError
    assert info.value.__cause__ is None


@pytest.mark.parametrize("call", ["apply", "apply_async", "map", "map_async", "starmap", "imap"])
def test_task_exception_propagates_with_remote_traceback(shared: MethodPool, call: str) -> None:
    with pytest.raises(ValueError) as info:
        if call == "apply":
            shared.apply(h.raise_at_3, (3,))
        elif call == "apply_async":
            shared.apply_async(h.raise_at_3, (3,)).get(TIMEOUT)
        elif call == "map":
            shared.map(h.raise_at_3, range(6))
        elif call == "map_async":
            shared.map_async(h.raise_at_3, range(6), 2).get(TIMEOUT)
        elif call == "starmap":
            shared.starmap(h.raise_at_3, [(x,) for x in range(6)])
        else:
            list(shared.imap(h.raise_at_3, range(6)))
    assert type(info.value) is ValueError
    assert info.value.args == (3,)
    cause = info.value.__cause__
    assert isinstance(cause, multiprocessing.pool.RemoteTraceback)
    assert "in raise_at_3" in cause.tb
    assert "raise ValueError(x)" in cause.tb
    assert shared.apply(h.sqr, (2,)) == 4  # the pool goes on


def test_imap_exception_stops_at_the_failing_item(shared: MethodPool) -> None:
    # chunksize=1: the failing item raises from its own next(); the rest follow.
    it = shared.imap(h.raise_at_3, range(6))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError) as info:
        next(it)
    assert info.value.args == (3,)
    assert isinstance(info.value.__cause__, multiprocessing.pool.RemoteTraceback)
    assert list(it) == [4, 5]

    # chunked: the error surfaces at the start of the failing chunk, and ends it.
    it = shared.imap(h.raise_at_3, range(6), chunksize=2)
    assert [next(it) for _ in range(2)] == [0, 1]
    with pytest.raises(ValueError):
        next(it)
    assert list(it) == []

    # imap_unordered: every good item comes out, and the error once.
    got: list[Any] = []
    it = shared.imap_unordered(h.raise_at_3, range(6))
    for _ in range(6):
        try:
            got.append(next(it))
        except ValueError as exc:
            got.append(("error", exc.args))
    assert sorted(got, key=repr) == sorted([0, 1, 2, ("error", (3,)), 4, 5], key=repr)


def test_map_handle_iterable_exception(shared: MethodPool) -> None:
    # SayWhenError seen at the very first of the iterable
    with pytest.raises(h.SayWhenError):
        shared.map(h.sqr, h.exception_throwing_generator(1, -1), 1)
    # again, make sure it's reentrant
    with pytest.raises(h.SayWhenError):
        shared.map(h.sqr, h.exception_throwing_generator(1, -1), 1)
    with pytest.raises(h.SayWhenError):
        shared.map(h.sqr, h.exception_throwing_generator(10, 3), 1)
    with pytest.raises(h.SayWhenError):
        shared.map_async(h.sqr, h.exception_throwing_generator(10, 3), 2).get(TIMEOUT)
    with pytest.raises(h.SayWhenError):
        shared.map(h.sqr, h.SpecialIterable(), 1)
    with pytest.raises(h.SayWhenError):
        shared.map(h.sqr, h.SpecialIterable(), 1)
    assert shared.map(h.sqr, range(4)) == [0, 1, 4, 9]


def test_imap_handle_iterable_exception(shared: MethodPool) -> None:
    # SayWhenError seen at the very first of the iterable
    it = shared.imap(h.sqr, h.exception_throwing_generator(1, -1), 1)
    with pytest.raises(h.SayWhenError):
        next(it)
    # again, make sure it's reentrant
    it = shared.imap(h.sqr, h.exception_throwing_generator(1, -1), 1)
    with pytest.raises(h.SayWhenError):
        next(it)

    it = shared.imap(h.sqr, h.exception_throwing_generator(10, 3), 1)
    for i in range(3):
        assert next(it) == i * i
    with pytest.raises(h.SayWhenError):
        next(it)

    # SayWhenError seen at start of problematic chunk's results
    it = shared.imap(h.sqr, h.exception_throwing_generator(20, 7), 2)
    for i in range(6):
        assert next(it) == i * i
    with pytest.raises(h.SayWhenError):
        next(it)
    it = shared.imap(h.sqr, h.exception_throwing_generator(20, 7), 4)
    for i in range(4):
        assert next(it) == i * i
    with pytest.raises(h.SayWhenError):
        next(it)


def test_imap_unordered_handle_iterable_exception(shared: MethodPool) -> None:
    # SayWhenError seen at the very first of the iterable
    it = shared.imap_unordered(h.sqr, h.exception_throwing_generator(1, -1), 1)
    with pytest.raises(h.SayWhenError):
        next(it)
    # again, make sure it's reentrant
    it = shared.imap_unordered(h.sqr, h.exception_throwing_generator(1, -1), 1)
    with pytest.raises(h.SayWhenError):
        next(it)

    for total, when, chunksize in [(10, 3, 1), (20, 7, 2)]:
        it = shared.imap_unordered(h.sqr, h.exception_throwing_generator(total, when), chunksize)
        expected_values = [x * x for x in range(total)]
        with pytest.raises(h.SayWhenError):
            # imap_unordered makes it difficult to anticipate the SayWhenError
            for _ in range(total):
                value = next(it)
                assert value in expected_values
                expected_values.remove(value)


def test_map_unpicklable_argument(shared: MethodPool, serializer: str) -> None:
    # bpo-19425: an argument that fails to pickle fails the call, without a hang.
    # With serializer="pickle" the call raises the pickling error itself, as the
    # stdlib does.  With "auto", which tries more serializers, methodpool
    # documents a SerializationError (a PicklingError) naming the argument,
    # caused by the original error.
    expected = RuntimeError if serializer == "pickle" else SerializationError
    with pytest.raises(expected, match="cannot pickle") as info:
        shared.map(h.sqr, [h.Unpicklable()] * 10)
    if serializer != "pickle":
        assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(expected, match="cannot pickle"):
        shared.apply_async(h.identity, (h.Unpicklable(),)).get(TIMEOUT)
    assert shared.map(h.sqr, range(3)) == [0, 1, 4]


def test_map_no_failfast(make_pool: Callable[..., MethodPool]) -> None:
    # bpo-23992: map() failing fast must not make close() + join() deadlock on
    # the result queue that the other (large) error still fills.
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"^x{100}"):  # noqa: SIM117
        with make_pool(2) as p:
            try:
                p.map(h.raise_large_valuerror, [0, 0.4], chunksize=1)
            finally:
                time.sleep(0.1)
                p.close()
                p.join()
    # check that we indeed waited for all jobs
    assert time.monotonic() - start > 0.35


# --- MaybeEncodingError ---------------------------------------------------------------

UNSENDABLE = {
    # serializer: task functions whose result that serializer cannot send back
    "pickle": [h.unpicklable_lambda_result, h.generator_result],
    "auto": [h.generator_result],  # auto sends lambdas back with cloudpickle
}
REPR_OF_RESULT = {
    "unpicklable_lambda_result": (
        r"<function unpicklable_lambda_result\.<locals>\.<lambda> at 0x\w+>"
    ),
    "generator_result": r"<generator object generator_result\.<locals>\.<genexpr> at 0x\w+>",
}


def without_addresses(text: str) -> str:
    # Python 3.14's pickle errors show the object's repr, address included; the
    # worker's copy of an object is not at the parent's address.
    return re.sub(r" at 0x[0-9a-f]+", " at 0x...", text)


def test_unpicklable_result(shared: MethodPool, serializer: str) -> None:
    for func in UNSENDABLE[serializer]:
        # Make sure we don't lose pool processes because of encoding errors.
        for _ in range(5):
            scratchpad: list[BaseException] = []
            res = shared.apply_async(func, error_callback=scratchpad.append)
            with pytest.raises(multiprocessing.pool.MaybeEncodingError) as info:
                res.get(TIMEOUT)
            assert scratchpad == [info.value]
            wrapped = info.value
            assert wrapped.exc is not None
            assert wrapped.value is not None
            # The very error the stdlib's pickler gives for such a result.
            with pytest.raises(Exception) as local:
                ForkingPickler.dumps(func())
            assert without_addresses(wrapped.exc) == without_addresses(repr(local.value))
            # As the stdlib: .value is repr(result), .exc is repr(the pickling error).
            assert re.fullmatch(REPR_OF_RESULT[func.__name__], wrapped.value), wrapped.value
            assert str(wrapped) == (
                f"Error sending result: '{wrapped.value}'. Reason: '{wrapped.exc}'"
            )
        # The same through map and imap; the workers are still there afterwards.
        with pytest.raises(multiprocessing.pool.MaybeEncodingError):
            shared.starmap(func, [()] * 3)
        with pytest.raises(multiprocessing.pool.MaybeEncodingError):
            list(shared.imap(h.call, [func]))
        assert shared.map(h.sqr, [1, 2]) == [1, 4]


# --- callbacks ------------------------------------------------------------------------


def test_map_async_callbacks(shared: MethodPool) -> None:
    call_args: list[Any] = []
    shared.map_async(int, ["1"], callback=call_args.append, error_callback=call_args.append).wait(
        TIMEOUT
    )
    assert call_args == [[1]]
    shared.map_async(int, ["a"], callback=call_args.append, error_callback=call_args.append).wait(
        TIMEOUT
    )
    assert len(call_args) == 2
    assert isinstance(call_args[1], ValueError)


def test_async_error_callback(shared: MethodPool) -> None:
    scratchpad: list[BaseException] = []
    res = shared.apply_async(h.raising, error_callback=scratchpad.append)
    with pytest.raises(KeyError):
        res.get(TIMEOUT)
    assert len(scratchpad) == 1
    assert isinstance(scratchpad[0], KeyError)
    assert isinstance(scratchpad[0].__cause__, multiprocessing.pool.RemoteTraceback)


def test_callbacks_run_in_the_parent_before_get_returns(shared: MethodPool) -> None:
    seen: list[tuple[str, Any, bool]] = []
    main = threading.current_thread()

    def record(kind: str) -> Callable[[Any], None]:
        return lambda value: seen.append((kind, value, threading.current_thread() is main))

    cases: list[tuple[Callable[[], Any], tuple[str, Any]]] = [
        (lambda: shared.apply_async(h.sqr, (4,), callback=record("ok")), ("ok", 16)),
        (lambda: shared.map_async(h.sqr, range(4), callback=record("ok")), ("ok", [0, 1, 4, 9])),
        (lambda: shared.starmap_async(h.mul, [(2, 3)], callback=record("ok")), ("ok", [6])),
    ]
    for submit, expected in cases:
        submit().get(TIMEOUT)
        # The stdlib runs the callback before it marks the result ready.
        assert seen[-1][:2] == expected
        assert seen[-1][2] is False  # on the result-handler thread, not the caller's

    err = shared.apply_async(h.raising, callback=record("ok"), error_callback=record("err"))
    err.wait(TIMEOUT)
    kind, value, _ = seen[-1]
    assert kind == "err"
    assert isinstance(value, KeyError)
    assert len(seen) == 4  # exactly one callback per call, never both


# --- close / join / terminate / context manager ---------------------------------------


def test_make_pool(ctx: Any, serializer: str, make_pool: Callable[..., MethodPool]) -> None:
    with pytest.raises(ValueError, match="Number of processes must be at least 1"):
        new_pool(ctx, serializer, -1)
    with pytest.raises(ValueError, match="Number of processes must be at least 1"):
        new_pool(ctx, serializer, 0)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        new_pool(ctx, serializer, 1, initializer=3)
    p = make_pool(3)
    assert len(p._pool) == 3
    assert len({p.apply(h.pid_of) for _ in range(3)} - {w.pid for w in p._pool}) == 0
    p.close()
    p.join()
    count = getattr(os, "process_cpu_count", os.cpu_count)() or 1
    assert len(make_pool(None)._pool) == count


def test_pool_maxtasksperchild_invalid(ctx: Any, serializer: str) -> None:
    for value in [0, -1, 0.5, "12"]:
        with pytest.raises(ValueError, match="maxtasksperchild must be a positive int or None"):
            new_pool(ctx, serializer, 1, maxtasksperchild=value)


def test_invalid_arguments_like_the_stdlib() -> None:
    for pool_class in (MethodPool, multiprocessing.pool.Pool):
        with pytest.raises(ValueError, match="Number of processes must be at least 1"):
            pool_class(0)
        with pytest.raises(ValueError, match="maxtasksperchild must be a positive int"):
            pool_class(1, maxtasksperchild=0)
        with pytest.raises(TypeError, match="initializer must be a callable"):
            pool_class(1, initializer=3)


def test_close_then_join_finishes_pending_tasks(make_pool: Callable[..., MethodPool]) -> None:
    p = make_pool(2)
    workers = list(p._pool)
    results = [p.apply_async(h.sqr, (i, 0.05)) for i in range(4)]
    imap_it = p.imap(h.sqr, range(5))
    p.close()
    p.join()
    assert all(r.ready() for r in results)
    assert [r.get(0) for r in results] == [i * i for i in range(4)]
    assert list(imap_it) == [0, 1, 4, 9, 16]
    assert all(w.exitcode is not None for w in workers)


def test_join_while_running_raises(make_pool: Callable[..., MethodPool]) -> None:
    p = make_pool(1)
    with pytest.raises(ValueError, match="Pool is still running"):
        p.join()
    assert p.apply(h.sqr, (3,)) == 9  # still usable
    p.close()
    p.join()


@pytest.mark.parametrize("how", ["close", "terminate", "with"])
def test_closed_pool_refuses_work(make_pool: Callable[..., MethodPool], how: str) -> None:
    p = make_pool(1)
    if how == "close":
        p.close()
    elif how == "terminate":
        p.terminate()
    else:
        with p:
            pass
    calls: list[Callable[[], Any]] = [
        lambda: p.apply(h.sqr, (1,)),
        lambda: p.apply_async(h.sqr, (1,)),
        lambda: p.map(h.sqr, [1]),
        lambda: p.map_async(h.sqr, [1]),
        lambda: p.starmap(h.mul, [(1, 2)]),
        lambda: p.starmap_async(h.mul, [(1, 2)]),
        lambda: p.imap(h.sqr, [1]),
        lambda: p.imap(h.sqr, [1], chunksize=2),
        lambda: p.imap_unordered(h.sqr, [1]),
        lambda: p.__enter__(),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="Pool not running"):
            call()
    p.join()


def test_enter(make_pool: Callable[..., MethodPool]) -> None:
    pool = make_pool(1)
    with pool as entered:
        assert entered is pool
        # call pool.terminate()
    # pool is no longer running
    with pytest.raises(ValueError, match="Pool not running"):  # noqa: SIM117
        # bpo-35477: pool.__enter__() fails if the pool is not running
        with pool:
            pass
    pool.join()


def test_context_manager_terminates(make_pool: Callable[..., MethodPool]) -> None:
    expected = [h.sqr(i) for i in range(10)]
    with make_pool(2) as p:
        assert p.map_async(h.sqr, range(10)).get(TIMEOUT) == expected
        workers = list(p._pool)
        stuck = p.apply_async(h.sqr, (1, 60))  # __exit__ must not wait for this one
        time.sleep(0.1)
        start = time.monotonic()
    p.join()
    assert time.monotonic() - start < 15
    assert all(w.exitcode is not None for w in workers)
    assert not (stuck.ready() and stuck.successful())  # the task never completed
    with pytest.raises(ValueError, match="Pool not running"):
        p.map_async(h.sqr, range(10))


def test_terminate(make_pool: Callable[..., MethodPool]) -> None:
    # Simulate slow tasks which take "forever" to complete
    p = make_pool(2)
    workers = list(p._pool)
    result = p.map_async(time.sleep, [60] * 2_000, chunksize=1)
    time.sleep(0.1)  # give some tasks a chance to start
    start = time.monotonic()
    p.terminate()
    p.join()
    assert time.monotonic() - start < 15
    assert all(w.exitcode is not None for w in workers)
    assert not (result.ready() and result.successful())  # the tasks never completed
    p.terminate()  # again: a no-op
    p.join()


def test_resource_warning(ctx: Any, serializer: str) -> None:
    pool = new_pool(ctx, serializer, 1)
    pool.terminate()
    pool.join()
    # force state to RUN to emit ResourceWarning in __del__()
    pool._state = multiprocessing.pool.RUN
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        pool = None
        gc.collect()


def test_never_closed_pool_warns_and_is_cleaned_up(ctx: Any, serializer: str) -> None:
    pool = new_pool(ctx, serializer, 2)
    assert pool.map(h.sqr, range(4)) == [0, 1, 4, 9]
    workers = list(pool._pool)
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        del pool
        gc.collect()
    # The pool's finalizer terminates its workers.
    assert wait_until(lambda: all(w.exitcode is not None for w in workers))


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


# --- maxtasksperchild -----------------------------------------------------------------


def test_pool_worker_lifetime(make_pool: Callable[..., MethodPool]) -> None:
    p = make_pool(2, maxtasksperchild=3)
    assert len(p._pool) == 2
    orig_pids = [w.pid for w in p._pool]
    # Run many tasks so each worker gets replaced.
    results = [p.apply_async(h.pid_and_sqr, (i,)) for i in range(12)]
    answers = [r.get(TIMEOUT) for r in results]
    assert [sq for _, sq in answers] == [i * i for i in range(12)]
    per_worker = Counter(pid for pid, _ in answers)
    assert max(per_worker.values()) <= 3  # no worker ran more than maxtasksperchild
    assert len(per_worker) >= 4
    # Wait until the pool is refilled and all workers are alive.
    assert wait_until(lambda: len(p._pool) == 2 and all(w.is_alive() for w in p._pool))
    final_pids = [w.pid for w in p._pool]
    # All pids should be assigned.  See bpo-7805.
    assert None not in orig_pids
    assert None not in final_pids
    # Finally, check that the worker pids have changed.
    assert sorted(orig_pids) != sorted(final_pids)
    assert p.map(h.sqr, range(10)) == [i * i for i in range(10)]  # still correct
    p.close()
    p.join()


def test_pool_worker_lifetime_early_close(make_pool: Callable[..., MethodPool]) -> None:
    # bpo-10332: closing a pool whose workers have limited lifetimes before all
    # the tasks completed would make join() hang.
    p = make_pool(2, maxtasksperchild=1)
    results = [p.apply_async(h.sqr, (i, 0.05)) for i in range(4)]
    p.close()
    p.join()
    assert [r.get(0) for r in results] == [i * i for i in range(4)]


def test_worker_finalization_via_atexit_handler(
    start_method: str, serializer: str, tmp_path: Any
) -> None:
    # bpo-38744 and bpo-39360: a pool left open in a global until exit.
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import multiprocessing
            from methodpool import MethodPool
            problem = None
            class A:
                def __init__(self):
                    self.pool = MethodPool(
                        processes=1,
                        context=multiprocessing.get_context({start_method!r}),
                        serializer={serializer!r},
                    )
            def test():
                global problem
                problem = A()
                problem.pool.map(float, tuple(range(10)))
            if __name__ == "__main__":
                test()
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=45)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


# --- initializer and context ----------------------------------------------------------


def test_initializer_runs_once_in_each_worker(
    make_pool: Callable[..., MethodPool], tmp_path: Any
) -> None:
    log = tmp_path / "init.log"
    p = make_pool(2, initializer=h.initializer, initargs=(str(log), "ready"), maxtasksperchild=4)
    first_workers = {w.pid for w in p._pool}
    states = p.map(h.worker_state, range(12), chunksize=1)
    p.close()
    p.join()
    assert {(calls, state) for _, calls, state in states} == {(1, "ready")}
    init_pids = [int(line) for line in log.read_text().split()]
    assert len(init_pids) == len(set(init_pids))  # once per worker
    assert first_workers <= set(init_pids)  # in every worker, used or not
    assert {pid for pid, _, _ in states} <= set(init_pids)  # replacements too
    assert len(set(init_pids)) >= 3  # 12 tasks, at most 4 per worker
    assert h.INIT_CALLS == 0  # never in the parent


PROCESS_CLASS = {"fork": "ForkProcess", "spawn": "SpawnProcess", "forkserver": "ForkServerProcess"}


def test_context_argument_is_honoured(
    make_pool: Callable[..., MethodPool],
    ctx: Any,
    start_method: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = object().__repr__()
    monkeypatch.setattr(h, "PARENT_MARK", token)
    p = make_pool(2)
    assert all(isinstance(w, ctx.Process) for w in p._pool)
    facts = set(p.map(h.process_facts, range(4), chunksize=1))
    (process_classes, ppid, mark) = facts.pop()
    assert not facts  # the same in every worker
    assert PROCESS_CLASS[start_method] in process_classes  # the worker's own class
    # Forked workers inherit the parent's memory; spawned ones start afresh.
    assert mark == (token if start_method == "fork" else None)
    # Forkserver workers are children of the fork server, not of this process.
    assert (ppid == os.getpid()) == (start_method != "forkserver")


def test_pool_class_rebound_to_methodpool(ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Legacy code is often patched this way; MethodPool must not look its base
    # class up through the module attribute.
    monkeypatch.setattr(multiprocessing.pool, "Pool", MethodPool)
    with ctx.Pool(2) as p:
        assert type(p) is MethodPool
        assert p.map(h.sqr, range(5)) == [0, 1, 4, 9, 16]


def test_release_unused_processes() -> None:
    # CPython's TestPoolNotLeakOnFailure (issue #19675): if a process cannot be
    # started while the pool is created, the error propagates and the ones
    # already started are stopped.  The context is not a real one.
    import unittest.mock

    will_fail_in = 3
    forked_processes = []

    class FailingForkProcess:
        def __init__(self, **kwargs: Any) -> None:
            self.name = "Fake Process"
            self.exitcode = None
            self.state: str | None = None
            forked_processes.append(self)

        def start(self) -> None:
            nonlocal will_fail_in
            if will_fail_in <= 0:
                raise OSError("Manually induced OSError")
            will_fail_in -= 1
            self.state = "started"

        def terminate(self) -> None:
            self.state = "stopping"

        def join(self) -> None:
            if self.state == "stopping":
                self.state = "stopped"

        def is_alive(self) -> bool:
            return self.state == "started" or self.state == "stopping"

    with pytest.raises(OSError, match="Manually induced OSError"):
        p = MethodPool(5, context=unittest.mock.MagicMock(Process=FailingForkProcess))
        p.close()
        p.join()
    assert not any(process.is_alive() for process in forked_processes)


class CountingProcess(multiprocessing.context.ForkProcess):  # type: ignore[name-defined]
    started = 0

    def start(self) -> None:
        CountingProcess.started += 1
        super().start()


class CustomContext(multiprocessing.context.BaseContext):
    """A context of a start method of its own, as a framework may define."""

    _name = "custom-fork"
    Process = CountingProcess


def test_context_of_another_start_method_starts_workers_with_its_process() -> None:
    from faults import die_on

    from methodpool import WorkerLostError

    CountingProcess.started = 0
    p = MethodPool(2, context=CustomContext())
    try:
        assert all(isinstance(w, CountingProcess) for w in p._pool)
        assert CountingProcess.started == 2
        assert p.map(h.sqr, range(10), chunksize=1) == [x * x for x in range(10)]
        # The workers are wired as usual: a dead one fails its task only.
        with pytest.raises(WorkerLostError):
            p.apply(die_on, (3,))
        assert p.map(h.sqr, range(4)) == [0, 1, 4, 9]
        assert CountingProcess.started == 3  # the replacement, by the same class
    finally:
        p.terminate()
        p.join()
