"""Every place methodpool relies on ``multiprocessing`` internals, in one file.

``multiprocessing.pool.Pool`` (identical in these respects on CPython
3.10-3.13) offers no public hooks, so MethodPool uses these private ones:

* ``Pool.Process(ctx, target=pool.worker, args=...)`` is how the pool starts
  every worker, the first ones and every replacement.  An instance attribute
  (:class:`WorkerFactory`) takes its place: it starts
  :func:`methodpool._worker.run_worker` on a channel of its own
  (:mod:`methodpool._transport`) instead of the shared queues, in a process of
  methodpool's own class for the fork, spawn and forkserver contexts, and made
  by ``ctx.Process`` as the stdlib does for any other (:func:`context_process`).
* ``Pool._setup_queues`` sets ``_quick_put`` / ``_quick_get``, the functions
  through which the task-handler and result-handler threads send tasks and
  receive results.  MethodPool points them at its dispatcher.  The stdlib
  queues stay, unused but for the ``None`` sentinels ``Pool`` writes to
  ``_outqueue`` itself.
* ``Pool._help_stuff_finish`` is how ``terminate()`` unblocks a task handler
  stuck sending; MethodPool's wakes the dispatcher instead
  (:func:`abort_dispatch`).
* ``Pool._terminate_pool`` (a classmethod) is wrapped so that workers which
  ignore SIGTERM are killed after a grace period.
* ``multiprocessing.spawn.prepare()``, which a spawn or forkserver child runs
  before anything else, imports the parent's main module unless the child's
  own ``__main__`` already has its file (or spec name).  A worker whose name
  is a :class:`_SkipMainName` sets those while its preparation data is
  unpickled, just before: that is how workers of a pool whose serializer
  carries ``__main__`` definitions by value skip the main module
  (``import_main=False``).  The preparation data holds the process name since
  Python 3.4; ``tests/test_backend.py`` pins it.
* ``Process._popen.returncode``: a worker's exit code, read without reaping it
  (:func:`reaped_exitcode`).
* ``Pool._cache`` (a ``_PoolCache``) is where every result object registers on
  creation and leaves on completion; :func:`track_jobs` makes it report
  completions.  Result objects' ``_set`` is how a job is given a result; it fails
  pending jobs when the pool is terminated (:func:`fail_pending`).
* The result classes' constructors read only ``pool._cache`` from the pool
  they are given, so methodpool's results get a small stand-in
  (:class:`~methodpool._results.ResultHost`).  ``IMapIterator.__init__``
  gains a required ``buffersize`` on CPython 3.16 (gh-136871):
  :func:`init_iterator` calls it either way.
  ``MapResult._number_left`` (chunks still to come) tells which ``_set`` completes
  a ``map_async`` result, so that its progress bar is closed before.

``tests/test_backend.py`` pins each of these on every supported version.

Shared memory.  Workers read the segments that :mod:`methodpool._sharedmem`
creates with ``_posixshmem`` and ``mmap`` directly rather than through
``SharedMemory``, which before Python 3.13 registers every attachment with the
resource tracker, which the workers share with the parent: the tracker would
then unlink, or warn about, segments the parent still owns.

Descriptors.  ``multiprocessing.reduction.DupFd(fd)`` is how a descriptor
travels to a spawn or forkserver child inside its pickled arguments (the
pipes' ``Connection`` objects travel so): the transport's count of the frames a
worker took (:mod:`methodpool._transport._taken`) is handed over with it.
"""

from __future__ import annotations

import multiprocessing.context
import multiprocessing.pool
import multiprocessing.process
import multiprocessing.reduction
import os
import sys
import weakref
from collections.abc import Callable
from typing import Any

# Private names of multiprocessing.pool used by methodpool (see above); typeshed
# does not declare them.
_stdlib_pool: Any = multiprocessing.pool
stdlib_worker = _stdlib_pool.worker
mapstar = _stdlib_pool.mapstar
starmapstar = _stdlib_pool.starmapstar
helper_reraises_exception = _stdlib_pool._helper_reraises_exception
ExceptionWithTraceback = _stdlib_pool.ExceptionWithTraceback
MaybeEncodingError = _stdlib_pool.MaybeEncodingError
RemoteTraceback = _stdlib_pool.RemoteTraceback
ApplyResult = _stdlib_pool.ApplyResult
MapResult = _stdlib_pool.MapResult
IMapIterator = _stdlib_pool.IMapIterator
IMapUnorderedIterator = _stdlib_pool.IMapUnorderedIterator
guarded_task_generation = _stdlib_pool.Pool._guarded_task_generation
get_tasks = _stdlib_pool.Pool._get_tasks
_reduction: Any = multiprocessing.reduction
DupFd: Any = getattr(_reduction, "DupFd", None)  # POSIX only: None on Windows


# What to run once a worker process has started, in the parent: close the
# parent's copies of the worker's ends of its pipes, so that the worker's
# death shows as end-of-file.
_after_start: weakref.WeakKeyDictionary[Any, Callable[[], None]] = weakref.WeakKeyDictionary()


class _SkipMainName(str):
    """A worker's name that, unpickled in a spawn or forkserver child, makes it
    skip importing the parent's main module (see :func:`_skip_main`)."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        # The main module's path as multiprocessing.spawn.get_preparation_data
        # sends it (made absolute from the directory the program started in).
        main = sys.modules.get("__main__")
        spec_name = getattr(getattr(main, "__spec__", None), "name", None)
        path = getattr(main, "__file__", None)
        if isinstance(path, str):
            original_dir = multiprocessing.process.ORIGINAL_DIR  # type: ignore[attr-defined]
            if not os.path.isabs(path) and original_dir is not None:
                path = os.path.join(original_dir, path)
            path = os.path.normpath(path)
        return (_skip_main, (str(self), path, spec_name))


def _skip_main(name: str, main_path: str | None, spec_name: str | None) -> str:
    # Runs in a new child as it reads its preparation data (the name is in
    # it), before multiprocessing.spawn.prepare() imports the parent's main
    # module: make this process's own __main__ look like that module, and
    # prepare() leaves it (_fixup_main_from_path and _fixup_main_from_name
    # skip a main module that already has that file or spec name).
    main = sys.modules["__main__"]
    if main_path is not None:
        main.__file__ = main_path
    if spec_name is not None:
        import importlib.machinery

        main.__spec__ = importlib.machinery.ModuleSpec(spec_name, None)
    return name


class _WorkerProcess:
    skip_main = False

    def start(self) -> None:
        if self.skip_main:
            # Pool renames its workers after making them: wrap the final name.
            self._name = _SkipMainName(self._name)  # type: ignore[has-type]
        super().start()  # type: ignore[misc]
        after = _after_start.pop(self, None)
        if after is not None:
            after()


_context: Any = multiprocessing.context
# One subclass per start method, defined at module level: spawn and
# forkserver pickle the process object, class included, by reference.
ForkWorker = type("ForkWorker", (_WorkerProcess, _context.ForkProcess), {"__module__": __name__})
SpawnWorker = type("SpawnWorker", (_WorkerProcess, _context.SpawnProcess), {"__module__": __name__})
ForkServerWorker = type(
    "ForkServerWorker", (_WorkerProcess, _context.ForkServerProcess), {"__module__": __name__}
)
_WORKER_CLASSES = {"fork": ForkWorker, "spawn": SpawnWorker, "forkserver": ForkServerWorker}


_STDLIB_PROCESS_CLASSES = {
    "fork": _context.ForkProcess,
    "spawn": _context.SpawnProcess,
    "forkserver": _context.ForkServerProcess,
}


def new_worker_process(
    ctx: Any,
    target: Callable[..., Any],
    args: tuple[Any, ...],
    after_start: Callable[[], None],
    skip_main: bool = False,
) -> Any:
    """An unstarted process of ``ctx``'s start method; ``after_start()`` runs once it starts.

    ``skip_main``: a spawn or forkserver child does not import the parent's
    main module (what the task needs of it travels by value).
    """
    method = ctx.get_start_method()
    cls = _WORKER_CLASSES.get(method) if isinstance(method, str) else None
    if cls is None or getattr(ctx, "Process", None) is not _STDLIB_PROCESS_CLASSES[method]:
        return context_process(ctx, target, args, after_start)
    process = cls(target=target, args=args)
    process.skip_main = skip_main and method != "fork"
    _after_start[process] = after_start
    return process


def context_process(
    ctx: Any, target: Callable[..., Any], args: tuple[Any, ...], after_start: Callable[[], None]
) -> Any:
    """A process made by ``ctx.Process``, as the stdlib pool makes its workers.

    For what the stdlib accepts and methodpool has no worker class for: a
    context of another start method, one with a ``Process`` class of its own,
    or an object that is not a real context.  ``after_start()`` runs once the
    process has started, through a ``start`` set on the instance, removed again
    before the process starts (a start method that pickles the process object
    must not meet it).
    """
    process = ctx.Process(target=target, args=args)

    def start() -> None:
        del process.start  # the class's own start() again
        process.start()
        after_start()

    process.start = start
    return process


class WorkerFactory:
    """Replaces ``Pool.Process``: ``start(ctx, initializer, initargs, maxtasks)`` makes workers."""

    def __init__(self, start: Callable[..., Any]) -> None:
        self._start = start

    def __call__(self, ctx: Any, *, target: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if target is not stdlib_worker:
            raise RuntimeError(
                f"methodpool does not support this Python's multiprocessing.pool: "
                f"Pool.Process was asked to start {target!r}"
            )
        _inqueue, _outqueue, initializer, initargs, maxtasks, _wrap_exception = args
        return self._start(ctx, initializer, initargs, maxtasks)


# IMapIterator.__init__(self, pool) up to 3.15; (self, pool, buffersize) from 3.16.
_ITERATOR_TAKES_BUFFERSIZE = IMapIterator.__init__.__code__.co_argcount > 2


def init_iterator(cls: type[Any], iterator: Any, host: Any) -> None:
    """Run the stdlib iterator class ``cls``'s ``__init__`` on ``iterator``,
    registering it with ``host._cache`` (with no ``buffersize`` of the stdlib's:
    methodpool bounds its input itself)."""
    if _ITERATOR_TAKES_BUFFERSIZE:
        cls.__init__(iterator, host, None)
    else:
        cls.__init__(iterator, host)


def reaped_exitcode(process: Any) -> int | None:
    """``process``'s exit code if some thread has reaped it, else ``None``.

    Unlike ``process.exitcode`` it does not reap: two threads reaping the same
    forkserver worker race for its exit status (one reads it from the
    forkserver's pipe, the other gets end of file and reports 255), and the
    pool's worker handler thread already reaps every worker.
    """
    popen = getattr(process, "_popen", None)
    return None if popen is None else popen.returncode


def has_real_pipe(queue: Any) -> bool:
    """Whether ``queue`` (from a context's ``SimpleQueue()``) reads from a real pipe.

    A stand-in context (a mock, in tests) gives queues without one: the
    dispatcher must not wait on them.
    """
    try:
        return isinstance(queue._reader.fileno(), int)
    except Exception:
        return False


def abort_dispatch(inqueue: Any) -> None:
    """For ``Pool._help_stuff_finish``: wake a task handler blocked in the dispatcher."""
    dispatcher = getattr(inqueue, "_methodpool_dispatcher", None)
    if dispatcher is not None:
        dispatcher.abort()


class _TrackedCache(_stdlib_pool._PoolCache):  # type: ignore[misc]
    _on_done: Callable[[int], None]

    def __delitem__(self, job: int) -> None:
        super().__delitem__(job)
        self._on_done(job)


def track_jobs(cache: Any, on_done: Callable[[int], None]) -> None:
    """Make the pool's job cache call ``on_done(job)`` when a job completes.

    The cache object is shared with the pool's threads, so it is changed in
    place (its class), not replaced.
    """
    cache._on_done = on_done
    cache.__class__ = _TrackedCache


def fail_pending(cache: Any, error: BaseException) -> None:
    """Give every job still in ``cache`` the outcome ``error`` for its missing results."""
    for result in list(cache.values()):
        failure = (False, error)
        if isinstance(result, IMapIterator):
            stop_feeding = getattr(result, "stop_feeding", None)
            if stop_feeding is not None:
                stop_feeding()  # buffersize: read no more input
            # The next result the consumer waits for fails; the iteration ends there.
            with result._cond:
                index = result._index
            result._set(index, failure)
            with result._cond:
                ended = result._index == result._length
                length = result._index
            if not ended:
                result._set_length(length)
        elif isinstance(result, MapResult):
            while not result.ready():
                result._set(0, failure)
        elif not result.ready():
            result._set(0, failure)


def read_shared_memory(name: str, size: int) -> bytes:
    """The first ``size`` bytes of the shared memory segment ``name``."""
    try:
        import _posixshmem  # type: ignore[import-not-found]
    except ImportError:  # Windows: a named mapping, which no resource tracker watches
        from multiprocessing import shared_memory

        segment = shared_memory.SharedMemory(name)
        try:
            return bytes(segment.buf[:size])  # type: ignore[index]
        finally:
            segment.close()

    fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDONLY, mode=0o600)
    try:
        import mmap  # here: only a worker given a big callable needs it

        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as view:
            return view[:size]
    finally:
        os.close(fd)
