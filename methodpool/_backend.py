"""Every place methodpool relies on ``multiprocessing`` internals, in one file.

``multiprocessing.pool.Pool`` (identical in this respect on CPython 3.10-3.13)
offers no public hooks, so MethodPool uses three private ones:

* ``Pool.Process(ctx, target=pool.worker, args=...)`` is how the pool starts
  every worker, the first ones and every replacement.  An instance attribute
  (:class:`WorkerFactory`) takes its place and starts
  :func:`methodpool._worker.run_worker` with the same queues instead.
* ``Pool._setup_queues`` creates the two ``SimpleQueue`` pipes and the
  ``_quick_put`` / ``_quick_get`` functions that the task-handler and
  result-handler threads use.  MethodPool replaces those two functions with
  :class:`TaskWriter` and :class:`ResultReader`.
* ``SimpleQueue._reader``, ``_writer``, ``_rlock`` and ``_wlock``: the worker
  reads and writes raw frames itself (:class:`TaskReader`, :class:`ResultWriter`).
* ``Pool._help_stuff_finish``, which ``terminate()`` uses to empty the task
  pipe, unpickles what it drains; frames are not plain pickles, so MethodPool
  drains with :func:`drain_task_pipe` instead.

``tests/test_backend.py`` pins each of these on every supported version.

Frames.  Both pipes carry ``<job:int64><index:int64><pickle>``.  The header is
readable even when the pickle is not, so a task or result that cannot be
loaded fails that one task, by name, instead of killing a worker or the
result-handler thread (which hangs the stdlib pool).  Anything shorter than a
header is a plain pickle of ``None``: the sentinels that ``Pool`` itself
writes.

Shared memory.  Workers read the segments that :mod:`methodpool._sharedmem`
creates with ``_posixshmem`` and ``mmap`` directly rather than through
``SharedMemory``, which before Python 3.13 registers every attachment with the
resource tracker, which the workers share with the parent: the tracker would
then unlink, or warn about, segments the parent still owns.

Job hooks.  The pool's cache of pending jobs (``Pool._cache``, a
``_PoolCache``) is where every result object registers on creation and leaves
on completion; :func:`track_jobs` makes it report both events.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import multiprocessing.pool
import os
import pickle
import struct
import time
from collections.abc import Callable, Sequence
from multiprocessing.reduction import ForkingPickler
from typing import Any

from ._errors import DeserializationError
from ._serializers import PICKLE, Serializer
from ._shipping import Payload, describe, encode

# Private names of multiprocessing.pool used by methodpool (see above); typeshed
# does not declare them.
_stdlib_pool: Any = multiprocessing.pool
stdlib_worker = _stdlib_pool.worker
mapstar = _stdlib_pool.mapstar
starmapstar = _stdlib_pool.starmapstar
helper_reraises_exception = _stdlib_pool._helper_reraises_exception
ExceptionWithTraceback = _stdlib_pool.ExceptionWithTraceback
MaybeEncodingError = _stdlib_pool.MaybeEncodingError
RemoteTraceback = _stdlib_pool.RemoteTraceback

HEADER = struct.Struct("<qq")
PROTOCOL = pickle.HIGHEST_PROTOCOL
_SENTINEL = pickle.dumps(None, PROTOCOL)
assert len(_SENTINEL) < HEADER.size


def _frame(
    job: int, index: int, body: Any, pickler: type[pickle.Pickler] = ForkingPickler
) -> io.BytesIO:
    buf = io.BytesIO()
    buf.write(HEADER.pack(job, index))
    pickler(buf, PROTOCOL).dump(body)
    return buf


class TaskWriter:
    """Replaces ``Pool._quick_put``: writes one task frame to the task pipe.

    Arguments go by ``pickler``, a ``ForkingPickler`` (the stdlib's fast path);
    arguments it cannot carry go as a :class:`Payload` of the ``fallback``
    serializers.  Raises
    :class:`~methodpool.SerializationError` if none can carry them; the pool's
    task handler turns that into the failure of that task.
    """

    def __init__(
        self, inqueue: Any, fallback: Sequence[Serializer], pickler: type[pickle.Pickler]
    ) -> None:
        self._send = inqueue._writer.send_bytes
        self._fallback = fallback
        self._pickler = pickler
        # Counters for tests and benchmarks: what really went down the pipe.
        self.frames_written = 0
        self.bytes_written = 0

    def __call__(self, task: tuple[int, int, Any, Any, Any] | None) -> None:
        if task is None:
            self._send(_SENTINEL)
            return
        job, index, func, args, kwds = task
        try:
            buf = _frame(job, index, (func, args, kwds), self._pickler)
        except Exception:
            boxed = encode(
                (args, kwds), self._fallback or (PICKLE,), f"the arguments of task {index}", "args"
            )
            buf = _frame(job, index, (func, boxed, None))
        frame = buf.getbuffer()
        self._send(frame)
        self.frames_written += 1
        self.bytes_written += frame.nbytes


class ResultReader:
    """Replaces ``Pool._quick_get``: reads one result frame, never raising on bad data.

    Returns ``(job, index, (ok, value))`` as the stdlib worker sends it; a
    result that cannot be loaded becomes ``(False, DeserializationError)``.
    """

    def __init__(self, outqueue: Any) -> None:
        self._recv = outqueue._reader.recv_bytes

    def __call__(self) -> Any:
        data = self._recv()
        if len(data) < HEADER.size:
            return pickle.loads(data)
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


class TaskReader:
    """Worker side: the next task frame, or ``None`` for the stop sentinel."""

    def __init__(self, inqueue: Any) -> None:
        self._rlock = inqueue._rlock
        self._recv = inqueue._reader.recv_bytes
        # Like pool.worker: this process only reads tasks and writes results.
        inqueue._writer.close()

    def __call__(self) -> bytes | None:
        with self._rlock:
            data = self._recv()
        return data if len(data) >= HEADER.size else None


class ResultWriter:
    """Worker side: sends ``(ok, value)`` for a task, whatever ``value`` is.

    Plain pickle first; then the ``fallback`` serializers; if none can carry
    the value, the task fails with the stdlib's ``MaybeEncodingError``.
    """

    def __init__(self, outqueue: Any, fallback: Sequence[Serializer]) -> None:
        self._lock = outqueue._wlock or contextlib.nullcontext()
        self._send = outqueue._writer.send_bytes
        self._fallback = fallback
        outqueue._reader.close()

    def __call__(self, job: int, index: int, ok: bool, value: Any) -> None:
        try:
            buf = _frame(job, index, (ok, value))
        except Exception as exc:
            try:
                if not self._fallback:
                    raise
                boxed = encode(value, self._fallback, f"the result of task {index}", "result")
                buf = _frame(job, index, (ok, boxed))
            except Exception:
                wrapped = MaybeEncodingError(exc, describe(value))
                buf = _frame(job, index, (False, wrapped))
        with self._lock:
            self._send(buf.getbuffer())


def drain_task_pipe(inqueue: Any, task_handler: Any) -> None:
    """``Pool._help_stuff_finish`` for frames: discard queued tasks while the task handler runs.

    Like the stdlib, it leaves the pipe's read lock held: no worker may take a
    task any more.
    """
    inqueue._rlock.acquire()
    while task_handler.is_alive() and inqueue._reader.poll():
        inqueue._reader.recv_bytes()
        time.sleep(0)


def read_shared_memory(name: str, size: int) -> bytes:
    """The first ``size`` bytes of the POSIX shared memory segment ``name``."""
    import _posixshmem  # type: ignore[import-not-found]

    fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDONLY, mode=0o600)
    try:
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as view:
            return view[:size]
    finally:
        os.close(fd)


class _TrackedCache(_stdlib_pool._PoolCache):  # type: ignore[misc]
    _on_start: Callable[[int], None]
    _on_done: Callable[[int], None]

    def __setitem__(self, job: int, result: Any) -> None:
        super().__setitem__(job, result)
        self._on_start(job)

    def __delitem__(self, job: int) -> None:
        super().__delitem__(job)
        self._on_done(job)


def track_jobs(cache: Any, on_start: Callable[[int], None], on_done: Callable[[int], None]) -> None:
    """Make the pool's job cache call ``on_start(job)`` and ``on_done(job)``.

    The cache object is shared with the pool's threads, so it is changed in
    place (its class), not replaced.
    """
    cache._on_start = on_start
    cache._on_done = on_done
    cache.__class__ = _TrackedCache


class WorkerFactory:
    """Replaces ``Pool.Process``: starts methodpool's worker in place of ``pool.worker``."""

    def __init__(self, fallback: Sequence[Serializer]) -> None:
        self._fallback = tuple(fallback)

    def __call__(self, ctx: Any, *, target: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if target is not stdlib_worker:
            raise RuntimeError(
                f"methodpool does not support this Python's multiprocessing.pool: "
                f"Pool.Process was asked to start {target!r}"
            )
        from ._worker import run_worker

        inqueue, outqueue, initializer, initargs, maxtasks, _wrap_exception = args
        return ctx.Process(
            target=run_worker,
            args=(inqueue, outqueue, initializer, initargs, maxtasks, self._fallback),
        )
