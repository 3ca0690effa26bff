"""Per-worker channels: tasks out and results back, nothing shared between workers.

::

    task-handler thread                                    worker k
      put(task) --> Dispatcher: frame the task; pick  --> tasks pipe k ----> run_worker
                    the least busy worker with room                              |
                    (its depth); note (job, i)                                   v
    result-handler thread
      get() <------ Dispatcher: wait on all results   <-- results pipe k <-- (ok, value)
                    pipes; pop the worker's oldest
                    task; end of file: worker gone

Why not the stdlib's two shared queues: their readers and writers take
cross-process locks, and a worker that dies holding one (an idle worker holds
the task pipe's lock while it waits) hangs the whole pool (gh-96062); a worker
killed while writing corrupts the one stream every result goes through.  Here
a worker's death closes only its own pipes.  The dispatcher knows what each
worker holds, so when one dies its running task fails with
:class:`~methodpool.WorkerLostError` (or :class:`~methodpool.TaskTimeoutError`
when the dispatcher killed it for overrunning its timeout), and the tasks
queued behind it, never started, go to other workers.

A worker runs its tasks in the order it receives them, so the oldest task it
holds is the one running, if the worker has read it: when a worker dies, the
bytes still unread in its tasks pipe (``FIONREAD``, which Linux answers for the
writing end too) tell the tasks it never started, which are resent, from the
one it was running, which fails.  A running task started when it was sent or
when the previous result arrived (or the worker said it was ready), whichever
is later: timeouts count from there, not from a new worker's start-up.

Depth.  How many tasks a worker holds at once adapts to how long its tasks
take: about :data:`QUEUED_SECONDS` of work, between :data:`MIN_DEPTH` (one
running, one waiting, so the worker never idles between tasks) and
:data:`MAX_DEPTH`.  Tiny tasks thus flow in bursts, as through the stdlib's
shared pipe, while a slow task holds up at most one other behind it.  The
task handler is woken only when a worker has drained to half its depth.

Batches.  On a machine with few cores, what a tiny task costs is mostly
system calls and the wake-ups they cause, so both directions move many
frames at once.  A small task for a worker that still has a few written
tasks to run waits in that worker's ``pending`` list and is written with
the ones after it (one ``write`` for up to :data:`_BATCH_FRAMES`); the batch
goes out when it is full, when a big frame must follow it, when the pool
stops the workers, or as soon as the worker runs low, which the result
thread sees (it writes the batch itself if the pipe has room, else leaves it
to the task thread: it must never block on a worker's pipe).  Results are
read a pipe-full at a time (:class:`FrameReader`), every whole frame in it
handled in turn.

Frames.  Both pipes carry ``<job:int64><index:int64><pickle>``.  The header
is readable even when the pickle is not, so a task or result that cannot be
loaded fails that one task, by name, instead of killing a worker or the
result-handler thread.  Task bodies go by plain ``ForkingPickler`` (the
stdlib's fast path), and by the pool's serializer where that cannot carry
them.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import io
import math
import multiprocessing.connection
import os
import pickle
import selectors
import signal
import struct
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any

from ._backend import MaybeEncodingError, new_worker_process, reaped_exitcode
from ._errors import (
    DeserializationError,
    InitializerError,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
)
from ._serializers import Serializer
from ._shipping import Payload, ShippedCallable, encode

if TYPE_CHECKING:  # workers import this module: they start faster without _stats
    from ._stats import StatsCollector

HEADER = struct.Struct("<qq")
# A task frame's header: HEADER's fields, then the length of the shipped
# callable's wire form that follows it (0: the callable is in the pickle).
TASK_HEADER = struct.Struct("<qqI")
PROTOCOL = pickle.HIGHEST_PROTOCOL
STOP = b"\0"  # shorter than a header: tells a worker to exit
INITIALIZER_FAILED = -1  # job number of the frame a worker sends when its initializer raised
WORKER_READY = -2  # job number of the frame a worker sends once it is ready for tasks
# How often, and how long, to look for a dead worker's exit code.
_REAP_POLL = 0.005
_REAP_WAIT = 2.0
MIN_DEPTH = 2
MAX_DEPTH = 256
QUEUED_SECONDS = 0.02
_READ_SIZE = 1 << 16  # bytes read from a results pipe at once
_SIZE = struct.Struct("!i")
_BIG_SIZE = struct.Struct("!Q")
# Batching: a frame of at most _BATCH_FRAME_MAX bytes, for a worker that
# still has _BATCH_LOW tasks written to its pipe and not done, waits to be
# written with others: up to _BATCH_FRAMES at once, or as soon as the worker
# gets low.
_BATCH_LOW = 4
_BATCH_FRAMES = 32
_BATCH_FRAME_MAX = 1024
_JOIN_MAX = 1 << 16  # frames up to this size are written with their length prefix in one go
_REQUEUE = ("requeue",)  # put on the pool's task queue to make the task handler resend

# The parent's ends of every channel; a forked worker closes its copies.
parent_ends: weakref.WeakSet[Connection] = weakref.WeakSet()


def _frame(head: bytes, body: Any, pickler: type[pickle.Pickler]) -> bytes:
    buf = io.BytesIO()
    buf.write(head)
    pickler(buf, PROTOCOL).dump(body)
    # bytes, not getbuffer(): a frame may wait in a queue or be garbage
    # collected at any time, and a BytesIO with a live export must not be.
    return buf.getvalue()


def encode_task(
    task: tuple[int, int, Any, Any, Any],
    pickler: type[pickle.Pickler],
    fallback: Sequence[Serializer],
) -> bytes:
    """The frame of a stdlib task tuple.

    A shipped callable goes ahead of the pickle, as its ready-made wire form
    (the worker then skips it if it has that callable loaded); the pickle
    holds ``None`` in its place.

    Raises :class:`~methodpool.SerializationError` if neither ``pickler`` nor
    the ``fallback`` serializers can carry its arguments; without fallback
    (``serializer="pickle"``), the pickler's own error, as the stdlib does.
    """
    job, index, func, args, kwds = task
    wire = b""
    if type(func) is ShippedCallable:
        wire, func = func.wire(), None
    head = TASK_HEADER.pack(job, index, len(wire)) + wire
    try:
        return _frame(head, (func, args, kwds), pickler)
    except Exception:
        if not fallback:
            raise  # serializer="pickle": the stdlib's own error
        what = f"the arguments of task {index}"
        chain = fallback
        try:
            boxed = encode((args, kwds), chain, what, "args")
        except SerializationError:
            # Say which argument failed, not where it sits in (args, kwds).
            encode(args, chain, what, "args")
            encode(kwds, chain, what, "kwds")
            raise
        return _frame(head, (func, boxed, None), ForkingPickler)


def encode_result(
    job: int, index: int, ok: bool, value: Any, fallback: Sequence[Serializer]
) -> bytes:
    """The frame of a task's outcome, whatever ``value`` is.

    Plain pickle first; then the ``fallback`` serializers; if none can carry
    the value, the task fails with the stdlib's ``MaybeEncodingError``.
    """
    try:
        return _frame(HEADER.pack(job, index), (ok, value), ForkingPickler)
    except Exception as exc:
        try:
            if not fallback:
                raise
            boxed = encode(value, fallback, f"the result of task {index}", "result")
            return _frame(HEADER.pack(job, index), (ok, boxed), ForkingPickler)
        except Exception:
            wrapped = MaybeEncodingError(exc, value)  # as the stdlib: repr(value)
            return _frame(HEADER.pack(job, index), (False, wrapped), ForkingPickler)


def decode_result(data: bytes) -> tuple[int, int, tuple[bool, Any]]:
    """``(job, index, (ok, value))`` from a result frame; a value that cannot be
    loaded becomes ``(False, DeserializationError)``."""
    job, index = HEADER.unpack_from(data)
    try:
        ok, value = pickle.loads(memoryview(data)[HEADER.size :])
        if type(value) is Payload:
            value = value.load(f"the result of task {index}")
    except DeserializationError as exc:
        ok, value = False, exc
    except Exception as exc:
        error = DeserializationError(
            f"could not load the result of task {index} in the parent process: "
            f"{type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        ok, value = False, error
    return job, index, (ok, value)


def _length_prefix(size: int) -> bytes:
    # What Connection.send_bytes writes before a message, which recv_bytes reads.
    if size > 0x7FFFFFFF:
        return struct.pack("!i", -1) + struct.pack("!Q", size)
    return struct.pack("!i", size)


def _unread_bytes(conn: Connection) -> int:
    """Bytes written to ``conn``'s pipe and not read yet (0 if the OS will not say)."""
    import termios  # here, not at the top: workers never need it, and start faster

    try:
        answer = fcntl.ioctl(conn.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", answer)[0])


def _pipe_size(conn: Connection) -> int:
    """The capacity of ``conn``'s pipe in bytes (0 if the OS will not say)."""
    try:
        return int(fcntl.fcntl(conn.fileno(), fcntl.F_GETPIPE_SZ))
    except (AttributeError, OSError):
        return 0


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "closed its pipes"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class FrameReader:
    """Reads ``Connection.send_bytes`` messages from a pipe, many per system call."""

    __slots__ = ("_buf", "_fd")

    def __init__(self, conn: Connection) -> None:
        self._fd = conn.fileno()
        self._buf = bytearray()

    def read(self) -> list[bytes]:
        """Wait for the pipe to hold something, read what it holds, and return
        the whole messages read so far (maybe none: the rest of one is on its
        way).  A message bigger than one read is read to its end, straight
        into place.  Raises :class:`EOFError` at end of file (a message cut
        short is dropped), or :class:`OSError`.
        """
        chunk = os.read(self._fd, _READ_SIZE)
        if not chunk:
            raise EOFError
        buf = self._buf
        buf += chunk
        frames = []
        start, end = 0, len(buf)
        while end - start >= 4:
            (size,) = _SIZE.unpack_from(buf, start)
            head = 4
            if size == -1:  # a message of 2 GiB or more: its size follows
                if end - start < 12:
                    break
                (size,) = _BIG_SIZE.unpack_from(buf, start + 4)
                head = 12
            if end - start - head < size:
                if size > _READ_SIZE:
                    frames.append(self._read_rest(size, start + head))
                    return frames
                break  # the rest is on its way
            frames.append(bytes(buf[start + head : start + head + size]))
            start += head + size
        del buf[:start]
        return frames

    def _read_rest(self, size: int, start: int) -> bytes:
        data = bytearray(size)
        have = len(self._buf) - start
        data[:have] = self._buf[start:]
        self._buf.clear()
        with memoryview(data) as view:
            while have < size:
                count = os.readv(self._fd, [view[have:]])
                if not count:
                    raise EOFError
                have += count
        return bytes(data)


class _Worker:
    """The parent's view of one worker: its pipes and the tasks it holds."""

    __slots__ = (
        "depth",
        "flush_wanted",
        "inflight",
        "kill_reason",
        "last_result",
        "pending",
        "pipe_size",
        "process",
        "reader",
        "ready",
        "received",
        "results",
        "send_lock",
        "sent",
        "service_time",
        "stranded",
        "tasks",
        "undelivered",
    )

    def __init__(self, process: Any, tasks: Connection, results: Connection) -> None:
        self.process = process
        self.tasks = tasks  # parent writes
        self.results = results  # parent reads
        self.reader = FrameReader(results)
        # (job, index, frame, when sent), oldest (running) first
        self.inflight: collections.deque[tuple[int, int, bytes, float]] = collections.deque()
        self.sent = 0
        self.received = 0
        self.kill_reason: tuple[int, int, BaseException] | None = None
        self.send_lock = threading.Lock()
        # Frames of the newest entries of inflight, batched, not written yet.
        self.pending: list[bytes] = []
        self.flush_wanted = False  # the result thread could not flush them
        self.pipe_size = _pipe_size(tasks)  # 0: never batch
        self.undelivered = 0  # sends that failed: the newest written entries of inflight
        self.stranded = 0  # bytes of those failed sends that did reach the pipe
        self.ready = False  # it has started up (and run the initializer)
        self.depth = MIN_DEPTH
        self.service_time = math.inf  # moving average of the time between results
        self.last_result = time.monotonic()

    def written(self) -> int:
        """Tasks written to its pipe and not done yet (held, less the batched ones)."""
        return len(self.inflight) - len(self.pending)

    def needs_flush(self) -> bool:
        """Whether its batched frames must go out now: it is running low on written tasks."""
        return bool(self.pending) and self.written() < _BATCH_LOW

    def result_arrived(self) -> None:
        """Update the service time estimate and the depth it allows."""
        now = time.monotonic()
        elapsed, self.last_result = now - self.last_result, now
        if self.service_time == math.inf:
            self.service_time = elapsed
        else:
            self.service_time += 0.2 * (elapsed - self.service_time)
        depth = int(QUEUED_SECONDS / self.service_time) if self.service_time > 0 else MAX_DEPTH
        self.depth = max(MIN_DEPTH, min(MAX_DEPTH, depth))


class _NeverStarted:
    """Stands in for a worker the pool must not start (its initializer is broken)."""

    exitcode = None
    pid = None
    name = "methodpool-no-worker"
    daemon = True

    def start(self) -> None:
        pass

    def terminate(self) -> None:
        pass

    def is_alive(self) -> bool:
        return False

    def join(self, timeout: float | None = None) -> None:
        pass


class Dispatcher:
    """Parent side of the channels (see the module docstring).

    ``put`` runs in the pool's task-handler thread, ``get`` in its
    result-handler thread, ``start_worker`` in whichever thread starts
    workers; the pool registers each call's job with :meth:`job_started`.
    """

    def __init__(
        self,
        run_worker: Callable[..., None],
        fallback: Sequence[Serializer],
        maxtasks: int | None,
        task_timeout: float | None,
    ) -> None:
        self._run_worker = run_worker
        self._maxtasks = maxtasks
        self._fallback = tuple(fallback)
        self._pickler: type[pickle.Pickler] = ForkingPickler
        self._cond = threading.Condition()
        self._workers: dict[Connection, _Worker] = {}
        self._requeue: collections.deque[tuple[int, int, bytes, float]] = collections.deque()
        self._ready: collections.deque[Any] = collections.deque()
        self._wake_r, self._wake_w = multiprocessing.connection.Pipe(duplex=False)
        parent_ends.update((self._wake_r, self._wake_w))
        # Owned by the result-handler thread; other threads hand it new workers
        # through _joining and wake it through the wake pipe.
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._joining: list[_Worker] = []
        # Dead workers whose running task is still to be reported: (worker,
        # job, index, report without an exit code after this time).
        self._dying: list[tuple[_Worker, int, int, float]] = []
        self._stdlib_results: Any = None
        self._taskqueue: Any = None
        self._aborted = False
        self._sender_waiting = False
        self._wake_pending = False
        self.broken: InitializerError | None = None
        self._default_timeout = task_timeout
        self._job_timeouts: dict[int, float] = {}
        self._cancelled: set[int] = set()
        self._job_stats: dict[int, StatsCollector] = {}
        # Counters for tests and benchmarks: what really went down the pipes.
        self.frames_written = 0
        self.bytes_written = 0
        self.writes = 0  # batches of frames written (one system call each, for small frames)

    def connect(self, outqueue: Any, pickler: type[pickle.Pickler]) -> None:
        """Wire to the pool's stdlib result queue (for its sentinels) and set the task pickler."""
        self._stdlib_results = outqueue._reader
        self._selector.register(self._stdlib_results, selectors.EVENT_READ)
        self._pickler = pickler

    def attach(self, taskqueue: Any) -> None:
        """Give the dispatcher the pool's task queue, to ask the task handler to resend."""
        self._taskqueue = taskqueue

    # -- workers ------------------------------------------------------------

    def start_worker(
        self, ctx: Any, initializer: Any, initargs: tuple[Any, ...], maxtasks: int | None
    ) -> Any:
        """A new, unstarted worker process on a channel of its own."""
        if self.broken is not None:
            return _NeverStarted()
        tasks_r, tasks_w = multiprocessing.connection.Pipe(duplex=False)
        results_r, results_w = multiprocessing.connection.Pipe(duplex=False)
        parent_ends.update((tasks_w, results_r))
        process = None

        def started() -> None:
            tasks_r.close()
            results_w.close()
            worker = _Worker(process, tasks_w, results_r)
            with self._cond:
                self._workers[results_r] = worker
                self._joining.append(worker)
                self._cond.notify_all()
            self._wake()

        process = new_worker_process(
            ctx,
            self._run_worker,
            (tasks_r, results_w, initializer, initargs, maxtasks, self._fallback),
            started,
        )
        return process

    def _wake(self) -> None:
        # At most one wake message in the pipe: a flood of wakes (thousands of
        # calls submitted from a callback, on the result thread itself) must
        # not fill it and block the one thread that empties it.
        if not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(OSError):
                self._wake_w.send_bytes(b"")

    # -- task-handler thread -----------------------------------------------

    def put(self, task: Any) -> None:
        """Send one stdlib task tuple to a worker; ``None`` stops the workers."""
        if task is None:
            self._stop_workers()
            return
        if task is _REQUEUE:
            self._flush_requeue()
            return
        if self.broken is not None:
            raise self.broken
        if task[0] in self._cancelled:
            self._cancelled.discard(task[0])
            return
        frame = encode_task(task, self._pickler, self._fallback)
        self._flush_requeue()
        self._send(task[0], task[1], frame)

    def _flush_requeue(self) -> None:
        while self._requeue:
            with self._cond:
                if not self._requeue:
                    return
                job, index, frame, _ = self._requeue.popleft()
            try:
                self._send(job, index, frame)
            except InitializerError as broken:
                # The task handler calls this for its own marker too, which
                # must not raise: the popped task fails through get().
                self._ready.append((job, index, (False, broken)))
                self._wake()

    def _send(self, job: int, index: int, frame: bytes) -> None:
        maxtasks = self._maxtasks
        with self._cond:
            while True:
                # Set before looking for room: get() frees room without the
                # lock, and wakes this thread only if it sees the flag.
                self._sender_waiting = True
                if self._aborted or self.broken is not None:
                    self._sender_waiting = False
                    if self.broken is not None:
                        raise self.broken
                    return
                worker = None
                least = MAX_DEPTH
                for candidate in self._workers.values():
                    queued = len(candidate.inflight)
                    if (
                        queued < candidate.depth
                        and queued < least
                        and candidate.kill_reason is None
                        and (maxtasks is None or candidate.sent < maxtasks)
                    ):
                        worker, least = candidate, queued
                if worker is not None:
                    break
                self._cond.wait()
            self._sender_waiting = False
            runs_now = not worker.inflight
            worker.inflight.append((job, index, frame, time.monotonic()))
            worker.sent += 1
            self.frames_written += 1
            self.bytes_written += len(frame)
            stats = self._job_stats.get(job)
            if stats is not None:
                stats.task_sent(len(frame))
        with worker.send_lock:
            pending = worker.pending
            if (
                len(frame) <= _BATCH_FRAME_MAX
                and worker.pipe_size
                # written() - 1: this frame is held, neither written nor batched yet
                and (pending or worker.written() - 1 >= _BATCH_LOW)
            ):
                # The worker has work queued: batch this frame with the next
                # ones, so that many tasks cost one system call and one wake-up.
                pending.append(frame)
                if len(pending) >= _BATCH_FRAMES:
                    self._flush(worker)
            else:
                if pending:
                    self._flush(worker)
                self._write(worker, [frame])
            if worker.needs_flush():
                self._flush(worker)
        if worker.flush_wanted:
            with worker.send_lock:
                worker.flush_wanted = False
                if worker.needs_flush():
                    self._flush(worker)
        if runs_now and job in self._job_timeouts:
            self._wake()  # the result thread must now wait with this task's deadline

    def _write(self, worker: _Worker, frames: list[bytes]) -> None:
        """Write ``frames`` to the worker's tasks pipe; the caller holds its ``send_lock``.

        Small frames go in one system call.  If the worker is gone, the frames
        not written whole count as undelivered (get() resends them), and the
        bytes of a partly written one as stranded.
        """
        sizes = []
        parts: list[bytes] = []
        for frame in frames:
            prefix = _length_prefix(len(frame))
            sizes.append(len(prefix) + len(frame))
            parts += (prefix, frame)
        if len(frames) > 1 or len(frames[0]) <= _JOIN_MAX:
            parts = [b"".join(parts)]
        self.writes += 1
        written = 0
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    count = os.write(worker.tasks.fileno(), view)
                    written += count
                    view = view[count:]
        except OSError:
            whole = 0
            for size in sizes:
                if written < size:
                    break
                written -= size
                whole += 1
            worker.undelivered += len(frames) - whole
            worker.stranded += written

    def _flush(self, worker: _Worker) -> None:
        """Write the worker's batched frames; the caller holds its ``send_lock``."""
        frames = worker.pending[:]
        worker.pending.clear()
        self._write(worker, frames)

    def _flush_for_result_thread(self, worker: _Worker) -> None:
        # The worker is running low on written tasks: write its batched ones.
        # Never blocks, or the task thread (blocked writing to a full pipe)
        # and this thread (which empties the worker's results pipe) could wait
        # on each other: the lock is only tried (the task thread then flushes,
        # seeing flush_wanted), and the frames are written only if they fit in
        # the pipe whole.
        worker.flush_wanted = True
        if not worker.send_lock.acquire(blocking=False):
            return
        try:
            worker.flush_wanted = False
            if not worker.needs_flush():
                return
            size = sum(len(frame) + 4 for frame in worker.pending)
            if _unread_bytes(worker.tasks) + size <= worker.pipe_size:
                self._flush(worker)
        finally:
            worker.send_lock.release()

    def _stop_workers(self) -> None:
        with self._cond:
            workers = list(self._workers.values())
        for worker in workers:
            with worker.send_lock:
                if worker.pending:
                    self._flush(worker)
                with contextlib.suppress(OSError):
                    worker.tasks.send_bytes(STOP)

    def abort(self) -> None:
        """Stop sending: the pool is terminating (wakes a blocked ``put``)."""
        with self._cond:
            self._aborted = True
            self._requeue.clear()
            self._cond.notify_all()

    # -- result-handler thread ---------------------------------------------

    def get(self) -> Any:
        """The next ``(job, index, (ok, value))`` for the pool, or a stdlib sentinel."""
        while not self._ready:
            timeout = self._seconds_to_next_deadline()
            if self._dying:
                timeout = min(timeout or _REAP_POLL, _REAP_POLL)
            events = self._selector.select(timeout)
            if self._dying:
                self._report_reaped()
            if not events:
                self._kill_overdue()
            for key, _ in events:
                conn, data = key.fileobj, key.data
                if type(data) is _Worker:
                    self._receive(data)
                elif conn is self._stdlib_results:
                    self._ready.append(pickle.loads(conn.recv_bytes()))
                else:
                    self._wake_pending = False  # before reading: a later wake writes again
                    conn.recv_bytes()  # type: ignore[union-attr]
                    with self._cond:
                        joining, self._joining = self._joining, []
                    for worker in joining:
                        self._selector.register(worker.results, selectors.EVENT_READ, worker)
        return self._ready.popleft()

    def _receive(self, worker: _Worker) -> None:
        # Whatever the pipe holds, every whole frame in it handled in turn: a
        # worker that got ahead of this thread costs one read for many results.
        try:
            frames = worker.reader.read()
        except (EOFError, OSError):
            self._worker_ended(worker)
            return
        for frame in frames:
            self._handle(worker, frame)

    def _handle(self, worker: _Worker, data: bytes) -> None:
        job, index = HEADER.unpack_from(data)
        if job == WORKER_READY:
            worker.ready = True
            worker.last_result = time.monotonic()
            return
        if job == INITIALIZER_FAILED:
            self._initializer_failed(decode_result(data)[2][1])
            return
        stats = self._job_stats.get(job)
        inflight = worker.inflight
        if stats is not None and inflight:
            started = max(inflight[0][3], worker.last_result)
            stats.task_done(index, time.monotonic() - started)
        worker.result_arrived()
        # Only this thread removes from inflight, and deque operations are
        # atomic: the lock is needed only to wake a waiting sender.
        inflight = worker.inflight
        if not (inflight and inflight[0][0] == job and inflight[0][1] == index):
            return  # already settled otherwise (its worker was written off)
        inflight.popleft()
        worker.received += 1
        if worker.needs_flush():
            self._flush_for_result_thread(worker)
        self._cancelled.discard(job)  # its one task is back: nothing more to skip
        if self._sender_waiting and len(inflight) <= worker.depth // 2:
            with self._cond:
                self._cond.notify()
        self._ready.append(decode_result(data))

    def _worker_ended(self, worker: _Worker) -> None:
        self._selector.unregister(worker.results)
        with self._cond:
            self._workers.pop(worker.results, None)
            held = list(worker.inflight)
            worker.inflight.clear()
            self._cond.notify_all()
        cancelled_before = set(self._cancelled)
        with worker.send_lock:  # no send to it is under way any more
            unread = _unread_bytes(worker.tasks) - worker.stranded
            delivered = len(held) - worker.undelivered - len(worker.pending)
            worker.pending.clear()
            worker.tasks.close()
        worker.results.close()
        # Delivered tasks whose bytes are still in the pipe never started; so
        # did one partly read (a worker killed in read() may return first).
        never_read = 0
        for _, _, frame, _ in reversed(held[:delivered]):
            if unread <= 0:
                break
            unread -= len(_length_prefix(len(frame))) + len(frame)
            never_read += 1
        if delivered - never_read > 0:  # the oldest was running
            job, index, *_ = held.pop(0)
            self._cancelled.discard(job)
            # Its pipes close before it can be reaped: report it once the
            # pool's worker handler has reaped it and its exit code is known.
            self._dying.append((worker, job, index, time.monotonic() + _REAP_WAIT))
        for entry in held:
            self._cancelled.discard(entry[0])  # dropped here rather than resent
        held = [entry for entry in held if entry[0] not in cancelled_before]
        if held:
            with self._cond:
                self._requeue.extendleft(reversed(held))
            if self._taskqueue is not None:
                self._taskqueue.put(([_REQUEUE], None))

    def _report_reaped(self) -> None:
        now = time.monotonic()
        for entry in list(self._dying):
            worker, job, index, give_up_at = entry
            exitcode = reaped_exitcode(worker.process)
            if exitcode is None and now < give_up_at:
                continue
            self._dying.remove(entry)
            if worker.kill_reason is not None and worker.kill_reason[:2] == (job, index):
                error = worker.kill_reason[2]
            else:
                error = WorkerLostError(
                    f"worker process {worker.process.pid} {_describe_exit(exitcode)} while "
                    f"running task {index} of job {job}; the pool has replaced it"
                )
            self._ready.append((job, index, (False, error)))

    def _initializer_failed(self, error: BaseException) -> None:
        broken = InitializerError(
            f"the pool's initializer raised in a worker, so the pool cannot run tasks: {error}"
        )
        broken.__cause__ = error
        with self._cond:
            self.broken = broken
            # Tasks waiting to be resent, and those held by workers that have
            # not started (theirs will not run); ready workers finish theirs.
            held = list(self._requeue)
            self._requeue.clear()
            for worker in self._workers.values():
                if not worker.ready:
                    held.extend(worker.inflight)
                    worker.inflight.clear()
            self._cond.notify_all()
        for job, index, *_ in held:
            self._ready.append((job, index, (False, broken)))

    # -- timeouts -------------------------------------------------------------

    def job_started(self, job: int, task_timeout: float | None, stats: StatsCollector) -> None:
        """Caller's thread, before the job's tasks are queued: its timeout and statistics."""
        self._job_stats[job] = stats
        timeout = task_timeout if task_timeout is not None else self._default_timeout
        if timeout is not None:
            with self._cond:
                self._job_timeouts[job] = timeout
            self._wake()  # the result thread may be waiting without a deadline

    def job_done(self, job: int) -> None:
        stats = self._job_stats.pop(job, None)
        if stats is not None:
            stats.finish()
        if self._job_timeouts:
            with self._cond:
                self._job_timeouts.pop(job, None)

    def _running(self) -> list[tuple[_Worker, int, int, float]]:
        # (worker, job, index, deadline) for each task running under a timeout
        found: list[tuple[_Worker, int, int, float]] = []
        with self._cond:
            if not self._job_timeouts:
                return found
            for worker in self._workers.values():
                if worker.inflight and worker.ready:
                    job, index, _, sent_at = worker.inflight[0]
                    timeout = self._job_timeouts.get(job)
                    if timeout is not None:
                        started = max(sent_at, worker.last_result)
                        found.append((worker, job, index, started + timeout))
        return found

    def _seconds_to_next_deadline(self) -> float | None:
        deadlines = [deadline for *_, deadline in self._running()]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic()) + 0.001

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for worker, job, index, deadline in self._running():
            if deadline <= now and worker.kill_reason is None:
                timeout = self._job_timeouts.get(job)
                worker.kill_reason = (
                    job,
                    index,
                    TaskTimeoutError(
                        f"task {index} of job {job} ran longer than its task_timeout of "
                        f"{timeout} s; its worker (pid {worker.process.pid}) was killed and "
                        "replaced"
                    ),
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGKILL)

    # -- cancellation ----------------------------------------------------------

    def cancel(self, job: int, error: BaseException) -> None:
        """Fail the single-task ``job`` with ``error`` now.

        Not yet sent to a worker: it never runs.  Running: its worker is
        killed and replaced.  Sent but waiting behind another task in a
        worker: it may still run, and its result is dropped.
        """
        with self._cond:
            self._cancelled.add(job)
            for worker in self._workers.values():
                if worker.inflight and worker.inflight[0][0] == job and worker.kill_reason is None:
                    worker.kill_reason = (job, worker.inflight[0][1], error)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.process.pid, signal.SIGKILL)
        self._ready.append((job, 0, (False, error)))
        self._wake()

    def close(self) -> None:
        """Close the parent's ends of every channel (the pool has stopped)."""
        with self._cond:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            worker.tasks.close()
            worker.results.close()
