"""What runs inside Dask workers: the tasks a :class:`~methodpool.DaskPool` submits.

Dask workers import these functions by name (``methodpool._dask._tasks``);
nothing here touches the client side.
"""

from __future__ import annotations

import itertools
import pickle
import time
from typing import TYPE_CHECKING, Any

from .._errors import IMPORTABLE_ADVICE, DeserializationError
from .._serializers import Serializer
from .._shipping import Payload, ShippedCallable
from .._transport._wire import encode_result
from .._worker import portable_exception

if TYPE_CHECKING:
    # mypy may run where distributed is not installed, and then every name
    # from it is Any, which a class may not subclass in strict mode.
    _PluginBase = object
else:
    from distributed.diagnostics.plugin import WorkerPlugin as _PluginBase

APPLY, MAP, STARMAP = "apply", "map", "starmap"
CallableParts = tuple[bytes, str, Payload, tuple[Serializer, ...]]


def hold_callable(parts: CallableParts) -> CallableParts:
    """The "callable" task: its value is the serialized callable, for chunk tasks to use."""
    return parts


def _load_arguments(data: bytes, what: str) -> Any:
    try:
        obj = pickle.loads(data)
    except Exception as exc:
        raise DeserializationError(
            f"could not load {what} in the worker: {type(exc).__name__}: {exc} — "
            f"{IMPORTABLE_ADVICE}"
        ) from exc
    return obj.load(what) if type(obj) is Payload else obj


def run_chunk(data: bytes, index: int, *, parts: CallableParts, mode: str) -> tuple[float, bytes]:
    """Run one task in a dask worker: ``(seconds it ran, encoded (ok, value))``.

    ``mode`` is ``"apply"`` (``data`` holds ``(args, kwds)``), ``"map"`` or
    ``"starmap"`` (``data`` holds a chunk of items).  Whatever the task
    raises, ``BaseException`` included, becomes its failure, with the remote
    traceback, as in MethodPool's workers.
    """
    started = time.perf_counter()
    key, label, payload, fallback = parts
    try:
        func = ShippedCallable(key, label, payload).resolve()
        work = _load_arguments(data, f"the arguments of task {index}")
        if mode == APPLY:
            args, kwds = work
            value = func(*args, **kwds)
        elif mode == MAP:
            value = list(map(func, work))
        else:
            value = list(itertools.starmap(func, work))
        ok = True
    except BaseException as exc:
        ok, value = False, portable_exception(exc, fallback)
    return time.perf_counter() - started, encode_result(0, index, ok, value, fallback)


class InitializerPlugin(_PluginBase):
    """Runs a pool's ``initializer(*initargs)`` once in each worker process.

    Dask calls :meth:`setup` on every worker when the plugin is registered,
    and on each worker that joins later (a restarted one, say).
    """

    idempotent = False

    def __init__(self, parts: tuple[bytes, str, Payload], arguments: bytes) -> None:
        self.parts = parts
        self.arguments = arguments

    def setup(self, worker: Any) -> None:
        key, label, payload = self.parts
        initializer = ShippedCallable(key, label, payload).resolve()
        initializer(*_load_arguments(self.arguments, "the initializer's arguments"))
