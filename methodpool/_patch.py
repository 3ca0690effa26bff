"""``methodpool.patch()``: make ``multiprocessing.Pool`` build MethodPools, and
``concurrent.futures.ProcessPoolExecutor`` methodpool's executor.

For legacy code that cannot be edited.  Explicit and reversible: nothing
happens on import, and :func:`unpatch` restores exactly what was there.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import contextlib
import multiprocessing
import multiprocessing.context
import multiprocessing.pool
from collections.abc import Iterator
from typing import Any

from ._executor import ProcessPoolExecutor
from ._pool import MethodPool

_saved: dict[str, Any] = {}
# concurrent.futures makes ProcessPoolExecutor on first use (a module
# __getattr__): until then the module has no such attribute, and unpatch()
# leaves it without one.
_ABSENT = object()


# What ctx.Pool(...) builds while patched: MethodPool, or _ScriptPool under `run`.
_pool_class: type[MethodPool] = MethodPool


def _context_pool(
    self: multiprocessing.context.BaseContext,
    processes: int | None = None,
    initializer: Any = None,
    initargs: Any = (),
    maxtasksperchild: int | None = None,
) -> MethodPool:
    return _pool_class(
        processes, initializer, initargs, maxtasksperchild, context=self.get_context()
    )


def patch() -> None:
    """From now on, ``multiprocessing.Pool(...)`` and ``ctx.Pool(...)`` return a
    MethodPool, and ``concurrent.futures.ProcessPoolExecutor`` is
    :class:`methodpool.ProcessPoolExecutor`.

    Covers calls made through the ``multiprocessing`` module and through
    contexts (``multiprocessing.get_context("spawn").Pool(...)``), and the
    executor as ``concurrent.futures`` and ``concurrent.futures.process`` name
    it.  Not covered: names bound before the call (``from multiprocessing import
    Pool`` or ``from concurrent.futures import ProcessPoolExecutor`` in a module
    imported earlier) and the class ``multiprocessing.pool.Pool`` itself, which
    stays the stdlib's.  Calling it twice changes nothing more.
    """
    if _saved:
        return
    _saved["module"] = multiprocessing.Pool
    _saved["context"] = multiprocessing.context.BaseContext.Pool
    _saved["futures"] = vars(concurrent.futures).get("ProcessPoolExecutor", _ABSENT)
    _saved["futures.process"] = concurrent.futures.process.ProcessPoolExecutor
    multiprocessing.context.BaseContext.Pool = _context_pool  # type: ignore[method-assign]
    default = multiprocessing.context._default_context
    multiprocessing.Pool = default.Pool
    concurrent.futures.ProcessPoolExecutor = ProcessPoolExecutor  # type: ignore[misc, assignment]
    concurrent.futures.process.ProcessPoolExecutor = ProcessPoolExecutor  # type: ignore[misc, assignment]


def unpatch() -> None:
    """Undo :func:`patch` (a no-op if it is not in effect)."""
    if not _saved:
        return
    multiprocessing.context.BaseContext.Pool = _saved.pop("context")  # type: ignore[method-assign]
    multiprocessing.Pool = _saved.pop("module")
    concurrent.futures.process.ProcessPoolExecutor = _saved.pop("futures.process")  # type: ignore[misc]
    futures = _saved.pop("futures")
    if futures is _ABSENT:
        del concurrent.futures.ProcessPoolExecutor
    else:
        concurrent.futures.ProcessPoolExecutor = futures  # type: ignore[misc]


# -- python -m methodpool run ------------------------------------------------------

_STDLIB_POOL: Any = multiprocessing.pool.Pool


class _StdlibPoolChecks(type):
    # isinstance() and issubclass() against the rebound multiprocessing.pool.Pool
    # answer as against the stdlib's class: a ThreadPool is still a Pool.
    def __instancecheck__(cls, instance: Any) -> bool:
        if cls is _ScriptPool:
            return isinstance(instance, _STDLIB_POOL)
        return type.__instancecheck__(cls, instance)

    def __subclasscheck__(cls, subclass: type) -> bool:
        if cls is _ScriptPool:
            return issubclass(subclass, _STDLIB_POOL)
        return type.__subclasscheck__(cls, subclass)


class _ScriptPool(MethodPool, metaclass=_StdlibPoolChecks):
    """``multiprocessing.pool.Pool`` while ``python -m methodpool run`` runs a script."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not type.__instancecheck__(MethodPool, self):
            # ThreadPool.__init__ calls Pool.__init__(self, ...) through
            # multiprocessing.pool's global name (3.10-3.14): a thread pool
            # stays the stdlib's.
            _STDLIB_POOL.__init__(self, *args, **kwargs)
            return
        super().__init__(*args, **kwargs)


@contextlib.contextmanager
def patched_for_script() -> Iterator[None]:
    """What ``python -m methodpool run`` changes while the script runs, undone after:
    :func:`patch`, and the class ``multiprocessing.pool.Pool`` itself (so that
    ``multiprocessing.pool.Pool(...)`` builds a MethodPool too, and a class the
    script derives from it derives from MethodPool).  Names bound before it
    (``from multiprocessing.pool import Pool`` in a module already imported)
    keep the stdlib's class."""
    global _pool_class
    was_patched = bool(_saved)
    patch()
    stdlib_class = multiprocessing.pool.Pool
    multiprocessing.pool.Pool = _ScriptPool  # type: ignore[misc]
    _pool_class = _ScriptPool
    try:
        yield
    finally:
        multiprocessing.pool.Pool = stdlib_class  # type: ignore[misc]
        _pool_class = MethodPool
        if not was_patched:
            unpatch()
