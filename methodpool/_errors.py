"""The exceptions methodpool raises, all importable from :mod:`methodpool`."""

from __future__ import annotations

import pickle

# What to check when something cannot be loaded in another process.
IMPORTABLE_ADVICE = (
    "every module it needs must be importable there, in compatible versions; objects "
    "defined in __main__ travel by value with serializer='auto', 'cloudpickle' or 'dill'"
)


class SerializationError(pickle.PicklingError):
    """A task's callable, arguments or result could not be serialized.

    Raised in the caller's thread by the call that was given the object
    (``map``, ``imap``, ``apply_async``, ...) for callables, and as the failure
    of the affected task for arguments and results.  The message names the
    object, the serializer(s) tried, the attribute path of the part that failed
    and what to try instead.
    """


class DeserializationError(pickle.UnpicklingError):
    """A task or result was serialized but could not be loaded on the other side.

    Typical causes: a module that is importable in the parent but not in the
    worker, or different package versions.  Only the affected task fails; the
    pool keeps working.
    """


class RemoteTaskError(Exception):
    """Stands in for an exception raised by a task that could not travel back.

    Used for ``SystemExit``, ``KeyboardInterrupt`` and other exceptions that do
    not derive from :class:`Exception`, and when the original exception can
    neither be serialized nor rebuilt in the parent (its class cannot be
    imported there, an attribute cannot be serialized).  It keeps what can be
    kept: :attr:`type_name` (the original class's qualified name),
    :attr:`message` (``str()`` of the original), :attr:`reason` (why it could
    not be rebuilt, and what would fix that; empty for ``SystemExit`` and the
    like) and, as with any task exception, the remote traceback text in
    ``__cause__``.
    """

    def __init__(self, type_name: str, message: str, reason: str = "") -> None:
        super().__init__(type_name, message, *((reason,) if reason else ()))
        self.type_name = type_name
        self.message = message
        self.reason = reason

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.message}" if self.message else self.type_name
        return f"{text} (not rebuilt here: {self.reason})" if self.reason else text


class PoolUsedInWorkerError(RuntimeError):
    """A task tried to use a pool that its callable referenced.

    Pools cannot travel to worker processes; when a task's callable refers to one
    (``self.pool`` on the instance of a bound method, say), the worker receives a
    placeholder, and any use of it raises this error.
    """


class NestedPoolError(AssertionError):
    """A pool was created inside a pool worker (or another daemonic process).

    Worker processes are daemonic, and daemonic processes cannot start
    children, so a pool cannot run inside a task.  Return the work to the
    parent and submit it there, or use a thread pool inside the task.  A
    subclass of :class:`AssertionError`, which the standard library raises in
    this case, so that existing ``except AssertionError`` clauses still catch it.
    """


class WorkerLostError(RuntimeError):
    """The worker process running a task died: killed, crashed or exited.

    Only the task it was running fails; tasks queued behind it go to another
    worker, and the pool replaces the worker.  The message says which task and
    how the process ended (signal or exit code).
    """


class TaskTimeoutError(TimeoutError):
    """A task ran longer than its ``task_timeout``; its worker was killed and replaced."""


class InitializerError(RuntimeError):
    """The pool's ``initializer`` raised in a worker; the pool cannot run tasks.

    Pending and later calls fail with this error (its ``__cause__`` is the
    initializer's exception) instead of the stdlib's endless worker restarts.
    """


class WorkerStartError(RuntimeError):
    """Worker processes cannot start, so the pool cannot run tasks.

    Raised (by the call, or as the failure of its pending tasks) once workers
    keep exiting before they are ready: the pool stops starting them instead
    of the stdlib's endless restarts.  The message says why, when that is
    known (a main module that creates a pool when it is imported, a script
    read from standard input under spawn or forkserver, ...), and what to do.
    """


class PoolTerminatedError(RuntimeError):
    """The pool was terminated before this task's result arrived."""


def refuse_nested_pool(what: str) -> None:
    """Raise :class:`NestedPoolError` if this process cannot start ``what``'s workers."""
    import multiprocessing  # here: most importers of methodpool never make a pool

    process = multiprocessing.current_process()
    if not process.daemon:
        return
    raise NestedPoolError(
        f"{what} was created inside process {process.pid} ({process.name}), a daemonic "
        "process such as a pool's worker, and daemonic processes are not allowed to have "
        "children: a task cannot start a pool of its own. Return the work to the parent "
        "and submit it from there (have the task return what it would have mapped, then "
        "call pool.map on that in the parent), or use a thread pool inside the task "
        "(multiprocessing.pool.ThreadPool or concurrent.futures.ThreadPoolExecutor)"
    )


# Shown (in tracebacks, reprs, pickles) under the name users import them by.
for _error in (
    SerializationError,
    DeserializationError,
    RemoteTaskError,
    PoolUsedInWorkerError,
    NestedPoolError,
    WorkerLostError,
    TaskTimeoutError,
    InitializerError,
    WorkerStartError,
    PoolTerminatedError,
):
    _error.__module__ = "methodpool"
del _error
