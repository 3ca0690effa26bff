"""methodpool: a drop-in ``multiprocessing.Pool`` that accepts any callable.

Bound methods, lambdas, closures, nested and interactively defined functions
travel to the workers through a pluggable serializer; everything else is the
standard library's ``Pool``.  Importing methodpool changes no global state.
"""

from ._backend import MaybeEncodingError, RemoteTraceback
from ._errors import (
    DeserializationError,
    InitializerError,
    PoolTerminatedError,
    PoolUsedInWorkerError,
    RemoteTaskError,
    SerializationError,
    TaskTimeoutError,
    WorkerLostError,
)
from ._patch import patch, unpatch
from ._pool import MethodPool, Pool
from ._results import ListResult, ResultIterator, TaskResult
from ._serializers import available_serializers, register_serializer
from ._stats import CallStats

__version__ = "0.1.0"

__all__ = [
    "CallStats",
    "DeserializationError",
    "InitializerError",
    "ListResult",
    "MaybeEncodingError",
    "MethodPool",
    "Pool",
    "PoolTerminatedError",
    "PoolUsedInWorkerError",
    "RemoteTaskError",
    "RemoteTraceback",
    "ResultIterator",
    "SerializationError",
    "TaskResult",
    "TaskTimeoutError",
    "WorkerLostError",
    "available_serializers",
    "patch",
    "register_serializer",
    "unpatch",
]
