"""Task exceptions that do not rebuild from their ``args``, rebuilt faithfully.

Pickle rebuilds an exception as ``cls(*exc.args)`` and then sets its
``__dict__``.  A class whose ``__init__`` takes other arguments than the
``args`` it passes up, such as ``HTTPError(status, url)`` calling
``super().__init__(f"{status} {url}")``, raises ``TypeError`` there (CPython
gh-79492).  For such an exception the worker sends an :class:`ExceptionRecord`
instead (:func:`stand_in`): its class, ``args`` and ``__dict__``, serialized on
their own.  Unpickling the record, wherever a result is decoded, makes the
exception again (:func:`rebuild_exception`) with ``cls.__new__(cls)``, then sets
``args`` and the attributes, without calling ``__init__``: the same class (so
``except HTTPError`` matches), the same ``args`` and attributes, and, like every
task exception, the worker's traceback as ``__cause__``.

What cannot be rebuilt so (the class cannot be loaded in the parent, an
attribute cannot be serialized, ``cls.__new__(cls)`` fails) becomes a
:class:`~methodpool.RemoteTaskError` whose message says why, and what would fix
it.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from multiprocessing.reduction import ForkingPickler
from typing import Any

from ._errors import RemoteTaskError, SerializationError
from ._serializers import Serializer
from ._shipping import Payload, describe, encode


def _fix(how: str = "") -> str:
    return (
        f"give the exception class a __reduce__ that rebuilds it{how}: "
        "`return (type(self), (...))` with the arguments its __init__ takes"
    )


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<str() failed on the {type(exc).__name__}>"


def remote_task_error(exc: BaseException, reason: str = "") -> RemoteTaskError:
    """The :class:`~methodpool.RemoteTaskError` standing in for ``exc``."""
    return RemoteTaskError(_type_name(type(exc)), _message(exc), reason)


class ExceptionRecord:
    """An exception as its class, ``args`` and ``__dict__``, serialized apart.

    ``state`` is the pickled ``(class, args, attributes)``, or a
    :class:`~methodpool._shipping.Payload` of them when plain pickle could not
    carry them.  Unpickled, a record is the exception itself (or a
    :class:`~methodpool.RemoteTaskError` saying why it is not).
    """

    __slots__ = ("message", "state", "type_name")

    def __init__(self, type_name: str, message: str, state: bytes | Payload) -> None:
        self.type_name = type_name
        self.message = message
        self.state = state

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild_exception, (self.type_name, self.message, self.state))


def _unserializable_part(exc: BaseException, dumps: Any) -> str:
    """Which part of ``exc`` ``dumps`` fails on, in words."""
    parts: list[tuple[str, Any]] = [("its class", type(exc)), ("its args", exc.args)]
    parts += [(f"its attribute {name!r}", value) for name, value in vars(exc).items()]
    for what, value in parts:
        try:
            dumps(value)
        except Exception as error:
            return (
                f"{what} ({type(value).__qualname__} object) cannot be serialized: "
                f"{type(error).__name__}: {error}"
            )
    return "it cannot be serialized"


def stand_in(exc: BaseException, fallback: Sequence[Serializer]) -> Any:
    """What a worker sends for ``exc``, which does not travel as it is.

    An :class:`ExceptionRecord` for an :class:`Exception` whose class, ``args``
    and attributes can be serialized (by plain pickle, else by the pool's
    ``fallback`` serializers); otherwise a :class:`~methodpool.RemoteTaskError`
    (``SystemExit`` and ``KeyboardInterrupt`` included: raised in the parent,
    they would stop it).
    """
    if not isinstance(exc, Exception):
        return remote_task_error(exc)
    type_name, message = _type_name(type(exc)), _message(exc)
    state = (type(exc), exc.args, dict(vars(exc)))
    try:
        return ExceptionRecord(type_name, message, bytes(ForkingPickler.dumps(state)))
    except Exception:
        pass
    try:
        if fallback:
            return ExceptionRecord(type_name, message, encode(state, fallback, type_name, "exc"))
    except SerializationError:
        pass
    dumps = fallback[-1].dumps if fallback else ForkingPickler.dumps
    return RemoteTaskError(
        type_name,
        message,
        f"it could not be sent to the parent, as it is nor as its class, args and "
        f"attributes: {_unserializable_part(exc, dumps)}; {_fix(' without that part')}",
    )


def rebuild_exception(type_name: str, message: str, state: bytes | Payload) -> BaseException:
    """The exception an :class:`ExceptionRecord` stands for, made without ``__init__``.

    Called by pickle, in the process that decodes the task's result; never
    raises: what cannot be rebuilt becomes a :class:`~methodpool.RemoteTaskError`.
    """
    try:
        if type(state) is Payload:
            try:
                cls, args, attributes = state.load()
            except Exception as error:
                raise error.__cause__ or error from None
        else:
            cls, args, attributes = pickle.loads(state)  # type: ignore[arg-type]
    except Exception as error:
        return RemoteTaskError(
            type_name,
            message,
            f"it does not rebuild from its args, and its class, args or attributes could "
            f"not be loaded in this process: {type(error).__name__}: {error}; make every "
            f"class they need importable here (define them in a module this process can "
            f"import), or {_fix(' from parts that can be loaded here')}",
        )
    try:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise TypeError(f"{describe(cls)} is not an exception class")
        exc = cls.__new__(cls)
        exc.args = args
        exc.__dict__.update(attributes)
    except Exception as error:
        return RemoteTaskError(
            type_name,
            message,
            f"it does not rebuild from its args, and {type_name}.__new__ could not make it "
            f"without them: {type(error).__name__}: {error}; {_fix()}",
        )
    return exc
