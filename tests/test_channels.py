"""Channels on real pipes: messages read many at a time; which frames a worker
killed at a chosen moment never took; whether a batch fits.

Each channel flavour (:mod:`methodpool._transport._channel`) meets a real
``run_worker`` in a forked process, killed idle, stopped with frames queued,
mid-task, in the middle of a frame, or just after reading one.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import struct
import threading
import time
from collections.abc import Iterator
from multiprocessing.reduction import ForkingPickler
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from methodpool._transport._channel import (
    LinuxChannel,
    WorkerEnds,
    open_linux_channel,
    open_portable_channel,
    open_windows_channel,
)
from methodpool._transport._platform import available
from methodpool._transport._taken import TakenCount
from methodpool._transport._wire import HEADER, WORKER_READY, FrameReader, Task, encode_task
from methodpool._worker import run_worker

fcntl = pytest.importorskip("fcntl", reason="these pipes are POSIX pipes, read by descriptor")


def test_frame_reader_reads_many_messages_per_call_and_big_ones_whole() -> None:
    # The result thread reads whole pipe-fulls of results: every message,
    # whatever its size, comes out whole and in order.
    reader_end, writer_end = multiprocessing.Pipe(duplex=False)
    messages = [b"", b"x", bytes(range(256)) * 4, os.urandom(200_000), b"tail"]

    def write() -> None:
        for message in messages:
            writer_end.send_bytes(message)
        writer_end.close()

    thread = threading.Thread(target=write)
    thread.start()
    reader = FrameReader(reader_end)
    got: list[bytes] = []
    with pytest.raises(EOFError):
        while True:
            got.extend(reader.read())
    thread.join()
    assert got == messages


def test_frame_reader_drops_a_message_cut_short() -> None:
    reader_end, writer_end = multiprocessing.Pipe(duplex=False)
    os.write(writer_end.fileno(), struct.pack("!i", 10) + b"12345")
    writer_end.close()
    reader = FrameReader(reader_end)
    assert reader.read() == []
    with pytest.raises(EOFError):
        reader.read()


# -- what a dead worker never took, with real pipes and a real worker --------------

OPENERS = {
    "linux": open_linux_channel,
    "portable": open_portable_channel,
    "windows": open_windows_channel,
}


@pytest.fixture(params=sorted(OPENERS))
def transport(request: pytest.FixtureRequest) -> str:
    if request.param not in available():
        pytest.skip(f"this system cannot run the {request.param!r} transport")
    return request.param


def signal_then_sleep(path: str) -> None:
    """A task that says it runs (it makes ``path``), then runs long."""
    os.mkdir(path)
    time.sleep(60)


def task_frame(index: int, func: Any = abs, args: tuple[Any, ...] = (-1,)) -> bytes:
    return encode_task(Task(1, index, func, args, {}), ForkingPickler, ())


class LiveWorker:
    """``run_worker`` in a forked process on a new channel of ``transport``."""

    def __init__(self, transport: str) -> None:
        self.channel, ends = OPENERS[transport]()
        self.process = multiprocessing.get_context("fork").Process(
            target=run_worker,
            args=(ends.tasks, ends.results, None, (), None, (), ends.taken),
            daemon=True,
        )
        self.process.start()
        ends.tasks.close()
        ends.results.close()
        assert self.results(1) == [(WORKER_READY, 0)]

    def results(self, count: int) -> list[tuple[int, int]]:
        """The next ``count`` frames' ``(job, index)``."""
        got: list[tuple[int, int]] = []
        deadline = time.monotonic() + 30
        while len(got) < count:
            assert time.monotonic() < deadline, "the worker did not answer"
            if multiprocessing.connection.wait([self.channel], 1):
                got += [HEADER.unpack_from(frame) for frame in self.channel.receive()]
        return got

    def run(self, count: int, first: int = 0) -> None:
        """Send ``count`` quick tasks and wait for their results."""
        frames = [task_frame(first + index) for index in range(count)]
        assert self.channel.send(frames) == count
        assert self.results(count) == [(1, first + index) for index in range(count)]

    def kill(self) -> None:
        """SIGKILL it, and read its results pipe to the end of file, as the pool does."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(30)
        deadline = time.monotonic() + 30
        with pytest.raises(EOFError):
            while time.monotonic() < deadline:
                self.channel.receive()

    def close(self) -> None:
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(30)
        self.channel.close()


def stop(pid: int) -> None:
    """SIGSTOP our child ``pid`` and wait until it has stopped (a stop is no exit:
    nothing is reaped)."""
    os.kill(pid, signal.SIGSTOP)
    _, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)


@pytest.fixture
def live_worker(transport: str) -> Iterator[LiveWorker]:
    worker = LiveWorker(transport)
    yield worker
    worker.close()


def test_a_worker_stopped_then_killed_took_none_of_the_frames_it_was_sent(
    live_worker: LiveWorker,
) -> None:
    live_worker.run(5)  # frames it took and answered count for nothing
    stop(live_worker.process.pid)  # it can read no more
    queued = [task_frame(index) for index in range(5, 9)]
    assert live_worker.channel.send(queued) == 4
    live_worker.kill()
    assert live_worker.channel.untaken(queued) == 4


def test_a_worker_killed_while_idle_is_sent_nothing_it_could_miss(live_worker: LiveWorker) -> None:
    live_worker.run(3)
    live_worker.kill()
    late = [task_frame(3)]
    assert live_worker.channel.send(late) == 0  # its pipe has no reader: nothing delivered
    assert live_worker.channel.untaken([]) == 0


def test_a_worker_killed_mid_task_took_only_the_running_frame(
    live_worker: LiveWorker, tmp_path: Any
) -> None:
    live_worker.run(5)
    running = tmp_path / "running"
    held = [task_frame(5, signal_then_sleep, (str(running),))]
    held += [task_frame(index) for index in range(6, 9)]
    assert live_worker.channel.send(held) == 4
    deadline = time.monotonic() + 30
    while not running.exists():
        assert time.monotonic() < deadline, "the task did not start"
        time.sleep(0.01)
    live_worker.kill()
    assert live_worker.channel.untaken(held) == 3  # all but the one it ran


def test_a_frame_cut_short_by_the_worker_s_death_is_not_delivered(live_worker: LiveWorker) -> None:
    live_worker.run(2)
    stop(live_worker.process.pid)
    small = [task_frame(2)]
    assert live_worker.channel.send(small) == 1
    sent: list[int] = []
    big = task_frame(3, len, (b"x" * 300_000,))  # more than a pipe holds: the write blocks
    writer = threading.Thread(target=lambda: sent.append(live_worker.channel.send([big])))
    writer.start()
    time.sleep(0.2)
    live_worker.kill()
    writer.join(30)
    assert sent == [0]
    assert live_worker.channel.untaken(small) == 1  # the part of the big one discounted


def read_one_frame_then_die(tasks: Any, results: Any, taken: Any, count_it: bool) -> None:
    """The first steps of a worker's loop, killed after reading its first task
    frame whole: before counting it, or after."""
    tasks.recv_bytes()
    if count_it and taken is not None:
        taken.view[0] += 1
    os._exit(0)


@pytest.mark.parametrize("counted", [False, True], ids=["before-counting", "after-counting"])
def test_a_worker_killed_just_after_reading_a_frame(transport: str, counted: bool) -> None:
    # Killed before counting it: it ran nothing of the task, and the counting
    # channels resend it; Linux's, which sees the frame out of the pipe, fails
    # it as running.  Killed after: every channel fails it as running.
    channel, ends = OPENERS[transport]()
    process = multiprocessing.get_context("fork").Process(
        target=read_one_frame_then_die, args=(ends.tasks, ends.results, ends.taken, counted)
    )
    process.start()
    ends.tasks.close()
    ends.results.close()
    delivered = [task_frame(index) for index in range(3)]
    assert channel.send(delivered) == 3
    process.join(30)
    assert process.exitcode == 0
    with pytest.raises(EOFError):
        channel.receive()
    resent_when_uncounted = transport != "linux"
    expected = 2 if counted or not resent_when_uncounted else 3
    assert channel.untaken(delivered) == expected
    channel.close()


# -- whether a batch fits: never yes when the write could block ------------------------


def open_sized(transport: str, pages: int) -> tuple[Any, WorkerEnds]:
    """A channel of ``transport`` whose tasks pipe holds ``pages`` pages."""
    channel, ends = OPENERS[transport]()
    size = pages * mmap.PAGESIZE
    try:
        fcntl.fcntl(ends.tasks.fileno(), fcntl.F_SETPIPE_SZ, size)
    except OSError as exc:  # pragma: no cover - a system that refuses to resize pipes
        pytest.skip(f"cannot set the pipe's size to {size}: {exc}")
    assert fcntl.fcntl(ends.tasks.fileno(), fcntl.F_GETPIPE_SZ) == size
    if transport == "linux":  # it reads the capacity when it is made
        channel = LinuxChannel(channel.tasks, channel.results)
    return channel, ends


needs_linux_pipes = pytest.mark.skipif(
    not hasattr(fcntl, "F_SETPIPE_SZ"), reason="sizes pipes with Linux's F_SETPIPE_SZ"
)


@needs_linux_pipes
def test_linux_fits_counts_pipe_slots_not_bytes() -> None:
    # A one-page pipe whose page is nearly used up: 100 bytes unread, room
    # for 3000 more by bytes, yet a 3000-byte write needs a second page the
    # pipe does not have, and blocks.
    page = mmap.PAGESIZE
    channel, ends = open_sized("linux", 1)
    with contextlib.ExitStack() as stack:
        stack.callback(channel.close)
        stack.callback(ends.tasks.close)
        stack.callback(ends.results.close)
        assert channel.send([b"x" * (page - 100)]) == 1
        os.read(ends.tasks.fileno(), page - 96 - 100)  # the message is page - 96 bytes
        assert not channel.fits(3000)
        os.set_blocking(channel.tasks.fileno(), False)
        with pytest.raises(BlockingIOError):  # what the kernel says of that write
            os.write(channel.tasks.fileno(), b"y" * 3000)


class PlayedWorker:
    """The worker's side of a channel's tasks pipe, read in pieces by the test."""

    def __init__(self, ends: WorkerEnds) -> None:
        self._fd = ends.tasks.fileno()
        os.set_blocking(self._fd, False)  # the test must not wait for a write of its own
        self._taken = ends.taken
        self._left = 0  # bytes of the message being read
        self._head = b""  # its length prefix, while incomplete

    def read(self, count: int) -> None:
        """Read at most ``count`` bytes, as far as there are any; count each
        message once it is read whole."""
        with contextlib.suppress(BlockingIOError):
            self._read(count)

    def _read(self, count: int) -> None:
        while count > 0:
            if self._left == 0:
                want = 4 - len(self._head)
                chunk = os.read(self._fd, min(want, count))
                if not chunk:
                    return
                self._head += chunk
                count -= len(chunk)
                if len(self._head) == 4:
                    (self._left,) = struct.unpack("!i", self._head)
                    self._head = b""
                continue
            chunk = os.read(self._fd, min(self._left, count))
            if not chunk:
                return
            count -= len(chunk)
            self._left -= len(chunk)
            if self._left == 0 and self._taken is not None:
                self._taken.view[0] += 1


@needs_linux_pipes
@pytest.mark.parametrize(
    ("transport", "pages"),
    [("linux", 1), ("linux", 2), ("linux", 16), ("portable", 2), ("portable", 16)],
)
@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.tuples(st.booleans(), st.integers(1, 4096)), min_size=1, max_size=80))
def test_fits_says_yes_only_to_a_write_that_cannot_block(
    transport: str, pages: int, steps: list[tuple[bool, int]]
) -> None:
    # Any mix of writes (each atomic: at most PIPE_BUF, on a non-blocking pipe,
    # all or nothing) and of the worker's reads in pieces; after each, a
    # write fits() says yes to must go through whole.  (The portable bound
    # holds on Linux pipes of two pages or more; pipes only shrink to one
    # page on kernels before 5.14 whose user is over pipe-user-pages-soft.)
    channel, ends = open_sized(transport, pages)
    with contextlib.ExitStack() as stack:
        stack.callback(channel.close)
        stack.callback(ends.tasks.close)
        stack.callback(ends.results.close)
        pipe = channel.tasks
        os.set_blocking(pipe.fileno(), False)
        worker = PlayedWorker(ends)
        for is_write, size in steps:
            if is_write:
                channel.send([b"w" * max(1, size - 4)])  # goes whole or not at all
            else:
                worker.read(size)
            for probe in (5, 64, 300, 512, 2000, 4096):
                if channel.fits(probe):
                    assert channel.send([b"p" * (probe - 4)]) == 1, (probe, steps)
        worker.read(1 << 30)  # the worker takes it all
        batch = channel.batch_bytes
        if batch:  # then the result thread can write any batch
            assert channel.fits(batch)
            assert channel.send([b"b" * (batch - 4)]) == 1


# -- the count itself -----------------------------------------------------------------


def count_three(taken: TakenCount) -> None:
    for _ in range(3):
        taken.view[0] += 1


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_count_is_shared_with_a_worker_of_every_start_method(method: str) -> None:
    # Spawn and forkserver workers get it pickled with their arguments, its
    # memory's descriptor handed over as their pipes' are.
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} here")
    taken = TakenCount()
    process = multiprocessing.get_context(method).Process(target=count_three, args=(taken,))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    assert taken.value == 3
    taken.close()


def test_making_counts_changes_no_pickler_of_the_process() -> None:
    # multiprocessing.sharedctypes would register its ctypes types with
    # ForkingPickler (a c_long sent through a queue would then fail).
    before = dict(ForkingPickler._extra_reducers)  # type: ignore[attr-defined]
    counts = [TakenCount() for _ in range(3)]
    for count in counts:
        count.close()
    assert dict(ForkingPickler._extra_reducers) == before  # type: ignore[attr-defined]
    assert pickle.loads(ForkingPickler.dumps(ctypes.c_long(7))).value == 7


def test_closing_a_channel_forgets_each_descriptor_before_closing_it(
    transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker forked by another thread closes the parent's channel ends it
    # inherits: one caught between os.close() and forgetting its number would
    # close what the number has become by then in the worker (the pipe of its
    # parent sentinel, in CI: the worker exited with code 1 mid-task).
    import methodpool._transport._channel as channel_module

    channel, ends = OPENERS[transport]()
    parent_ends = [channel.tasks, channel.results]  # type: ignore[attr-defined]
    numbers = {conn.fileno(): conn for conn in parent_ends}
    seen: list[tuple[int, bool]] = []
    real_close = os.close

    def watching_close(fd: int) -> None:
        if fd in numbers:
            seen.append((fd, numbers[fd].closed))
        real_close(fd)

    monkeypatch.setattr(channel_module.os, "close", watching_close)
    channel.close()
    monkeypatch.undo()
    assert sorted(seen) == sorted((fd, True) for fd in numbers)  # forgotten, then closed
    ends.tasks.close()
    ends.results.close()
