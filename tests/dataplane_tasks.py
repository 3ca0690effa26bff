"""Tasks and worker initializers for the data-plane tests.

Module-level, so workers of every start method import them by name; numpy is
imported only where a task needs it, so the non-numpy tests run without it.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from typing import Any


def first(array: Any) -> float:
    """An array in, a float out."""
    return float(array[0])


def echo(value: Any) -> Any:
    return value


def zero_and_sum(array: Any) -> float:
    """Write into the argument, then say what the worker saw."""
    array[:] = 0
    return float(array.sum())


def ones(n: int) -> Any:
    import numpy as np

    return np.ones(n)


def ones_after(n: int, seconds: float = 0.05) -> Any:
    time.sleep(seconds)
    return ones(n)


def describe(value: Any) -> tuple[str, int, bool]:
    """What arrived: its type, its size, whether it can be written."""
    view = memoryview(value)
    return type(value).__name__, view.nbytes, not view.readonly


def big_bytearray(n: int) -> pickle.PickleBuffer:
    return pickle.PickleBuffer(bytearray(b"r" * n))


def raise_with(array: Any) -> None:
    raise ValueError(f"task saw {array.size} items")


def unpicklable_with(array: Any) -> Any:
    return (array, lambda: None)  # plain pickle (serializer="pickle") cannot carry it


def sleep_then_first(array: Any, seconds: float = 30.0) -> float:
    time.sleep(seconds)
    return first(array)


def pid(_: Any = None) -> int:
    return os.getpid()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_while_reading_arguments() -> None:
    """Initializer: this worker is killed as it copies a task's arguments out of
    shared memory (before it tells the parent it has them)."""
    from methodpool._transport import _buffers

    def load_from(self: Any, view: memoryview) -> Any:
        bytearray(view[: self.spans[0][1] // 2])  # half-way through the first buffer
        _die()

    _buffers.OutOfBand.load_from = load_from  # type: ignore[method-assign]


def die_while_writing_results() -> None:
    """Initializer: this worker is killed half-way through writing a result into
    its shared memory segment (which exists by then, and is never sent)."""
    from methodpool._transport import _buffers

    def write(self: Any, gathered: list[memoryview], spans: Any) -> int:
        offset, size = spans[0]
        self.view[offset : offset + size // 2] = gathered[0][: size // 2]
        _die()
        return 0

    _buffers._Segment.write = write  # type: ignore[method-assign]
