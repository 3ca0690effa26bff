"""ProcessPoolExecutor: ``concurrent.futures`` in front of a MethodPool.

Data flow (the executor's own pieces marked *; the rest is MethodPool's, see
:mod:`methodpool._pool`)::

    caller thread              result thread, or the caller's    pool: task handler, workers
    -------------              -------------------------------   ---------------------------
    ex.submit(fn, *args)
      MethodPool: serialize fn
       once (SerializationError
       raised here)
      *a Future, PENDING, and
       its job, registered;
       waits its turn       -->  *_Handover: at most 2 per     -->  task handler -> Dispatcher
                                  worker handed over (RUNNING;       -> worker k's channel;
                                  a cancelled one: its waiters       worker k runs fn(*args)
                                  told, its task dropped)                   |
    future.result(),        <--  *result thread: the job's     <--  result frame
     as_completed, wait,          callback hands the next one
     asyncio.wrap_future          over, then settles the Future
                                  (a dead worker:
                                  ExecutorWorkerLostError)
    ex.map(fn, *iterables)
      *the input, behind a switch that stops it (the iterator closed, a timeout,
       an error, shutdown); MethodPool.imap(chunksize, buffersize) reads it;
       *results read with what is left of ``timeout``

Why a MethodPool inside, not an executor of its own: every guarantee the pool
gives (serializers, a callable serialized once per call and a large one sent
once through shared memory, ``SerializationError`` from the call, timeouts, a
dead worker failing only its own task, initializer failures, start methods) is
then the same code, tested once.  What is the executor's: the ``Future`` state
machine, ``map``'s generator semantics, and ``shutdown``.

When a future is RUNNING.  The stdlib marks a future RUNNING when it moves its
task to the call queue, which holds ``max_workers + 1`` tasks, and cancels
none after that.  Here it is when its task is handed to the pool, which
holds at most two per worker (the task it runs and the next, so that no
worker waits for the round trip to the parent between tasks); the rest wait
in the executor, in order, and ``cancel()`` or ``shutdown(cancel_futures=True)``
takes them out for good.  ``map`` is MethodPool's ``imap``, not futures: it
keeps the pool's batching, and stops by not reading its input further.

``Future.cancel()`` of a running future returns False and the task runs to
its end, as in the stdlib.  Stopping it (MethodPool's ``TaskResult.cancel()``
kills its worker) is deliberately not what ``cancel()`` does: the stdlib's own
``Executor.map``, ``wait`` loops and ``asyncio.wrap_future`` call ``cancel()``
on running futures and expect them to finish; killing workers there would
change what code that works today does.  ``task_timeout=`` bounds a running
task; ``kill_workers()`` stops them all.

Errors.  Where the stdlib's futures fail with ``BrokenProcessPool``, these fail
with an exception that is also one, so that code catching it goes on working:
a worker that died gives :class:`ExecutorWorkerLostError` (a
``WorkerLostError``; only that future fails, and the executor goes on), an
initializer that raised gives :class:`ExecutorInitializerError` (an
``InitializerError``; the executor is broken, as the stdlib's is).
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import Any, Literal, ParamSpec, TypeVar

from ._backend import reaped_exitcode
from ._errors import InitializerError, WorkerLostError
from ._executor_tasks import call_unpacked
from ._pool import MethodPool
from ._progress import ProgressSpec
from ._results import ResultIterator, TaskResult
from ._serializers import AUTO, SupportsDumpsLoads
from ._stats import CallStats

P = ParamSpec("P")
R = TypeVar("R")
# How terminate_workers() and kill_workers() end the workers.
Force = Literal["terminate", "kill"]


class ExecutorWorkerLostError(WorkerLostError, BrokenProcessPool):
    """:class:`~methodpool.WorkerLostError` as :class:`ProcessPoolExecutor` raises it.

    Also a :class:`concurrent.futures.process.BrokenProcessPool`, which is what
    the stdlib's executor raises when a worker dies, so code that catches that
    still does.  But only the future whose task the worker was running fails:
    the executor has replaced the worker and runs the others.
    """


class ExecutorInitializerError(InitializerError, BrokenProcessPool):
    """:class:`~methodpool.InitializerError` as :class:`ProcessPoolExecutor` raises it.

    Also a :class:`concurrent.futures.process.BrokenProcessPool`, as the
    stdlib's executor raises then; like it, the executor is broken: pending
    futures and later ``submit`` calls fail with this error.
    """


for _error in (ExecutorWorkerLostError, ExecutorInitializerError):
    _error.__module__ = "methodpool"
del _error

_EXECUTOR_ERRORS: tuple[tuple[type[BaseException], type[BaseException]], ...] = (
    (WorkerLostError, ExecutorWorkerLostError),
    (InitializerError, ExecutorInitializerError),
)


def _as_executor_error(error: BaseException) -> BaseException:
    """``error`` as the executor raises it: a lost worker or a failed initializer
    also as a ``BrokenProcessPool`` (same message and cause); anything else as it is."""
    for pool_error, executor_error in _EXECUTOR_ERRORS:
        if type(error) is pool_error:
            converted = executor_error(*error.args)
            converted.__cause__ = error.__cause__
            return converted
    return error


def _cpu_count() -> int:
    # The stdlib executor's default: os.process_cpu_count() from 3.13 (the CPUs
    # this process may use), os.cpu_count() before.
    count = getattr(os, "process_cpu_count", os.cpu_count)()
    return count or 1


class _Job:
    """A submitted call: its future, and its job registered with the pool (a
    one-task job) whose task is not queued yet.  :meth:`hand_over` queues it,
    :meth:`drop` settles the job without running it (the future was
    cancelled); :meth:`succeeded` and :meth:`failed` are the job's callbacks."""

    __slots__ = ("_queue", "future", "handover", "result")

    result: TaskResult[Any]

    def __init__(self, handover: _Handover, future: Future[Any]) -> None:
        self.handover = handover
        self.future = future
        self._queue: Callable[[], None] | None = None

    def hand_over(self) -> None:
        assert self._queue is not None
        self._queue()

    def drop(self) -> None:
        self.result._set(0, (False, CancelledError()))

    def succeeded(self, value: Any) -> None:
        self.handover.settle(self, True, value)

    def failed(self, error: BaseException) -> None:
        self.handover.settle(self, False, error)


class _ExecutorPool(MethodPool):
    """MethodPool with the two things the executor needs of it: a one-task job
    whose task is queued when the executor says so, and its worker processes."""

    def prepare_job(
        self,
        handover: _Handover,
        future: Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> _Job:
        """The job of ``fn(*args, **kwargs)`` for ``future``; raises as ``apply_async`` does."""
        call = self._prepare("submit", fn, 1, None, None)
        job = _Job(handover, future)
        # The callbacks do not raise (the pool would log it if they did).
        job.result = TaskResult(self._results_host, job.succeeded, job.failed, call.progress)
        task = (job.result._job, 0, call.func, args, kwargs)
        job._queue = functools.partial(self._submit, job.result, call, None, [task])
        return job

    def workers(self) -> list[Any]:
        """The worker processes running now."""
        return list(self._pool)


class _Handover:
    """Submitted futures on their way from PENDING to a worker, as the stdlib's
    executor moves them: at most ``limit`` handed to the pool (RUNNING), the
    rest waiting, in the order they were submitted.

    A future leaves PENDING exactly once, under :attr:`lock`: when its turn
    comes (:meth:`_pump`; if it was cancelled, its waiters are told then and
    its task is dropped, as in the stdlib), when ``shutdown(cancel_futures=True)``
    cancels it (:meth:`cancel_waiting`), or when the pool fails its job before
    its turn, which only ``terminate()`` does (:meth:`settle`).
    """

    def __init__(self, limit: int) -> None:
        self.lock = threading.Lock()
        self.limit = limit
        self.waiting: dict[Future[Any], _Job] = {}  # in submission order
        self.running: set[Future[Any]] = set()

    def add(self, job: _Job) -> None:
        """``job`` waits for its turn."""
        with self.lock:
            self.waiting[job.future] = job
        self._pump()

    def _pump(self) -> None:
        dropped = []
        with self.lock:
            while self.waiting and len(self.running) < self.limit:
                future = next(iter(self.waiting))
                job = self.waiting.pop(future)
                if future.set_running_or_notify_cancel():
                    self.running.add(future)
                    job.hand_over()
                else:
                    dropped.append(job)
        for job in dropped:
            job.drop()

    def settle(self, job: _Job, ok: bool, value: Any) -> None:
        """The job's outcome, from the pool's result thread: the future's."""
        future = job.future
        with self.lock:
            handed_over = future in self.running
            if handed_over:
                self.running.remove(future)
            elif (
                self.waiting.pop(future, None) is None or not future.set_running_or_notify_cancel()
            ):
                return  # cancelled: its job was dropped
        if handed_over:
            self._pump()  # the next one goes before this one's callbacks run
        try:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(_as_executor_error(value))
        except InvalidStateError:  # settled already: terminate() raced the result
            pass

    def cancel_waiting(self) -> None:
        """Cancel every future not handed over yet: their tasks never run, and
        their waiters (``wait``, ``as_completed``) are told at once."""
        with self.lock:
            jobs = list(self.waiting.values())
            self.waiting.clear()
        for job in jobs:
            job.future.cancel()  # runs its done-callbacks, which may submit: outside the lock
            job.future.set_running_or_notify_cancel()
            job.drop()


class _MapInput:
    """A map's input as the pool reads it, until :meth:`stop`: what is not read
    by then never runs."""

    def __init__(self, items: Iterable[Any]) -> None:
        self._items = iter(items)
        self._stopped = False
        self._error: BaseException | None = None

    def __iter__(self) -> _MapInput:
        return self

    def __next__(self) -> Any:
        if self._stopped:
            raise StopIteration
        return next(self._items)

    def stop(self, error: BaseException | None = None) -> None:
        """Read no more.  ``error``: the executor stops the map, which then fails
        with ``error`` if items were left (:meth:`cut_short`).  The first stop counts."""
        if not self._stopped:
            self._stopped = True
            self._error = error

    def cut_short(self) -> BaseException | None:
        """The error the map ends with once its results run out: it was stopped
        by the executor while items were left.  Whether any was left, this reads
        one more to know, as the stdlib's map does (in the consumer's thread)."""
        if self._error is None:
            return None
        for _ in self._items:
            return self._error
        return None


class _SizedMapInput(_MapInput):
    """A :class:`_MapInput` over a list, whose length the pool may read (progress bars)."""

    def __init__(self, items: list[Any]) -> None:
        super().__init__(items)
        self._length = len(items)

    def __len__(self) -> int:
        return self._length


class _MapResults:
    """A map's results as the executor raises: :class:`TimeoutError` once the
    deadline has passed, a lost worker or failed initializer also as a
    ``BrokenProcessPool``.  An iterator object, not a generator: it keeps no
    reference to a result it has returned (the stdlib's test_free_reference)."""

    def __init__(self, results: ResultIterator[Any], deadline: float | None) -> None:
        self._results = results
        self._deadline = deadline

    def __iter__(self) -> _MapResults:
        return self

    def __next__(self) -> Any:
        try:
            if self._deadline is None:
                return self._results.next()
            return self._results.next(max(0.0, self._deadline - time.monotonic()))
        except multiprocessing.TimeoutError:
            raise concurrent.futures.TimeoutError() from None
        except (WorkerLostError, InitializerError) as error:
            raise _as_executor_error(error) from error.__cause__


def _map_results(
    results: ResultIterator[Any], source: _MapInput, deadline: float | None
) -> Iterator[Any]:
    # A generator, as the stdlib's map returns: it ends once it has raised, and
    # closing it (or the error, or the timeout) stops the input, so that what is
    # not sent yet never runs.  It holds no reference to the executor, which may
    # be collected while the results are read.
    try:
        yield from _MapResults(results, deadline)
        error = source.cut_short()
        if error is not None:
            raise error
    finally:
        source.stop()
        # buffersize: hand the stopped input to the pool, which then ends the
        # job once the tasks already sent are back.
        results.release_input()


class _ExecutorCore:
    """What the executor runs on, apart from the executor object, so that a
    collected executor's pool can still be shut down (:func:`weakref.finalize`)
    and its maps' results still read."""

    def __init__(self, pool: _ExecutorPool, max_workers: int) -> None:
        self.pool = pool
        # Two a worker: the task it runs and the next, so that it never waits
        # for the round trip to the parent between them (the dispatcher's
        # least depth); the stdlib's call queue holds max_workers + 1.
        self.handover = _Handover(2 * max_workers)
        self.lock = threading.Lock()  # the stdlib's _shutdown_lock
        self.shut_down = False
        self.maps: weakref.WeakSet[_MapInput] = weakref.WeakSet()
        self.bounded_maps: weakref.WeakSet[_MapInput] = weakref.WeakSet()
        self._joiner: threading.Thread | None = None

    def check_open(self) -> None:
        """Raise as the stdlib's ``submit`` does once the executor cannot take work."""
        if self.shut_down:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def shutdown(self, wait: bool, cancel_futures: bool, force: Force | None) -> None:
        """Stop taking work; then wait for it (``wait``), or let a thread do so.
        ``force``: also terminate or kill the workers (``Process.terminate()``:
        SIGTERM, ``kill()``: SIGKILL; on Windows both end the process),
        terminate the pool, and wait until they are gone."""
        with self.lock:
            self.shut_down = True
            if cancel_futures:
                for source in list(self.maps):
                    source.stop(CancelledError("the executor was shut down with cancel_futures"))
            # A map with buffersize reads no more input, as the stdlib's submits
            # no more tasks: it fails, once its results run out, if any was left.
            for source in list(self.bounded_maps):
                source.stop(RuntimeError("cannot schedule new futures after shutdown"))
        if cancel_futures:
            # Outside the lock: cancel() runs the futures' done-callbacks, which
            # may submit (and are told that they cannot).
            self.handover.cancel_waiting()
        inline = False
        with self.lock:
            joining = self._joiner is not None
            if force is not None:
                # Send nothing more first: a task of a worker about to die would
                # otherwise be resent to its replacement and run after all.
                self.pool._dispatcher.abort()
                self._signal_workers(force)
            elif not joining:
                self.pool.close()
            if not joining:
                # Not a daemon: the interpreter waits at exit for what is
                # pending, as it does for the stdlib's executor.  One thread
                # joins the pool: two reaping a forkserver worker would race
                # for its exit status.
                self._joiner = threading.Thread(
                    target=self._finish,
                    args=(force is not None,),
                    name="methodpool-executor-shutdown",
                )
                try:
                    self._joiner.start()
                except RuntimeError:  # at interpreter exit (3.12+) no thread can start
                    inline = True
            joiner = self._joiner
            assert joiner is not None
        if inline:
            self._finish(force is not None)  # in this thread, then
            return
        if force is not None and joining:  # shut down before, not terminated
            self.pool.terminate()
        if wait or force is not None:
            joiner.join()

    def _signal_workers(self, force: Force) -> None:
        # reaped_exitcode: process.exitcode would reap, racing the pool's threads.
        for process in self.pool.workers():
            if process.pid is not None and reaped_exitcode(process) is None:
                process.kill() if force == "kill" else process.terminate()

    def _finish(self, terminate: bool) -> None:
        if terminate:
            self.pool.terminate()
        self.pool.join()


# Executors not shut down yet; at interpreter exit they finish their pending
# work, as the stdlib's do (its _python_exit).
_live_executors: weakref.WeakSet[ProcessPoolExecutor] = weakref.WeakSet()
_interpreter_exiting = False
_exit_hook_lock = threading.Lock()
_exit_hook_pid: int | None = None  # the process that registered the hook


def _shut_down_at_exit() -> None:
    # A forked child (a fork worker among them) inherits the hook and the
    # executors; shutting down its copies would wait, forever, for a pool
    # that is not its own.
    if os.getpid() != _exit_hook_pid:
        return
    global _interpreter_exiting
    _interpreter_exiting = True
    for executor in list(_live_executors):
        executor.shutdown(wait=True)


def _register_exit_hook() -> None:
    global _exit_hook_pid
    with _exit_hook_lock:
        if _exit_hook_pid is not None:
            return
        # threading's own exit hooks run before the interpreter joins its
        # non-daemon threads and before atexit (where multiprocessing would
        # terminate the pool): concurrent.futures uses the same private hook
        # (CPython 3.9+).
        register: Any = threading._register_atexit  # type: ignore[attr-defined]
        register(_shut_down_at_exit)
        _exit_hook_pid = os.getpid()


class ProcessPoolExecutor(concurrent.futures.Executor):
    """``concurrent.futures.ProcessPoolExecutor`` for any callable, on MethodPool.

    The stdlib's constructor, plus methodpool's ``serializer`` and
    ``task_timeout`` (see :class:`~methodpool.MethodPool`).  ``submit`` returns
    a :class:`concurrent.futures.Future`, so ``as_completed``, ``wait`` and
    ``asyncio.wrap_future`` work unchanged; ``map`` is the stdlib's generator,
    with ``timeout``, ``chunksize`` and ``buffersize`` (as in Python 3.14, on
    every version), plus ``task_timeout`` and ``progress``.

    Where it differs from the stdlib, deliberately:

    * a worker that dies fails only the future it was running, with
      :class:`ExecutorWorkerLostError` (also a ``BrokenProcessPool``); the
      executor replaces the worker and goes on;
    * a callable that cannot be serialized, or is not callable, raises
      :class:`~methodpool.SerializationError` or ``TypeError`` from
      ``submit``/``map`` rather than failing the future later;
    * ``sys.exit()`` in a task fails its future with
      :class:`~methodpool.RemoteTaskError` rather than raising ``SystemExit``
      in the caller;
    * workers start with the executor, not at the first ``submit``.

    Raises :class:`ValueError` for ``max_workers < 1``, a ``max_tasks_per_child``
    below 1 or with the fork start method (as the stdlib: gh-90622), an unknown
    serializer or a bad ``task_timeout``; :class:`TypeError` for an initializer
    that is not callable or a ``max_tasks_per_child`` that is not an integer.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        serializer: str | SupportsDumpsLoads = AUTO,
        task_timeout: float | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = _cpu_count()
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if mp_context is None:
            # As the stdlib: max_tasks_per_child needs workers started afresh.
            method = "spawn" if max_tasks_per_child is not None else None
            mp_context = multiprocessing.get_context(method)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
            # The stdlib refuses it (gh-90622: replacement workers would be
            # forked from a thread of a multi-threaded parent); so does this,
            # for the same reason: MethodPool's worker handler thread starts them.
            if mp_context.get_start_method(allow_none=False) == "fork":
                raise ValueError(
                    "max_tasks_per_child is incompatible with the 'fork' multiprocessing "
                    "start method; supply a different mp_context."
                )
        # The stdlib's names, which other code reads.
        self._max_workers = max_workers
        self._mp_context = mp_context
        pool = _ExecutorPool(
            max_workers,
            initializer,
            initargs,
            max_tasks_per_child,
            mp_context,
            serializer=serializer,
            task_timeout=task_timeout,
        )
        self._core = _ExecutorCore(pool, max_workers)
        # Collected without shutdown(): the pending work finishes, then the workers exit.
        finalizer = weakref.finalize(self, self._core.shutdown, False, False, None)
        finalizer.atexit = False  # at exit, _shut_down_at_exit does it
        _register_exit_hook()
        _live_executors.add(self)

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Schedule ``fn(*args, **kwargs)``; its :class:`~concurrent.futures.Future`.

        ``fn`` is serialized here: :class:`~methodpool.SerializationError` if it
        cannot be, :class:`TypeError` if it is not callable.
        :class:`RuntimeError` after :meth:`shutdown`;
        :class:`ExecutorInitializerError` once the initializer has failed.
        """
        core = self._core
        with core.lock:
            core.check_open()
            future: Future[R] = Future()
            try:
                job = core.pool.prepare_job(core.handover, future, fn, args, kwargs)
            except InitializerError as error:
                raise _as_executor_error(error) from error.__cause__
            core.handover.add(job)
            return future

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        task_timeout: float | None = None,
        progress: ProgressSpec = None,
    ) -> Iterator[R]:
        """``fn(*args)`` for each ``args`` of ``zip(*iterables)``, in order, as a generator.

        As the stdlib's: without ``buffersize`` the input is read now; with
        it, at most ``buffersize`` tasks (chunks of ``chunksize`` items) are
        read ahead of the results consumed.  ``timeout`` counts from this call:
        :class:`TimeoutError` once it has passed without the next result.  A
        task's exception is raised at its place, and ends the iteration;
        closing the iterator, the error or the timeout leaves the input not
        read yet unrun (tasks already sent to a worker run to their end).
        ``task_timeout`` and ``progress`` are MethodPool's (for this call).
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        deadline = None if timeout is None else time.monotonic() + timeout
        func: Callable[..., Any] = fn
        items: Iterable[Any]
        if len(iterables) == 1:
            items = iterables[0]
        else:
            items = zip(*iterables, strict=False)
            func = functools.partial(call_unpacked, fn)
        # Without buffersize, all of the input now, as the stdlib does.
        source = _SizedMapInput(list(items)) if buffersize is None else _MapInput(items)
        core = self._core
        with core.lock:
            core.check_open()
            try:
                results = core.pool.imap(
                    func,
                    source,
                    chunksize,
                    task_timeout=task_timeout,
                    buffersize=buffersize,
                    progress=progress,
                )
            except InitializerError as error:
                raise _as_executor_error(error) from error.__cause__
            core.maps.add(source)
            if buffersize is not None:
                core.bounded_maps.add(source)
        return _map_results(results, source, deadline)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; with ``wait``, return once what is pending has run
        and the workers have exited (their shared memory freed).

        ``wait=False`` returns at once; the pending work still runs (and the
        interpreter waits for it at exit).  ``cancel_futures=True`` cancels the
        futures not handed to a worker yet, and the rest of each ``map``'s
        input (its iterator then raises :class:`~concurrent.futures.CancelledError`
        after the results already under way).  A ``map`` with ``buffersize``
        reads no more input: its iterator raises :class:`RuntimeError` after
        its results if any was left.  Calling it again is harmless.
        """
        _live_executors.discard(self)
        self._core.shutdown(wait, cancel_futures, None)

    def terminate_workers(self) -> None:
        """Shut down at once: cancel what has not started, send SIGTERM to the
        workers (SIGKILL to those still there a second later); running futures
        fail.  The executor cannot be used any more.  Returns once the workers
        are gone (the stdlib's returns once they are signalled).  Python 3.14's
        API, on every version."""
        _live_executors.discard(self)
        self._core.shutdown(False, True, "terminate")

    def kill_workers(self) -> None:
        """As :meth:`terminate_workers`, with SIGKILL."""
        _live_executors.discard(self)
        self._core.shutdown(False, True, "kill")

    def stats(self) -> list[CallStats]:
        """Statistics of the recent calls (up to 64; each ``submit`` and ``map`` is one),
        oldest first: see :meth:`MethodPool.stats`."""
        return self._core.pool.stats()

    def __repr__(self) -> str:
        state = "shut down" if self._core.shut_down else "running"
        return (
            f"<{type(self).__module__}.{type(self).__qualname__} {state} "
            f"max_workers={self._max_workers} serializer={self._core.pool.serializer!r}>"
        )
