"""What the benchmarks run: the task callables, the workloads, and the pipe reader.

Everything a worker process runs is defined at module level here, so that
workers started with spawn or forkserver can import it by name.  Every task
computes ``x + 1``; only the kind of callable (and what it drags along) changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal

Task = Callable[[int], int]

MB = 1_000_000


def increment(x: int) -> int:
    """The trivial module-level task: ``x + 1``."""
    return x + 1


class Holder:
    """An instance carrying ``state_bytes`` bytes of state; ``increment`` is its task."""

    def __init__(self, state_bytes: int) -> None:
        self.state = bytes(state_bytes)

    def increment(self, x: int) -> int:
        """``x + 1``, as a bound method (pickling it pickles the whole instance)."""
        return x + 1


@functools.cache
def holder(state_bytes: int) -> Holder:
    """One shared :class:`Holder` per size, built once in the parent process."""
    return Holder(state_bytes)


def make_lambda() -> Task:
    """A lambda: plain pickle cannot carry it."""
    return lambda x: x + 1


def make_closure(step: int = 1) -> Task:
    """A closure over ``step``: plain pickle cannot carry it."""

    def add_step(x: int) -> int:
        return x + step

    return add_step


Call = Literal["map", "imap1", "submit"]


@dataclass(frozen=True)
class Workload:
    """One throughput case: ``call`` of ``make_task()`` over ``range(max_items)``.

    ``call`` is ``"map"`` (the system's bulk map, chunked as the stdlib does by
    default), ``"imap1"`` (lazy results, one task per item) or ``"submit"`` (one
    ``submit`` and one future per item: the executors' per-task overhead).  The runs are
    time-boxed: a system too slow to do ``max_items`` within the box does fewer.
    """

    name: str
    call: Call
    make_task: Callable[[], Task]
    max_items: int
    description: str


THROUGHPUT: tuple[Workload, ...] = (
    Workload("function/map", "map", lambda: increment, 200_000, "module-level function, map"),
    Workload(
        "function/imap1", "imap1", lambda: increment, 20_000, "module-level function, imap(cs=1)"
    ),
    Workload(
        "method/imap1",
        "imap1",
        lambda: holder(16).increment,
        20_000,
        "bound method, 16-byte instance, imap(cs=1)",
    ),
    Workload(
        "method-2MB/imap1",
        "imap1",
        lambda: holder(2 * MB).increment,
        20_000,
        "bound method, 2 MB instance, imap(cs=1)",
    ),
    Workload(
        "method-2MB/map",
        "map",
        lambda: holder(2 * MB).increment,
        200_000,
        "bound method, 2 MB instance, map",
    ),
    Workload(
        "method-20MB/imap1",
        "imap1",
        lambda: holder(20 * MB).increment,
        20_000,
        "bound method, 20 MB instance, imap(cs=1)",
    ),
    Workload(
        "method-20MB/map",
        "map",
        lambda: holder(20 * MB).increment,
        200_000,
        "bound method, 20 MB instance, map",
    ),
    Workload("lambda/imap1", "imap1", make_lambda, 20_000, "lambda, imap(cs=1)"),
    Workload("closure/imap1", "imap1", make_closure, 20_000, "closure, imap(cs=1)"),
    Workload(
        "function/submit", "submit", lambda: increment, 20_000, "module-level function, submit"
    ),
    Workload(
        "method/submit", "submit", lambda: holder(16).increment, 20_000, "bound method, submit"
    ),
    Workload("lambda/submit", "submit", make_lambda, 20_000, "lambda, submit"),
)

START_METHODS: tuple[str, ...] = ("fork", "spawn", "forkserver")
"""Start methods of the start-up workloads (``startup/<method>``)."""

PIPE_MESSAGES: dict[str, int] = {"pipe/64B": 64, "pipe/2MB": 2 * MB}
"""Message size in bytes of each physical-reference workload."""


# The data-plane tasks (benchmarks/dataplane.py): numpy arrays in, out, both.


def arguments_in(array: Any) -> float:
    """An array in, a float out."""
    return float(array[0])


@functools.cache
def _made_array(n: int) -> Any:
    import numpy as np  # only the data-plane benchmark needs it

    return np.ones(n)


def arrays_out(n: int) -> Any:
    """An array of ``n`` float64 out (made once per worker: the task itself costs nothing)."""
    return _made_array(n)


def echo(array: Any) -> Any:
    """An array in, the same array out."""
    return array


def drain_pipe(reader: Connection, ack: Connection) -> None:
    """Receive messages until an empty one, then send back how many came."""
    count = 0
    while reader.recv_bytes():
        count += 1
    ack.send(count)
