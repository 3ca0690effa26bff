"""Running cases: time-boxed, with deadlines, always cleaned up.

Every case runs in this process, in the main thread (joblib refuses to start
workers from any other thread).  A call that overruns its deadline is
interrupted by ``SIGALRM``; the case is then recorded as failed, its pool is
closed under a deadline of its own, and if that fails too, every process that
appeared below this one during the case is killed by pid.  Nothing a peer does
can stall the run for longer than the deadlines below.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType

from .systems import PipeCounters, System
from .workloads import Workload, drain_pipe, increment

START_DEADLINE = 10.0
"""Seconds allowed for starting a pool (and, in start-up cases, its first result)."""
CALL_DEADLINE = 20.0
"""Seconds allowed for one map or imap call."""
CLOSE_DEADLINE = 5.0
MAX_REPEAT = 9
"""Most timed calls of a throughput case (short calls repeat beyond ``Settings.repeat``)."""
"""Seconds allowed for shutting a pool down before its processes are killed."""

NOT_INSTALLED = "not installed"
"""``Result.error`` of a system whose package is missing."""
UNSUPPORTED = "no such start method"
"""``Result.error`` of a start-up case the system declares it cannot run."""


@dataclass(frozen=True)
class Settings:
    """How much to run: ``repeat`` timed calls per throughput case,
    ``startup_repeat`` fresh pools per start-up case (each takes only tens of
    milliseconds, and varies more), ``box`` seconds per time-boxed call,
    ``item_scale`` times each workload's item count."""

    workers: int = 2
    repeat: int = 3
    startup_repeat: int = 7
    box: float = 1.0
    item_scale: float = 1.0


@dataclass
class Result:
    """One case: a system (or ``"Pipe"``) on a workload.

    ``samples`` hold one value per timed repeat, in ``unit``; ``items`` is the
    item count of each timed call; ``error`` says why the case failed or was
    not run (``samples`` may hold values taken before a failure);
    ``counters`` is MethodPool's task-pipe traffic during the last timed call.
    """

    system: str
    workload: str
    unit: str
    samples: list[float] = field(default_factory=list)
    items: int = 0
    error: str | None = None
    counters: PipeCounters | None = None

    @property
    def median(self) -> float | None:
        """The median of ``samples``, or ``None`` without samples."""
        return statistics.median(self.samples) if self.samples else None


class DeadlineExceeded(BaseException):
    """Raised in the main thread when a deadline passes.

    A ``BaseException``, like ``KeyboardInterrupt``, so that a library's
    ``except Exception`` does not swallow it.
    """


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`DeadlineExceeded` if the block runs longer than ``seconds``."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise DeadlineExceeded(f"{what} took over {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def describe_error(exc: BaseException) -> str:
    """``"Type: first line of the message"``, at most 100 characters."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 100 else text[:99] + "…"


def descendant_pids() -> set[int]:
    """Pids of every process below this one (Linux: read from ``/proc``)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                # The command name (field 2) may hold spaces: split after its ")".
                ppid = int(stat.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [os.getpid()]
    while stack:
        for child in parents.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def kill_new_processes(before: set[int]) -> None:
    """SIGKILL every process below this one that is not in ``before``."""
    for pid in descendant_pids() - before:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def pool_case(system: System, result: Result) -> Iterator[None]:
    """Run the block, then close ``system``, whatever happened.

    An exception or overrun in the block becomes ``result.error`` (the block is
    abandoned).  A close that fails or overruns is recorded too, and then every
    process started since the block began is killed.
    """
    before = descendant_pids()
    try:
        yield
    except (Exception, DeadlineExceeded) as exc:
        result.error = describe_error(exc)
    try:
        with deadline(CLOSE_DEADLINE, "close"):
            system.close()
    except (Exception, DeadlineExceeded) as exc:
        closing = f"close: {describe_error(exc)}"
        result.error = f"{result.error}; then {closing}" if result.error else closing
        kill_new_processes(before)


def _check(results: list[int], n_items: int) -> None:
    if len(results) != n_items or (n_items and results[-1] != n_items):
        raise RuntimeError(f"wrong results: got {len(results)} items, expected {n_items}")


def _timed(call: Callable[[int], None], n_items: int, what: str) -> float:
    with deadline(CALL_DEADLINE, what):
        start = time.perf_counter()
        call(n_items)
        return time.perf_counter() - start


def _items_within_box(call: Callable[[int], None], max_items: int, box: float, what: str) -> int:
    # Probe with growing item counts until a call takes an eighth of the box
    # and 1.5 times as long as the probe before (confirmed by a second timing):
    # the per-item cost then shows through any fixed cost per call (map's
    # chunks, serializing the callable).  Fit time = fixed + items * per_item
    # to these two probes and size the timed calls to take `box`, within
    # [smaller probe, max_items].  The count grows 16-fold while the time stays
    # flat (fixed cost dominates), else 4-fold, or 2-fold once a probe takes a
    # quarter of the box.  The first probe has 8 items: from there on, map
    # makes 8 chunks for 2 workers.
    n_items = 8
    elapsed = _timed(call, n_items, what)
    flat = False
    while True:
        if n_items >= max_items:
            return max_items
        if elapsed >= 2 * box:
            return n_items
        growth = 16 if flat else 2 if elapsed >= box / 4 else 4
        last_items, last = n_items, elapsed
        n_items = min(max_items, n_items * growth)
        elapsed = _timed(call, n_items, what)
        if elapsed >= 1.5 * last and elapsed >= box / 8:
            # Noise on a busy machine only ever adds time: take the faster.
            elapsed = min(elapsed, _timed(call, n_items, what))
            if elapsed >= 1.5 * last:
                break
        flat = elapsed < 1.5 * last
    per_item = (elapsed - last) / (n_items - last_items)
    fixed = max(0.0, elapsed - per_item * n_items)
    return min(max_items, max(last_items, int((box - fixed) / per_item)))


def run_throughput(system: System, workload: Workload, settings: Settings) -> Result:
    """Tasks/s of ``system`` on ``workload``: the median of at least
    ``settings.repeat`` timed calls, more (up to :data:`MAX_REPEAT`) while
    they add up to less than two time boxes.

    Workers start with fork where the system accepts a start method, else the
    library's own way.  One pool serves the whole case: an untimed warm-up call
    (one item per worker), untimed probes that size the calls to about
    ``settings.box`` seconds (at most ``workload.max_items`` items), then the
    timed calls.
    """
    result = Result(system.name, workload.name, "tasks/s")
    if system.missing():
        result.error = NOT_INSTALLED
        return result
    if workload.call == "submit" and not system.submits:
        result.error = UNSUPPORTED  # shown as "not supported", as a start method is
        return result
    task = workload.make_task()
    max_items = max(8, int(workload.max_items * settings.item_scale))
    what = f"{workload.call} on {system.name}"

    def call(n_items: int) -> None:
        items = list(range(n_items))
        if workload.call == "map":
            results = system.map(task, items)
        elif workload.call == "submit":
            results = system.submit_each(task, items)
        else:
            results = list(system.imap(task, items, chunksize=1))
        _check(results, n_items)

    with pool_case(system, result):
        with deadline(START_DEADLINE, f"starting {system.name}"):
            system.start(settings.workers, "fork" if "fork" in system.start_methods else None)
        _timed(call, settings.workers, what)
        n_items = _items_within_box(call, max_items, settings.box, what)
        result.items = n_items
        # At least `repeat` calls; calls shorter than the box (the workload's
        # item count runs out first: the fastest systems) repeat until about
        # two boxes are measured, so that their median is as steady as the rest.
        measured = 0.0
        while len(result.samples) < settings.repeat or (
            measured < 2 * settings.box and len(result.samples) < MAX_REPEAT
        ):
            before = system.task_pipe_counters()
            elapsed = _timed(call, n_items, what)
            after = system.task_pipe_counters()
            measured += elapsed
            result.samples.append(n_items / elapsed)
            if before is not None and after is not None:
                result.counters = after - before
    return result


def run_startup(system: System, start_method: str, settings: Settings) -> Result:
    """Seconds from creating the pool to the first result of a trivial task.

    A fresh pool per repeat (``settings.startup_repeat`` of them); closing
    it is not timed.
    """
    result = Result(system.name, f"startup/{start_method}", "s")
    if system.missing():
        result.error = NOT_INSTALLED
        return result
    if start_method not in system.start_methods:
        result.error = UNSUPPORTED
        return result
    for _ in range(settings.startup_repeat):
        with pool_case(system, result):
            with deadline(START_DEADLINE, f"starting {system.name}"):
                start = time.perf_counter()
                system.start(settings.workers, start_method)
                results = system.map(increment, [0])
                elapsed = time.perf_counter() - start
            _check(results, 1)
            result.samples.append(elapsed)
        if result.error:
            break
    return result


def run_pipe(workload: str, message_bytes: int, settings: Settings) -> Result:
    """Messages/s one way through a ``multiprocessing.Pipe`` to a forked reader.

    The writer sends ``message_bytes``-byte messages for ``settings.box``
    seconds; the clock stops when the reader has confirmed how many it got.
    """
    result = Result("Pipe", workload, "messages/s")
    context = multiprocessing.get_context("fork")
    message = bytes(message_bytes)
    # Look at the clock about every 100 kB sent.
    batch = max(1, 100_000 // message_bytes)
    for _ in range(settings.repeat):
        reader, writer = context.Pipe(duplex=False)
        ack_reader, ack_writer = context.Pipe(duplex=False)
        process = context.Process(target=drain_pipe, args=(reader, ack_writer))
        process.start()
        reader.close()
        ack_writer.close()
        try:
            with deadline(settings.box + CALL_DEADLINE, f"{workload} reference"):
                start = time.perf_counter()
                stop = start + settings.box
                sent = 0
                while time.perf_counter() < stop:
                    for _ in range(batch):
                        writer.send_bytes(message)
                    sent += batch
                writer.send_bytes(b"")
                received = ack_reader.recv()
                elapsed = time.perf_counter() - start
            if received != sent:
                raise RuntimeError(f"the reader got {received} of {sent} messages")
            result.samples.append(received / elapsed)
            result.items = received
        except (Exception, DeadlineExceeded) as exc:
            result.error = describe_error(exc)
            process.kill()
        finally:
            writer.close()
            ack_reader.close()
            process.join()
        if result.error:
            break
    return result


def log(result: Result, seconds: float) -> None:
    """One progress line on stderr; ``seconds`` is how long the case took."""
    median = result.median
    value = f"{median:10.4g} {result.unit:<10}" if median is not None else " " * 21
    print(
        f"{seconds:5.1f}s {result.workload:<18} {result.system:<23} {value} {result.error or ''}",
        file=sys.stderr,
        flush=True,
    )
