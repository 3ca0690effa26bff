"""methodpool: a drop-in ``multiprocessing.Pool`` that accepts any callable.

Bound methods, lambdas, closures, nested and interactively defined functions
travel to the workers through a pluggable serializer; everything else is the
standard library's ``Pool``.  Importing methodpool changes no global state.

The pool and its result classes are imported on first use (PEP 562): every
worker process imports this package, and a light import is a faster start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    DeserializationError,
    InitializerError,
    NestedPoolError,
    PoolTerminatedError,
    PoolUsedInWorkerError,
    RemoteTaskError,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
    WorkerStartError,
)

if TYPE_CHECKING:
    from ._backend import MaybeEncodingError, RemoteTraceback
    from ._dask import DaskPool as DaskPool  # re-exported, outside __all__ (see _LAZY)
    from ._executor import ExecutorInitializerError, ExecutorWorkerLostError, ProcessPoolExecutor
    from ._patch import patch, unpatch
    from ._pool import MethodPool, Pool
    from ._results import ListResult, ResultIterator, TaskResult
    from ._serializers import available_serializers, register_serializer
    from ._stats import CallStats

__version__ = "0.1.0"

_LAZY = {
    "CallStats": "._stats",
    # Needs the optional distributed package (methodpool[dask]); without it,
    # using the name raises ImportError.  Left out of __all__ so that
    # `from methodpool import *` works without it.
    "DaskPool": "._dask",
    "ExecutorInitializerError": "._executor",
    "ExecutorWorkerLostError": "._executor",
    "ListResult": "._results",
    "MaybeEncodingError": "._backend",
    "MethodPool": "._pool",
    "Pool": "._pool",
    "ProcessPoolExecutor": "._executor",
    "RemoteTraceback": "._backend",
    "ResultIterator": "._results",
    "TaskResult": "._results",
    "available_serializers": "._serializers",
    "patch": "._patch",
    "register_serializer": "._serializers",
    "unpatch": "._patch",
}


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'methodpool' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CallStats",
    "DeserializationError",
    "ExecutorInitializerError",
    "ExecutorWorkerLostError",
    "InitializerError",
    "ListResult",
    "MaybeEncodingError",
    "MethodPool",
    "NestedPoolError",
    "Pool",
    "PoolTerminatedError",
    "PoolUsedInWorkerError",
    "ProcessPoolExecutor",
    "RemoteTaskError",
    "RemoteTraceback",
    "ResultIterator",
    "SerializationError",
    "TaskResult",
    "TaskTimeoutError",
    "WorkerLostError",
    "WorkerStartError",
    "available_serializers",
    "patch",
    "register_serializer",
    "unpatch",
]
