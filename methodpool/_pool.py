"""MethodPool: ``multiprocessing.pool.Pool`` for any callable.

Data flow (the stdlib's threads and pipes, with methodpool's pieces marked *)::

    caller thread              task handler thread          worker process (xN)
    -------------              -------------------          -------------------
    pool.map(f, xs)
      *_ship(f): serialize f
       once per call with the
       serializer chain; a
       failure raises
       SerializationError here
      stdlib: chunk xs into     *TaskWriter: frame each
       (job, i, mapstar,         task, plain pickle;
        ((f', chunk),), {})  -->  args it cannot carry   --> *run_worker: read frame,
       on _taskqueue              go as a fallback            load task, open f' (loaded
                                  Payload; pipe _inqueue      once, then cached), run it,
                                                              catch anything it raises
                                                                     |
    caller: result.get()   <--  result handler thread    <--  *ResultWriter: frame
                                 *ResultReader: load the       (ok, value); a value plain
                                  frame; a bad one fails       pickle cannot carry goes as
                                  its task only;               a fallback Payload; pipe
                                  stdlib: cache[job]._set()    _outqueue

``f'`` is a :class:`~methodpool._shipping.ShippedCallable`: the serialized
bytes plus a content key.  Plain module-level functions skip it and travel by
reference, as in the stdlib.  Which private hooks of ``Pool`` this needs, and
why, is in :mod:`methodpool._backend`; the worker side is
:mod:`methodpool._worker`; serializers are :mod:`methodpool._serializers`.
"""

from __future__ import annotations

import multiprocessing.pool
import sys
import types
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from multiprocessing.context import BaseContext
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any, TypeVar

from ._backend import ResultReader, TaskWriter, WorkerFactory, drain_task_pipe, track_jobs
from ._serializers import (
    AUTO,
    SupportsDumpsLoads,
    fallback_chain,
    main_reference_guard,
    serializer_chain,
)
from ._sharedmem import SHARED_MIN_BYTES, SegmentRegistry
from ._shipping import Payload, ShippedCallable, describe, ship_callable

T = TypeVar("T")
R = TypeVar("R")

_BUILTIN_SPECS = frozenset({AUTO, "pickle", "cloudpickle", "dill"})


def _is_importable_function(func: Any) -> bool:
    # A module-level function that workers can import by name: plain pickle
    # stores it as "module.name" whatever the serializer, so there is nothing
    # to ship.  Everything defined in __main__ is shipped (see _serializers).
    if type(func) not in (types.FunctionType, types.BuiltinFunctionType):
        return False
    module = getattr(func, "__module__", None)
    name = getattr(func, "__qualname__", "")
    if module in (None, "__main__", "__mp_main__") or "." in name or "<" in name:
        return False
    return getattr(sys.modules.get(module), name, None) is func


class MethodPool(multiprocessing.pool.Pool):
    """A ``multiprocessing.pool.Pool`` whose tasks may use any callable.

    Same constructor, methods and results as the stdlib pool, plus
    ``serializer``: ``"auto"`` (default: plain pickle where it works,
    cloudpickle then dill where it does not), ``"pickle"``, ``"cloudpickle"``,
    ``"dill"``, a name given to :func:`~methodpool.register_serializer`, or an
    object with ``dumps`` and ``loads``.

    The task callable is serialized once per call, in the caller's thread, and
    snapshotted then: later changes to the object do not reach tasks of that
    call.  A callable that cannot be serialized raises
    :class:`~methodpool.SerializationError` from the call itself.  Arguments and
    results go by plain pickle, and by the serializer where plain pickle cannot
    carry them (except with ``serializer="pickle"``).

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
    ) -> None:
        # Pool.__del__ reads these even when __init__ raises before Pool's own.
        self._pool = []
        self._state = multiprocessing.pool.INIT
        self._serializer_spec = serializer
        self._chain = serializer_chain(serializer)
        self._fallback = fallback_chain(serializer)
        self._callables_serialized = 0  # for tests and benchmarks
        self._ship_globals_by_reference = (
            isinstance(serializer, str) and serializer in _BUILTIN_SPECS
        )
        # Instance attribute in place of the static Pool.Process (see _backend).
        self.Process = WorkerFactory(self._fallback)  # type: ignore[method-assign]
        if initializer is not None:
            if not callable(initializer):
                raise TypeError("initializer must be a callable")
            # Inline, never in shared memory: every worker start needs it.
            initializer = self._ship(initializer, share=False)
        self._segments = SegmentRegistry()
        # Unlink the segments when the pool is collected or the interpreter
        # exits without terminate() or join() (which unlink them too).
        weakref.finalize(self, self._segments.close)
        super().__init__(processes, initializer, initargs, maxtasksperchild, context)
        track_jobs(self._cache, self._segments.job_started, self._segments.job_done)

    @property
    def serializer(self) -> str:
        """The name of the serializer (or chain) this pool was built with."""
        spec = self._serializer_spec
        return spec if isinstance(spec, str) else self._chain[0].name

    def __repr__(self) -> str:
        return (
            f"<{type(self).__module__}.{type(self).__qualname__} state={self._state} "
            f"pool_size={len(self._pool)} serializer={self.serializer!r}>"
        )

    def _setup_queues(self) -> None:
        multiprocessing.pool.Pool._setup_queues(self)  # type: ignore[attr-defined]
        pickler = (
            main_reference_guard(self._ctx.get_start_method()) if self._fallback else ForkingPickler
        )
        self._quick_put = TaskWriter(self._inqueue, self._fallback, pickler)
        self._quick_get = ResultReader(self._outqueue)

    def _ship(self, func: Any, share: bool = True) -> Any:
        if not callable(func):
            raise TypeError(f"the task function must be callable, got {describe(func)}")
        if self._ship_globals_by_reference and _is_importable_function(func):
            return func
        self._callables_serialized += 1
        shipped = ship_callable(func, self._chain)
        payload = shipped.payload
        if share and isinstance(payload.data, bytes) and len(payload.data) >= SHARED_MIN_BYTES:
            ref = self._segments.share(shipped.key, payload.data)
            shipped = ShippedCallable(
                shipped.key, shipped.label, Payload(payload.serializer, payload.loads, ref)
            )
        return shipped

    @staticmethod
    def _help_stuff_finish(inqueue: Any, task_handler: Any, size: int) -> None:
        drain_task_pipe(inqueue, task_handler)

    def terminate(self) -> None:
        """Like :meth:`multiprocessing.pool.Pool.terminate`; also frees shared memory."""
        super().terminate()
        self._segments.close()

    def join(self) -> None:
        """Like :meth:`multiprocessing.pool.Pool.join`; also frees shared memory."""
        super().join()
        self._segments.close()

    def apply_async(
        self,
        func: Callable[..., R],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},
        callback: Callable[[R], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> multiprocessing.pool.ApplyResult[R]:
        """Like :meth:`multiprocessing.pool.Pool.apply_async`, for any callable."""
        self._check_running()
        return super().apply_async(self._ship(func), args, kwds, callback, error_callback)

    def _map_async(  # type: ignore[no-untyped-def]
        self, func, iterable, mapper, chunksize=None, callback=None, error_callback=None
    ):
        # map, map_async, starmap and starmap_async all come through here.
        self._check_running()
        return super()._map_async(  # type: ignore[misc]
            self._ship(func), iterable, mapper, chunksize, callback, error_callback
        )

    def imap(  # type: ignore[override]  # typeshed: IMapIterator, but chunked imap gives a generator
        self, func: Callable[[T], R], iterable: Iterable[T], chunksize: int = 1
    ) -> Iterator[R]:
        """Like :meth:`multiprocessing.pool.Pool.imap`, for any callable."""
        self._check_running()
        return super().imap(self._ship(func), iterable, chunksize)

    def imap_unordered(  # type: ignore[override]  # as imap
        self, func: Callable[[T], R], iterable: Iterable[T], chunksize: int = 1
    ) -> Iterator[R]:
        """Like :meth:`multiprocessing.pool.Pool.imap_unordered`, for any callable."""
        self._check_running()
        return super().imap_unordered(self._ship(func), iterable, chunksize)


Pool = MethodPool
