"""Shipping objects to workers: serialized once in the parent, loaded lazily.

:class:`Payload` is an object serialized by one serializer, together with the
``loads`` that reads it back.  It travels inside a plain-pickled task, and is
opened only where the trampoline (:mod:`methodpool._worker`) asks for it, so a
payload that cannot be loaded fails its task instead of killing the worker.

:class:`ShippedCallable` is a task callable in that form, plus a content key:
each worker loads a given callable once and keeps it in a small cache, so the
tasks after the first one pay only for carrying the bytes.
"""

from __future__ import annotations

import os
import pickle
import reprlib
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ._errors import IMPORTABLE_ADVICE, DeserializationError, SerializationError
from ._serializers import CLOUDPICKLE, DILL, PICKLE, Loads, Serializer


class BytesReference(Protocol):
    """Bytes kept elsewhere (a shared memory segment: :mod:`methodpool._sharedmem`)."""

    size: int

    def read(self) -> bytes: ...


_repr = reprlib.Repr()
_repr.maxother = _repr.maxstring = 120


def describe(obj: Any) -> str:
    """A short ``repr`` for error messages."""
    return _repr.repr(obj)


class Payload:
    """An object serialized by the serializer named ``serializer``.

    ``data`` is the bytes, or a reference to them (a
    :class:`~methodpool._sharedmem.SharedBytes`).
    """

    __slots__ = ("data", "loads", "serializer")

    def __init__(self, serializer: str, loads: Loads, data: bytes | BytesReference) -> None:
        self.serializer = serializer
        self.loads = loads
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (Payload, (self.serializer, self.loads, self.data))

    def load(self, what: str = "object") -> Any:
        """The object, rebuilt; :class:`DeserializationError` if it cannot be."""
        try:
            data = self.data
            return self.loads(data if isinstance(data, bytes) else data.read())
        except Exception as exc:
            raise DeserializationError(
                f"could not load {what} with {self.serializer!r} in process {os.getpid()}: "
                f"{type(exc).__name__}: {exc} — {IMPORTABLE_ADVICE}"
            ) from exc


class ShippedCallable:
    """A task callable in serialized form; calling it loads it (once per process)."""

    __slots__ = ("_wire", "key", "label", "payload")

    def __init__(self, key: bytes, label: str, payload: Payload) -> None:
        self.key = key
        self.label = label
        self.payload = payload
        self._wire: bytes | None = None

    def wire(self) -> bytes:
        """This callable as bytes for :func:`arrive`: the key, then the pickled parts.

        Every task carries its callable: the parts are pickled once, and the
        receiving side skips them when it has already loaded this key.
        """
        if self._wire is None:
            self._wire = self.key + pickle.dumps(
                (self.label, self.payload), pickle.HIGHEST_PROTOCOL
            )
        return self._wire

    def __reduce__(self) -> tuple[Any, ...]:
        return (arrive, (self.wire(),))

    def __repr__(self) -> str:
        return f"<ShippedCallable {self.label} via {self.payload.serializer!r}>"

    def resolve(self) -> Callable[..., Any]:
        """The callable, from this process's cache or freshly loaded."""
        # Dask workers run tasks in several threads: the cache is shared.
        with _loaded_lock:
            func = _loaded.get(self.key)
            if func is not None:
                _loaded.move_to_end(self.key)
                return func
        loaded: Callable[..., Any] = self.payload.load(f"the task callable {self.label}")
        with _loaded_lock:
            _loaded[self.key] = loaded
            if len(_loaded) > _LOADED_MAX:
                _loaded.popitem(last=False)
        return loaded

    def __call__(self, *args: Any, **kwds: Any) -> Any:
        return self.resolve()(*args, **kwds)


# Callables loaded in this process, most recently used last.  Bounded, so a
# long-lived worker serving many different callables does not grow forever.
_LOADED_MAX = 32
_KEY_BYTES = 16
_loaded: OrderedDict[bytes, Callable[..., Any]] = OrderedDict()
_loaded_lock = threading.Lock()


def arrive(wire: bytes) -> Any:
    """The callable of a :meth:`ShippedCallable.wire`: the loaded callable itself
    if this process has it, else a ShippedCallable, to be resolved (and its
    errors reported) by the task that uses it."""
    key = wire[:_KEY_BYTES]
    func = _loaded.get(key)
    if func is not None:
        return func
    label, payload = pickle.loads(wire[_KEY_BYTES:])
    return ShippedCallable(key, label, payload)


def resolve(func: Any) -> Any:
    """``func`` itself, or the callable a :class:`ShippedCallable` stands for."""
    return func.resolve() if type(func) is ShippedCallable else func


def _advice(tried: list[Serializer], culprit: Any) -> str:
    from ._serializers import _AUTO_DILL, AUTO_CLOUDPICKLE, dill_problem  # only after a failure

    by_value = any(s in (CLOUDPICKLE, AUTO_CLOUDPICKLE, DILL, _AUTO_DILL) for s in tried)
    code = isinstance(culprit, (types.FunctionType, types.CodeType, type))
    if tried == [PICKLE] or (code and not by_value):
        return (
            "use serializer='auto' (the default), 'cloudpickle' or 'dill', which "
            "carry lambdas, closures and interactively defined code by value"
        )
    kind = type(culprit).__qualname__
    # After cloudpickle, dill is the one left to suggest, unless it does not work
    # here: then it is not in "auto" either, or "auto"'s dill link stood in for
    # cloudpickle.  Where dill failed itself, there is nothing left to suggest.
    last = tried[-1]
    if last is AUTO_CLOUDPICKLE:
        last = CLOUDPICKLE
    problem = dill_problem() if last is CLOUDPICKLE or last is _AUTO_DILL else None
    if code:
        # A function or class itself, not something it holds: no __getstate__ to write.
        what = "class" if isinstance(culprit, type) else "function"
        fix = (
            f"define the {what} at module level, where workers import it by name "
            "instead of receiving it by value"
        )
        if last is CLOUDPICKLE and problem is None:
            return f"try serializer='dill', or {fix}"
        return fix + (f" (serializer='dill' cannot help: {problem})" if problem else "")
    state = (
        f"give the class that holds the {kind} a __getstate__ that leaves it out "
        "(and a __setstate__ that recreates it), or create it inside the task or in "
        "the pool's initializer"
    )
    if last is CLOUDPICKLE and problem is None:
        return (
            f"try serializer='dill' (it can carry locks and more), or give the class "
            f"that holds the {kind} a __getstate__ that leaves it out"
        )
    return state + (f" (serializer='dill' cannot help: {problem})" if problem else "")


def encode(obj: Any, chain: Iterable[Serializer], what: str, root: str) -> Payload:
    """``obj`` serialized by the first serializer of ``chain`` that can.

    Raises :class:`SerializationError` naming ``what`` failed, with which
    serializers, the attribute path (starting at ``root``) of the failing part
    and what to try instead.
    """
    failures: list[tuple[Serializer, Exception]] = []
    for serializer in chain:
        try:
            return Payload(serializer.name, serializer.loads, serializer.dumps(obj))
        except Exception as exc:
            failures.append((serializer, exc))
    tried = [serializer for serializer, _ in failures]
    from ._diagnose import find_unserializable  # only after a failure

    path, culprit, error = find_unserializable(obj, tried[-1].dumps, root)
    error = error or failures[-1][1]
    names = " or ".join(repr(s.name) for s in dict.fromkeys(tried))
    where = f": {path} ({type(culprit).__qualname__} object)" if path != root else ""
    message = (
        f"cannot serialize {what} with {names}{where}: {type(error).__name__}: "
        f"{error} — {_advice(tried, culprit)}"
    )
    raise SerializationError(message) from failures[-1][1]


def ship_callable(func: Any, chain: Iterable[Serializer]) -> ShippedCallable:
    """``func`` serialized for the task pipe (see :func:`encode` for errors)."""
    label = describe(func)
    root = getattr(func, "__qualname__", None) or type(func).__qualname__
    payload = encode(func, chain, label, root)
    import hashlib  # here, not at the top: workers never hash, and start faster without it

    key = hashlib.blake2b(payload.data, digest_size=_KEY_BYTES).digest()  # type: ignore[arg-type]
    return ShippedCallable(key, label, payload)
