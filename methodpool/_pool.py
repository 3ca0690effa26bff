"""MethodPool: ``multiprocessing.pool.Pool`` for any callable.

Data flow (the stdlib's threads, with methodpool's pieces marked *)::

    caller thread              task-handler thread          worker process k (xN)
    -------------              -------------------          ---------------------
    pool.map(f, xs)
      *_prepare: serialize f
       once per call (large:
       once per pool, in shared
       memory); failure raises
       SerializationError here
      stdlib: chunk xs into     *Dispatcher.put: frame
       (job, i, mapstar,         each task (args plain
        ((f', chunk),), {})  -->  pickle cannot carry go -->  *run_worker: read frame,
       on _taskqueue              by the serializer); send    load the task, open f'
                                  to the least busy worker    (loaded once, then
                                  on its own channel          cached), run it, catch
                                                              anything it raises
                                                                     |
    caller: result.get()   <--  result-handler thread   <--  *frame (ok, value) on its
      (*callbacks guarded)       *Dispatcher.get: wait on     own channel (a value plain
                                  every channel; a bad        pickle cannot carry goes
                                  frame fails its task; a     by the serializer)
                                  closed channel (dead
                                  worker) fails its running
                                  task, resends its queued
                                  ones; stdlib: cache[job]._set()

``f'`` is a :class:`~methodpool._shipping.ShippedCallable`: the serialized
bytes (or a reference to a shared memory segment, :mod:`methodpool._sharedmem`)
plus a content key.  Plain module-level functions skip it and travel by
reference, as in the stdlib.  Where each piece lives:

* the call layer shared with ``DaskPool`` (argument checks, serializing the
  callable, chunking, callbacks, ``buffersize``): :mod:`methodpool._calls`;
* the transport (frames, channels, the dispatcher and its ledger):
  :mod:`methodpool._transport`; the worker side: :mod:`methodpool._worker`;
* the result objects: :mod:`methodpool._results`; serializers:
  :mod:`methodpool._serializers`;
* every private hook of ``Pool`` this needs, and why: :mod:`methodpool._backend`.

``docs/architecture.md`` tells the same story at length.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing.pool
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sized
from multiprocessing.context import BaseContext
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any, TypeVar

from ._backend import (
    WorkerFactory,
    abort_dispatch,
    fail_pending,
    get_tasks,
    guarded_task_generation,
    has_real_pipe,
    mapstar,
    starmapstar,
    track_jobs,
)
from ._calls import (
    Shipper,
    check_buffersize,
    check_chunksize,
    check_task_timeout,
    guarded,
    label,
    map_chunksize,
)
from ._errors import PoolTerminatedError, WorkerStartError, refuse_nested_pool
from ._progress import Progress, ProgressSpec, progress_bar
from ._results import (
    ListResult,
    OrderedResults,
    ResultHost,
    ResultIterator,
    TaskResult,
    UnorderedResults,
)
from ._serializers import AUTO, SupportsDumpsLoads, main_reference_guard
from ._sharedmem import Lease, SegmentRegistry
from ._shipping import ShippedCallable
from ._startup import (
    FORKSERVER_IMPORTS_MAIN,
    check_main_importable,
    creation_site,
    refuse_pool_while_bootstrapping,
)
from ._stats import CallStats, PoolCounters, StatsCollector
from ._transport._buffers import OUT_OF_BAND_MIN_BYTES, TaskSegments, ensure_tracker
from ._transport._dispatcher import Dispatcher
from ._worker import run_worker

T = TypeVar("T")
R = TypeVar("R")

# How long terminate() lets workers react to SIGTERM before it sends SIGKILL.
TERMINATE_GRACE = 1.0


def _kill_remaining(workers: list[Any]) -> None:
    for process in list(workers):
        if process.pid is not None and process.exitcode is None:
            process.kill()  # SIGKILL; TerminateProcess on Windows


class _Call:
    """A call, prepared: its callable as tasks carry it, its claim on shared
    memory, its statistics and its progress bar."""

    __slots__ = ("func", "lease", "progress", "stats")

    def __init__(
        self, func: Any, lease: Lease | None, stats: StatsCollector, progress: Progress | None
    ) -> None:
        self.func = func
        self.lease = lease
        self.stats = stats
        self.progress = progress


class MethodPool(multiprocessing.pool.Pool):
    """A ``multiprocessing.pool.Pool`` whose tasks may use any callable.

    Same constructor, methods and results as the stdlib pool, plus:

    ``serializer``
        ``"auto"`` (default: plain pickle where it works, cloudpickle then
        dill where it does not), ``"pickle"``, ``"cloudpickle"``, ``"dill"``,
        a name given to :func:`~methodpool.register_serializer`, or an object
        with ``dumps`` and ``loads``.
    ``import_main``
        whether spawn and forkserver workers import the main module first,
        as the stdlib's do.  Default: not with ``"auto"``, ``"cloudpickle"``
        and ``"dill"``, which carry what tasks need of it by value (so a
        script without a main guard, one read from standard input, or one
        slow to import still gets working workers, quickly; its module-level
        set-up, logging configuration say, does not run in them: use
        ``initializer=``); yes with ``"pickle"`` and registered serializers.
        Workers that cannot import it fail with
        :class:`~methodpool.WorkerStartError`.
    ``task_timeout``
        seconds a task (a chunk, for chunked calls) may run; an overdue task's
        worker is killed and replaced, and the task fails with
        :class:`~methodpool.TaskTimeoutError`.  Every method that submits
        tasks (``apply``, ``map``, ``imap``, ``starmap`` and their variants)
        also takes ``task_timeout=`` for its own call.
    ``shared_buffers``
        whether big buffers in arguments and results (numpy arrays and
        anything else pickle protocol 5 can hand over out of band, of 256
        KiB or more) travel through shared memory instead of the pipes (default:
        yes, where the system has POSIX shared memory).  Copy semantics stay
        the stdlib's: each side gets its own copy.  See ``docs/dataplane.md``.

    The task callable is serialized once per call, in the caller's thread, and
    snapshotted then: later changes to the object do not reach tasks of that
    call.  A callable that cannot be serialized raises
    :class:`~methodpool.SerializationError` from the call itself.  Arguments and
    results go by plain pickle, and by the serializer where plain pickle cannot
    carry them (except with ``serializer="pickle"``).

    Faults end in exceptions, never hangs: a worker that dies fails only the
    task it was running (:class:`~methodpool.WorkerLostError`); an initializer
    that raises fails the calls (:class:`~methodpool.InitializerError`);
    ``terminate()`` fails whatever is pending
    (:class:`~methodpool.PoolTerminatedError`); a callback that raises is
    logged to the ``methodpool`` logger.

    Raises :class:`ValueError` for an unknown serializer name and
    :class:`ImportError` when the chosen serializer's package is missing.
    """

    if TYPE_CHECKING:  # stdlib internals that typeshed does not declare
        _state: str
        _pool: list[Any]
        _inqueue: Any
        _outqueue: Any
        _quick_put: Any
        _quick_get: Any
        _ctx: BaseContext
        _cache: dict[int, Any]
        _taskqueue: Any

        def _check_running(self) -> None: ...

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: BaseContext | None = None,
        *,
        serializer: str | SupportsDumpsLoads = AUTO,
        task_timeout: float | None = None,
        import_main: bool | None = None,
        shared_buffers: bool = True,
    ) -> None:
        # Pool.__del__ reads these even when __init__ raises before Pool's own.
        self._pool = []
        self._state = multiprocessing.pool.INIT
        refuse_nested_pool(type(self).__name__)  # before anything is made
        refuse_pool_while_bootstrapping()
        check_task_timeout(task_timeout)
        self._counters = PoolCounters()
        self._shipper = Shipper(serializer, self._counters)
        if import_main is None:
            import_main = not self._shipper.carries_main_by_value
        self._buffers = TaskSegments(
            OUT_OF_BAND_MIN_BYTES if shared_buffers else None, self._counters
        )
        if self._buffers.threshold is not None:
            # Before any worker starts: forked workers then register their
            # segments with this process's tracker, not one of their own.
            ensure_tracker()
        self._dispatcher = Dispatcher(
            run_worker,
            self._shipper.fallback,
            maxtasksperchild,
            task_timeout,
            self._counters,
            skip_main=not import_main,
            buffers=self._buffers,
        )
        # Instance attribute in place of the static Pool.Process (see _backend).
        self.Process = WorkerFactory(self._dispatcher.start_worker)  # type: ignore[method-assign]
        if initializer is not None:
            if not callable(initializer):
                raise TypeError("initializer must be a callable")
            # Inline, never in shared memory: every worker start needs it.
            initializer = self._shipper.ship(initializer)
        self._segments = SegmentRegistry(self._counters)
        self._recent_stats: collections.deque[StatsCollector] = collections.deque(maxlen=64)
        # Unlink the segments when the pool is collected or the interpreter
        # exits without terminate() or join() (which unlink them too).
        weakref.finalize(self, self._segments.close)
        weakref.finalize(self, self._buffers.close)
        # The context Pool.__init__ would take, taken here to check it first.
        context = context or multiprocessing.get_context()
        start_method = str(context.get_start_method())
        if import_main or (start_method == "forkserver" and FORKSERVER_IMPORTS_MAIN):
            check_main_importable(start_method)
        elif start_method != "fork":
            # Workers will not have the main module: its objects in the
            # initializer's arguments must travel by value too.
            initargs = self._shipper.portable_arguments(
                tuple(initargs), main_reference_guard(start_method), "the initializer's arguments"
            )
        self._dispatcher.creation_site = creation_site()
        try:
            super().__init__(processes, initializer, initargs, maxtasksperchild, context)
        except (ConnectionError, EOFError) as exc:
            if start_method != "forkserver":
                raise
            # The fork server died: it imports the main module when it
            # starts (Python 3.13.8+, 3.14.1+), and that failed.
            head = (
                "the fork server, which imports the main module before it starts "
                f"workers, could not start them ({type(exc).__name__}: {exc})"
            )
            raise WorkerStartError(self._dispatcher.explain_start_failure(None, "", head)) from exc
        self._dispatcher.attach(self._taskqueue)
        taskqueue = self._taskqueue

        def queue(tasks: Iterable[Any], set_length: Callable[[int], None] | None) -> None:
            taskqueue.put((tasks, set_length))

        self._results_host = ResultHost(self._cache, self._dispatcher.cancel, queue)
        segments, dispatcher, buffers = self._segments, self._dispatcher, self._buffers

        def job_done(job: int) -> None:
            segments.job_done(job)
            buffers.job_done(job)
            dispatcher.job_done(job)

        track_jobs(self._cache, job_done)

    @property
    def serializer(self) -> str:
        """The name of the serializer (or chain) this pool was built with."""
        return self._shipper.name

    def __repr__(self) -> str:
        return (
            f"<{type(self).__module__}.{type(self).__qualname__} state={self._state} "
            f"pool_size={len(self._pool)} serializer={self.serializer!r}>"
        )

    # -- hooks into multiprocessing.pool.Pool (see _backend) -------------------

    def _setup_queues(self) -> None:
        # Through super(), not multiprocessing.pool.Pool, which code being
        # migrated may have rebound to MethodPool itself.
        super()._setup_queues()  # type: ignore[misc]
        pickler = (
            main_reference_guard(self._ctx.get_start_method())
            if self._shipper.fallback
            else ForkingPickler
        )
        if has_real_pipe(self._outqueue):  # not so for a stand-in context: it runs no task
            self._dispatcher.connect(self._outqueue, pickler)
        self._inqueue._methodpool_dispatcher = self._dispatcher
        self._quick_put = self._dispatcher.put
        self._quick_get = self._dispatcher.get

    @staticmethod
    def _help_stuff_finish(inqueue: Any, task_handler: Any, size: int) -> None:
        abort_dispatch(inqueue)

    @classmethod
    def _terminate_pool(  # type: ignore[no-untyped-def]
        cls, taskqueue, inqueue, outqueue, pool, change_notifier, worker_handler, *rest
    ) -> None:
        # The stdlib sends SIGTERM and waits: forever, if a task ignores it
        # (gh-78178).  Escalate to SIGKILL after a grace period.
        killer = threading.Timer(TERMINATE_GRACE, _kill_remaining, (pool,))
        killer.daemon = True
        # At interpreter exit (3.12+) no thread can start: then terminate as
        # the stdlib does, without the escalation.
        with contextlib.suppress(RuntimeError):
            killer.start()
        try:
            super()._terminate_pool(  # type: ignore[misc]
                taskqueue, inqueue, outqueue, pool, change_notifier, worker_handler, *rest
            )
        finally:
            killer.cancel()

    # -- calls -----------------------------------------------------------------

    def _prepare(
        self,
        method: str,
        func: Any,
        items: int | None,
        task_timeout: float | None,
        progress: ProgressSpec,
    ) -> _Call:
        """Checks, shipping and the progress bar common to every call, in the
        caller's thread.  A call that fails here leaves nothing behind."""
        self._check_running()
        broken = self._dispatcher.broken
        if broken is not None:
            raise type(broken)(*broken.args) from broken.__cause__
        check_task_timeout(task_timeout)
        stats = StatsCollector(method, items)
        started = time.perf_counter()
        shipped = self._shipper.ship(func)
        lease = None
        if type(shipped) is ShippedCallable:
            stats.callable_bytes = len(shipped.payload.data)  # type: ignore[arg-type]
            shipped, lease = self._segments.place(shipped)
        stats.serialize_seconds = time.perf_counter() - started
        try:
            bar = progress_bar(progress, items, label(func))
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        self._recent_stats.append(stats)
        return _Call(shipped, lease, stats, bar)

    def _submit(
        self,
        result: Any,
        call: _Call,
        task_timeout: float | None,
        tasks: Iterable[Any] | None,
        set_length: Callable[[int], None] | None = None,
    ) -> None:
        """Register the job, then queue its tasks (``None``: the caller feeds them)."""
        if result._job not in self._cache:  # already complete: an empty map
            call.stats.finish()
            if call.lease is not None:
                call.lease.release()
            return
        if call.lease is not None:
            call.lease.bind(result._job)
        self._buffers.job_started(result._job, call.stats)
        self._dispatcher.job_started(result._job, task_timeout, call.stats)
        if tasks is not None:
            self._taskqueue.put((tasks, set_length))

    def stats(self) -> list[CallStats]:
        """Statistics of this pool's recent calls (up to 64), oldest first."""
        workers = self._processes  # type: ignore[attr-defined]
        return [collector.snapshot(workers) for collector in list(self._recent_stats)]

    def apply(
        self,
        func: Callable[..., R],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},
        *,
        task_timeout: float | None = None,
    ) -> R:
        """``func(*args, **kwds)`` in a worker (see :meth:`multiprocessing.pool.Pool.apply`)."""
        return self.apply_async(func, args, kwds, task_timeout=task_timeout).get()

    def apply_async(
        self,
        func: Callable[..., R],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},
        callback: Callable[[R], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressSpec = None,
    ) -> TaskResult[R]:
        """Like :meth:`multiprocessing.pool.Pool.apply_async`, for any callable.

        The result is also awaitable, and can be cancelled (:class:`TaskResult`).
        """
        call = self._prepare("apply_async", func, 1, task_timeout, progress)
        result: TaskResult[R] = TaskResult(
            self._results_host,
            guarded(callback, "callback"),
            guarded(error_callback, "error_callback"),
            call.progress,
        )
        self._submit(result, call, task_timeout, [(result._job, 0, call.func, args, kwds)])
        return result

    def _map_async(
        self,
        method: str,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        mapper: Callable[..., Any],
        chunksize: int | None,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        task_timeout: float | None,
        progress: ProgressSpec,
    ) -> ListResult[Any]:
        # multiprocessing.pool.Pool._map_async, with methodpool's result class.
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        length = len(iterable)  # type: ignore[arg-type]
        call = self._prepare(method, func, length, task_timeout, progress)
        if chunksize is None:
            # The configured size, not len(self._pool): that is 0 for a moment
            # while exited workers (maxtasksperchild) are replaced.
            chunksize = map_chunksize(length, self._processes)  # type: ignore[attr-defined]
        if length == 0:
            chunksize = 0
        result: ListResult[Any] = ListResult(
            self._results_host,
            chunksize,
            length,
            guarded(callback, "callback"),
            guarded(error_callback, "error_callback"),
            call.progress,
        )
        batches = get_tasks(call.func, iterable, chunksize)
        tasks = guarded_task_generation(self, result._job, mapper, batches)
        self._submit(result, call, task_timeout, tasks)
        return result

    def map(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressSpec = None,
    ) -> list[R]:
        """Like :meth:`multiprocessing.pool.Pool.map`, for any callable."""
        return self._map_async(
            "map", func, iterable, mapstar, chunksize, None, None, task_timeout, progress
        ).get()

    def map_async(
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int | None = None,
        callback: Callable[[list[R]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressSpec = None,
    ) -> ListResult[R]:
        """Like :meth:`multiprocessing.pool.Pool.map_async`, for any callable; awaitable."""
        return self._map_async(
            "map_async",
            func,
            iterable,
            mapstar,
            chunksize,
            callback,
            error_callback,
            task_timeout,
            progress,
        )

    def starmap(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressSpec = None,
    ) -> list[R]:
        """Like :meth:`multiprocessing.pool.Pool.starmap`, for any callable."""
        return self._map_async(
            "starmap", func, iterable, starmapstar, chunksize, None, None, task_timeout, progress
        ).get()

    def starmap_async(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[R]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        task_timeout: float | None = None,
        progress: ProgressSpec = None,
    ) -> ListResult[R]:
        """Like :meth:`multiprocessing.pool.Pool.starmap_async`, for any callable; awaitable."""
        return self._map_async(
            "starmap_async",
            func,
            iterable,
            starmapstar,
            chunksize,
            callback,
            error_callback,
            task_timeout,
            progress,
        )

    def imap(  # type: ignore[override]
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int = 1,
        *,
        task_timeout: float | None = None,
        buffersize: int | None = None,
        progress: ProgressSpec = None,
    ) -> ResultIterator[R]:
        """Like :meth:`multiprocessing.pool.Pool.imap`, for any callable.

        ``buffersize=N`` reads at most N tasks (chunks) of ``iterable`` ahead
        of the results consumed, so an endless or huge input runs in bounded
        memory; without it, the input is read as fast as tasks can be sent.
        The iterator is also an async iterator (``async for``).
        """
        return self._imap(
            "imap", OrderedResults, func, iterable, chunksize, task_timeout, buffersize, progress
        )

    def imap_unordered(  # type: ignore[override]
        self,
        func: Callable[[T], R],
        iterable: Iterable[T],
        chunksize: int = 1,
        *,
        task_timeout: float | None = None,
        buffersize: int | None = None,
        progress: ProgressSpec = None,
    ) -> ResultIterator[R]:
        """Like :meth:`multiprocessing.pool.Pool.imap_unordered`, for any callable.

        ``buffersize`` and async iteration as for :meth:`imap`.
        """
        return self._imap(
            "imap_unordered",
            UnorderedResults,
            func,
            iterable,
            chunksize,
            task_timeout,
            buffersize,
            progress,
        )

    def _imap(
        self,
        method: str,
        result_class: type[ResultIterator[Any]],
        func: Any,
        iterable: Iterable[Any],
        chunksize: int,
        task_timeout: float | None,
        buffersize: int | None,
        progress: ProgressSpec,
    ) -> ResultIterator[Any]:
        check_chunksize(chunksize)
        check_buffersize(buffersize)
        length = len(iterable) if isinstance(iterable, Sized) else None
        call = self._prepare(method, func, length, task_timeout, progress)
        result = result_class(self._results_host, chunksize, call.progress)  # type: ignore[call-arg]
        if chunksize == 1:
            tasks = guarded_task_generation(self, result._job, call.func, iterable)
        else:
            batches = get_tasks(call.func, iterable, chunksize)
            tasks = guarded_task_generation(self, result._job, mapstar, batches)
        if buffersize is None:
            self._submit(result, call, task_timeout, tasks, result._set_length)
            return result
        self._submit(result, call, task_timeout, None)
        result.feed(tasks, buffersize)
        return result

    # -- ending ------------------------------------------------------------------

    def close(self) -> None:
        """Like :meth:`multiprocessing.pool.Pool.close`.

        ``imap`` iterators with ``buffersize`` hand the rest of their input to
        the pool, as the stdlib's ``imap`` does, so that ``join()`` returns
        even if their consumer stopped reading.
        """
        for result in list(self._cache.values()):
            if isinstance(result, ResultIterator):
                result.release_input()
        super().close()

    def terminate(self) -> None:
        """Like :meth:`multiprocessing.pool.Pool.terminate`, but never hangs.

        Workers that ignore SIGTERM are killed after a grace period; results
        still pending (``get()``, ``imap`` iterators) fail with
        :class:`~methodpool.PoolTerminatedError`; shared memory is freed.
        """
        super().terminate()
        fail_pending(self._cache, PoolTerminatedError("the pool was terminated"))
        self._release()

    def join(self) -> None:
        """Like :meth:`multiprocessing.pool.Pool.join`; also frees shared memory."""
        super().join()
        self._release()

    def _release(self) -> None:
        # The workers are gone (or going): their channels, the callables'
        # segments and the data plane's.
        self._dispatcher.close()
        self._segments.close()
        self._buffers.close()


Pool = MethodPool
