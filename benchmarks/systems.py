"""The pools under test, behind one interface: :class:`System`.

Each adapter starts a pool of ``workers`` processes, runs ``map`` and
``imap(chunksize=1)`` with the closest call its library offers, and shuts the
pool down.  Its class attributes declare what it cannot do (start methods it
does not accept) and which calls stand for ``map`` and ``imap``, so the report
can say what was measured.  Peer packages are imported in :meth:`System.start`
only: a missing package shows up as :meth:`System.missing`, not as a crash.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import multiprocessing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

Task = Callable[[int], int]


def stdlib_chunksize(n_items: int, workers: int) -> int:
    """The chunk size ``multiprocessing.Pool.map`` picks by default: 4 chunks per worker."""
    return max(1, math.ceil(n_items / (4 * workers)))


@dataclass(frozen=True)
class PipeCounters:
    """MethodPool's private counters: what went down its task pipe, and how often
    it serialized a task callable."""

    bytes_written: int
    frames_written: int
    callables_serialized: int

    def __sub__(self, earlier: PipeCounters) -> PipeCounters:
        return PipeCounters(
            self.bytes_written - earlier.bytes_written,
            self.frames_written - earlier.frames_written,
            self.callables_serialized - earlier.callables_serialized,
        )


class System(ABC):
    """A process pool under test.

    Use: :meth:`start`, then any number of :meth:`map` / :meth:`imap` calls,
    then :meth:`close` (always, also after a failure).  An adapter object runs
    one pool at a time and can be started again after :meth:`close`.
    """

    name: str
    requires: ClassVar[tuple[str, ...]] = ()
    """Importable modules the adapter needs."""
    start_methods: ClassVar[tuple[str, ...]] = ("fork", "spawn", "forkserver")
    """Start methods :meth:`start` accepts; others are reported as not supported."""
    default_start: ClassVar[str] = "fork"
    """How workers start when :meth:`start` gets no start method (on Linux)."""
    map_call: ClassVar[str]
    """The library call that stands for ``map`` (for the report)."""
    imap_call: ClassVar[str]
    """The library call that stands for ``imap(chunksize=1)`` (for the report)."""
    submits: ClassVar[bool] = False
    """Whether it has a ``concurrent.futures``-style ``submit`` (:meth:`submit_each`)."""

    def missing(self) -> str | None:
        """The first required module that is not installed, or ``None``."""
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                return module
        return None

    @abstractmethod
    def start(self, workers: int, start_method: str | None = None) -> None:
        """Start the pool; ``start_method`` is one of :attr:`start_methods` or ``None``."""

    @abstractmethod
    def map(self, func: Task, items: list[int]) -> list[int]:
        """``[func(x) for x in items]``, computed by the pool with its bulk call."""

    @abstractmethod
    def imap(self, func: Task, items: list[int], chunksize: int = 1) -> Iterator[int]:
        """``func(x) for x in items`` from the pool, in order, as results arrive."""

    def submit_each(self, func: Task, items: list[int]) -> list[int]:
        """``[func(x) for x in items]``, one ``submit`` per item (only if :attr:`submits`)."""
        raise NotImplementedError(f"{self.name} has no submit")

    @abstractmethod
    def close(self) -> None:
        """Stop the workers, dropping tasks not yet done where the library allows."""

    def task_pipe_counters(self) -> PipeCounters | None:
        """MethodPool's counters so far; ``None`` for every other system."""
        return None


class StdlibPool(System):
    """``multiprocessing.Pool``: the baseline every ratio is taken against."""

    name = "multiprocessing.Pool"
    map_call = "Pool.map(f, xs)"
    imap_call = "Pool.imap(f, xs, chunksize=1)"

    def __init__(self) -> None:
        self._pool: Any = None

    def _make_pool(self, workers: int, start_method: str | None) -> Any:
        return multiprocessing.get_context(start_method).Pool(workers)

    def start(self, workers: int, start_method: str | None = None) -> None:
        self._pool = self._make_pool(workers, start_method)

    def map(self, func: Task, items: list[int]) -> list[int]:
        return list(self._pool.map(func, items))

    def imap(self, func: Task, items: list[int], chunksize: int = 1) -> Iterator[int]:
        return iter(self._pool.imap(func, items, chunksize))

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.terminate()


class MethodPoolSystem(StdlibPool):
    """``methodpool.MethodPool`` with one of its serializers."""

    map_call = "MethodPool.map(f, xs)"
    imap_call = "MethodPool.imap(f, xs, chunksize=1)"

    def __init__(self, serializer: str) -> None:
        super().__init__()
        self.serializer = serializer
        self.name = self.name_for(serializer)

    @staticmethod
    def name_for(serializer: str) -> str:
        """The system name of MethodPool with ``serializer``."""
        return f"MethodPool[{serializer}]"

    def _make_pool(self, workers: int, start_method: str | None) -> Any:
        from methodpool import MethodPool

        context = multiprocessing.get_context(start_method)
        return MethodPool(workers, context=context, serializer=self.serializer)

    def task_pipe_counters(self) -> PipeCounters | None:
        # The pool's private totals (methodpool._stats.PoolCounters), the ones
        # the tests read too; None where this version of methodpool keeps none.
        counters = getattr(self._pool, "_counters", None)
        if counters is None:
            return None
        return PipeCounters(
            counters.bytes_written, counters.frames_written, counters.callables_serialized
        )


class MultiprocessPool(StdlibPool):
    """``multiprocess.Pool``: the stdlib pool's code with dill in place of pickle."""

    name = "multiprocess.Pool"
    requires = ("multiprocess",)
    map_call = "Pool.map(f, xs)"
    imap_call = "Pool.imap(f, xs, chunksize=1)"

    def _make_pool(self, workers: int, start_method: str | None) -> Any:
        import multiprocess

        return multiprocess.get_context(start_method).Pool(workers)


class PathosPool(System):
    """``pathos.pools.ProcessPool``: a ``multiprocess.Pool`` shared per worker count."""

    name = "pathos"
    requires = ("pathos",)
    start_methods = ()
    map_call = "ProcessPool.map(f, xs)"
    imap_call = "ProcessPool.imap(f, xs)"

    def __init__(self) -> None:
        self._pool: Any = None

    def start(self, workers: int, start_method: str | None = None) -> None:
        from pathos.pools import ProcessPool

        self._pool = ProcessPool(nodes=workers)

    def map(self, func: Task, items: list[int]) -> list[int]:
        return list(self._pool.map(func, items))

    def imap(self, func: Task, items: list[int], chunksize: int = 1) -> Iterator[int]:
        return iter(self._pool.imap(func, items, chunksize=chunksize))

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.terminate()
            # pathos keeps the pool in a module-level cache; drop it so the
            # next start gets fresh workers.
            pool.clear()


class StdlibExecutor(System):
    """``concurrent.futures.ProcessPoolExecutor``; its ``map`` defaults to chunksize 1,
    so ``map`` passes the stdlib pool's default chunk size."""

    name = "ProcessPoolExecutor"
    map_call = "executor.map(f, xs, chunksize=ceil(n/8))"
    imap_call = "executor.map(f, xs, chunksize=1)"
    submits = True

    def __init__(self) -> None:
        self._executor: Any = None
        self._workers = 0

    def _make_executor(self, workers: int, start_method: str | None) -> Any:
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(start_method))

    def start(self, workers: int, start_method: str | None = None) -> None:
        self._workers = workers
        self._executor = self._make_executor(workers, start_method)

    def map(self, func: Task, items: list[int]) -> list[int]:
        chunksize = stdlib_chunksize(len(items), self._workers)
        return list(self._executor.map(func, items, chunksize=chunksize))

    def imap(self, func: Task, items: list[int], chunksize: int = 1) -> Iterator[int]:
        return iter(self._executor.map(func, items, chunksize=chunksize))

    def submit_each(self, func: Task, items: list[int]) -> list[int]:
        futures = [self._executor.submit(func, x) for x in items]
        return [future.result() for future in futures]

    def close(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=True, cancel_futures=True)


class MethodPoolExecutor(StdlibExecutor):
    """``methodpool.ProcessPoolExecutor`` (serializer ``"auto"``): the stdlib executor's
    API on MethodPool's workers; called exactly as ``ProcessPoolExecutor`` is."""

    name = "methodpool.ProcessPoolExecutor"

    def _make_executor(self, workers: int, start_method: str | None) -> Any:
        from methodpool import ProcessPoolExecutor

        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(start_method))

    def task_pipe_counters(self) -> PipeCounters | None:
        counters = getattr(getattr(self._executor, "_core", None), "pool", None)
        counters = getattr(counters, "_counters", None)
        if counters is None:
            return None
        return PipeCounters(
            counters.bytes_written, counters.frames_written, counters.callables_serialized
        )


class LokyExecutor(StdlibExecutor):
    """``loky.ProcessPoolExecutor`` (cloudpickle); default start method ``"loky"``
    (fork + exec).  Plain fork is left out: loky warns that it is unsafe."""

    name = "loky"
    requires = ("loky",)
    start_methods = ("spawn", "forkserver")
    default_start = "loky"

    def _make_executor(self, workers: int, start_method: str | None) -> Any:
        import loky
        from loky.backend.context import get_context

        return loky.ProcessPoolExecutor(workers, context=get_context(start_method or "loky"))

    def close(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=True, kill_workers=True)


class JoblibParallel(System):
    """``joblib.Parallel`` with its default loky backend, which picks its own start
    method; ``map`` uses joblib's automatic batching."""

    name = "joblib"
    requires = ("joblib",)
    start_methods = ()
    default_start = "loky"
    map_call = "Parallel(n_jobs=2)(delayed(f)(x) for x in xs)"
    imap_call = 'Parallel(n_jobs=2, batch_size=1, return_as="generator")(...)'

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None
        self._bulk: Any = None
        self._lazy: Any = None

    def start(self, workers: int, start_method: str | None = None) -> None:
        from joblib import Parallel

        # Entered as context managers, both keep one set of workers for all calls.
        with contextlib.ExitStack() as stack:
            self._bulk = stack.enter_context(Parallel(n_jobs=workers, backend="loky"))
            self._lazy = stack.enter_context(
                Parallel(n_jobs=workers, backend="loky", batch_size=1, return_as="generator")
            )
            self._stack = stack.pop_all()

    def map(self, func: Task, items: list[int]) -> list[int]:
        from joblib import delayed

        return list(self._bulk(delayed(func)(x) for x in items))

    def imap(self, func: Task, items: list[int], chunksize: int = 1) -> Iterator[int]:
        from joblib import delayed

        if chunksize != 1:
            raise ValueError("the joblib adapter runs imap with chunksize=1 only")
        return iter(self._lazy(delayed(func)(x) for x in items))

    def close(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            # Leaving Parallel keeps loky's reusable workers alive for 300 s;
            # joblib's only way to stop them is its backend's abort_everything.
            self._lazy._backend.abort_everything(ensure_ready=False)
            stack.close()


class MpireWorkerPool(System):
    """``mpire.WorkerPool(keep_alive=True)``: workers start at the first call and,
    under fork, inherit its function (copy-on-write) instead of unpickling it."""

    name = "mpire"
    requires = ("mpire",)
    map_call = "WorkerPool.map(f, xs)"
    imap_call = "WorkerPool.imap(f, xs, chunk_size=1)"

    def __init__(self) -> None:
        self._pool: Any = None

    def start(self, workers: int, start_method: str | None = None) -> None:
        from mpire.pool import WorkerPool

        method = start_method or "fork"
        self._pool = WorkerPool(n_jobs=workers, start_method=method, keep_alive=True)

    def map(self, func: Task, items: list[int]) -> list[int]:
        return list(self._pool.map(func, items))

    def imap(self, func: Task, items: list[int], chunksize: int = 1) -> Iterator[int]:
        return iter(self._pool.imap(func, items, chunk_size=chunksize))

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.terminate()


class PebblePool(System):
    """``pebble.ProcessPool``; its ``map`` defaults to chunksize 1, so ``map`` passes
    the stdlib pool's default chunk size."""

    name = "pebble"
    requires = ("pebble",)
    map_call = "ProcessPool.map(f, xs, chunksize=ceil(n/8)).result()"
    imap_call = "ProcessPool.map(f, xs, chunksize=1).result()"

    def __init__(self) -> None:
        self._pool: Any = None
        self._workers = 0

    def start(self, workers: int, start_method: str | None = None) -> None:
        from pebble import ProcessPool

        self._workers = workers
        context = multiprocessing.get_context(start_method)
        self._pool = ProcessPool(max_workers=workers, context=context)

    def map(self, func: Task, items: list[int]) -> list[int]:
        chunksize = stdlib_chunksize(len(items), self._workers)
        return list(self._pool.map(func, items, chunksize=chunksize).result())

    def imap(self, func: Task, items: list[int], chunksize: int = 1) -> Iterator[int]:
        return iter(self._pool.map(func, items, chunksize=chunksize).result())

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.stop()
            pool.join()


class DaskPoolSystem(StdlibPool):
    """``methodpool.DaskPool`` on a ``LocalCluster`` of its own (127.0.0.1): the
    cluster mode, measured here for its per-task overhead and chunked throughput.
    Dask's nanny starts workers with spawn; there is no start-method option."""

    name = "DaskPool (local cluster)"
    requires = ("distributed",)
    start_methods = ("spawn",)
    default_start = "spawn"
    map_call = "DaskPool.map(f, xs)"
    imap_call = "DaskPool.imap(f, xs, chunksize=1)"

    def _make_pool(self, workers: int, start_method: str | None) -> Any:
        from methodpool import DaskPool

        return DaskPool(workers)


SERIALIZERS: tuple[str, ...] = ("auto", "pickle", "cloudpickle", "dill")


def all_systems() -> list[System]:
    """Every system: the baseline first, then the peers, MethodPool (one per
    serializer), methodpool's executor, and DaskPool last."""
    peers: list[System] = [
        StdlibPool(),
        StdlibExecutor(),
        MultiprocessPool(),
        PathosPool(),
        LokyExecutor(),
        JoblibParallel(),
        MpireWorkerPool(),
        PebblePool(),
    ]
    mine: list[System] = [MethodPoolSystem(serializer) for serializer in SERIALIZERS]
    return [*peers, *mine, MethodPoolExecutor(), DaskPoolSystem()]
