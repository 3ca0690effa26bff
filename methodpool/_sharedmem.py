"""Large serialized callables reach the workers once, through shared memory.

A task carries its callable's bytes inline while they are small.  Past
:data:`SHARED_MIN_BYTES`, the parent writes them once into a POSIX shared
memory segment and the task carries only a :class:`SharedBytes` reference
(name and size, a few dozen bytes); each worker reads the segment the first
time it meets that callable and keeps the loaded callable in its cache
(:mod:`methodpool._shipping`).  A 20 MB bound method thus moves 20 MB once per
worker instead of once per task.

Lifetime.  A :class:`SegmentRegistry` (one per pool) keys segments by the
content key of the bytes, so consecutive calls with an unchanged callable share
one segment, and counts the jobs (``map``, ``imap``, ``apply_async`` calls)
still using each.  A call holds its claim as a :class:`Lease`, from
:meth:`SegmentRegistry.place` (while the call is prepared) until the job it
became is done, or until the call ends without one.  A segment no job uses
becomes idle; the newest few idle segments are kept for the next call and
older ones are unlinked.  ``close()`` unlinks every segment: the pool calls
it on ``terminate()``, ``join()``, garbage collection and interpreter exit.
If the parent is killed, the ``multiprocessing`` resource tracker, with which
every segment is registered, unlinks what is left.

Access.  ``SharedMemory`` creates each segment with mode ``0o600``: only
processes of the same user (and root) can open it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from multiprocessing import shared_memory
from typing import TYPE_CHECKING, Any

from ._backend import read_shared_memory
from ._shipping import Payload, ShippedCallable

if TYPE_CHECKING:
    from ._stats import PoolCounters

SHARED_MIN_BYTES = 64 * 1024
_IDLE_MAX = 4


class SharedBytes:
    """Stands in for ``size`` bytes in the shared memory segment ``name``."""

    __slots__ = ("name", "size")

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size

    def __reduce__(self) -> tuple[Any, ...]:
        return (SharedBytes, (self.name, self.size))

    def read(self) -> bytes:
        """The bytes, copied out of the segment (which must still exist)."""
        return read_shared_memory(self.name, self.size)


class _Segment:
    __slots__ = ("jobs", "memory", "ref", "reserved")

    def __init__(self, data: bytes) -> None:
        self.memory = shared_memory.SharedMemory(create=True, size=len(data))
        self.memory.buf[: len(data)] = data  # type: ignore[index]
        self.ref = SharedBytes(self.memory.name, len(data))
        self.jobs: set[int] = set()
        self.reserved = 0  # calls it was shared for whose job is not attached yet

    def unlink(self) -> None:
        self.memory.close()
        self.memory.unlink()


class Lease:
    """One call's claim on the segment of its callable (see the module docstring)."""

    __slots__ = ("_key", "_registry", "_settled")

    def __init__(self, registry: SegmentRegistry, key: bytes) -> None:
        self._registry = registry
        self._key = key
        self._settled = False

    def bind(self, job: int) -> None:
        """The call became ``job``: the segment stays until the job is done."""
        if not self._settled:
            self._settled = True
            self._registry.attach(job, self._key)

    def release(self) -> None:
        """The call ended without a job (it failed, or had nothing to do)."""
        if not self._settled:
            self._settled = True
            self._registry.release(self._key)


class SegmentRegistry:
    """Parent side: the pool's segments, by content key, and the jobs using each.

    :meth:`share` is called by the caller's thread while it prepares a call,
    and :meth:`attach` once the call's job exists; :meth:`job_done` when a job
    leaves the pool's cache, from whichever thread completes it.
    """

    def __init__(self, counters: PoolCounters) -> None:
        self._lock = threading.Lock()
        self._segments: OrderedDict[bytes, _Segment] = OrderedDict()
        self._by_job: dict[int, _Segment] = {}
        self._counters = counters

    def place(self, shipped: ShippedCallable) -> tuple[ShippedCallable, Lease | None]:
        """``shipped`` as tasks should carry it: small, as it is (no lease);
        large, as a reference to a segment, with the call's lease on it."""
        payload = shipped.payload
        data = payload.data
        if not isinstance(data, bytes) or len(data) < SHARED_MIN_BYTES:
            return shipped, None
        ref = self.share(shipped.key, data)
        placed = ShippedCallable(
            shipped.key, shipped.label, Payload(payload.serializer, payload.loads, ref)
        )
        return placed, Lease(self, shipped.key)

    def share(self, key: bytes, data: bytes) -> SharedBytes:
        """A reference to ``data`` in a segment, made now or reused."""
        with self._lock:
            segment = self._segments.get(key)
            if segment is None:
                segment = self._segments[key] = _Segment(data)
                self._counters.segments_created += 1
            segment.reserved += 1
            self._segments.move_to_end(key)
            self._trim()
        return segment.ref

    def attach(self, job: int, key: bytes) -> None:
        """``job`` uses the segment of ``key`` (shared for it) until :meth:`job_done`."""
        with self._lock:
            segment = self._segments.get(key)
            if segment is not None:
                segment.reserved -= 1
                segment.jobs.add(job)
                self._by_job[job] = segment

    def release(self, key: bytes) -> None:
        """The call :meth:`share` was for made no job (it completed at once)."""
        with self._lock:
            segment = self._segments.get(key)
            if segment is not None:
                segment.reserved -= 1
                self._trim()

    def job_done(self, job: int) -> None:
        with self._lock:
            segment = self._by_job.pop(job, None)
            if segment is not None:
                segment.jobs.discard(job)
                self._trim()

    def _trim(self) -> None:
        idle = [key for key, s in self._segments.items() if not s.jobs and not s.reserved]
        for key in idle[: max(0, len(idle) - _IDLE_MAX)]:
            self._segments.pop(key).unlink()

    def names(self) -> list[str]:
        """Names of the segments that exist now."""
        with self._lock:
            return [segment.memory.name for segment in self._segments.values()]

    def close(self) -> None:
        """Unlink every segment; later calls may still share new ones."""
        with self._lock:
            while self._segments:
                self._segments.popitem()[1].unlink()
            self._by_job.clear()
