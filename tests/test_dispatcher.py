"""The dispatcher's policy and ledger on their own: scheduling, batching, deaths,
timeouts, cancellation, a broken initializer.

No worker processes: each worker is a :class:`MemoryChannel` that the test
drives by hand (take a task, answer it, die), so every step is exact.  Each
test runs once per transport (:mod:`methodpool._transport._platform`): the
dispatcher waits the way that transport waits, and the channels batch as
its channels do (Linux's up to the pipe's capacity, the portable one's in
512 bytes, Windows's not at all).
"""

from __future__ import annotations

import collections
import os
import pickle
import threading
import time
from concurrent.futures import CancelledError
from multiprocessing.reduction import ForkingPickler
from typing import Any, NamedTuple

import pytest

from methodpool import InitializerError, TaskTimeoutError, WorkerLostError, WorkerStartError
from methodpool._startup import START_FAILURES_MAX
from methodpool._stats import PoolCounters, StatsCollector
from methodpool._transport._channel import PORTABLE_CAPACITY
from methodpool._transport._dispatcher import (
    BATCH_FRAMES,
    BATCH_LOW,
    MIN_DEPTH,
    Dispatcher,
)
from methodpool._transport._platform import TRANSPORTS, Transport
from methodpool._transport._wire import (
    HEADER,
    INITIALIZER_FAILED,
    WORKER_READY,
    Task,
    encode_result,
    encode_task,
    message_size,
    split_task,
)


class _Popen:
    returncode: int | None = None


class FakeProcess:
    """What the dispatcher reads of a worker process: pid, exit code, kill()."""

    def __init__(self, channel: MemoryChannel) -> None:
        self.pid = 4242
        self._popen = _Popen()
        self._channel = channel
        self.killed = False

    def kill(self) -> None:
        self.killed = True
        self._channel.die(exitcode=-9)


class MemoryChannel:
    """A :class:`~methodpool._transport._channel.Channel` played by the test.

    Frames the dispatcher sends wait in ``tasks`` until the test ``take()``s
    them; ``answer()`` sends a result back; ``die()`` is the worker's death
    (end of file; it never took what is left in ``tasks``).
    """

    def __init__(self, capacity: int = 1 << 16, batch_bytes: int | None = None) -> None:
        self.batch_bytes = capacity if batch_bytes is None else batch_bytes
        self.capacity = capacity
        self.tasks: collections.deque[bytes] = collections.deque()
        self.sends: list[int] = []  # frames per send() call
        self.results: collections.deque[bytes] = collections.deque()
        self._bell_r, self._bell_w = os.pipe()
        self.alive = True
        self.stopped = False
        self.process = FakeProcess(self)

    # the worker's side, driven by the test

    def take(self) -> tuple[int, int]:
        job, index, _, _ = split_task(self.tasks.popleft())
        return job, index

    def answer(self, job: int, index: int, value: Any = None) -> None:
        self.results.append(encode_result(job, index, True, value, ()))
        os.write(self._bell_w, b"!")

    def ready(self) -> None:
        self.results.append(HEADER.pack(WORKER_READY, 0))
        os.write(self._bell_w, b"!")

    def die(self, exitcode: int = 1) -> None:
        if self.alive:
            self.alive = False
            self.process._popen.returncode = exitcode
            os.close(self._bell_w)

    # the Channel interface

    def fileno(self) -> int:
        return self._bell_r

    def send(self, frames: Any) -> int:
        if not self.alive:
            return 0
        self.sends.append(len(frames))
        self.tasks.extend(frames)
        return len(frames)

    def receive(self) -> list[bytes]:
        if not os.read(self._bell_r, 1 << 16) and not self.results:
            raise EOFError
        frames = list(self.results)
        self.results.clear()
        return frames

    def fits(self, nbytes: int) -> bool:
        return sum(message_size(len(frame)) for frame in self.tasks) + nbytes <= self.capacity

    def untaken(self, delivered: Any) -> int:
        return len(self.tasks)

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        os.close(self._bell_r)


class TaskQueue:
    """Stands in for the pool's task queue: records what the dispatcher asks to resend."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def put(self, item: Any) -> None:
        self.items.append(item)


def run_worker(*args: Any) -> None:  # never started: the tests add workers by hand
    raise AssertionError("no process is started in these tests")


class Flavour(NamedTuple):
    """A transport as the dispatcher meets it: how it waits, how its channels batch."""

    transport: Transport
    capacity: int  # of a channel's pipe (what fits() counts against)
    batch_bytes: int

    def channel(self) -> MemoryChannel:
        return MemoryChannel(self.capacity, self.batch_bytes)

    def dispatcher(self, maxtasks: int | None = None, task_timeout: float | None = None) -> Any:
        return Dispatcher(
            run_worker, (), maxtasks, task_timeout, PoolCounters(), transport=self.transport
        )


FLAVOURS = {
    "linux": Flavour(TRANSPORTS["linux"], 1 << 16, 1 << 16),
    "portable": Flavour(TRANSPORTS["portable"], PORTABLE_CAPACITY, PORTABLE_CAPACITY),
    "windows": Flavour(TRANSPORTS["windows"], 1 << 16, 0),
}


@pytest.fixture(params=sorted(FLAVOURS))
def flavour(request: pytest.FixtureRequest) -> Flavour:
    return FLAVOURS[request.param]


@pytest.fixture(params=["linux", "portable"])
def batching(request: pytest.FixtureRequest) -> Flavour:
    """The flavours whose channels batch."""
    return FLAVOURS[request.param]


def make(
    flavour: Flavour, workers: int = 1, task_timeout: float | None = None
) -> tuple[Dispatcher, list[Any]]:
    dispatcher = flavour.dispatcher(task_timeout=task_timeout)
    dispatcher.attach(TaskQueue())
    channels = []
    for _ in range(workers):
        channel = flavour.channel()
        dispatcher.add_worker(channel.process, channel)
        channels.append(channel)
    return dispatcher, channels


def job(dispatcher: Dispatcher, number: int, task_timeout: float | None = None) -> None:
    dispatcher.job_started(number, task_timeout, StatsCollector("test", None))


def put(dispatcher: Dispatcher, number: int, index: int, value: Any = 0) -> None:
    dispatcher.put((number, index, abs, (value,), {}))


def get(dispatcher: Dispatcher, timeout: float = 5.0) -> Any:
    """The dispatcher's next outcome, from a thread, so a hang fails the test."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(dispatcher.get()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert box, "get() did not return"
    return box[0]


# -- scheduling ------------------------------------------------------------------


def test_each_task_goes_to_the_least_busy_worker(flavour: Flavour) -> None:
    dispatcher, (a, b) = make(flavour, workers=2)
    job(dispatcher, 1)
    for index in range(4):
        put(dispatcher, 1, index)
    assert len(a.tasks) == len(b.tasks) == 2  # alternating, MIN_DEPTH each


def test_a_sender_waits_for_room_and_the_result_thread_wakes_it(flavour: Flavour) -> None:
    dispatcher, (worker,) = make(flavour)
    job(dispatcher, 1)
    for index in range(MIN_DEPTH):
        put(dispatcher, 1, index)
    blocked = threading.Thread(target=put, args=(dispatcher, 1, MIN_DEPTH), daemon=True)
    blocked.start()
    time.sleep(0.2)
    assert blocked.is_alive() and len(worker.tasks) == MIN_DEPTH, "sent beyond the depth"
    worker.answer(*worker.take())
    assert get(dispatcher).outcome == (True, None)
    blocked.join(5)
    assert not blocked.is_alive() and len(worker.tasks) == MIN_DEPTH


def test_maxtasks_caps_what_one_worker_is_sent(flavour: Flavour) -> None:
    dispatcher = flavour.dispatcher(maxtasks=2)
    a, b = flavour.channel(), flavour.channel()
    dispatcher.add_worker(a.process, a)
    job(dispatcher, 1)
    put(dispatcher, 1, 0)
    put(dispatcher, 1, 1)
    a.answer(*a.take())
    get(dispatcher)
    dispatcher.add_worker(b.process, b)
    put(dispatcher, 1, 2)  # a has room again, but has had its two
    assert [len(a.tasks), len(b.tasks)] == [1, 1]


# -- batching --------------------------------------------------------------------


def frames_per_batch(flavour: Flavour) -> int:
    """How many of put()'s frames (all of one size) a full batch holds."""
    frame = encode_task(Task(1, 0, abs, (0,), {}), ForkingPickler, ())
    return min(BATCH_FRAMES, flavour.batch_bytes // message_size(len(frame)))


def test_small_frames_for_a_busy_worker_travel_in_batches(batching: Flavour) -> None:
    dispatcher, (worker,) = make(batching)
    dispatcher.ledger.workers[worker].depth = 100
    job(dispatcher, 1)
    per_batch = frames_per_batch(batching)
    assert per_batch > 4  # a batch is worth having
    count = BATCH_LOW + per_batch + 3
    for index in range(count):
        put(dispatcher, 1, index)
    # Written one by one until the worker has BATCH_LOW queued; then batched,
    # a full batch (BATCH_FRAMES, or as many as the channel's batch_bytes
    # hold) written at once; the last few wait.
    assert worker.sends == [1] * BATCH_LOW + [per_batch]
    assert len(worker.tasks) == BATCH_LOW + per_batch
    counters = dispatcher._counters
    assert (counters.frames_written, counters.writes) == (count, BATCH_LOW + 1)
    # As the worker runs low, the result thread writes the rest itself.
    for _ in range(per_batch + 1):
        worker.answer(*worker.take())
        get(dispatcher)
    assert worker.sends[-1] == 3
    left = [worker.take()[1] for _ in range(len(worker.tasks))]
    assert left == list(range(count - 6, count))  # in order, none lost or doubled


def test_the_result_thread_never_writes_a_batch_that_does_not_fit(batching: Flavour) -> None:
    dispatcher, (worker,) = make(batching)
    dispatcher.ledger.workers[worker].depth = 100
    job(dispatcher, 1)
    for index in range(BATCH_LOW + 3):
        put(dispatcher, 1, index)
    assert worker.sends == [1] * BATCH_LOW  # three wait in the batch
    worker.capacity = 0  # the pipe is full
    worker.answer(*worker.take())
    get(dispatcher)
    assert worker.sends == [1] * BATCH_LOW, "the result thread wrote into a full pipe"
    dispatcher.ledger.workers[worker].depth = 100  # however slow that result seemed
    put(dispatcher, 1, BATCH_LOW + 3)  # the task thread writes them with the next one
    assert worker.sends[-1] == 4


def test_every_batched_frame_reaches_a_worker_that_takes_what_it_has(batching: Flavour) -> None:
    # The input has ended: the task thread writes nothing more, and the
    # result thread must be able to write the last batch, however small the
    # pipe it may count on (the portable channel's: 512 bytes), so a batch
    # must never grow beyond it.
    dispatcher, (worker,) = make(batching)
    worker.capacity = batching.batch_bytes
    dispatcher.ledger.workers[worker].depth = 300
    job(dispatcher, 1)
    count = BATCH_LOW + BATCH_FRAMES + 20  # 20 left in the last batch, were it unbounded
    for index in range(count):
        put(dispatcher, 1, index)
    done = []
    for _ in range(count):
        assert worker.tasks, f"the worker waits for a batch after {len(done)} tasks"
        worker.answer(*worker.take())
        done.append(get(dispatcher).number)
    assert done == list(range(count))


def test_frames_are_written_at_once_where_the_channel_does_not_batch() -> None:
    dispatcher, (worker,) = make(FLAVOURS["windows"])
    dispatcher.ledger.workers[worker].depth = 100
    job(dispatcher, 1)
    for index in range(BATCH_LOW + 10):
        put(dispatcher, 1, index)
    assert worker.sends == [1] * (BATCH_LOW + 10)


def test_stopping_the_workers_writes_their_batches_first(batching: Flavour) -> None:
    dispatcher, (worker,) = make(batching)
    dispatcher.ledger.workers[worker].depth = 100
    job(dispatcher, 1)
    for index in range(BATCH_LOW + 2):
        put(dispatcher, 1, index)
    dispatcher.put(None)
    assert worker.sends[-1] == 2 and worker.stopped


# -- deaths ----------------------------------------------------------------------


def test_a_dead_worker_fails_its_running_task_and_its_untaken_ones_are_resent(
    flavour: Flavour,
) -> None:
    dispatcher, (dying, other) = make(flavour, workers=2)
    dispatcher.ledger.workers[dying].depth = dispatcher.ledger.workers[other].depth = 3
    job(dispatcher, 1)
    for index in range(6):
        put(dispatcher, 1, index)
    running = dying.take()  # it runs one; two stay in its pipe
    dying.die(exitcode=-9)
    outcome = get(dispatcher)
    assert (outcome.job, outcome.number) == running
    ok, error = outcome.outcome
    assert not ok and isinstance(error, WorkerLostError)
    assert "was killed by SIGKILL" in str(error) and f"task {running[1]} of job 1" in str(error)
    assert dispatcher._taskqueue.items, "no resend was asked for"
    for _ in range(3):  # room on the other worker for the resent two
        other.answer(*other.take())
        get(dispatcher)
    (batch,) = dispatcher._taskqueue.items
    for marker in batch[0]:
        dispatcher.put(marker)
    resent = [other.take()[1] for _ in range(len(other.tasks))]
    assert running == (1, 0) and resent == [2, 4]


def test_a_worker_that_dies_before_taking_anything_fails_nothing(flavour: Flavour) -> None:
    dispatcher, (dying, other) = make(flavour, workers=2)
    job(dispatcher, 1)
    put(dispatcher, 1, 0)  # to the one that dies
    put(dispatcher, 1, 1)
    dying.die()
    # Nothing to report: the next outcome is the other worker's.
    other.answer(*other.take())
    assert get(dispatcher).outcome == (True, None)
    assert not dispatcher.ledger.dying
    (requeued,) = dispatcher.ledger.requeue
    assert requeued.number == 0 and dispatcher._taskqueue.items


def test_frames_a_dead_worker_never_received_are_resent(flavour: Flavour) -> None:
    dispatcher, (worker,) = make(flavour)
    job(dispatcher, 1)
    put(dispatcher, 1, 0)
    worker.alive = False  # gone, but its end of file not seen yet
    put(dispatcher, 1, 1)  # this send fails
    assert dispatcher.ledger.workers[worker].undelivered == 1
    running = worker.take()
    worker.alive = True
    worker.die()
    outcome = get(dispatcher)
    assert (outcome.job, outcome.number) == running and not outcome.outcome[0]
    (requeued,) = dispatcher.ledger.requeue
    assert requeued.number == 1


# -- timeouts and cancellation -----------------------------------------------------


def test_an_overdue_task_kills_its_worker_and_fails_with_task_timeout_error(
    flavour: Flavour,
) -> None:
    dispatcher, (worker,) = make(flavour)
    job(dispatcher, 1, task_timeout=0.1)
    worker.ready()
    put(dispatcher, 1, 0)
    worker.take()
    outcome = get(dispatcher)
    ok, error = outcome.outcome
    assert worker.process.killed
    assert not ok and isinstance(error, TaskTimeoutError)
    assert "task_timeout of 0.1 s" in str(error)


def test_timeouts_count_only_once_the_worker_is_ready(flavour: Flavour) -> None:
    dispatcher, (worker,) = make(flavour)
    job(dispatcher, 1, task_timeout=0.1)
    put(dispatcher, 1, 0)  # not ready: still starting up
    assert dispatcher.ledger.seconds_to_next_deadline() is None
    worker.ready()
    dispatcher._receive(dispatcher.ledger.workers[worker])
    deadline = dispatcher.ledger.seconds_to_next_deadline()
    assert deadline is not None and 0.05 < deadline <= 0.11


def test_cancelling_a_running_task_fails_it_at_once_and_kills_its_worker(flavour: Flavour) -> None:
    dispatcher, (worker,) = make(flavour)
    job(dispatcher, 7)
    put(dispatcher, 7, 0)
    worker.take()
    error = CancelledError("cancelled")
    dispatcher.cancel(7, error)
    assert worker.process.killed
    assert get(dispatcher).outcome == (False, error)
    # Its worker's death reports the kill reason, the cancellation, not a loss
    # (the result object keeps the first outcome).
    assert get(dispatcher).outcome == (False, error)


def test_a_cancelled_task_not_yet_sent_is_never_sent(flavour: Flavour) -> None:
    dispatcher, (worker,) = make(flavour)
    job(dispatcher, 7)
    dispatcher.cancel(7, CancelledError())
    put(dispatcher, 7, 0)
    assert not worker.tasks and not worker.process.killed


# -- workers that cannot start ------------------------------------------------------


def test_workers_exiting_before_they_are_ready_break_the_pool_after_two_in_a_row(
    flavour: Flavour,
) -> None:
    dispatcher, (killed, first) = make(flavour, workers=2)
    job(dispatcher, 1)
    put(dispatcher, 1, 0)  # to `killed`, which never gets to run it
    killed.die(exitcode=-9)  # killed from outside while it started: not counted
    first.die(exitcode=1)
    second = flavour.channel()
    dispatcher.add_worker(second.process, second)
    second.die(exitcode=1)
    ok, error = get(dispatcher).outcome  # the task waiting to be resent fails
    assert not ok and isinstance(error, WorkerStartError)
    assert error.args[0].startswith(f"{START_FAILURES_MAX} worker processes in a row exited")
    assert "exited with code 1" in error.args[0] and dispatcher.broken is error
    with pytest.raises(WorkerStartError):
        put(dispatcher, 1, 1)


def test_a_worker_that_becomes_ready_resets_the_count(flavour: Flavour) -> None:
    dispatcher, (failed, ready) = make(flavour, workers=2)
    failed.die(exitcode=1)
    ready.ready()
    get_briefly(dispatcher)
    later = flavour.channel()
    dispatcher.add_worker(later.process, later)
    later.die(exitcode=1)
    get_briefly(dispatcher)
    assert dispatcher.broken is None


def get_briefly(dispatcher: Dispatcher) -> None:
    """Let the result thread handle what has arrived (it returns no outcome)."""
    thread = threading.Thread(target=dispatcher.get, daemon=True)
    thread.start()
    thread.join(0.5)


# -- a broken initializer ------------------------------------------------------------


def test_a_failed_initializer_fails_what_cannot_run_and_breaks_the_pool(flavour: Flavour) -> None:
    dispatcher, (worker,) = make(flavour)
    job(dispatcher, 1)
    put(dispatcher, 1, 0)
    frame = encode_result(INITIALIZER_FAILED, 0, False, ValueError("no config"), ())
    worker.results.append(frame)
    os.write(worker._bell_w, b"!")
    ok, error = get(dispatcher).outcome
    assert not ok and isinstance(error, InitializerError)
    assert isinstance(error.__cause__, ValueError) and dispatcher.broken is error
    with pytest.raises(InitializerError):
        put(dispatcher, 1, 1)


def test_result_frames_name_the_task_they_answer() -> None:
    frame = encode_result(3, 5, True, [1, 2], ())
    assert HEADER.unpack_from(frame) == (3, 5)
    assert pickle.loads(frame[HEADER.size :]) == (True, [1, 2])
