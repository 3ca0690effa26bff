"""DaskPool: MethodPool's callables and API on a real Dask cluster.

Most tests share one ``LocalCluster`` on 127.0.0.1, started once for the
module, with 2 single-threaded worker processes.  A few start clusters of
their own: a pool's own local cluster (to see ``close``/``terminate`` stop
it), and a scheduler and a worker run as separate processes, reached by
address.  Worker processes import this module and ``callables`` by name, so
functions defined here travel by reference.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import operator
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed
import pytest
from callables import BEYOND_CLOUDPICKLE, CALLABLES, Affine, OwnsPool, module_function
from conftest import DILL, process_alive
from distributed.scheduler import KilledWorker
from test_callables import APIS, EXPECTED, XS, serializer_can_carry

from methodpool import (
    DaskPool,
    InitializerError,
    PoolTerminatedError,
    PoolUsedInWorkerError,
    RemoteTraceback,
    SerializationError,
    WorkerLostError,
)

TESTS = Path(__file__).parent
REPO = TESTS.parent


@pytest.fixture(scope="module")
def dask_client() -> Iterator[distributed.Client]:
    """A client of the module's LocalCluster (2 workers, 1 thread each, on 127.0.0.1)."""
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    client = distributed.Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def dask_pool(dask_client: distributed.Client) -> Iterator[DaskPool]:
    """A DaskPool on the module's cluster, shared by tests that only use it."""
    pool = DaskPool(cluster=dask_client)
    yield pool
    pool.terminate()


def raise_value_error(x: int) -> int:
    raise ValueError(f"bad {x}")


def worker_pid(_: object) -> int:
    return os.getpid()


def record_pid(path: str) -> None:
    with open(path, "a") as log:
        log.write(f"{os.getpid()}\n")


def die_at_3(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def worker_pids(client: distributed.Client) -> set[int]:
    return set(client.run(os.getpid).values())


def still_works(pool: DaskPool) -> None:
    assert pool.map(module_function, XS) == EXPECTED


# -- the same callables and APIs as MethodPool ------------------------------------------


@pytest.mark.parametrize("api", sorted(APIS))
@pytest.mark.parametrize("kind", sorted(CALLABLES))
def test_every_callable_through_every_api(dask_pool: DaskPool, kind: str, api: str) -> None:
    if serializer_can_carry("auto", kind):
        assert APIS[api](dask_pool, CALLABLES[kind]()) == EXPECTED
    else:
        with pytest.raises(SerializationError):
            APIS[api](dask_pool, CALLABLES[kind]())


@pytest.mark.parametrize("serializer", ["pickle", "cloudpickle", DILL])
def test_serializer_choice(dask_client: distributed.Client, serializer: str) -> None:
    with DaskPool(cluster=dask_client, serializer=serializer) as pool:
        for kind, make in CALLABLES.items():
            if serializer_can_carry(serializer, kind):
                assert pool.map(make(), XS) == EXPECTED, kind
            else:
                assert serializer == "pickle" or kind in BEYOND_CLOUDPICKLE
                with pytest.raises(SerializationError):
                    pool.map(make(), XS)


def test_unpicklable_arguments_and_results_travel_with_the_serializer(dask_pool: DaskPool) -> None:
    fs = dask_pool.map(lambda k: lambda x: x * k, [1, 2, 3])
    assert [f(10) for f in fs] == [10, 20, 30]
    assert dask_pool.map(lambda g: g(4), [lambda x: x + 1, abs]) == [5, 4]
    assert dask_pool.apply(lambda *, key: key(3), kwds={"key": lambda x: -x}) == -3


def test_method_of_an_object_that_owns_the_pool(dask_pool: DaskPool) -> None:
    owner = OwnsPool(dask_pool)  # type: ignore[arg-type]
    assert owner.run(XS) == EXPECTED
    with pytest.raises(PoolUsedInWorkerError, match="pools cannot be used"):
        dask_pool.apply(owner.use_pool, (1,))


# -- results and errors --------------------------------------------------------------------


def test_task_exception_keeps_its_type_and_the_remote_traceback(dask_pool: DaskPool) -> None:
    calls = [
        lambda: dask_pool.apply(raise_value_error, (3,)),
        lambda: dask_pool.map(raise_value_error, [3]),
        lambda: list(dask_pool.imap(raise_value_error, [3])),
        lambda: dask_pool.starmap_async(raise_value_error, [(3,)]).get(30),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="bad 3") as info:
            call()
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "in raise_value_error" in str(cause)
        assert 'raise ValueError(f"bad {x}")' in str(cause)
    still_works(dask_pool)


def test_exception_that_does_not_rebuild_from_its_args_is_rebuilt(dask_pool: DaskPool) -> None:
    from test_task_errors import HTTPError, raise_http_error

    with pytest.raises(HTTPError) as info:
        dask_pool.apply(raise_http_error, (404,))
    assert (info.value.status, info.value.args) == (404, ("404 https://example.org/404",))
    assert isinstance(info.value.__cause__, RemoteTraceback)
    still_works(dask_pool)


def test_get_with_timeout_raises_multiprocessing_timeout_error(dask_pool: DaskPool) -> None:
    result = dask_pool.apply_async(time.sleep, (0.5,))
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.05)
    assert not result.ready()
    assert result.get(timeout=30) is None
    results = dask_pool.imap(time.sleep, [0.5])
    with pytest.raises(multiprocessing.TimeoutError):
        results.next(timeout=0.05)
    assert results.next(timeout=30) is None


def test_callbacks_run_here_and_one_that_raises_is_logged(
    dask_pool: DaskPool, caplog: pytest.LogCaptureFixture
) -> None:
    values: list[Any] = []
    errors: list[BaseException] = []
    assert dask_pool.map_async(module_function, XS, callback=values.append).get(30) == EXPECTED
    assert values == [EXPECTED]
    failing = dask_pool.apply_async(raise_value_error, (1,), error_callback=errors.append)
    with pytest.raises(ValueError):
        failing.get(30)
    assert len(errors) == 1 and isinstance(errors[0], ValueError)

    def broken_callback(_: object) -> None:
        raise RuntimeError("callback failed")

    with caplog.at_level(logging.ERROR, logger="methodpool"):
        assert dask_pool.apply_async(module_function, (1,), callback=broken_callback).get(30) == 3
        result = dask_pool.apply_async(raise_value_error, (1,), error_callback=broken_callback)
        with pytest.raises(ValueError):
            result.get(30)
    logged = [r for r in caplog.records if r.name == "methodpool" and r.exc_info]
    assert [str(r.exc_info[1]) for r in logged if r.exc_info] == ["callback failed"] * 2
    still_works(dask_pool)


def test_a_killed_worker_fails_its_task_with_worker_lost_error(dask_pool: DaskPool) -> None:
    # Dask reruns the task on another worker up to allowed-failures times
    # (3), each run killing a worker, which its nanny restarts.  Alone: dask
    # also blames the tasks that share a dying worker (see docs/cluster.md).
    with pytest.raises(WorkerLostError, match=r"task 0 of apply_async\(die_at_3\)") as info:
        dask_pool.apply(die_at_3, (3,))
    assert isinstance(info.value.__cause__, KilledWorker)
    still_works(dask_pool)
    dask_pool.client.wait_for_workers(2, timeout=30)  # as it was: others count threads


# -- chunking and shipping ----------------------------------------------------------------


def tagged_model(tag: str) -> Affine:
    """An ``Affine`` whose serialized bytes no other test produces."""
    model = Affine()
    model.tag = tag  # type: ignore[attr-defined]
    return model


def test_map_ships_the_callable_once_and_chunks_by_the_stdlib_rule(dask_pool: DaskPool) -> None:
    tasks, serialized = dask_pool._counters.frames_written, dask_pool._counters.callables_serialized
    kept = set(dask_pool._callables)
    model = tagged_model("chunks")
    assert dask_pool.map(model.apply, range(1000)) == [2 * x + 1 for x in range(1000)]
    assert (
        dask_pool._counters.frames_written - tasks == 8
    )  # divmod(1000, 4 * 2 threads): 125 a chunk
    assert dask_pool._counters.callables_serialized - serialized == 1
    assert len(set(dask_pool._callables) - kept) == 1


def test_calls_repeating_a_callable_ship_it_once(dask_pool: DaskPool) -> None:
    kept = set(dask_pool._callables)
    model = tagged_model("repeat")
    results = [dask_pool.apply_async(model.apply, (x,)) for x in XS]
    assert [r.get(30) for r in results] == EXPECTED
    assert len(set(dask_pool._callables) - kept) == 1
    model.b = 5  # new bytes, a new task: each call sees the object as it was then
    assert dask_pool.apply(model.apply, (1,)) == 7
    assert len(set(dask_pool._callables) - kept) == 2


def test_imap_keeps_a_bounded_number_of_chunks_in_flight(dask_pool: DaskPool) -> None:
    in_flight: list[int] = []

    def items() -> Iterator[int]:
        for x in range(200):
            in_flight.append(len(dask_pool._tasks))
            yield x

    assert list(dask_pool.imap(module_function, items(), chunksize=1)) == [
        2 * x + 1 for x in range(200)
    ]
    assert max(in_flight) <= 2 * 2  # two chunks per worker thread


def test_imap_of_unknown_length_grows_its_chunks(dask_pool: DaskPool) -> None:
    before = dask_pool._counters.frames_written
    got = list(dask_pool.imap(module_function, iter(range(5000))))
    assert got == [2 * x + 1 for x in range(5000)]
    assert dask_pool._counters.frames_written - before < 40  # 1, 2, 4, ... items a chunk


def test_imap_buffersize_bounds_how_far_the_input_is_read(dask_client: distributed.Client) -> None:
    read: list[int] = []

    def endless() -> Iterator[int]:
        for x in itertools.count():
            read.append(x)
            yield x

    with DaskPool(cluster=dask_client) as pool:
        results = pool.imap(module_function, endless(), chunksize=1, buffersize=3)
        assert [next(results) for _ in range(10)] == [2 * x + 1 for x in range(10)]
        time.sleep(0.3)
        assert len(read) <= 10 + 3 + 1


def test_imap_input_that_raises_fails_there_and_ends(dask_pool: DaskPool) -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("input broke")

    results = dask_pool.imap(module_function, items(), chunksize=1)
    assert next(results) == 3
    assert next(results) == 5
    with pytest.raises(OSError, match="input broke"):
        next(results)
    with pytest.raises(StopIteration):
        next(results)


def test_unordered_chunks_arrive_as_they_finish(dask_pool: DaskPool) -> None:
    got = list(dask_pool.imap_unordered(time.sleep, [0.4, 0.0, 0.0], chunksize=1))
    assert got == [None, None, None]
    assert sorted(dask_pool.imap_unordered(module_function, XS)) == EXPECTED


# -- initializer ---------------------------------------------------------------------------


def test_initializer_runs_once_in_each_worker(
    dask_client: distributed.Client, tmp_path: Path
) -> None:
    log = tmp_path / "initializer.log"
    with DaskPool(
        cluster=dask_client, initializer=lambda path: record_pid(path), initargs=(str(log),)
    ) as pool:
        ran_in = set(pool.map(worker_pid, range(40), chunksize=1))
    started = [int(pid) for pid in log.read_text().split()]
    assert sorted(started) == sorted(worker_pids(dask_client))
    assert ran_in <= set(started)


def test_initializer_that_raises_fails_the_constructor(dask_client: distributed.Client) -> None:
    with pytest.raises(InitializerError, match="ZeroDivisionError") as info:
        DaskPool(cluster=dask_client, initializer=lambda: 1 / 0)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    plugins = dask_client.run_on_scheduler(
        lambda dask_scheduler: list(dask_scheduler.worker_plugins)
    )
    assert not [name for name in plugins if name.startswith("methodpool")]


def test_maxtasksperchild_is_not_supported() -> None:
    with pytest.raises(NotImplementedError, match="maxtasksperchild"):
        DaskPool(2, maxtasksperchild=10)


def test_processes_cannot_size_a_given_cluster(dask_client: distributed.Client) -> None:
    with pytest.raises(ValueError, match="processes="):
        DaskPool(4, cluster=dask_client)
    with pytest.raises(TypeError, match="cluster="):
        DaskPool(dask_client.scheduler.address)  # type: ignore[arg-type]


# -- the pool's own cluster, a given cluster -------------------------------------------------


def end(pool: DaskPool, ending: str) -> None:
    """Run a call, then end the pool by ``ending``; the call's outcome is the stdlib's."""
    if ending == "close_join":
        result = pool.map_async(module_function, XS)
        pool.close()
        pool.join()
        assert result.get(0) == EXPECTED
    elif ending == "terminate":
        # Short: on a given cluster, dask cannot stop a task already running.
        pending = pool.apply_async(time.sleep, (1,))
        pool.terminate()
        with pytest.raises(PoolTerminatedError):
            pending.get(5)
        pool.join()
    else:
        with pool:
            still_works(pool)
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(module_function, XS)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ending", ["close_join", "terminate", "context_manager"])
def test_ending_the_pool_stops_its_own_local_cluster(ending: str) -> None:
    pool = DaskPool(1)
    pids = worker_pids(pool.client)
    end(pool, ending)
    assert pool.client.status == "closed"
    deadline = time.monotonic() + 20
    while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(process_alive(pid) for pid in pids)


@pytest.mark.parametrize("ending", ["close_join", "terminate", "context_manager"])
def test_ending_the_pool_leaves_a_given_cluster_running(
    dask_client: distributed.Client, ending: str
) -> None:
    pids = worker_pids(dask_client)
    end(DaskPool(cluster=dask_client), ending)
    assert dask_client.status == "running"
    assert dask_client.submit(operator.neg, 1, pure=False).result() == -1
    assert worker_pids(dask_client) == pids


def read_address(scheduler_file: Path, timeout: float) -> str:
    """The address in a scheduler file, once the scheduler has written it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return str(json.loads(scheduler_file.read_text())["address"])
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.timeout(90)
def test_a_cluster_started_as_separate_processes(tmp_path: Path) -> None:
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}
    scheduler = subprocess.Popen(
        [
            *(sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"),
            *("--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = subprocess.Popen(  # it waits for the scheduler file
        [
            *(sys.executable, "-m", "distributed.cli.dask_worker"),
            *("--scheduler-file", str(scheduler_file), "--host", "127.0.0.1"),
            *("--nworkers", "1", "--nthreads", "1", "--no-dashboard"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        address = read_address(scheduler_file, timeout=60)
        with DaskPool(cluster=address) as pool:
            pool.client.wait_for_workers(1, timeout=60)
            assert pool.map(lambda x: 2 * x + 1, XS) == EXPECTED
            assert list(pool.imap(Affine().apply, XS)) == EXPECTED
        with distributed.Client(address, set_as_default=False) as client:
            assert client.submit(operator.neg, 2, pure=False).result() == -2
    finally:
        for process in (worker, scheduler):
            process.terminate()
        for process in (worker, scheduler):
            process.wait(30)


# -- __main__ and imports ----------------------------------------------------------------------

MAIN_PROGRAM = textwrap.dedent(
    """
    import sys, threading
    from methodpool import DaskPool

    class Counter:                      # a class defined in __main__
        def __init__(self):
            self.lock = threading.Lock()
            self.step = 2
        def bump(self, x):
            with self.lock:
                return x + self.step

    def double(x):                      # a function defined in __main__
        return 2 * x

    class Point:                        # instances go out and come back
        def __init__(self, v):
            self.v = v

    with DaskPool(cluster=sys.argv[1]) as pool:
        assert pool.map(double, range(5)) == [0, 2, 4, 6, 8]
        assert list(pool.imap(Counter().bump, range(3))) == [2, 3, 4]
        points = pool.map(Point, range(3))
        assert all(type(p) is Point for p in points) and [p.v for p in points] == [0, 1, 2]
        assert pool.apply(lambda p: p.v + 1, (Point(4),)) == 5
    print("ok")
    """
)


@pytest.mark.timeout(60)
def test_definitions_in_main_travel_by_value(dask_client: distributed.Client) -> None:
    result = subprocess.run(
        [sys.executable, "-c", MAIN_PROGRAM, dask_client.scheduler.address],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_methodpool_imports_without_distributed() -> None:
    program = textwrap.dedent(
        """
        import sys
        import methodpool
        from methodpool import *
        methodpool.MethodPool
        assert "distributed" not in sys.modules, "importing methodpool imported distributed"
        sys.modules["distributed"] = None       # as if it were not installed
        try:
            methodpool.DaskPool
        except ImportError as exc:
            print(exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'methodpool[dask]'" in result.stdout
