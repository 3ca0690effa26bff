"""``methodpool.patch()``: make ``multiprocessing.Pool`` build MethodPools, and
``concurrent.futures.ProcessPoolExecutor`` methodpool's executor.

For legacy code that cannot be edited.  Explicit and reversible: nothing
happens on import, and :func:`unpatch` restores exactly what was there.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import multiprocessing
import multiprocessing.context
from typing import Any

from ._executor import ProcessPoolExecutor
from ._pool import MethodPool

_saved: dict[str, Any] = {}
# concurrent.futures makes ProcessPoolExecutor on first use (a module
# __getattr__): until then the module has no such attribute, and unpatch()
# leaves it without one.
_ABSENT = object()


def _context_pool(
    self: multiprocessing.context.BaseContext,
    processes: int | None = None,
    initializer: Any = None,
    initargs: Any = (),
    maxtasksperchild: int | None = None,
) -> MethodPool:
    return MethodPool(
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
