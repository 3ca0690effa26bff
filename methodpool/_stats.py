"""Per-call statistics: what ``MethodPool.stats()`` reports.

Collected as the call runs, by the caller's thread (serializing the callable)
and the dispatcher (each task's bytes, and its duration: from when its worker
started it until its result arrived).  A few additions and a comparison per
task, so it is always on.

:class:`PoolCounters` holds the pool's running totals of the same kind (what
went down the pipes, how often a callable was serialized, how many shared
memory segments were made, what went through shared memory instead): the one
place the tests and the benchmarks read them from.
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass

_SLOWEST = 5


@dataclass(frozen=True)
class CallStats:
    """One call's statistics (a snapshot; a running call's numbers still grow)."""

    method: str
    """``"map"``, ``"imap"``, ``"apply_async"``, ..."""
    tasks: int
    """Tasks sent to workers (chunks, for chunked calls)."""
    items: int | None
    """Input items, where known."""
    wall_seconds: float
    """From the call until its last result (until now, while it runs)."""
    serialize_seconds: float
    """Time spent serializing the callable (once per call)."""
    callable_bytes: int
    """Size of the serialized callable; 0 if it went by reference."""
    bytes_sent: int
    """Bytes of task frames written to the workers' pipes."""
    bytes_out_of_band: int
    """Bytes of big buffers (arguments and results) that went through shared
    memory instead of the pipes."""
    pipe_fallbacks: int
    """Task and result frames whose big buffers went through a pipe after all,
    for want of shared memory (a full ``/dev/shm``, or a worker's result
    segments all still being read)."""
    task_seconds: float
    """Time workers spent on the call's tasks, summed."""
    utilisation: float
    """``task_seconds`` over ``wall_seconds`` times the number of workers."""
    slowest: tuple[tuple[int, float], ...]
    """Up to five ``(task index, seconds)``, slowest first."""
    done: bool
    """Whether every result has arrived."""


class PoolCounters:
    """Totals over a pool's life, counted without locks (two threads counting
    ``writes`` at the same instant may miss one)."""

    __slots__ = (
        "bytes_out_of_band",
        "bytes_read",
        "bytes_written",
        "callables_serialized",
        "frames_written",
        "pipe_fallbacks",
        "segments_created",
        "writes",
    )

    def __init__(self) -> None:
        self.callables_serialized = 0  # by the caller's thread
        self.segments_created = 0  # by the caller's thread
        self.frames_written = 0  # task frames, by the task-handler thread
        self.bytes_written = 0  # their bytes
        self.writes = 0  # write system calls those took (a batch is one), by either handler thread
        self.bytes_read = 0  # bytes of result frames, by the result-handler thread
        # Big buffers through shared memory, both ways, and frames that had to
        # carry theirs through a pipe (methodpool._transport._buffers).
        self.bytes_out_of_band = 0
        self.pipe_fallbacks = 0

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)}" for name in self.__slots__)
        return f"PoolCounters({fields})"


class StatsCollector:
    """Mutable counters for one call; :meth:`snapshot` makes a :class:`CallStats`."""

    __slots__ = (
        "_lock",
        "_slowest",
        "bytes_out_of_band",
        "bytes_sent",
        "callable_bytes",
        "finished",
        "items",
        "method",
        "pipe_fallbacks",
        "serialize_seconds",
        "started",
        "task_seconds",
        "tasks",
    )

    def __init__(self, method: str, items: int | None) -> None:
        self.method = method
        self.items = items
        self.started = time.perf_counter()
        self.finished: float | None = None
        self.serialize_seconds = 0.0
        self.callable_bytes = 0
        self.tasks = 0
        self.bytes_sent = 0
        self.bytes_out_of_band = 0
        self.pipe_fallbacks = 0
        self.task_seconds = 0.0
        self._slowest: list[tuple[float, int]] = []  # min-heap of the largest durations
        self._lock = threading.Lock()

    def task_sent(self, nbytes: int) -> None:
        self.tasks += 1
        self.bytes_sent += nbytes

    def task_done(self, index: int, seconds: float) -> None:
        with self._lock:
            self.task_seconds += seconds
            if len(self._slowest) < _SLOWEST:
                heapq.heappush(self._slowest, (seconds, index))
            elif seconds > self._slowest[0][0]:
                heapq.heapreplace(self._slowest, (seconds, index))

    def finish(self) -> None:
        if self.finished is None:
            self.finished = time.perf_counter()

    def snapshot(self, workers: int) -> CallStats:
        end = self.finished if self.finished is not None else time.perf_counter()
        wall = end - self.started
        with self._lock:
            slowest = tuple(
                (index, seconds) for seconds, index in sorted(self._slowest, reverse=True)
            )
            task_seconds = self.task_seconds
        return CallStats(
            method=self.method,
            tasks=self.tasks,
            items=self.items,
            wall_seconds=wall,
            serialize_seconds=self.serialize_seconds,
            callable_bytes=self.callable_bytes,
            bytes_sent=self.bytes_sent,
            bytes_out_of_band=self.bytes_out_of_band,
            pipe_fallbacks=self.pipe_fallbacks,
            task_seconds=task_seconds,
            utilisation=task_seconds / (wall * workers) if wall > 0 and workers else 0.0,
            slowest=slowest,
            done=self.finished is not None,
        )
