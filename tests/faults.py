"""Task functions that fail in every way a worker process can fail.

Module-level, so workers of every start method can import them.  ``still_works``
is the check, made in the parent, that a pool goes on after a fault.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from methodpool import MethodPool


def square(x: int) -> int:
    return x * x


SQUARES = [x * x for x in range(10)]


def still_works(pool: MethodPool) -> None:
    assert pool.map(square, range(10)) == SQUARES


def die_on(x: int, victim: int = 3, how: str = "sigkill") -> int:
    """``x * x``, except that the worker dies, ``how``, on ``victim``."""
    if x == victim:
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "exit":
            os._exit(7)
        elif how == "segfault":
            ctypes.string_at(0)
    return x * x


def pid_of_worker(_: object) -> int:
    time.sleep(0.05)  # so that every worker takes a task
    return os.getpid()


def sleep_then_square(x: float) -> float:
    time.sleep(x)
    return x * x


def ignore_sigterm_and_sleep(seconds: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)


def failing_initializer() -> None:
    raise ValueError("no database today")


def fail_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def die_with(payload: bytes) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return len(payload)


def map_in_a_pool_of_its_own(x: int) -> list[int]:
    from methodpool import MethodPool

    with MethodPool(2) as inner:
        return inner.map(abs, [x])
