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
from ._pool import MethodPool, Pool, TaskResult
from ._serializers import available_serializers, register_serializer

__version__ = "0.1.0"

__all__ = [
    "DeserializationError",
    "InitializerError",
    "MaybeEncodingError",
    "MethodPool",
    "Pool",
    "PoolTerminatedError",
    "PoolUsedInWorkerError",
    "RemoteTaskError",
    "RemoteTraceback",
    "SerializationError",
    "TaskResult",
    "TaskTimeoutError",
    "WorkerLostError",
    "available_serializers",
    "register_serializer",
]
