"""The wire format: what travels on a worker's pipes, and how it is read.

Both pipes carry *messages* as ``Connection.send_bytes`` writes them: a
length prefix (:func:`length_prefix`), then the bytes.  A message is a
*frame*, or :data:`STOP`.

Frames.  A result frame is ``<job:int64><index:int64><pickle of (ok,
value)>``; a task frame is ``<job:int64><index:int64><wire_len:uint32>``,
then ``wire_len`` bytes of the shipped callable's wire form
(:meth:`~methodpool._shipping.ShippedCallable.wire`, so a worker that has
the callable loaded skips it), then the pickle of ``(func, args, kwds)``.
The header is readable even when the pickle is not, so a task or result
that cannot be loaded fails that one task, by name, instead of killing a
worker or the result-handler thread.  Bodies go by plain ``ForkingPickler``
(the stdlib's fast path), and by the pool's serializer where that cannot
carry them.

Big buffers in a task's arguments or its result (numpy arrays and other
``PickleBuffer`` exporters) travel in shared memory: the body is then an
:class:`~._buffers.OutOfBand`, the pickle without them plus where they are
(:mod:`._buffers`).  A result a worker had no segment for carries a third
element, ``True``, so the parent can count it as a fallback to the pipe.

Control frames use negative job numbers: :data:`WORKER_READY` (sent once,
after the initializer ran) and :data:`INITIALIZER_FAILED`.

This is the only transport module a worker process imports (but for
:mod:`._taken`, unpickled with a spawned worker's count): it must stay
light (no ``fcntl``, ``selectors``, threads).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any, NamedTuple

from .._backend import MaybeEncodingError
from .._errors import DeserializationError, SerializationError
from .._serializers import Serializer
from .._shipping import Payload, ShippedCallable, encode
from ._buffers import BufferGatherer, OutOfBand, read_out_of_band

if TYPE_CHECKING:
    from ._buffers import ResultSegments, TaskSegments

HEADER = struct.Struct("<qq")
# A task frame's header: HEADER's fields, then the length of the shipped
# callable's wire form that follows it (0: the callable is in the pickle).
TASK_HEADER = struct.Struct("<qqI")
PROTOCOL = pickle.HIGHEST_PROTOCOL
STOP = b"\0"  # shorter than a header: tells a worker to exit
INITIALIZER_FAILED = -1  # job number of the frame a worker sends when its initializer raised
WORKER_READY = -2  # job number of the frame a worker sends once it is ready for tasks

# Connection.send_bytes's length prefix: a signed 32-bit size, or -1 and a
# 64-bit size for messages of 2 GiB or more.
_SIZE = struct.Struct("!i")
_BIG_SIZE = struct.Struct("!Q")
_READ_SIZE = 1 << 16  # bytes read from a pipe at once


class Task(NamedTuple):
    """A task as the stdlib's task handler hands it over."""

    job: int
    number: int  # the task's place in its job
    func: Any
    args: Any
    kwds: Any


class Result(NamedTuple):
    """A task's outcome as the stdlib's result handler takes it: ``(ok, value)``."""

    job: int
    number: int  # the task's place in its job
    outcome: tuple[bool, Any]


def length_prefix(size: int) -> bytes:
    """What ``Connection.send_bytes`` writes before a message of ``size`` bytes."""
    if size > 0x7FFFFFFF:
        return _SIZE.pack(-1) + _BIG_SIZE.pack(size)
    return _SIZE.pack(size)


def message_size(size: int) -> int:
    """Bytes a message of ``size`` bytes takes on a pipe, its prefix included."""
    return size + (_SIZE.size + _BIG_SIZE.size if size > 0x7FFFFFFF else _SIZE.size)


def _big_size(buf: bytearray, start: int, end: int) -> int | None:
    # The size after a -1 prefix (a message of 2 GiB or more), or None while
    # it is incomplete.
    if end - start < _SIZE.size + _BIG_SIZE.size:
        return None
    return int(_BIG_SIZE.unpack_from(buf, start + _SIZE.size)[0])


def _frame(
    head: bytes, body: Any, pickler: type[pickle.Pickler], gatherer: BufferGatherer | None = None
) -> bytes:
    buf = io.BytesIO()
    buf.write(head)
    # Positional: ForkingPickler.__init__ takes no keywords before 3.12.
    pickler(buf, PROTOCOL, True, gatherer).dump(body)
    # bytes, not getbuffer(): a frame may wait in a queue or be garbage
    # collected at any time, and a BytesIO with a live export must not be.
    return buf.getvalue()


def _place_buffers(
    head: bytes,
    frame: bytes,
    gatherer: BufferGatherer,
    place: Callable[[bytes, BufferGatherer], OutOfBand | None],
) -> bytes | None:
    # The frame whose pickle left gathered buffers out, with them in shared
    # memory; None if no segment could take them.
    try:
        message = place(frame[len(head) :], gatherer)
    finally:
        gatherer.buffers.clear()
    if message is None:
        return None
    return _frame(head, message, ForkingPickler)


def encode_task(
    task: Task,
    pickler: type[pickle.Pickler],
    fallback: Sequence[Serializer],
    buffers: TaskSegments | None = None,
) -> bytes:
    """The frame of a task.

    A shipped callable goes ahead of the pickle, as its ready-made wire form
    (the worker then skips it if it has that callable loaded); the pickle
    holds ``None`` in its place.

    Big buffers go out of band into ``buffers``' segments (in band if it
    has none to give, or is ``None``).

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
        gatherer = buffers.gatherer if buffers is not None else None
        frame = _frame(head, (func, args, kwds), pickler, gatherer)
        if gatherer is None or not gatherer.buffers:
            return frame
        gatherer.job = job
        placed = _place_buffers(head, frame, gatherer, buffers.place)  # type: ignore[union-attr]
        return placed or _frame(head, (func, args, kwds), pickler)
    except Exception:
        if buffers is not None and buffers.gatherer is not None:
            buffers.gatherer.buffers.clear()  # of the pickle that failed
        if not fallback:
            raise  # serializer="pickle": the stdlib's own error
        what = f"the arguments of task {index}"
        try:
            boxed = encode((args, kwds), fallback, what, "args")
        except SerializationError:
            # Say which argument failed, not where it sits in (args, kwds).
            encode(args, fallback, what, "args")
            encode(kwds, fallback, what, "kwds")
            raise
        return _frame(head, (func, boxed, None), ForkingPickler)


def load_task_body(body: memoryview) -> tuple[Any, Any, Any]:
    """``(func, args, kwds)`` of a task body, its big buffers read from shared memory."""
    loaded = pickle.loads(body)
    if type(loaded) is OutOfBand:
        loaded = read_out_of_band(loaded)
    return loaded  # type: ignore[no-any-return]


def split_task(data: bytes) -> tuple[int, int, bytes, memoryview]:
    """``(job, index, callable wire form or b"", pickled body)`` of a task frame."""
    job, index, wire_size = TASK_HEADER.unpack_from(data)
    start = TASK_HEADER.size
    return job, index, data[start : start + wire_size], memoryview(data)[start + wire_size :]


def encode_result(
    job: int,
    index: int,
    ok: bool,
    value: Any,
    fallback: Sequence[Serializer],
    buffers: ResultSegments | None = None,
) -> bytes:
    """The frame of a task's outcome, whatever ``value`` is.

    Plain pickle first (big buffers out of band, into ``buffers``' segments,
    if given); then the ``fallback`` serializers; if none can carry the
    value, the task fails with the stdlib's ``MaybeEncodingError``.
    """
    try:
        if buffers is None:
            return _frame(HEADER.pack(job, index), (ok, value), ForkingPickler)
        head = HEADER.pack(job, index)
        gatherer = buffers.gatherer
        frame = _frame(head, (ok, value), ForkingPickler, gatherer)
        if not gatherer.buffers:
            return frame
        # None: no segment free; in band then, marked as a fallback
        placed = _place_buffers(head, frame, gatherer, buffers.place)
        return placed or _frame(head, (ok, value, True), ForkingPickler)
    except Exception as exc:
        if buffers is not None:
            buffers.gatherer.buffers.clear()  # of the pickle that failed
        try:
            if not fallback:
                raise
            boxed = encode(value, fallback, f"the result of task {index}", "result")
            return _frame(HEADER.pack(job, index), (ok, boxed), ForkingPickler)
        except Exception:
            wrapped = MaybeEncodingError(exc, value)  # as the stdlib: repr(value)
            return _frame(HEADER.pack(job, index), (False, wrapped), ForkingPickler)


def decode_result(data: bytes, buffers: TaskSegments | None = None) -> Result:
    """The outcome in a result frame; a value that cannot be loaded becomes
    ``(False, DeserializationError)``.  ``buffers`` reads out-of-band results
    and counts fallbacks."""
    job, index = HEADER.unpack_from(data)
    try:
        outcome = pickle.loads(memoryview(data)[HEADER.size :])
        try:
            ok, value = outcome
        except (TypeError, ValueError):  # not (ok, value): an out-of-band or fallen-back result
            ok, value = _unusual_outcome(job, outcome, buffers)
        if type(value) is Payload:
            value = value.load(f"the result of task {index}")
    except DeserializationError as exc:
        ok, value = False, exc
    except BaseException as exc:  # SystemExit from a __reduce__ too: this is a pool thread
        error = DeserializationError(
            f"could not load the result of task {index} in the parent process: "
            f"{type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        ok, value = False, error
    # tuple.__new__, not Result(...): a NamedTuple's own __new__ is Python
    # code, and this runs once per task.
    return tuple.__new__(Result, (job, index, (ok, value)))


def _unusual_outcome(job: int, outcome: Any, buffers: TaskSegments | None) -> tuple[bool, Any]:
    if buffers is None:
        raise DeserializationError("an out-of-band result reached a pool without shared buffers")
    if type(outcome) is OutOfBand:
        ok, value = buffers.load_result(job, outcome)
        return ok, value
    buffers.result_fell_back(job)
    return outcome[0], outcome[1]


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
        while end - start >= _SIZE.size:
            (size,) = _SIZE.unpack_from(buf, start)
            head = _SIZE.size
            if size == -1:
                big = _big_size(buf, start, end)
                if big is None:
                    break
                size, head = big, _SIZE.size + _BIG_SIZE.size
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
