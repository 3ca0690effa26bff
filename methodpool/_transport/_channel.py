"""One worker's channel: a pipe for its tasks, a pipe for its results.

:class:`Channel` is what the dispatcher needs of a channel, and all it
knows of one: write frames, read frames, say whether a batch fits without
blocking, and tell, once the worker is gone, which of the frames it was
sent it never took.  Three implementations, one per kind of system (which
one a pool uses is chosen once, in :mod:`._platform`):

* :class:`LinuxChannel` asks the kernel: ``FIONREAD`` on the *writing* end
  (bytes written and not yet read) and ``F_GETPIPE_SZ`` (the capacity).
  Only Linux answers both; it is the fastest, and the default there.
* :class:`PortableChannel` (macOS, the BSDs: POSIX pipes, no such answers)
  knows the same from a count the worker keeps (below).
* :class:`WindowsChannel` uses nothing but the ``Connection`` API:
  a Windows pipe is a named pipe in message mode whose handle ``os.read``
  and ``os.write`` cannot use, and which ``selectors`` cannot wait on.

Why each worker has its own pipes rather than the stdlib's two shared
queues: their readers and writers take cross-process locks, and a worker
that dies holding one (an idle worker holds the task pipe's lock while it
waits) hangs the whole pool (gh-96062); a worker killed while writing
corrupts the one stream every result goes through.  Here a worker's death
closes only its own pipes.

What a dead worker never took, portably.  The worker counts the task frames
it has taken in an int64 in shared memory (:mod:`._taken`), right after
reading a frame whole and before running it; the channel
counts the frames it wrote whole.  The difference is the newest frames the
worker never took: resent, as on Linux.  The races, each ending well: a
worker killed between reading a frame and counting it has run none of its
code, and the frame is resent; one killed between counting and running
counts as running it, and that task fails with ``WorkerLostError``, as a
task the stdlib has handed to a worker does.  Why a count and not an
acknowledgement per frame: an acknowledgement is a system call and a
wake-up of the result thread per task, with the same gap between reading a
frame and saying so; the count is one store to memory per task, read only
when needed, in memory that has no name anyone could open and is gone with
the two processes (:mod:`._taken` says how, and why not ``RawValue``).

Whether a batch fits, portably.  The bytes in the pipe are at most those
written less those of the frames the count says were taken (a frame read in
part counts as unread), and a write never blocks if that plus the batch is
at most :data:`PORTABLE_CAPACITY`: 512 bytes, POSIX's smallest ``PIPE_BUF``,
which every pipe holds (an XNU pipe starts at 512 bytes and grows only while
the system has pipe memory to spare; BSD and Linux pipes are at least a
page, and a Linux write that fits in a page beside the unread bytes needs
at most one free slot of a pipe's two or more: only a one-page pipe, which
kernels before 5.14 give a user over pipe-user-pages-soft, could block it,
and Linux has its own channel).  Batches are kept that
small (:attr:`Channel.batch_bytes`), so that the result thread can always
write one once the worker has taken what it had.  Windows does not batch:
each ``send_bytes`` on a message-mode pipe is one system call whatever
else is sent, so batching would save nothing.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import multiprocessing.connection
import os
import struct
import sys
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, NamedTuple, Protocol

from ._taken import TakenCount
from ._wire import STOP, FrameReader, length_prefix, message_size

try:  # the parent's only: workers never import this module
    import fcntl
    import termios
except ImportError:  # not POSIX
    fcntl = termios = None  # type: ignore[assignment]

# Frames up to this size are written with their length prefix in one go.
_JOIN_MAX = 1 << 16
# Bytes a write may add to the unread ones in any pipe without blocking, on
# every system (see the module docstring).
PORTABLE_CAPACITY = 512
# Whole frames a WindowsChannel hands over per receive(): one worker that
# keeps writing must not keep the result thread from the others.
_RECEIVE_MAX = 64

# The parent's ends of every channel; a forked worker closes its copies.
parent_ends: weakref.WeakSet[Connection] = weakref.WeakSet()


class Channel(Protocol):
    """The parent's end of one worker's channel (see the module docstring)."""

    batch_bytes: int
    """The most bytes of frames that may wait to be written together: at most
    what :meth:`fits` says yes to once the worker has taken every frame
    written (0: frames never wait)."""

    def fileno(self) -> int:
        """What is readable when :meth:`receive` has something (a descriptor;
        a pipe handle on Windows, for ``multiprocessing.connection.wait``)."""

    def send(self, frames: Sequence[bytes]) -> int:
        """Write ``frames`` in order; the number written whole (fewer: the worker is gone)."""

    def receive(self) -> list[bytes]:
        """The whole frames that have arrived (maybe none); :class:`EOFError` once it is gone."""

    def fits(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more can be written now without blocking."""

    def untaken(self, delivered: Sequence[bytes]) -> int:
        """Of ``delivered`` (written whole, oldest first), how many of the newest the
        worker never started to read; asked once, after the worker is gone."""

    def stop(self) -> None:
        """Tell the worker to exit once it has run what it was sent."""

    def close(self) -> None:
        """Close the parent's ends."""


class WorkerEnds(NamedTuple):
    """What a worker is given of its channel (``run_worker``'s arguments)."""

    tasks: Connection  # it reads
    results: Connection  # it writes
    taken: TakenCount | None  # its count of the task frames it took (None: LinuxChannel)


def _pipes() -> tuple[Connection, Connection, Connection, Connection]:
    # (tasks_w, results_r, tasks_r, results_w)
    tasks_r, tasks_w = multiprocessing.connection.Pipe(duplex=False)
    results_r, results_w = multiprocessing.connection.Pipe(duplex=False)
    parent_ends.update((tasks_w, results_r))
    return tasks_w, results_r, tasks_r, results_w


class _TakenFrames:
    """What a worker has taken of the frames written to it, from its count."""

    __slots__ = ("_known", "_sizes", "_unread", "shared")

    def __init__(self) -> None:
        self.shared = TakenCount()  # the worker adds 1 per frame taken
        self._sizes: collections.deque[int] = collections.deque()  # not known taken, oldest first
        self._known = 0  # frames known taken
        self._unread = 0  # at most this many bytes are in the pipe

    def wrote(self, size: int, *, frame: bool = True) -> None:
        """``size`` bytes reached the pipe whole: a task frame's, or (``frame=False``) not."""
        self._catch_up()  # keeps _sizes as short as the worker is behind
        self._unread += size
        if frame:
            self._sizes.append(size)

    def _catch_up(self) -> None:
        taken = self.shared.value
        if taken > self._known + len(self._sizes):
            # More than was written: no count (a torn read on a 32-bit
            # system); taken as "nothing more taken", which is never unsafe.
            return
        while self._known < taken:
            self._unread -= self._sizes.popleft()
            self._known += 1

    def unread_at_most(self) -> int:
        """Bytes that may still be in the pipe."""
        self._catch_up()
        return self._unread

    def untaken(self) -> int:
        """Frames written whole that the worker has not taken."""
        self._catch_up()
        return len(self._sizes)


class _ParentEnds:
    """The parent's two ends of a channel: what every channel stops and closes alike."""

    __slots__ = ("results", "tasks")

    tasks: Connection  # the parent writes
    results: Connection  # the parent reads

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.tasks.send_bytes(STOP)

    def close(self) -> None:
        _close_parent_end(self.tasks)
        _close_parent_end(self.results)


class _PosixPipes(_ParentEnds):
    """Frames on POSIX pipes, written and read by descriptor: many per system call."""

    __slots__ = ("_reader", "_stranded")

    def __init__(self, tasks: Connection, results: Connection) -> None:
        self.tasks = tasks  # the parent writes
        self.results = results  # the parent reads
        self._reader = FrameReader(results)
        self._stranded = 0  # bytes of frames that reached the pipe only in part

    def fileno(self) -> int:
        return self.results.fileno()

    def send(self, frames: Sequence[bytes]) -> int:
        # Small frames go in one system call.  Of a failed write, the bytes of
        # a frame written in part stay in the pipe: _stranded counts them.
        sizes = []
        parts: list[bytes] = []
        for frame in frames:
            prefix = length_prefix(len(frame))
            sizes.append(len(prefix) + len(frame))
            parts += (prefix, frame)
        if len(frames) > 1 or len(frames[0]) <= _JOIN_MAX:
            parts = [b"".join(parts)]
        written = 0
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    count = os.write(self.tasks.fileno(), view)
                    written += count
                    view = view[count:]
        except OSError:
            whole = 0
            for size in sizes:
                if written < size:
                    break
                written -= size
                whole += 1
            self._stranded += written
            return whole
        return len(frames)

    def receive(self) -> list[bytes]:
        try:
            return self._reader.read()
        except OSError:
            raise EOFError from None


def _close_parent_end(conn: Connection) -> None:
    """Close ``conn``, one of :data:`parent_ends`; on POSIX, having first made
    it forget its descriptor.

    Another thread may fork a worker at any moment, and the new worker closes
    the connections it inherits from ``parent_ends``.  One caught after its
    descriptor was closed but before it forgot the number (as
    ``Connection.close()`` does it) would close whatever that number had become
    by the fork: often the pipe that ``popen_fork`` had just made for the
    worker's parent sentinel, whose loss made the worker exit with code 1
    while it ran a task.
    """
    if sys.platform == "win32":  # no fork: nothing can catch it half closed
        conn.close()
        return
    handle = conn._handle  # type: ignore[attr-defined]
    if handle is not None:
        conn._handle = None  # type: ignore[attr-defined]
        os.close(handle)


def _pipe_capacity(conn: Connection) -> int:
    """The capacity of ``conn``'s pipe in bytes (0 if the system will not say)."""
    try:
        return int(fcntl.fcntl(conn.fileno(), fcntl.F_GETPIPE_SZ))
    except (AttributeError, OSError):  # not Linux
        return 0


def _unread_bytes(conn: Connection) -> int:
    """Bytes written to ``conn``'s pipe and not read yet (0 if the system will not say)."""
    try:
        answer: Any = fcntl.ioctl(conn.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (AttributeError, OSError):  # not POSIX, or no answer for a writing end
        return 0
    return int(struct.unpack("i", answer)[0])


class LinuxChannel(_PosixPipes):
    """A :class:`Channel` that asks Linux what is in its tasks pipe and what it holds."""

    __slots__ = ("_capacity", "batch_bytes")

    # A Linux pipe is a ring of page-sized slots, and a write that does not
    # fit in the last one takes new ones: the unread bytes may hold up to
    # 2 + 2 * unread / page slots (two neighbours together hold more than a
    # page), and the write ceil(n / page).  fits() counts those, not bytes:
    # a pipe the kernel shrank to one or two pages (a user over
    # pipe-user-pages-soft) then never gets a write from the result thread.
    _PAGE = mmap.PAGESIZE

    def __init__(self, tasks: Connection, results: Connection) -> None:
        super().__init__(tasks, results)
        self._capacity = _pipe_capacity(tasks)
        self.batch_bytes = max(0, self._capacity - 3 * self._PAGE)

    def fits(self, nbytes: int) -> bool:
        return 2 * _unread_bytes(self.tasks) + nbytes + 3 * self._PAGE <= self._capacity

    def untaken(self, delivered: Sequence[bytes]) -> int:
        # A worker reads its tasks in order, so the bytes still in the pipe
        # are the newest frames'; one read in part (a worker killed in read()
        # may return first) was not started either.
        unread = _unread_bytes(self.tasks) - self._stranded
        count = 0
        for frame in reversed(delivered):
            if unread <= 0:
                break
            unread -= message_size(len(frame))
            count += 1
        return count


class PortableChannel(_PosixPipes):
    """A :class:`Channel` on POSIX pipes that knows what its worker took from the
    worker's count (see the module docstring): macOS, the BSDs."""

    __slots__ = ("_taken",)
    batch_bytes = PORTABLE_CAPACITY

    def __init__(self, tasks: Connection, results: Connection, taken: _TakenFrames) -> None:
        super().__init__(tasks, results)
        self._taken = taken

    def send(self, frames: Sequence[bytes]) -> int:
        # A frame written in part was not taken (the worker is gone, and
        # fits() is asked no more): only those written whole are counted.
        count = super().send(frames)
        for frame in frames[:count]:
            self._taken.wrote(message_size(len(frame)))
        return count

    def fits(self, nbytes: int) -> bool:
        return self._taken.unread_at_most() + nbytes <= PORTABLE_CAPACITY

    def untaken(self, delivered: Sequence[bytes]) -> int:
        return min(len(delivered), self._taken.untaken())

    def stop(self) -> None:
        super().stop()
        self._taken.wrote(message_size(len(STOP)), frame=False)

    def close(self) -> None:
        super().close()
        self._taken.shared.close()


class WindowsChannel(_ParentEnds):
    """A :class:`Channel` on ``Connection`` methods alone: one ``send_bytes`` or
    ``recv_bytes`` per frame, which a Windows pipe handle needs (it is no
    file descriptor), and which work on any system; what the worker took,
    from its count.  Frames never wait to be written together."""

    __slots__ = ("_taken",)
    batch_bytes = 0

    def __init__(self, tasks: Connection, results: Connection, taken: _TakenFrames) -> None:
        self.tasks = tasks  # the parent writes
        self.results = results  # the parent reads
        self._taken = taken

    def fileno(self) -> int:
        # Frames are never empty: multiprocessing.connection.wait, which on
        # Windows may consume an empty message while it waits, never does.
        return self.results.fileno()

    def send(self, frames: Sequence[bytes]) -> int:
        sent = 0
        for frame in frames:
            try:
                self.tasks.send_bytes(frame)
            except OSError:
                break
            self._taken.wrote(message_size(len(frame)))
            sent += 1
        return sent

    def receive(self) -> list[bytes]:
        # receive() is called when the pipe is readable: recv_bytes waits at
        # most for the rest of a message the worker is writing.
        frames: list[bytes] = []
        try:
            frames.append(self.results.recv_bytes())
            while len(frames) < _RECEIVE_MAX and self.results.poll():
                frames.append(self.results.recv_bytes())
        except (EOFError, OSError):
            if not frames:
                raise EOFError from None
            # The frames first; the end of file again on the next call.
        return frames

    def fits(self, nbytes: int) -> bool:
        return False  # nothing asks: frames never wait (batch_bytes is 0)

    def untaken(self, delivered: Sequence[bytes]) -> int:
        return min(len(delivered), self._taken.untaken())

    def close(self) -> None:
        super().close()
        self._taken.shared.close()


def open_linux_channel() -> tuple[Channel, WorkerEnds]:
    """A new :class:`LinuxChannel`, and the worker's ends of it."""
    tasks_w, results_r, tasks_r, results_w = _pipes()
    return LinuxChannel(tasks_w, results_r), WorkerEnds(tasks_r, results_w, None)


def open_portable_channel() -> tuple[Channel, WorkerEnds]:
    """A new :class:`PortableChannel`, and the worker's ends of it."""
    tasks_w, results_r, tasks_r, results_w = _pipes()
    taken = _TakenFrames()
    return PortableChannel(tasks_w, results_r, taken), WorkerEnds(tasks_r, results_w, taken.shared)


def open_windows_channel() -> tuple[Channel, WorkerEnds]:
    """A new :class:`WindowsChannel`, and the worker's ends of it."""
    tasks_w, results_r, tasks_r, results_w = _pipes()
    taken = _TakenFrames()
    return WindowsChannel(tasks_w, results_r, taken), WorkerEnds(tasks_r, results_w, taken.shared)
