"""Pins every private ``multiprocessing`` hook methodpool relies on (see _backend.py).

If a new Python changes one of these, this file fails first and says which.
"""

from __future__ import annotations

import inspect
import multiprocessing
import multiprocessing.pool
import multiprocessing.queues
import sys
import time

import pytest

from methodpool import MethodPool
from methodpool._backend import WorkerFactory


def test_pool_starts_workers_through_process_with_the_stdlib_signature() -> None:
    source = inspect.getsource(multiprocessing.pool.Pool._repopulate_pool_static)
    assert "Process(ctx, target=worker" in source
    params = list(inspect.signature(multiprocessing.pool.worker).parameters)
    assert params == [
        "inqueue",
        "outqueue",
        "initializer",
        "initargs",
        "maxtasks",
        "wrap_exception",
    ]


def test_worker_handler_uses_the_instance_process_attribute() -> None:
    with MethodPool(1, context=multiprocessing.get_context("fork")) as pool:
        assert isinstance(pool.Process, WorkerFactory)
        assert pool._worker_handler._args[3] is pool.Process  # type: ignore[attr-defined]


def test_handler_threads_use_the_quick_put_and_get_set_up_by_setup_queues() -> None:
    with MethodPool(1, context=multiprocessing.get_context("fork")) as pool:
        assert pool._quick_put == pool._dispatcher.put
        assert pool._quick_get == pool._dispatcher.get
        assert pool._task_handler._args[1] is pool._quick_put  # type: ignore[attr-defined]
        assert pool._result_handler._args[1] is pool._quick_get  # type: ignore[attr-defined]


def test_simple_queue_internals() -> None:
    queue = multiprocessing.get_context("fork").SimpleQueue()
    for name in ("_reader", "_writer", "_rlock", "_wlock"):
        assert hasattr(queue, name), name
    assert hasattr(queue._reader, "recv_bytes") and hasattr(queue._writer, "send_bytes")
    queue.close()


def test_task_and_helper_shapes() -> None:
    pool_module = multiprocessing.pool
    assert pool_module.mapstar((abs, (-1, -2))) == [1, 2]  # type: ignore[attr-defined]
    assert pool_module.starmapstar((pow, ((2, 3),))) == [8]  # type: ignore[attr-defined]
    source = inspect.getsource(pool_module.Pool._guarded_task_generation)
    assert "yield (result_job, i, func, (x,), {})" in source
    assert "_helper_reraises_exception" in source
    assert hasattr(pool_module, "ExceptionWithTraceback")


def test_pool_terminates_through_its_own_class() -> None:
    with MethodPool(1, context=multiprocessing.get_context("fork")) as pool:
        callback = pool._terminate._callback  # type: ignore[attr-defined]
        assert callback.__func__ is MethodPool._terminate_pool.__func__


def test_results_register_in_the_pool_cache() -> None:
    source = inspect.getsource(multiprocessing.pool.ApplyResult.__init__)
    assert "self._cache[self._job] = self" in source
    for cls in (multiprocessing.pool.ApplyResult, multiprocessing.pool.MapResult):
        assert "del self._cache[self._job]" in inspect.getsource(cls._set)
    iterator = multiprocessing.pool.IMapIterator
    assert "del self._cache[self._job]" in inspect.getsource(iterator._set_length)
    assert issubclass(multiprocessing.pool._PoolCache, dict)  # type: ignore[attr-defined]


def test_map_result_counts_the_chunks_left() -> None:
    # ListResult closes its bar before the last chunk's _set makes it ready.
    source = inspect.getsource(multiprocessing.pool.MapResult._set)
    assert "self._number_left -= 1" in source and "if self._number_left == 0:" in source


def test_terminate_unblocks_the_task_handler_through_the_class() -> None:
    source = inspect.getsource(multiprocessing.pool.Pool._terminate_pool)
    assert "cls._help_stuff_finish(inqueue, task_handler, len(pool))" in source


def test_terminate_with_many_tasks_queued(start_method: str) -> None:
    # The task handler is blocked in the dispatcher, waiting for room.
    pool = MethodPool(1, context=multiprocessing.get_context(start_method))
    pool.map_async(time.sleep, [0.2] * 2000, chunksize=1)
    time.sleep(0.3)
    pool.terminate()
    pool.join()


def test_spawn_preparation_data_carries_the_name_and_prepare_skips_a_main_already_there() -> None:
    # How workers skip the main module (import_main=False, see _backend).
    import multiprocessing.spawn as spawn

    assert "name=name" in inspect.getsource(spawn.get_preparation_data)
    prepare = inspect.getsource(spawn.prepare)
    assert "process.current_process().name = data['name']" in prepare
    import multiprocessing.popen_forkserver
    import multiprocessing.popen_spawn_posix

    for popen in (multiprocessing.popen_spawn_posix, multiprocessing.popen_forkserver):
        assert "get_preparation_data(process_obj._name)" in inspect.getsource(popen)
    assert "getattr(current_main, '__file__', None) == main_path" in inspect.getsource(
        spawn._fixup_main_from_path  # type: ignore[attr-defined]
    )
    assert 'getattr(current_main.__spec__, "name", None) == mod_name' in inspect.getsource(
        spawn._fixup_main_from_name  # type: ignore[attr-defined]
    )


@pytest.mark.parametrize("posix", [True, False], ids=["posixshmem", "without-posixshmem"])
def test_read_shared_memory_with_and_without_posixshmem(
    posix: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without _posixshmem (Windows), through SharedMemory: forced here.
    from multiprocessing import shared_memory

    from methodpool._backend import read_shared_memory

    if not posix:
        monkeypatch.setitem(sys.modules, "_posixshmem", None)
    data = bytes(range(256)) * 40
    segment = shared_memory.SharedMemory(create=True, size=len(data))
    try:
        segment.buf[: len(data)] = data
        assert read_shared_memory(segment.name, len(data)) == data
        assert read_shared_memory(segment.name, 10) == data[:10]
    finally:
        segment.close()
        segment.unlink()
