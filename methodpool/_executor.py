"""ProcessPoolExecutor: ``concurrent.futures`` in front of a MethodPool.

Data flow (the executor's own pieces marked *; the rest is MethodPool's, see
:mod:`methodpool._pool`)::

    caller thread                pool's task-handler thread      worker k (xN), result thread
    -------------                --------------------------      ----------------------------
    ex.submit(fn, *args)
      MethodPool: serialize fn
       once (SerializationError
       raised here)
      *a Future, PENDING, and a
       job of one task, put on
       the pool's task queue
       behind a hand-over     -->  *hand-over: the Future goes -->  Dispatcher: worker k's
                                    RUNNING (if it was cancelled:    channel; worker k runs
                                    its waiters are told, the task   fn(*args)
                                    is dropped, the job settled)          |
    future.result(),          <------------------------------------  result thread: the job's
     as_completed, wait,                                             *callback settles the
     asyncio.wrap_future                                              Future (a dead worker:
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
task to the call queue, which holds ``max_workers + 1`` tasks: from then on
``cancel()`` returns False.  Here it is when the pool's task handler takes the
task to send it to a worker (the hand-over, :meth:`_Handover.tasks`): from
then on it is in a worker's channel, and, as in the stdlib, ``cancel()``
returns False and the task runs to its end.  Stopping a running task
(MethodPool's ``TaskResult.cancel()`` kills its worker) is deliberately not
what ``Future.cancel()`` does: the stdlib's own ``Executor.map``, ``wait``
loops and ``asyncio.wrap_future`` call ``cancel()`` on running futures and
expect them to finish; killing workers there would change what code that
works today does.  ``task_timeout=`` bounds a running task;
``kill_workers()`` stops them all.

Errors.  Where the stdlib's futures fail with ``BrokenProcessPool``, these fail
with an exception that is also one, so that code catching it goes on working:
a worker that died gives :class:`ExecutorWorkerLostError` (a
``WorkerLostError``; only that future fails, and the executor goes on), an
initializer that raised gives :class:`ExecutorInitializerError` (an
``InitializerError``; the executor is broken, as the stdlib's is).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import multiprocessing
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import Any, ParamSpec, TypeVar

from ._calls import guarded
from ._errors import InitializerError, WorkerLostError
from ._executor_tasks import call_unpacked
from ._pool import MethodPool
from ._progress import ProgressSpec
from ._results import ResultIterator, TaskResult
from ._serializers import AUTO, SupportsDumpsLoads
from ._stats import CallStats

P = ParamSpec("P")
R = TypeVar("R")


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


class _ExecutorPool(MethodPool):
    """MethodPool with the two things the executor needs of it: a one-task job
    whose hand-over to a worker a future sees, and its worker processes."""

    def submit_future(
        self,
        handover: _Handover,
        future: Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """Queue ``fn(*args, **kwargs)`` for ``future``; raises as ``apply_async`` does."""
        call = self._prepare("submit", fn, 1, None, None)
        result: TaskResult[Any] = TaskResult(
            self._results_host,
            guarded(functools.partial(handover.settle, future, True), "callback"),
            guarded(functools.partial(handover.settle, future, False), "error_callback"),
            call.progress,
        )
        handover.expect(future)
        task = (result._job, 0, call.func, args, kwargs)
        self._submit(result, call, None, handover.tasks(future, result, task))

    def workers(self) -> list[Any]:
        """The worker processes running now."""
        return list(self._pool)


class _Handover:
    """The submitted futures not yet handed to a worker, and how each leaves PENDING.

    Each future does so exactly once, under :attr:`lock`: when the pool's task
    handler takes its task (:meth:`tasks`), or when the pool settles its job
    before that, which only ``terminate()`` does (:meth:`settle`).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: set[Future[Any]] = set()

    def expect(self, future: Future[Any]) -> None:
        """``future``'s task is about to be queued."""
        with self.lock:
            self.waiting.add(future)

    def _leave_pending(self, future: Future[Any]) -> bool | None:
        # True: it now runs; False: it had been cancelled (its waiters are now
        # told); None: it had left PENDING already.
        with self.lock:
            if future not in self.waiting:
                return None
            self.waiting.remove(future)
            return future.set_running_or_notify_cancel()

    def tasks(self, future: Future[Any], result: TaskResult[Any], task: Any) -> Iterator[Any]:
        """The job's task, for the pool's task handler, which takes it right before
        sending it to a worker: the future runs from then on.  A cancelled
        future's task is dropped, and its job settled so that the pool forgets it."""
        running = self._leave_pending(future)
        if running:
            yield task
        elif running is False:
            result._set(0, (False, CancelledError()))

    def settle(self, future: Future[Any], ok: bool, value: Any) -> None:
        """The job's outcome, from the pool's result thread: the future's."""
        if self._leave_pending(future) is False or future.cancelled():
            return
        try:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(_as_executor_error(value))
        except InvalidStateError:  # settled already: terminate() raced the result
            pass

    def cancel_waiting(self) -> None:
        """Cancel every future not handed over yet (their tasks never run)."""
        with self.lock:
            futures = list(self.waiting)
        for future in futures:
            future.cancel()


class _MapInput:
    """A map's input as the pool reads it, until :meth:`stop`: what is not read
    by then never runs."""

    def __init__(self, items: Iterable[Any]) -> None:
        self._items = iter(items)
        self._stopped = False
        self._error: BaseException | None = None
        self.cut_short: BaseException | None = None
        """The error the map ends with, once its results run out: items were left."""

    def __iter__(self) -> _MapInput:
        return self

    def __next__(self) -> Any:
        if not self._stopped:
            return next(self._items)
        if self._error is not None and self.cut_short is None:
            # Stopped by the executor (shutdown): the map fails if anything was
            # left, which the stdlib's map learns the same way, by reading one more.
            for _ in self._items:
                self.cut_short = self._error
                break
            self._error = None
        raise StopIteration

    def stop(self, error: BaseException | None = None) -> None:
        """Read no more.  ``error``: the executor stops the map, which then fails
        with ``error`` if items were left.  The first stop counts."""
        if not self._stopped:
            self._stopped = True
            self._error = error


class _SizedMapInput(_MapInput):
    """A :class:`_MapInput` over a list, whose length the pool may read (progress bars)."""

    def __init__(self, items: list[Any]) -> None:
        super().__init__(items)
        self._length = len(items)

    def __len__(self) -> int:
        return self._length


def _map_results(
    results: ResultIterator[Any], source: _MapInput, deadline: float | None
) -> Iterator[Any]:
    # A generator, as the stdlib's map returns: it ends once it has raised, and
    # closing it (or the error, or the timeout) stops the input, so that what is
    # not sent yet never runs.  It holds no reference to the executor, which may
    # be collected while the results are read.
    try:
        while True:
            try:
                if deadline is None:
                    item = results.next()
                else:
                    item = results.next(max(0.0, deadline - time.monotonic()))
            except StopIteration:
                break
            except multiprocessing.TimeoutError:
                raise concurrent.futures.TimeoutError() from None
            except (WorkerLostError, InitializerError) as error:
                raise _as_executor_error(error) from error.__cause__
            yield item
        if source.cut_short is not None:
            raise source.cut_short
    finally:
        source.stop()
        # buffersize: hand the stopped input to the pool, which then ends the
        # job once the tasks already sent are back.
        results.release_input()


class _ExecutorCore:
    """What the executor runs on, apart from the executor object, so that a
    collected executor's pool can still be shut down (:func:`weakref.finalize`)
    and its maps' results still read."""

    def __init__(self, pool: _ExecutorPool) -> None:
        self.pool = pool
        self.handover = _Handover()
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

    def shutdown(self, wait: bool, cancel_futures: bool, force: signal.Signals | None) -> None:
        """Stop taking work; then wait for it (``wait``), or let a thread do so."""
        with self.lock:
            self.shut_down = True
            if cancel_futures:
                for source in list(self.maps):
                    source.stop(CancelledError("the executor was shut down with cancel_futures"))
            # A map with buffersize reads no more input, as the stdlib's submits
            # no more tasks: it fails, once its results run out, if any was left.
            for source in list(self.bounded_maps):
                source.stop(RuntimeError("cannot schedule new futures after shutdown"))
            if self._joiner is None:
                self.pool.close()
                # Not a daemon: the interpreter waits at exit for what is
                # pending, as it does for the stdlib's executor.
                self._joiner = threading.Thread(
                    target=self.pool.join, name="methodpool-executor-shutdown"
                )
                self._joiner.start()
            joiner = self._joiner
        if cancel_futures:
            # Outside the lock: cancel() runs the futures' done-callbacks, which may submit.
            self.handover.cancel_waiting()
        if force is not None:
            for process in self.pool.workers():
                if process.pid is not None and process.exitcode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, force)
            self.pool.terminate()
        if wait:
            joiner.join()


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
        self._core = _ExecutorCore(pool)
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
                core.pool.submit_future(core.handover, future, fn, args, kwargs)
            except InitializerError as error:
                raise _as_executor_error(error) from error.__cause__
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
        are gone.  (Python 3.14's API, on every version.)"""
        _live_executors.discard(self)
        self._core.shutdown(False, True, signal.SIGTERM)

    def kill_workers(self) -> None:
        """As :meth:`terminate_workers`, with SIGKILL."""
        _live_executors.discard(self)
        self._core.shutdown(False, True, signal.SIGKILL)

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
