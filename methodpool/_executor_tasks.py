"""What :class:`~methodpool.ProcessPoolExecutor`'s tasks run in a worker, beside the callable.

Apart from :mod:`methodpool._executor` because a worker imports the module of
every function a task refers to: here that is these few lines, not the
executor and the pool behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def call_unpacked(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """``fn(*args)``: one item of ``executor.map(fn, *iterables)`` over several iterables."""
    return fn(*args)
