"""One worker's channel: a pipe for its tasks, a pipe for its results.

:class:`Channel` is what the dispatcher needs of a channel, and all it
knows of one: write frames, read frames, say whether a batch fits without
blocking, and tell, once the worker is gone, which of the frames it was
sent it never took.  :class:`PipeChannel` implements it on
``multiprocessing.connection`` pipes.

Why each worker has its own pipes rather than the stdlib's two shared
queues: their readers and writers take cross-process locks, and a worker
that dies holding one (an idle worker holds the task pipe's lock while it
waits) hangs the whole pool (gh-96062); a worker killed while writing
corrupts the one stream every result goes through.  Here a worker's death
closes only its own pipes.

Linux answers two questions about a pipe that make this channel cheap, and
both are optional: ``FIONREAD`` on the *writing* end (bytes written and not
yet read: which tasks a dead worker never took) and ``F_GETPIPE_SZ`` (the
pipe's capacity: whether a batch fits).  Where the system gives neither,
:attr:`PipeChannel.batches` is false and :meth:`PipeChannel.untaken` cannot
tell (it answers 0: the dead worker's oldest task is taken to have been
running).  A portable answer to both is the platforms work.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import os
import struct
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, Protocol

from ._wire import STOP, FrameReader, length_prefix, message_size

try:  # the parent's only: workers never import this module
    import fcntl
    import termios
except ImportError:  # not POSIX
    fcntl = termios = None  # type: ignore[assignment]

# Frames up to this size are written with their length prefix in one go.
_JOIN_MAX = 1 << 16

# The parent's ends of every channel; a forked worker closes its copies.
parent_ends: weakref.WeakSet[Connection] = weakref.WeakSet()


class Channel(Protocol):
    """The parent's end of one worker's channel (see the module docstring)."""

    batches: bool
    """Whether :meth:`fits` can answer, so that frames may wait to be written together."""

    def fileno(self) -> int:
        """A descriptor that is readable when :meth:`receive` has something."""

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


class PipeChannel:
    """A :class:`Channel` on a pair of ``multiprocessing.connection`` pipes."""

    __slots__ = ("_capacity", "_reader", "_stranded", "batches", "results", "tasks")

    def __init__(self, tasks: Connection, results: Connection) -> None:
        self.tasks = tasks  # the parent writes
        self.results = results  # the parent reads
        self._reader = FrameReader(results)
        self._capacity = _pipe_capacity(tasks)
        self.batches = self._capacity > 0
        self._stranded = 0  # bytes of frames that reached the pipe only in part

    def fileno(self) -> int:
        return self.results.fileno()

    def send(self, frames: Sequence[bytes]) -> int:
        # Small frames go in one system call.  Of a failed write, the bytes of
        # a frame written in part stay in the pipe: untaken() discounts them.
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

    def fits(self, nbytes: int) -> bool:
        return _unread_bytes(self.tasks) + nbytes <= self._capacity

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

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.tasks.send_bytes(STOP)

    def close(self) -> None:
        self.tasks.close()
        self.results.close()


def open_pipes() -> tuple[tuple[Connection, Connection], tuple[Connection, Connection]]:
    """``((tasks_w, results_r), (tasks_r, results_w))``: the parent's ends of a
    new channel (for :class:`PipeChannel`), and the worker's."""
    tasks_r, tasks_w = multiprocessing.connection.Pipe(duplex=False)
    results_r, results_w = multiprocessing.connection.Pipe(duplex=False)
    parent_ends.update((tasks_w, results_r))
    return (tasks_w, results_r), (tasks_r, results_w)
