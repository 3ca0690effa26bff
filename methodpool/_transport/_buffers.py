"""The data plane: large buffers in arguments and results go through shared memory.

Pickle protocol 5 lets a pickler hand buffers over *out of band*: a numpy
array (and what is built on one: pandas, pyarrow data) or a
``pickle.PickleBuffer`` is given to a ``buffer_callback`` instead of being
copied into the pickle.  Every buffer of at least :data:`OUT_OF_BAND_MIN_BYTES`
goes into a POSIX shared memory segment; the frame carries an
:class:`OutOfBand`: the small pickle that remains, the segment's name and
where each buffer sits in it.  ``bytes`` and ``bytearray`` objects are pickled
in band by the protocol itself (only a ``PickleBuffer`` wrapped around them
goes out of band), and the pool's by-value serializers (cloudpickle, dill,
for what plain pickle cannot carry) always pickle in band.

What it promises:

* The stdlib's copy semantics.  The reader copies each buffer out of the
  segment into a private ``bytearray`` (one ``memcpy``) before it unpickles:
  a task may write into its argument without changing the caller's array,
  results are ordinary writable arrays that stay valid after the pool is
  gone, and nothing is shared that the caller did not pass.  (A private
  copy-on-write mapping would save that copy, but a reused segment's next
  contents would then show through the pages not yet written.)
* Never a failed task for lack of shared memory: segments are reserved
  with ``posix_fallocate`` when they are made, so a full ``/dev/shm`` is
  an ``OSError`` here instead of a ``SIGBUS`` later; the frame then goes
  through the pipe, in band, and ``PoolCounters.pipe_fallbacks`` and the
  call's ``CallStats.pipe_fallbacks`` count it.
* Reuse, bounded.  A segment's first 16 bytes hold two sequence numbers:
  the writer stores the number of each message it puts there, the reader
  stores it back once it has copied the message out, and only then may the
  writer use the segment again.  So pages are faulted in once, not per task.
* No segment outlives its use:

  - *Arguments*: the parent's :class:`TaskSegments` make and own them.  A
    segment is busy from when a task is framed until its worker has copied
    the arguments out; a busy segment whose job is done (the worker died
    while reading, the task was cancelled, the pool terminated) is unlinked,
    never reused.  Up to :data:`IDLE_SEGMENTS` idle ones (:data:`IDLE_BYTES`
    in all) are kept for the next tasks while the pool has work, and given up
    first when a new one cannot be made; a pool left without work gives them
    all up after :data:`IDLE_GRACE` seconds, and all are unlinked when the
    pool is terminated or joined.  An idle segment given up is emptied
    (truncated) before it is unlinked, so its memory is free at once, although
    workers keep the last few segments they read mapped until their next task.
  - *Results*: each worker makes and reuses at most :data:`RESULT_SEGMENTS`
    segments (:class:`ResultSegments`), named after its pool and its pid
    (``mpdp_<tag>_<pid>_<k>``), so the parent knows every name a worker can
    have made: it unlinks them all once the worker's results pipe has ended (it
    exited, or was killed at any point) and when the pool stops.  A worker
    whose segments all hold results the parent has not copied yet waits for
    one (:data:`RESULT_WAIT` seconds at most), then uses the pipe.
  - Every segment is registered with ``multiprocessing``'s resource
    tracker (one per parent, shared by its workers), which unlinks what is
    left if the parent and its workers are killed; a worker whose parent
    dies unlinks its own segments before it exits.

The module is imported by workers (through :mod:`._wire`): it must stay light.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

try:  # CPython's module behind multiprocessing.shared_memory, POSIX only
    import _posixshmem  # type: ignore[import-not-found]
except ImportError:  # Windows: no data plane, everything goes through the pipe
    _posixshmem = None

from .._errors import DeserializationError

if TYPE_CHECKING:
    from .._stats import PoolCounters, StatsCollector

# The smallest buffer that goes out of band.  Measured on 2 cores, fork,
# map(chunksize=1) of float64 arrays, MB/s through the pipe / out of band,
# for arrays as arguments and arrays in and out (echo), noisy (a shared
# machine): 16 KiB echo 77 / 37; 64 KiB echo 171 / 126, arguments 276 / 251;
# 128 KiB echo 261 / 185 and 220 / 148, arguments 284 / 433 and 363 / 282;
# 256 KiB echo 274 / 273, 348 / 279, 127 / 231, arguments 357 / 804,
# 614 / 426, 181 / 426; 1 MiB echo 138 / 777, arguments 286 / 1142.  A
# segment's system calls and the reader's mapping cost what the pipe's copies
# cost at about 128-256 KiB; from 256 KiB on shared memory is never behind.
OUT_OF_BAND_MIN_BYTES = 256 * 1024
# Idle argument segments a pool keeps for its next tasks, and their bytes at
# most: making a segment and faulting its pages in costs about 12 ms for 8 MB
# here, ten times what copying into a mapped one does.
IDLE_SEGMENTS = 4
IDLE_BYTES = 256 << 20
# Seconds a pool without work keeps its idle segments, for the next call of a
# loop of calls: a pool left alone holds no shared memory, which others on
# the machine may need (containers often have 64 MB of it).
IDLE_GRACE = 1.0
RESULT_SEGMENTS = 4  # result segments one worker may have at once
RESULT_WAIT = 1.0  # seconds a worker waits for a free result segment
_POLL = 0.0002
# Result segments are named RESULT_PREFIX + the pool's tag (8 hex digits) +
# "_" + worker pid + "_" + k: 24 characters at most with the leading "/", within
# the 31 macOS allows.  The tag keeps two pools whose workers have the same pid
# (processes in two containers that share /dev/shm) off each other's segments.
RESULT_PREFIX = "mpdp_"
_ARGS_PREFIX = "mpda_"
_ALIGN = 64  # each buffer starts on a cache line
_SEQUENCES = struct.Struct("<QQ")  # (written, released), at the start of a segment
_RELEASED = struct.Struct("<Q")
_DATA = _ALIGN  # where the first buffer starts
_GROWTH = 1 << 20  # segments are made in whole MiB, so a slightly bigger buffer fits

AVAILABLE = _posixshmem is not None


def _aligned(size: int) -> int:
    return (size + _ALIGN - 1) & ~(_ALIGN - 1)


class OutOfBand:
    """Stands in a frame for a pickle whose big buffers are in a shared memory segment.

    ``spans`` are ``(offset, size)`` of each buffer in the segment ``name``;
    ``sequence`` is the message's number there (see the module docstring).
    """

    __slots__ = ("name", "pickle", "sequence", "spans")

    def __init__(
        self, pickle: bytes, name: str, sequence: int, spans: tuple[tuple[int, int], ...]
    ) -> None:
        self.pickle = pickle
        self.name = name
        self.sequence = sequence
        self.spans = spans

    def __reduce__(self) -> tuple[Any, ...]:
        return (OutOfBand, (self.pickle, self.name, self.sequence, self.spans))

    @property
    def size(self) -> int:
        """Bytes of the buffers."""
        return sum(size for _, size in self.spans)

    def end(self) -> int:
        """Bytes of the segment the buffers need."""
        offset, size = self.spans[-1]
        return offset + size

    def load_from(self, view: memoryview) -> Any:
        """The object: each buffer copied out of ``view`` (the segment), then
        unpickled; the segment is released to its writer."""
        buffers = [bytearray(view[offset : offset + size]) for offset, size in self.spans]
        # The writer may reuse the segment from here on.  The copies above
        # are done by then: a memcpy and the interpreter's own work lie
        # between them and this store (no fence: x86 keeps loads before a
        # later store in order, and on weaker memory models the distance is
        # thousands of instructions).
        _RELEASED.pack_into(view, 8, self.sequence)
        return pickle.loads(self.pickle, buffers=buffers)


class BufferGatherer:
    """A pickler's ``buffer_callback``: keeps big contiguous buffers out of band.

    One per sending thread (the task handler; a worker's main thread), used
    for frame after frame: the pickler calls it only for buffers, so a frame
    without any pays nothing for it.  ``job``: the job of the task being framed.
    """

    __slots__ = ("buffers", "job", "threshold")

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.buffers: list[memoryview] = []
        self.job = 0

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        # True: pickle it in band.
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous
            return True
        if raw.nbytes < self.threshold:
            return True
        self.buffers.append(raw)
        return False

    def spans(self) -> tuple[tuple[int, int], ...]:
        """Where each gathered buffer goes in a segment."""
        spans = []
        offset = _DATA
        for raw in self.buffers:
            spans.append((offset, raw.nbytes))
            offset = _aligned(offset + raw.nbytes)
        return tuple(spans)


class _Segment:
    """A mapped POSIX shared memory segment, made by this process."""

    __slots__ = ("fd", "job", "map", "name", "sequence", "size", "view")

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.sequence = 0  # the last message written to it
        self.job: int | None = None  # arguments: the job its message is for
        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR
        self.fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        try:
            self._reserve(size)
            self.map = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            _posixshmem.shm_unlink("/" + name)
            raise
        self.view = memoryview(self.map)
        _track(name)

    def _reserve(self, size: int) -> None:
        # Reserve the pages now: on a full tmpfs a plain ftruncate succeeds
        # and the first write to a page past the space raises SIGBUS.
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(self.fd, 0, size)
        else:  # macOS: shared memory is not a file system there
            os.ftruncate(self.fd, size)

    def grow(self, size: int) -> None:
        """Make room for ``size`` bytes (the contents are not kept)."""
        self.view.release()
        self.map.close()
        self._reserve(size)
        self.size = size
        self.map = mmap.mmap(self.fd, size)
        self.view = memoryview(self.map)

    def free(self) -> bool:
        """Whether its reader has copied its last message out."""
        written, released = _SEQUENCES.unpack_from(self.view)
        return bool(written == released)

    def write(self, gathered: list[memoryview], spans: tuple[tuple[int, int], ...]) -> int:
        """Copy the buffers in; the message's sequence number."""
        view = self.view
        for raw, (offset, size) in zip(gathered, spans, strict=True):
            view[offset : offset + size] = raw
        self.sequence += 1
        _RELEASED.pack_into(view, 0, self.sequence)  # "written"; "released" stays one behind
        return self.sequence

    def close(self) -> None:
        """Unmap it and close its descriptor (the name stays)."""
        self.view.release()
        self.map.close()
        os.close(self.fd)

    def unlink(self) -> None:
        self.close()
        _unlink(self.name)

    def give_up(self) -> None:
        """Unlink it, emptied first: a process that still maps it (a worker's
        cache of the segments it read) keeps no memory of it.  Only for a free
        segment, that no reader is still copying from."""
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        self.unlink()


def _track(name: str) -> None:
    from multiprocessing import resource_tracker

    resource_tracker.register("/" + name, "shared_memory")


def _unlink(name: str) -> bool:
    """Unlink ``name`` and stop tracking it; whether it existed."""
    try:
        _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        return False
    from multiprocessing import resource_tracker

    resource_tracker.unregister("/" + name, "shared_memory")
    return True


def _segment_size(end: int) -> int:
    return -(-end // _GROWTH) * _GROWTH


class _Mapped:
    """Another process's segment, mapped here whole.  ``watch``: keep its
    descriptor, to tell whether it was unlinked; else none is held."""

    __slots__ = ("fd", "map", "view")

    def __init__(self, name: str, watch: bool = True) -> None:
        fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
        try:
            self.map = mmap.mmap(fd, os.fstat(fd).st_size)
        except BaseException:
            os.close(fd)
            raise
        if not watch:
            os.close(fd)
        self.fd = fd if watch else None
        self.view = memoryview(self.map)

    def unlinked(self) -> bool:
        assert self.fd is not None
        return os.fstat(self.fd).st_nlink == 0

    def close(self) -> None:
        self.view.release()
        self.map.close()
        if self.fd is not None:
            os.close(self.fd)


# A worker's mappings of the parent's argument segments, most recently used
# last: mapping a segment and faulting its pages in costs about as much as
# copying it (2 ms of 3.3 for 8 MB), and the parent reuses its segments.  One
# the parent has unlinked is dropped at the next task that reads one, so a
# worker holds on to at most _MAPPED_MAX segments' memory.
_MAPPED_MAX = 4
_mapped: dict[str, _Mapped] = {}


def read_out_of_band(message: OutOfBand) -> Any:
    """Load a message from another process's segment (in a worker: a task's arguments)."""
    for name, old in list(_mapped.items()):
        if old.unlinked():
            del _mapped[name]
            old.close()
    mapped = _mapped.pop(message.name, None)
    if mapped is None:
        try:
            mapped = _Mapped(message.name)
        except OSError as exc:
            # Unlinked: its job was done (cancelled, or the pool terminated)
            # before this worker came to the task.
            raise DeserializationError(
                f"the task's arguments are gone from shared memory ({message.name}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if len(_mapped) >= _MAPPED_MAX:
            _mapped.pop(next(iter(_mapped))).close()
    _mapped[message.name] = mapped
    return message.load_from(mapped.view)


def ensure_tracker() -> None:
    """Start the resource tracker now, so forked workers share the parent's."""
    if AVAILABLE:
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()


class TaskSegments:
    """Parent side: the segments of task arguments, and reading results.

    Framing runs in the pool's task-handler thread, loading results in its
    result-handler thread, :meth:`job_started` / :meth:`job_done` in
    whichever thread starts or completes a job: one lock guards the lot.
    ``threshold`` is ``None`` when the pool keeps everything in band.
    """

    def __init__(self, threshold: int | None, counters: PoolCounters) -> None:
        self.threshold = threshold if AVAILABLE else None
        self._counters = counters
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._stats: dict[int, StatsCollector] = {}
        # Workers' result segments, mapped for reading, by name.
        self._results: dict[str, _Mapped] = {}
        # The task handler's buffer_callback (None: everything in band).
        self.gatherer = None if self.threshold is None else BufferGatherer(self.threshold)
        # What its workers' result segments are named after (see RESULT_PREFIX).
        self.result_prefix = f"{RESULT_PREFIX}{os.urandom(4).hex()}_"
        self._idle_timer: threading.Timer | None = None

    def worker_settings(self) -> tuple[int, str] | None:
        """What a worker needs for its results (``run_worker``'s ``out_of_band``):
        the smallest buffer that goes out of band, its segments' name prefix."""
        return None if self.threshold is None else (self.threshold, self.result_prefix)

    # -- jobs ---------------------------------------------------------------

    def job_started(self, job: int, stats: StatsCollector) -> None:
        with self._lock:
            self._stats[job] = stats

    def job_done(self, job: int) -> None:
        """Unlink the segments still busy for ``job`` (their reader died, or never
        came); once no job is left, give up the idle ones after :data:`IDLE_GRACE`."""
        with self._lock:
            self._stats.pop(job, None)
            keep = []
            for segment in self._segments:
                if segment.job == job and not segment.free():
                    segment.unlink()
                else:
                    keep.append(segment)
            self._segments = keep
            if keep and not self._stats and self._idle_timer is None:
                # A daemon thread: one per spell of idleness of a pool that
                # used shared memory, none for a pool of small tasks.
                self._idle_timer = threading.Timer(IDLE_GRACE, self._give_up_idle)
                self._idle_timer.daemon = True
                self._idle_timer.start()

    def _give_up_idle(self) -> None:
        with self._lock:
            self._idle_timer = None
            if self._stats:
                return  # work came back; its last job_done starts another wait
            for segment in [segment for segment in self._segments if segment.free()]:
                self._drop(segment)

    # -- arguments (task-handler thread) -----------------------------------

    def place(self, pickled: bytes, gathered: BufferGatherer) -> OutOfBand | None:
        """The gathered buffers of a task of ``gathered.job``, copied into a
        segment; ``None`` if no segment can be had (then the task goes in band)."""
        job = gathered.job
        spans = gathered.spans()
        end = spans[-1][0] + spans[-1][1]
        with self._lock:
            segment = self._take(end)
            if segment is None:
                self._fell_back(job)
                return None
            segment.job = job
            sequence = segment.write(gathered.buffers, spans)
            self._went_out_of_band(job, sum(size for _, size in spans))
        return OutOfBand(pickled, segment.name, sequence, spans)

    def _take(self, end: int) -> _Segment | None:
        # The smallest free segment that fits; else a new one (if that fails,
        # /dev/shm may be full: again without the idle ones).  Then at most
        # IDLE_SEGMENTS and IDLE_BYTES stay idle, the smallest kept.
        free = [segment for segment in self._segments if segment.free()]
        fitting = [segment for segment in free if segment.size >= end]
        chosen = min(fitting, key=lambda s: s.size) if fitting else self._make(end, free)
        if chosen is None:
            return None
        idle = sorted((s for s in free if s is not chosen), key=lambda s: s.size)
        kept = 0
        for rank, segment in enumerate(idle):
            kept += segment.size
            if rank >= IDLE_SEGMENTS or kept > IDLE_BYTES:
                self._drop(segment)
        return chosen

    def _make(self, end: int, free: list[_Segment]) -> _Segment | None:
        for attempt in range(2):
            try:
                made = _Segment(_ARGS_PREFIX + os.urandom(6).hex(), _segment_size(end))
            except OSError:
                if attempt or not free:
                    return None
                for segment in free:
                    self._drop(segment)
                free.clear()
                continue
            self._segments.append(made)
            self._counters.segments_created += 1
            return made
        return None

    def _drop(self, segment: _Segment) -> None:
        segment.give_up()
        self._segments.remove(segment)

    def _went_out_of_band(self, job: int, size: int) -> None:
        self._counters.bytes_out_of_band += size
        stats = self._stats.get(job)
        if stats is not None:
            stats.bytes_out_of_band += size

    def _fell_back(self, job: int) -> None:
        self._counters.pipe_fallbacks += 1
        stats = self._stats.get(job)
        if stats is not None:
            stats.pipe_fallbacks += 1

    # -- results (result-handler thread) -----------------------------------

    def load_result(self, job: int, message: OutOfBand) -> Any:
        """A result from a worker's segment (mapped once, then kept mapped)."""
        end = message.end()
        with self._lock:
            mapped = self._results.get(message.name)
            if mapped is None or len(mapped.map) < end:  # new, or grown since
                if mapped is not None:
                    mapped.close()
                mapped = self._results[message.name] = _Mapped(message.name, watch=False)
            self._went_out_of_band(job, message.size)
            return message.load_from(mapped.view)

    def result_fell_back(self, job: int) -> None:
        """A worker sent a result in band because it had no free segment."""
        with self._lock:
            self._fell_back(job)

    def worker_gone(self, pid: int | None) -> None:
        """Unlink every result segment worker ``pid`` may have made (its results
        pipe has ended: it has sent all it will)."""
        if pid is None or self.threshold is None:
            return
        prefix = f"{self.result_prefix}{pid}_"
        with self._lock:
            for name in [name for name in self._results if name.startswith(prefix)]:
                self._results.pop(name).close()
            for k in range(RESULT_SEGMENTS):
                _unlink(f"{prefix}{k}")

    def close(self) -> None:
        """Unlink the argument segments and unmap the result segments."""
        with self._lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            for segment in self._segments:
                segment.unlink()
            self._segments = []
            for mapped in self._results.values():
                mapped.close()
            self._results.clear()


class ResultSegments:
    """Worker side: up to :data:`RESULT_SEGMENTS` segments for this worker's results."""

    def __init__(self, threshold: int, prefix: str) -> None:
        self.threshold = threshold
        self._prefix = f"{prefix}{os.getpid()}_"
        self._segments: list[_Segment] = []
        self.gatherer = BufferGatherer(threshold)

    def place(self, pickled: bytes, gathered: BufferGatherer) -> OutOfBand | None:
        """The gathered buffers of a result in a segment; ``None`` if none is free
        and no other can be made (then the result goes in band)."""
        spans = gathered.spans()
        end = spans[-1][0] + spans[-1][1]
        segment = self._take(end)
        if segment is None:
            return None
        sequence = segment.write(gathered.buffers, spans)
        return OutOfBand(pickled, segment.name, sequence, spans)

    def _take(self, end: int) -> _Segment | None:
        waited = 0.0
        while True:
            free = [segment for segment in self._segments if segment.free()]
            fitting = [segment for segment in free if segment.size >= end]
            try:
                if fitting:
                    return min(fitting, key=lambda segment: segment.size)
                if len(self._segments) < RESULT_SEGMENTS:
                    segment = self._make(_segment_size(end))
                    self._segments.append(segment)
                    return segment
                if free:  # the parent maps it anew when it sees it has grown
                    segment = max(free, key=lambda segment: segment.size)
                    segment.grow(_segment_size(end))
                    return segment
            except OSError:
                return None
            # Every segment holds a result the parent has not copied out yet:
            # it is slower than this worker (it makes each result's memory,
            # and page faults are its cost).  Wait for it, as a full pipe
            # would make the worker wait; through the pipe the result would
            # cost the parent more still.  A parent that does not come back
            # (it dropped a result of a worker it is killing) gets this one
            # through the pipe after RESULT_WAIT seconds.
            if waited >= RESULT_WAIT:
                return None
            time.sleep(_POLL)
            waited += _POLL

    def _make(self, size: int) -> _Segment:
        used = {segment.name for segment in self._segments}
        name = next(
            name for k in range(RESULT_SEGMENTS) if (name := f"{self._prefix}{k}") not in used
        )
        try:
            return _Segment(name, size)
        except FileExistsError:
            # Left by a worker of this pool that had this pid before and
            # whose segment could not be unlinked: the name is this worker's now.
            _unlink(name)
            return _Segment(name, size)

    def unlink_all(self) -> None:
        """The parent is gone: nobody else will unlink them."""
        for segment in self._segments:
            with contextlib.suppress(OSError):
                _unlink(segment.name)
