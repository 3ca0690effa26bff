"""The worker trampoline: what runs in each worker process.

It takes the place of ``multiprocessing.pool.worker`` and keeps its contract
(run the initializer, then take tasks until told to stop or ``maxtasks`` is
reached, and answer each with ``(job, index, (ok, value))``), with these
differences:

* tasks arrive, and results leave, on this worker's own channel, in order,
  as frames (:mod:`methodpool._transport._wire`);
* the task callable may arrive as a :class:`~methodpool._shipping.ShippedCallable`
  (also inside ``mapstar``/``starmapstar`` chunks) and the arguments as a
  :class:`~methodpool._shipping.Payload`; both are opened here;
* a task that cannot be loaded, or that raises anything at all (``SystemExit``
  and ``KeyboardInterrupt`` included), fails that task; the worker goes on;
* an exception that would not survive the trip to the parent (the stdlib
  hangs on some of those, gh-79492) is sent as its class, ``args`` and
  attributes, rebuilt in the parent without ``__init__``, or, where that cannot
  be done, replaced by a :class:`~methodpool.RemoteTaskError` that keeps its type
  name, message and traceback text (:mod:`methodpool._remote_errors`);
* an initializer that raises is reported to the parent, which stops the pool
  from running tasks, instead of the stdlib's endless restarts (gh-87472);
* SIGINT is ignored: Ctrl-C is the parent's to handle, which terminates the
  workers, instead of every worker printing its own traceback;
* a worker exits as soon as its parent process dies, even in the middle of a
  task, instead of running on as an orphan;
* given a ``taken`` count in shared memory (every transport but Linux's), it
  adds 1 to it for each task frame it reads, before it runs the task: that is
  how the parent knows, once the worker is gone, which of the frames it was
  sent it never took (:mod:`methodpool._transport._channel`);
* big buffers in arguments arrive, and in results leave, through shared
  memory (:mod:`methodpool._transport._buffers`); the worker makes and
  reuses its own few result segments.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._backend import (
    ExceptionWithTraceback,
    helper_reraises_exception,
    mapstar,
    starmapstar,
)
from ._errors import IMPORTABLE_ADVICE, DeserializationError
from ._remote_errors import stand_in
from ._serializers import Serializer
from ._shipping import Payload, arrive, encode, resolve
from ._transport._buffers import ResultSegments
from ._transport._wire import (
    HEADER,
    INITIALIZER_FAILED,
    WORKER_READY,
    encode_result,
    load_task_body,
    split_task,
)

if TYPE_CHECKING:
    from ._transport._taken import TakenCount


def _travels(exc: BaseException, fallback: Sequence[Serializer]) -> bool:
    try:
        pickle.loads(pickle.dumps(exc, pickle.HIGHEST_PROTOCOL))
        return True
    except Exception:
        pass
    if not fallback:
        return False
    try:
        encode(exc, fallback, "exception", "exc").load()
        return True
    except Exception:
        return False


def portable_exception(exc: BaseException, fallback: Sequence[Serializer]) -> Any:
    """``exc`` with its traceback text, in a form the parent can rebuild and raise."""
    wrapped = ExceptionWithTraceback(exc, exc.__traceback__)
    if isinstance(exc, Exception) and _travels(exc, fallback):
        return wrapped
    wrapped.exc = stand_in(exc, fallback)  # rebuilt in the parent, or a RemoteTaskError
    return wrapped


def _load_task(data: bytes) -> tuple[Callable[..., Any], Any, Any]:
    _, _, wire, body = split_task(data)
    try:
        shipped = arrive(wire) if wire else None
        func, args, kwds = load_task_body(body)
    except DeserializationError:
        raise
    except Exception as exc:
        raise DeserializationError(
            f"could not load the task in the worker: {type(exc).__name__}: {exc} — "
            f"{IMPORTABLE_ADVICE}"
        ) from exc
    if shipped is not None:
        func = shipped
    if type(args) is Payload:
        args, kwds = args.load("the task's arguments")
    if func is mapstar or func is starmapstar:
        ((inner, chunk),) = args
        args = ((resolve(inner), chunk),)
    else:
        func = resolve(func)
    return func, args, kwds


def run_task(data: bytes, fallback: Sequence[Serializer]) -> tuple[bool, Any]:
    """Load and run one task frame: ``(True, result)`` or ``(False, exception)``."""
    func = None
    try:
        func, args, kwds = _load_task(data)
        return True, func(*args, **kwds)
    except BaseException as exc:
        # _guarded_task_generation's stand-in task re-raises the input
        # iterable's own exception: the stdlib delivers that one unwrapped.
        if func is helper_reraises_exception:
            return False, exc
        return False, portable_exception(exc, fallback)


def _exit_when_parent_dies(segments: ResultSegments | None) -> None:
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        if segments is not None:
            segments.unlink_all()  # the parent would have
        os._exit(1)

    threading.Thread(target=watch, name="methodpool-parent-watch", daemon=True).start()


def run_worker(
    tasks: multiprocessing.connection.Connection,
    results: multiprocessing.connection.Connection,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...] | Payload,
    maxtasks: int | None,
    fallback: Sequence[Serializer],
    taken: TakenCount | None = None,
    out_of_band: tuple[int, str] | None = None,
) -> None:
    """The worker process's main function (see the module docstring).

    ``out_of_band``: the smallest buffer of a result that goes through shared
    memory and the name prefix of this worker's segments
    (:meth:`~._transport._buffers.TaskSegments.worker_settings`); ``None``:
    results go through the pipe whole.
    """
    if maxtasks is not None and not (isinstance(maxtasks, int) and maxtasks >= 1):
        raise AssertionError(f"Maxtasks {maxtasks!r} is not valid")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A forked worker inherits the parent's ends of every channel: close them.
    # (A spawned one has none: the module that lists them is not loaded.)
    # The fork may have caught another parent thread mid-close, so a
    # connection may claim a descriptor that is gone, or that now is one of
    # this worker's own.
    channels = sys.modules.get("methodpool._transport._channel")
    own = {tasks.fileno(), results.fileno()}
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        own.add(parent.sentinel)  # what _exit_when_parent_dies() waits on
    for conn in list(getattr(channels, "parent_ends", ())):
        with contextlib.suppress(OSError):
            if conn.fileno() not in own:
                conn.close()
    segments = None if out_of_band is None else ResultSegments(*out_of_band)
    _exit_when_parent_dies(segments)
    if initializer is not None:
        try:
            arguments: Any = initargs
            if type(initargs) is Payload:
                arguments = initargs.load("the initializer's arguments")
            resolve(initializer)(*arguments)
        except BaseException as exc:
            error = portable_exception(exc, fallback)
            results.send_bytes(encode_result(INITIALIZER_FAILED, 0, False, error, fallback))
            return
    results.send_bytes(HEADER.pack(WORKER_READY, 0))
    count = None if taken is None else taken.view  # an int64 memoryview
    completed = 0
    while maxtasks is None or completed < maxtasks:
        try:
            data = tasks.recv_bytes()
        except (EOFError, OSError):
            break
        if len(data) < HEADER.size:
            break
        if count is not None:
            count[0] += 1  # before anything of the task runs
        job, index = HEADER.unpack_from(data)
        ok, value = run_task(data, fallback)
        try:
            results.send_bytes(encode_result(job, index, ok, value, fallback, segments))
        except OSError:
            break  # the parent is gone
        del data, value
        completed += 1
