"""Pins every private ``multiprocessing`` hook methodpool relies on (see _backend.py).

If a new Python changes one of these, this file fails first and says which.
"""

from __future__ import annotations

import inspect
import multiprocessing
import multiprocessing.pool
import multiprocessing.queues
import time

from methodpool import MethodPool
from methodpool._backend import HEADER, ResultReader, TaskWriter, WorkerFactory


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
        assert isinstance(pool._quick_put, TaskWriter)
        assert isinstance(pool._quick_get, ResultReader)
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


def test_stdlib_sentinels_are_shorter_than_a_frame_header() -> None:
    from multiprocessing.reduction import ForkingPickler

    assert len(ForkingPickler.dumps(None)) < HEADER.size


def test_terminate_drains_the_task_pipe_through_the_class() -> None:
    source = inspect.getsource(multiprocessing.pool.Pool._terminate_pool)
    assert "cls._help_stuff_finish(inqueue, task_handler, len(pool))" in source


def test_terminate_with_a_full_task_pipe(start_method: str) -> None:
    # terminate() empties the task pipe; frames are not plain pickles, so the
    # stdlib's way of emptying it would raise here.
    pool = MethodPool(1, context=multiprocessing.get_context(start_method))
    pool.map_async(time.sleep, [0.2] * 2000, chunksize=1)
    time.sleep(0.3)
    pool.terminate()
    pool.join()
