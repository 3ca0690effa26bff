"""``methodpool.patch()``: make ``multiprocessing.Pool`` build MethodPools.

For legacy code that cannot be edited.  Explicit and reversible: nothing
happens on import, and :func:`unpatch` restores exactly what was there.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
from typing import Any

from ._pool import MethodPool

_saved: dict[str, Any] = {}


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
    """From now on, ``multiprocessing.Pool(...)`` and ``ctx.Pool(...)`` return a MethodPool.

    Covers calls made through the ``multiprocessing`` module and through
    contexts (``multiprocessing.get_context("spawn").Pool(...)``).  Not covered:
    names bound before the call (``from multiprocessing import Pool`` in a module
    imported earlier) and the class ``multiprocessing.pool.Pool`` itself, which
    stays the stdlib's.  Calling it twice changes nothing more.
    """
    if _saved:
        return
    _saved["module"] = multiprocessing.Pool
    _saved["context"] = multiprocessing.context.BaseContext.Pool
    multiprocessing.context.BaseContext.Pool = _context_pool  # type: ignore[method-assign]
    default = multiprocessing.context._default_context
    multiprocessing.Pool = default.Pool


def unpatch() -> None:
    """Undo :func:`patch` (a no-op if it is not in effect)."""
    if not _saved:
        return
    multiprocessing.context.BaseContext.Pool = _saved.pop("context")  # type: ignore[method-assign]
    multiprocessing.Pool = _saved.pop("module")
