"""The dispatcher: the pool's handler threads' way to the workers' channels.

``put`` (the task-handler thread) frames a task and writes it to a worker's
channel; ``get`` (the result-handler thread) waits on every channel and
hands the pool each outcome.  Where this sits in the data flow is pictured
in :mod:`methodpool._pool`.

What happens to the tasks of a worker that is gone, to overdue and to
cancelled tasks, is the ledger's (:mod:`._ledger`); how frames are written
and read, the channel's (:mod:`._channel`).  This module is the policy:

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
the ones after it (one write for up to :data:`BATCH_FRAMES`, and at most the
channel's ``batch_bytes``: what it can always take once the worker has
taken the rest, so that the result thread can write any batch in the end;
a channel that cannot say so does not batch); the batch goes
out when it is full, when a big frame must follow it, when the pool stops
the workers, or as soon as the worker runs low, which the result thread
sees (it writes the batch itself if it fits in the pipe, else leaves it to
the task thread: it must never block on a worker's pipe).  Results are read
a pipe-full at a time, every whole frame in it handled in turn.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing.connection
import pickle
import selectors
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any

from .._backend import new_worker_process
from .._errors import InitializerError, WorkerStartError
from .._serializers import Serializer
from .._startup import counts_as_start_failure, explain_start_failure
from ._channel import Channel, parent_ends
from ._ledger import InFlight, Ledger, WorkerState
from ._platform import TRANSPORT, Transport
from ._wire import (
    HEADER,
    INITIALIZER_FAILED,
    WORKER_READY,
    Result,
    decode_result,
    encode_task,
)

if TYPE_CHECKING:
    from .._stats import PoolCounters, StatsCollector
    from ._buffers import TaskSegments

MIN_DEPTH = 2
MAX_DEPTH = 256
QUEUED_SECONDS = 0.02
# Batching: a frame of at most BATCH_FRAME_MAX bytes, for a worker that
# still has BATCH_LOW tasks written to its pipe and not done, waits to be
# written with others: up to BATCH_FRAMES at once, or as soon as the worker
# gets low.
BATCH_LOW = 4
BATCH_FRAMES = 32
BATCH_FRAME_MAX = 1024
# How often to look for a dead worker's exit code while one is awaited.
_REAP_POLL = 0.005
_REQUEUE = ("requeue",)  # put on the pool's task queue to make the task handler resend
_STDLIB_RESULTS = "stdlib results"  # selector data of the pool's own result queue


class _Worker(WorkerState):
    """The dispatcher's view of one worker: the ledger's, plus its pace and its batch."""

    __slots__ = (
        "depth",
        "flush_wanted",
        "pending",
        "pending_bytes",
        "send_lock",
        "service_time",
        "undelivered",
    )

    def __init__(self, process: Any, channel: Channel) -> None:
        super().__init__(process, channel)
        self.send_lock = threading.Lock()
        # Frames of the newest entries of inflight, batched, not written yet.
        self.pending: list[bytes] = []
        self.pending_bytes = 0  # what they take on the pipe
        self.flush_wanted = False  # the result thread could not flush them
        self.undelivered = 0  # sends that failed: the newest written entries of inflight
        self.depth = MIN_DEPTH
        self.service_time = math.inf  # moving average of the time between results

    def written(self) -> int:
        """Tasks written to its pipe and not done yet (held, less the batched ones)."""
        return len(self.inflight) - len(self.pending)

    def needs_flush(self) -> bool:
        """Whether its batched frames must go out now: it is running low on written tasks."""
        return bool(self.pending) and self.written() < BATCH_LOW

    def paced(self, elapsed: float) -> None:
        """A result came ``elapsed`` seconds after the previous one: update the depth."""
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


def _kill(workers: Sequence[WorkerState]) -> None:
    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()


class Dispatcher:
    """Parent side of the channels (see the module docstring).

    ``put`` runs in the pool's task-handler thread, ``get`` in its
    result-handler thread, ``start_worker`` in whichever thread starts
    workers; the pool registers each call's job with :meth:`job_started`.
    ``transport`` is how workers are reached: this system's
    (:data:`~._platform.TRANSPORT`) unless a test says otherwise.
    """

    def __init__(
        self,
        run_worker: Callable[..., None],
        fallback: Sequence[Serializer],
        maxtasks: int | None,
        task_timeout: float | None,
        counters: PoolCounters,
        skip_main: bool = False,
        transport: Transport = TRANSPORT,
        buffers: TaskSegments | None = None,
    ) -> None:
        self._run_worker = run_worker
        # The data plane (shared memory for big buffers), if the pool has one.
        self._buffers = buffers
        self._skip_main = skip_main
        self._transport = transport
        self._maxtasks = maxtasks
        self._fallback = tuple(fallback)
        self._counters = counters
        self._pickler: type[pickle.Pickler] = ForkingPickler
        self._start_method = "fork"  # known once a worker starts
        # Where the pool was created, if by the main module's own code.
        self.creation_site: tuple[str, int] | None = None
        self.ledger: Ledger[_Worker] = Ledger(
            task_timeout,
            self.explain_start_failure,
            lambda exitcode: counts_as_start_failure(self._start_method, exitcode),
        )
        ledger = self.ledger
        self._cond = ledger.cond
        self._ready = ledger.ready
        self._wake_r, self._wake_w = multiprocessing.connection.Pipe(duplex=False)
        parent_ends.update((self._wake_r, self._wake_w))
        # Owned by the result-handler thread; other threads hand it new workers
        # through _joining and wake it through the wake pipe.
        self._selector = transport.new_selector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._joining: list[_Worker] = []
        self._stdlib_results: Any = None
        self._taskqueue: Any = None
        self._aborted = False
        self._sender_waiting = False
        self._wake_pending = False

    @property
    def broken(self) -> InitializerError | WorkerStartError | None:
        """The error every call fails with once the initializer has raised, else ``None``."""
        return self.ledger.broken

    def connect(self, outqueue: Any, pickler: type[pickle.Pickler]) -> None:
        """Wire to the pool's stdlib result queue (for its sentinels) and set the task pickler."""
        self._stdlib_results = outqueue._reader
        self._selector.register(self._stdlib_results, selectors.EVENT_READ, _STDLIB_RESULTS)
        self._pickler = pickler

    def attach(self, taskqueue: Any) -> None:
        """Give the dispatcher the pool's task queue, to ask the task handler to resend."""
        self._taskqueue = taskqueue

    # -- workers ------------------------------------------------------------

    def start_worker(
        self, ctx: Any, initializer: Any, initargs: tuple[Any, ...], maxtasks: int | None
    ) -> Any:
        """A new, unstarted worker process on a channel of its own."""
        if self.ledger.broken is not None:
            return _NeverStarted()
        self._start_method = str(ctx.get_start_method())
        channel, ends = self._transport.open_channel()
        process = None

        def started() -> None:
            ends.tasks.close()
            ends.results.close()
            self.add_worker(process, channel)

        process = new_worker_process(
            ctx,
            self._run_worker,
            (
                ends.tasks,
                ends.results,
                initializer,
                initargs,
                maxtasks,
                self._fallback,
                ends.taken,
                self._buffers.worker_settings() if self._buffers is not None else None,
            ),
            started,
            self._skip_main,
        )
        return process

    def explain_start_failure(self, exitcode: int | None, how: str, head: str | None = None) -> str:
        """What :class:`~methodpool.WorkerStartError` says of workers that did not start."""
        return explain_start_failure(self._start_method, exitcode, how, self.creation_site, head)

    def add_worker(self, process: Any, channel: Channel) -> None:
        """Start sending tasks to a started worker ``process`` on ``channel``."""
        worker = _Worker(process, channel)
        with self._cond:
            self.ledger.workers[channel] = worker
            self._joining.append(worker)
            self._cond.notify_all()
        self._wake()

    def _wake(self) -> None:
        # At most one wake message in the pipe: a flood of wakes (thousands of
        # calls submitted from a callback, on the result thread itself) must
        # not fill it and block the one thread that empties it.  Not an empty
        # message: on Windows, connection.wait may consume one while it waits.
        if not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(OSError):
                self._wake_w.send_bytes(b"!")

    # -- jobs (caller's thread) ------------------------------------------------

    def job_started(self, job: int, task_timeout: float | None, stats: StatsCollector) -> None:
        """Before the job's tasks are queued: its timeout and statistics."""
        if self.ledger.job_started(job, task_timeout, stats):
            self._wake()  # the result thread may be waiting without a deadline

    def job_done(self, job: int) -> None:
        self.ledger.job_done(job)

    def cancel(self, job: int, error: BaseException) -> None:
        """Fail the single-task ``job`` with ``error`` now.

        Not yet sent to a worker: it never runs.  Running: its worker is
        killed and replaced.  Sent but waiting behind another task in a
        worker: it may still run, and its result is dropped.
        """
        _kill(self.ledger.cancel(job, error))
        self._wake()

    # -- task-handler thread -----------------------------------------------

    def put(self, task: Any) -> None:
        """Send one stdlib task tuple to a worker; ``None`` stops the workers."""
        if task is None:
            self._stop_workers()
            return
        if task is _REQUEUE:
            self._flush_requeue()
            return
        ledger = self.ledger
        if ledger.broken is not None:
            raise ledger.broken
        job, index = task[0], task[1]
        if job in ledger.cancelled:
            ledger.cancelled.discard(job)
            return
        frame = encode_task(task, self._pickler, self._fallback, self._buffers)
        self._flush_requeue()
        self._send(job, index, frame)

    def _flush_requeue(self) -> None:
        requeue = self.ledger.requeue
        while requeue:
            with self._cond:
                if not requeue:
                    return
                job, index, frame, _ = requeue.popleft()
            try:
                self._send(job, index, frame)
            except (InitializerError, WorkerStartError) as broken:
                # The task handler calls this for its own marker too, which
                # must not raise: the popped task fails through get().
                self._ready.append(Result(job, index, (False, broken)))
                self._wake()

    def _send(self, job: int, index: int, frame: bytes) -> None:
        ledger = self.ledger
        maxtasks = self._maxtasks
        with self._cond:
            while True:
                # Set before looking for room: get() frees room without the
                # lock, and wakes this thread only if it sees the flag.
                self._sender_waiting = True
                if self._aborted or ledger.broken is not None:
                    self._sender_waiting = False
                    if ledger.broken is not None:
                        raise ledger.broken
                    return
                # The least busy worker with room (inline: this runs per task).
                worker = None
                least = MAX_DEPTH
                for candidate in ledger.workers.values():
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
            # tuple.__new__: InFlight's own __new__ is Python code (per task).
            ledger.sent(worker, tuple.__new__(InFlight, (job, index, frame, time.monotonic())))
            counters = self._counters
            counters.frames_written += 1
            counters.bytes_written += len(frame)
        with worker.send_lock:
            pending = worker.pending
            # A frame this small takes its length and a 4-byte prefix on the
            # pipe (message_size() without the call: this runs per task).
            size = len(frame) + 4
            batch_bytes = worker.channel.batch_bytes
            if (
                size <= BATCH_FRAME_MAX + 4
                and size <= batch_bytes
                # written() - 1: this frame is held, neither written nor batched yet
                and (pending or worker.written() - 1 >= BATCH_LOW)
            ):
                # The worker has work queued: batch this frame with the next
                # ones, so that many tasks cost one system call and one wake-up.
                # A batch stays within what the result thread can always write.
                if worker.pending_bytes + size > batch_bytes:
                    self._flush(worker)
                pending.append(frame)
                worker.pending_bytes += size
                if len(pending) >= BATCH_FRAMES:
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
        if runs_now and ledger.has_timeout(job):
            self._wake()  # the result thread must now wait with this task's deadline

    def _write(self, worker: _Worker, frames: list[bytes]) -> None:
        """Write ``frames`` to the worker; the caller holds its ``send_lock``.

        If the worker is gone, the frames not written whole count as
        undelivered (get() resends them).
        """
        self._counters.writes += 1
        worker.undelivered += len(frames) - worker.channel.send(frames)

    def _flush(self, worker: _Worker) -> None:
        """Write the worker's batched frames; the caller holds its ``send_lock``."""
        frames = worker.pending[:]
        worker.pending.clear()
        worker.pending_bytes = 0
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
            if worker.channel.fits(worker.pending_bytes):
                self._flush(worker)
        finally:
            worker.send_lock.release()

    def _stop_workers(self) -> None:
        with self._cond:
            workers = list(self.ledger.workers.values())
        for worker in workers:
            with worker.send_lock:
                if worker.pending:
                    self._flush(worker)
                worker.channel.stop()

    def abort(self) -> None:
        """Stop sending: the pool is terminating (wakes a blocked ``put``)."""
        with self._cond:
            self._aborted = True
            self.ledger.requeue.clear()
            self._cond.notify_all()

    # -- result-handler thread ---------------------------------------------

    def get(self) -> Any:
        """The next ``(job, index, (ok, value))`` for the pool, or a stdlib sentinel."""
        ledger = self.ledger
        while not self._ready:
            timeout = ledger.seconds_to_next_deadline()
            reaping = ledger.dying or ledger.failed_starts
            if reaping:
                timeout = min(timeout or _REAP_POLL, _REAP_POLL)
            events = self._selector.select(timeout)
            if reaping:
                ledger.report_reaped()
            if not events:
                _kill(ledger.overdue())
            for key, _ in events:
                data = key.data
                if type(data) is _Worker:
                    self._receive(data)
                elif data is _STDLIB_RESULTS:
                    self._ready.append(pickle.loads(self._stdlib_results.recv_bytes()))
                else:
                    self._wake_pending = False  # before reading: a later wake writes again
                    self._wake_r.recv_bytes()
                    with self._cond:
                        joining, self._joining = self._joining, []
                    for worker in joining:
                        self._selector.register(worker.channel, selectors.EVENT_READ, worker)
        return self._ready.popleft()

    def _receive(self, worker: _Worker) -> None:
        # Whatever the pipe holds, every whole frame in it handled in turn: a
        # worker that got ahead of this thread costs one read for many results.
        try:
            frames = worker.channel.receive()
        except EOFError:
            self._worker_ended(worker)
            return
        for frame in frames:
            self._handle(worker, frame)

    def _handle(self, worker: _Worker, data: bytes) -> None:
        self._counters.bytes_read += len(data)
        job, index = HEADER.unpack_from(data)
        now = time.monotonic()
        if job == WORKER_READY:
            self.ledger.worker_ready(worker, now)
            return
        if job == INITIALIZER_FAILED:
            self.ledger.initializer_failed(decode_result(data).outcome[1])
            return
        elapsed = now - worker.last_result
        settled = self.ledger.settle(worker, job, index, now)
        worker.paced(elapsed)
        if not settled:
            return  # already settled otherwise (its worker was written off)
        if worker.needs_flush():
            self._flush_for_result_thread(worker)
        if self._sender_waiting and len(worker.inflight) <= worker.depth // 2:
            with self._cond:
                self._cond.notify()
        self._ready.append(decode_result(data, self._buffers))

    def _worker_ended(self, worker: _Worker) -> None:
        self._selector.unregister(worker.channel)
        held = self.ledger.remove(worker)
        with worker.send_lock:  # no send to it is under way any more
            delivered = len(held) - worker.undelivered - len(worker.pending)
            taken = delivered - worker.channel.untaken([entry.frame for entry in held[:delivered]])
            worker.pending.clear()
            worker.pending_bytes = 0
            worker.channel.close()
        if self._buffers is not None:
            self._buffers.worker_gone(worker.process.pid)
        # Its pipes close before it can be reaped: the ledger reports the task
        # it was running once the pool's worker handler has reaped it.
        if self.ledger.worker_lost(worker, held, taken) and self._taskqueue is not None:
            self._taskqueue.put(([_REQUEUE], None))

    def close(self) -> None:
        """Close the parent's ends of every channel (the pool has stopped)."""
        with self._cond:
            workers = list(self.ledger.workers.values())
            self.ledger.workers.clear()
        for worker in workers:
            worker.channel.close()
            if self._buffers is not None:
                self._buffers.worker_gone(worker.process.pid)
