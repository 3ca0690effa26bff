"""The dispatcher's ledger: which worker holds which task, and what became of it.

A worker runs its tasks in the order it receives them, so the oldest task a
worker holds is the one running (once the worker is ready).  A running task
started when it was sent or when its worker's previous result arrived (or
the worker said it was ready), whichever is later: timeouts count from
there, not from a new worker's start-up.

What the ledger decides, and nothing else: when a worker is gone, its
running task fails and the tasks it never took are resent (:meth:`Ledger.worker_lost`);
which running task is overdue (:meth:`Ledger.overdue`); what a cancelled job
skips (:meth:`Ledger.cancel`); when the pool is broken and what then fails
(:meth:`Ledger.break_pool`): the initializer raised, or workers keep
exiting before they are ready (:data:`~methodpool._startup.START_FAILURES_MAX`
in a row, with no worker becoming ready in between; one killed by SIGKILL or
SIGTERM while it starts does not count).
How tasks reach workers, and which worker gets one, is the dispatcher's.

Threads.  The task-handler thread adds entries, the result-handler thread
settles and removes them; ``cond`` guards the tables and wakes a sender
waiting for room.  Only the result thread removes from a worker's
``inflight``, and deque operations are atomic, so reading its oldest entry
needs no lock.
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from .._backend import reaped_exitcode
from .._errors import InitializerError, TaskTimeoutError, WorkerLostError, WorkerStartError
from .._startup import START_FAILURES_MAX
from ._wire import Result

if TYPE_CHECKING:  # workers never import this module, but keep it light anyway
    from .._stats import StatsCollector
    from ._channel import Channel

# How long to wait for a dead worker's exit code before reporting it without.
REAP_WAIT = 2.0


class InFlight(NamedTuple):
    """A task a worker holds: its frame (to resend it) and when it was sent."""

    job: int
    number: int  # the task's place in its job
    frame: bytes
    sent_at: float


class KillReason(NamedTuple):
    """Why the pool killed a worker: the task it was running fails with ``error``."""

    job: int
    number: int  # the task's place in its job
    error: BaseException


class Dying(NamedTuple):
    """A dead worker whose running task is reported once its exit code is known."""

    worker: WorkerState
    job: int
    number: int  # the task's place in its job
    give_up_at: float  # report it without an exit code after this time


class WorkerState:
    """The ledger's view of one worker: the tasks it holds, oldest (running) first."""

    __slots__ = ("channel", "inflight", "kill_reason", "last_result", "process", "ready", "sent")

    def __init__(self, process: Any, channel: Channel) -> None:
        self.process = process
        self.channel = channel
        self.inflight: collections.deque[InFlight] = collections.deque()
        self.sent = 0  # tasks sent to it, ever (maxtasksperchild)
        self.kill_reason: KillReason | None = None
        self.ready = False  # it has started up (and run the initializer)
        self.last_result = time.monotonic()


def describe_exit(exitcode: int | None) -> str:
    """How a process ended, for people: ``"was killed by SIGKILL"``."""
    if exitcode is None:
        return "closed its pipes"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


W = TypeVar("W", bound=WorkerState)


class Ledger(Generic[W]):
    """The tables of tasks in flight, per job and per worker (see the module docstring)."""

    def __init__(
        self,
        default_timeout: float | None,
        explain_start_failure: Callable[[int | None, str], str],
        counts_as_start_failure: Callable[[int | None], bool],
    ) -> None:
        self.cond = threading.Condition()
        self.workers: dict[Channel, W] = {}
        # Outcomes for the pool's result handler, in the order to deliver them.
        self.ready: collections.deque[Result] = collections.deque()
        # Tasks of dead workers, to send again before anything new.
        self.requeue: collections.deque[InFlight] = collections.deque()
        self.dying: list[Dying] = []
        # Workers that exited before they were ready: (worker, when to stop
        # waiting for its exit code, how many workers had become ready by
        # then); how many in a row, since a worker last became ready.
        self.failed_starts: list[tuple[WorkerState, float, int]] = []
        self._start_failures = 0
        self._readied = 0
        self._explain_start_failure = explain_start_failure
        self._counts_as_start_failure = counts_as_start_failure
        self.cancelled: set[int] = set()
        self.broken: InitializerError | WorkerStartError | None = None
        self._default_timeout = default_timeout
        self._timeouts: dict[int, float] = {}
        self._stats: dict[int, StatsCollector] = {}

    # -- jobs ------------------------------------------------------------------

    def job_started(self, job: int, task_timeout: float | None, stats: StatsCollector) -> bool:
        """Register a job's timeout and statistics; whether it has a timeout."""
        self._stats[job] = stats
        timeout = task_timeout if task_timeout is not None else self._default_timeout
        if timeout is None:
            return False
        with self.cond:
            self._timeouts[job] = timeout
        return True

    def job_done(self, job: int) -> None:
        stats = self._stats.pop(job, None)
        if stats is not None:
            stats.finish()
        if self._timeouts:
            with self.cond:
                self._timeouts.pop(job, None)

    def has_timeout(self, job: int) -> bool:
        return job in self._timeouts

    # -- tasks -----------------------------------------------------------------

    def sent(self, worker: WorkerState, entry: InFlight) -> None:
        """``worker`` now holds ``entry``; the caller holds ``cond``."""
        worker.inflight.append(entry)
        worker.sent += 1
        stats = self._stats.get(entry.job)
        if stats is not None:
            stats.task_sent(len(entry.frame))

    def settle(self, worker: WorkerState, job: int, index: int, now: float) -> bool:
        """A result for ``(job, index)`` came from ``worker``: whether it is the
        worker's running task (else it was settled otherwise, and is dropped)."""
        inflight = worker.inflight
        stats = self._stats.get(job)
        if stats is not None and inflight:
            stats.task_done(index, now - max(inflight[0].sent_at, worker.last_result))
        worker.last_result = now
        if not (inflight and inflight[0].job == job and inflight[0].number == index):
            return False
        inflight.popleft()
        self.cancelled.discard(job)  # its one task is back: nothing more to skip
        return True

    # -- workers ---------------------------------------------------------------

    def worker_ready(self, worker: WorkerState, now: float) -> None:
        """``worker`` has started up: it runs tasks, and timeouts count from now."""
        worker.ready = True
        worker.last_result = now
        self._readied += 1
        self._start_failures = 0

    # -- deaths ----------------------------------------------------------------

    def remove(self, worker: W) -> list[InFlight]:
        """Take ``worker`` out of the tables; the tasks it held, oldest first."""
        with self.cond:
            self.workers.pop(worker.channel, None)
            held = list(worker.inflight)
            worker.inflight.clear()
            self.cond.notify_all()
        return held

    def worker_lost(self, worker: WorkerState, held: list[InFlight], taken: int) -> bool:
        """``worker`` is gone, holding ``held``, of which it took the oldest
        ``taken``: the one it was running fails (once its exit code is known),
        the rest are to be resent.  Whether any are."""
        cancelled_before = set(self.cancelled)
        if not worker.ready and self.broken is None:
            self.failed_starts.append((worker, time.monotonic() + REAP_WAIT, self._readied))
        if taken > 0:  # the oldest was running
            running = held.pop(0)
            self.cancelled.discard(running.job)
            self.dying.append(
                Dying(worker, running.job, running.number, time.monotonic() + REAP_WAIT)
            )
        for entry in held:
            self.cancelled.discard(entry.job)  # dropped here rather than resent
        held = [entry for entry in held if entry.job not in cancelled_before]
        if not held:
            return False
        with self.cond:
            self.requeue.extendleft(reversed(held))
        return True

    def report_reaped(self) -> None:
        """Fail the running task of each dead worker whose exit code is known
        (or that has waited long enough for it); count the workers that never
        started, and break the pool when too many in a row did not."""
        now = time.monotonic()
        for failed in list(self.failed_starts):
            worker, give_up_at, readied = failed
            exitcode = reaped_exitcode(worker.process)
            if exitcode is None and now < give_up_at:
                continue
            self.failed_starts.remove(failed)
            if not self._counts_as_start_failure(exitcode):
                continue  # killed while it started (OOM, a user): not the script's fault
            if readied != self._readied:
                continue  # a worker became ready since it exited: the run is broken
            self._start_failures += 1
            if self._start_failures >= START_FAILURES_MAX and self.broken is None:
                message = self._explain_start_failure(exitcode, describe_exit(exitcode))
                self.break_pool(WorkerStartError(message))
        for entry in list(self.dying):
            worker, job, index, give_up_at = entry
            exitcode = reaped_exitcode(worker.process)
            if exitcode is None and now < give_up_at:
                continue
            self.dying.remove(entry)
            reason = worker.kill_reason
            if reason is not None and (reason.job, reason.number) == (job, index):
                error = reason.error
            else:
                error = WorkerLostError(
                    f"worker process {worker.process.pid} {describe_exit(exitcode)} while "
                    f"running task {index} of job {job}; the pool has replaced it"
                )
            self.ready.append(Result(job, index, (False, error)))

    def initializer_failed(self, error: BaseException) -> None:
        """The initializer raised in a worker: the pool is broken."""
        broken = InitializerError(
            f"the pool's initializer raised in a worker, so the pool cannot run tasks: {error}"
        )
        broken.__cause__ = error
        self.break_pool(broken)

    def break_pool(self, broken: InitializerError | WorkerStartError) -> None:
        """No task can run any more: every call fails with ``broken``.  Tasks
        waiting to be resent fail, and so do those held by workers that have
        not started (theirs will not run); ready workers finish theirs."""
        with self.cond:
            self.broken = broken
            held = list(self.requeue)
            self.requeue.clear()
            for worker in self.workers.values():
                if not worker.ready:
                    held.extend(worker.inflight)
                    worker.inflight.clear()
            self.cond.notify_all()
        for entry in held:
            self.ready.append(Result(entry.job, entry.number, (False, broken)))

    # -- timeouts --------------------------------------------------------------

    def _running(self) -> list[tuple[W, InFlight, float]]:
        # (worker, entry, deadline) for each task running under a timeout
        found: list[tuple[W, InFlight, float]] = []
        with self.cond:
            if not self._timeouts:
                return found
            for worker in self.workers.values():
                if worker.inflight and worker.ready:
                    entry = worker.inflight[0]
                    timeout = self._timeouts.get(entry.job)
                    if timeout is not None:
                        started = max(entry.sent_at, worker.last_result)
                        found.append((worker, entry, started + timeout))
        return found

    def seconds_to_next_deadline(self) -> float | None:
        """How long until the next running task is overdue (``None``: no deadline)."""
        deadlines = [deadline for *_, deadline in self._running()]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic()) + 0.001

    def overdue(self) -> list[W]:
        """Workers whose running task is overdue, newly so: each now has its
        ``kill_reason``; the caller kills them."""
        now = time.monotonic()
        found = []
        for worker, entry, deadline in self._running():
            if deadline <= now and worker.kill_reason is None:
                worker.kill_reason = KillReason(
                    entry.job,
                    entry.number,
                    TaskTimeoutError(
                        f"task {entry.number} of job {entry.job} ran longer than its "
                        f"task_timeout of {self._timeouts.get(entry.job)} s; its worker "
                        f"(pid {worker.process.pid}) was killed and replaced"
                    ),
                )
                found.append(worker)
        return found

    # -- cancellation ----------------------------------------------------------

    def cancel(self, job: int, error: BaseException) -> list[W]:
        """Fail the single-task ``job`` with ``error`` now; the workers running
        it, to be killed by the caller.  Not yet sent: it will be skipped.
        Sent but waiting behind another task in a worker: it may still run,
        and its result is dropped."""
        found = []
        with self.cond:
            self.cancelled.add(job)
            for worker in self.workers.values():
                if worker.inflight and worker.inflight[0].job == job and worker.kill_reason is None:
                    worker.kill_reason = KillReason(job, worker.inflight[0].number, error)
                    found.append(worker)
        self.ready.append(Result(job, 0, (False, error)))
        return found
