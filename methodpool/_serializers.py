"""Serializers: how callables, arguments and results become bytes and back.

A :class:`Serializer` is a name, a ``dumps`` and a ``loads``.  Both halves may run
in worker processes (``loads`` for the callable and arguments, ``dumps`` for
results), so both travel with the tasks: module-level functions by reference,
and functions workers could not import (defined in ``__main__``, lambdas,
closures) by value.  That is also what makes a user-registered serializer work
under spawn and forkserver, where the registry of the parent does not exist.

Built in:

``pickle``
    plain pickle: strict standard-library behaviour.  Arguments and results
    travel exactly as in the stdlib, by multiprocessing's ``ForkingPickler``.
    Callables use the ``pickle`` module's own tables, without
    ``ForkingPickler``'s reducers for sockets and connections: those hand a
    file descriptor over once, but a shipped callable is loaded by every
    worker.
``cloudpickle``, ``dill``
    by-value serialization of lambdas, closures, nested and interactively defined
    functions and classes.  Imported on first use only: importing methodpool
    imports neither.
``auto`` (the default)
    not a serializer but a chain, tried per object: ``pickle`` first (fastest,
    smallest), then ``cloudpickle`` (which, in this chain, also carries thread
    locks, each as a new unlocked lock), then ``dill`` (some generators'
    frames, ...).  Objects defined in ``__main__`` skip plain pickle: workers
    started by spawn or forkserver, or forked before the definition ran, cannot
    import them by reference.

dill releases follow new Pythons with a delay, and one that predates the
interpreter may not serialize functions at all (dill 0.4.1 on Python 3.15).
Whether the installed dill works is found by trying, once per process and only
when needed (:func:`dill_problem`): where it does not, ``serializer="dill"``
raises :class:`ImportError` and ``auto`` goes without it.

Every serializer replaces references to pool objects by a placeholder
(:class:`PoolPlaceholder`), so ``self.pool.map(self.work, ...)`` works although
pools cannot be pickled.
"""

from __future__ import annotations

import importlib.util
import io
import multiprocessing.pool
import pickle
import platform
import sys
import threading
import types
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from typing import Any, NamedTuple, Protocol

from ._errors import PoolUsedInWorkerError

Dumps = Callable[[Any], bytes]
Loads = Callable[[bytes], Any]


class SupportsDumpsLoads(Protocol):
    """Any object with ``dumps(obj) -> bytes`` and ``loads(bytes) -> obj``."""

    def dumps(self, obj: Any, /) -> bytes: ...

    def loads(self, data: bytes, /) -> Any: ...


class Serializer(NamedTuple):
    """A named pair of ``dumps`` and ``loads`` (see the module docstring)."""

    name: str
    dumps: Dumps
    loads: Loads


class PoolPlaceholder:
    """What a worker receives where a task's callable referred to a pool.

    Any attribute access other than Python's own protocol lookups raises
    :class:`~methodpool.PoolUsedInWorkerError`.
    """

    __slots__ = ("_description",)

    def __init__(self, description: str) -> None:
        self._description = description

    def __reduce__(self) -> tuple[Any, ...]:
        return (PoolPlaceholder, (self._description,))

    def __repr__(self) -> str:
        return f"<PoolPlaceholder for {self._description}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise PoolUsedInWorkerError(
            f"the task used {self._description}.{name}, but pools cannot be used "
            "inside worker processes: the worker got a placeholder in its place. "
            "Submit the nested work from the parent process instead."
        )


def _placeholder_reduce(obj: Any) -> Any:
    if isinstance(obj, multiprocessing.pool.Pool):
        return (PoolPlaceholder, (repr(obj),))
    return NotImplemented


class _DefinedInMain(Exception):
    """Raised while pickling: the object refers to a ``__main__`` definition."""


class _PoolAwarePickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        return _placeholder_reduce(obj)


class _MainByValuePickler(pickle.Pickler):
    # Plain pickle stores functions and classes by reference ("__main__.f").
    # Workers started by spawn or forkserver import the main script as
    # __mp_main__ (or not at all: REPL, -c, notebooks), and forked workers do
    # not know what was defined after the fork, so those references break in
    # the worker.  Refusing them here sends the object on to cloudpickle, which
    # pickles __main__ definitions by value.
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (types.FunctionType, type)) and obj.__module__ == "__main__":
            raise _DefinedInMain(f"{obj.__qualname__} is defined in __main__")
        return _placeholder_reduce(obj)


def main_reference_guard(start_method: str) -> type[pickle.Pickler]:
    """A ``ForkingPickler`` for task arguments that refuses unreachable ``__main__`` definitions.

    Arguments go by plain pickle, which stores an instance of a class defined in
    ``__main__`` as a reference ("__main__.Point").  A worker can look that up
    only if it has the definition: forked workers have what ``__main__`` held
    when the pool started (and later forks have more); spawn and forkserver
    workers have no reliable copy.  Refused objects go on to the pool's
    by-value serializer.
    """
    main = sys.modules.get("__main__")
    inherited: dict[int, object] = {}
    if start_method == "fork" and main is not None:
        # Keep the objects, not only their ids, so an id cannot be reused.
        inherited = {
            id(value): value
            for value in list(vars(main).values())
            if isinstance(value, (types.FunctionType, type))
        }

    class _MainReferenceGuard(ForkingPickler):
        def reducer_override(self, obj: Any) -> Any:
            if (
                isinstance(obj, (types.FunctionType, type))
                and obj.__module__ == "__main__"
                and id(obj) not in inherited
            ):
                raise _DefinedInMain(f"{obj.__qualname__} is defined in __main__")
            return NotImplemented

    return _MainReferenceGuard


def _dump_with(pickler_class: type[pickle.Pickler], obj: Any) -> bytes:
    buf = io.BytesIO()
    pickler_class(buf, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def pickle_dumps(obj: Any) -> bytes:
    """Plain pickle with pool placeholders."""
    return _dump_with(_PoolAwarePickler, obj)


def pickle_dumps_main_by_value(obj: Any) -> bytes:
    """``pickle_dumps`` that refuses references to ``__main__`` definitions."""
    return _dump_with(_MainByValuePickler, obj)


_cloudpickler: type[pickle.Pickler] | None = None
_lock_carrying_cloudpickler: type[pickle.Pickler] | None = None


def _cloudpickler_class() -> type[pickle.Pickler]:
    global _cloudpickler
    if _cloudpickler is None:
        import cloudpickle

        class _PoolAwareCloudPickler(cloudpickle.Pickler):  # type: ignore[misc]
            def reducer_override(self, obj: Any) -> Any:
                reduced = _placeholder_reduce(obj)
                if reduced is NotImplemented:
                    return super().reducer_override(obj)
                return reduced

        _cloudpickler = _PoolAwareCloudPickler
    return _cloudpickler


def cloudpickle_dumps(obj: Any) -> bytes:
    """cloudpickle with pool placeholders."""
    return _dump_with(_cloudpickler_class(), obj)


_LOCK_TYPE = type(threading.Lock())
_RLOCK_TYPE = type(threading.RLock())


def _new_lock() -> Any:
    return threading.Lock()


def _new_rlock() -> Any:
    return threading.RLock()


def lock_carrying_cloudpickle_dumps(obj: Any) -> bytes:
    """``cloudpickle_dumps`` that also carries thread locks, each as a new,
    unlocked lock of the same kind in the process that loads it.

    A lock guards an object within one process; the loading process gets a
    copy of the object, which needs a lock of its own (a held one would
    deadlock the first task that takes it).  This is the ``auto`` chain's
    cloudpickle link, so that a bound method of an object holding a lock
    travels whether or not a working dill is installed (dill 0.4.1 serializes
    no function on Python 3.15).
    """
    global _lock_carrying_cloudpickler
    if _lock_carrying_cloudpickler is None:
        base = _cloudpickler_class()

        class _LockCarryingCloudPickler(base):  # type: ignore[misc,valid-type]
            def reducer_override(self, obj: Any) -> Any:
                kind = type(obj)
                if kind is _LOCK_TYPE:
                    return (_new_lock, ())
                if kind is _RLOCK_TYPE:
                    return (_new_rlock, ())
                return super().reducer_override(obj)

        _lock_carrying_cloudpickler = _LockCarryingCloudPickler
    return _dump_with(_lock_carrying_cloudpickler, obj)


_dill: Any = None
_dill_pickler: Any = None


def _import_dill() -> Any:
    # Importing dill copies its reducers into pickle._Pickler.dispatch, the
    # pure-Python pickler that every other library shares (dill.extend(True)).
    # Undo that unless dill was imported before us: using dill must not change
    # how other code pickles.
    global _dill
    if _dill is None:
        already_imported = "dill" in sys.modules
        import dill

        if not already_imported:
            dill.extend(False)
        _dill = dill
    return _dill


def _dill_dump(obj: Any, recurse: bool) -> bytes:
    global _dill_pickler
    if _dill_pickler is None:
        dill = _import_dill()

        class _PoolAwareDillPickler(dill.Pickler):  # type: ignore[misc,name-defined]
            def reducer_override(self, obj: Any) -> Any:
                return _placeholder_reduce(obj)

        _dill_pickler = _PoolAwareDillPickler
    buf = io.BytesIO()
    _dill_pickler(buf, pickle.HIGHEST_PROTOCOL, recurse=recurse).dump(obj)
    return buf.getvalue()


def dill_dumps(obj: Any) -> bytes:
    """dill with pool placeholders.

    ``recurse=True`` first: a function by value takes along only the globals it
    uses.  That recurses without end on a closure that calls itself (a nested
    recursive function), which plain ``recurse=False`` carries: then that.  If
    both fail, the first error is the one raised, unless it was the recursion.
    """
    try:
        return _dill_dump(obj, recurse=True)
    except Exception as exc:
        first = exc
    try:
        return _dill_dump(obj, recurse=False)
    except Exception:
        if isinstance(first, RecursionError):
            raise
        raise first from None


def dill_loads(data: bytes) -> Any:
    """``dill.loads``, importing dill without its global side effect."""
    return _import_dill().loads(data)


_UNPROBED: Any = object()
_dill_status: str | None = _UNPROBED


def _probe_function() -> Callable[[int], int]:
    factor = 3

    def nested(x: int) -> int:
        return factor * x

    return nested


def dill_problem() -> str | None:
    """Why the installed dill cannot serialize functions on this interpreter, or
    ``None`` if it can (or is not installed: see :func:`available_serializers`).

    Found by trying, once per process: dill dumps and loads a small closure, as
    methodpool would.  Imports dill.
    """
    global _dill_status
    if _dill_status is _UNPROBED:
        if not _available("dill"):
            return None  # not remembered: installing it later works
        problem = None
        try:
            if dill_loads(dill_dumps(_probe_function()))(2) != 6:
                problem = "a closure it loaded back computed a wrong result"
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            problem = (
                f"dill {getattr(_import_dill(), '__version__', '(unknown version)')} "
                f"cannot serialize functions on Python {platform.python_version()} ({problem})"
            )
        _dill_status = problem
    return _dill_status


def _auto_dill_dumps(obj: Any) -> bytes:
    # The dill link of "auto" chains made before dill_problem() was known (which
    # would have left dill out): it probes on first use, which costs nothing
    # more than the import of dill that using it needs anyway.  Where dill does
    # not work, it gives cloudpickle's answer (an error, cloudpickle having just
    # failed): the call fails, and its error is diagnosed, as without dill.
    if _dill_status is _UNPROBED:
        dill_problem()
    if _dill_status is not None:
        return lock_carrying_cloudpickle_dumps(obj)
    return dill_dumps(obj)


PICKLE = Serializer("pickle", pickle_dumps, pickle.loads)
CLOUDPICKLE = Serializer("cloudpickle", cloudpickle_dumps, pickle.loads)
# The cloudpickle link of "auto" (see lock_carrying_cloudpickle_dumps).
AUTO_CLOUDPICKLE = Serializer("cloudpickle", lock_carrying_cloudpickle_dumps, pickle.loads)
DILL = Serializer("dill", dill_dumps, dill_loads)
# The last link of "auto" (see _auto_dill_dumps); its output is dill's.
_AUTO_DILL = Serializer("dill", _auto_dill_dumps, dill_loads)
# First link of the "auto" chain; its output is plain pickle.
_PICKLE_MAIN_BY_VALUE = Serializer("pickle", pickle_dumps_main_by_value, pickle.loads)

AUTO = "auto"
_REGISTRY: dict[str, Serializer] = {s.name: s for s in (PICKLE, CLOUDPICKLE, DILL)}
_NEEDS_PACKAGE = {"cloudpickle": "cloudpickle", "dill": "dill"}


# Packages found installed: looking one up scans sys.path, which would cost
# every pool's construction about half a millisecond.  Not finding one is not
# remembered, so that installing it later works.
_found: set[str] = set()


def _available(name: str) -> bool:
    package = _NEEDS_PACKAGE.get(name)
    if package is None or package in _found:
        return True
    if importlib.util.find_spec(package) is None:
        return False
    _found.add(package)
    return True


class _ByValue:
    """A serializer half that workers cannot import by name, carried by value.

    Functions defined in ``__main__`` (a script's main block, a prompt, a
    notebook), lambdas and closures are pickled with cloudpickle when the
    serializer is made; each process rebuilds the function once, when it
    unpickles this wrapper.
    """

    __slots__ = ("_blob", "_func")

    def __init__(self, func: Callable[..., Any], blob: bytes) -> None:
        self._func = func
        self._blob = blob

    def __call__(self, arg: Any, /) -> Any:
        return self._func(arg)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load_by_value, (self._blob,))

    def __repr__(self) -> str:
        return f"<{self._func!r}, by value>"


def _load_by_value(blob: bytes) -> _ByValue:
    import cloudpickle

    return _ByValue(cloudpickle.loads(blob), blob)


def _portable(what: str, func: Any) -> Any:
    # Workers get a serializer's functions inside their process object and in
    # every task, pickled.  By reference ("module.name") is smallest, but only
    # works where the name can be imported: not for __main__ definitions
    # (spawn and forkserver workers re-import the main script without its main
    # block, or have none at a prompt), lambdas or closures.  Those go by value.
    if getattr(func, "__module__", None) != "__main__":
        try:
            pickle.dumps(func)
        except Exception:
            pass
        else:
            return func
    try:
        import cloudpickle

        return _ByValue(func, cloudpickle.dumps(func))
    except Exception as exc:
        raise ValueError(
            f"{what} {func!r} cannot be sent to worker processes, by name or by value "
            f"(cloudpickle): {type(exc).__name__}: {exc}"
        ) from None


def register_serializer(
    name: str,
    dumps: Dumps | SupportsDumpsLoads,
    loads: Loads | None = None,
    *,
    replace: bool = False,
) -> None:
    """Make ``serializer=name`` available to every pool created afterwards.

    Pass either ``dumps`` and ``loads`` functions, or one object with ``dumps``
    and ``loads`` methods (a module such as :mod:`pickle` or :mod:`marshal`
    works).  Workers get module-level functions by name; functions defined in
    ``__main__`` (a script, a prompt, a notebook), lambdas and closures by
    value, so they work under every start method.

    Raises :class:`ValueError` if ``name`` is taken (unless ``replace=True``),
    is ``"auto"``, or a function can be sent to workers neither by name nor
    by value; :class:`TypeError` if the arguments are not callables.
    """
    if loads is None:
        if not (
            callable(getattr(dumps, "dumps", None)) and callable(getattr(dumps, "loads", None))
        ):
            raise TypeError(
                "register_serializer(name, dumps, loads) takes two functions, or one "
                f"object with dumps() and loads() methods; got {dumps!r}"
            )
        serializer_object: Any = dumps
        dumps, loads = serializer_object.dumps, serializer_object.loads
    if not callable(dumps) or not callable(loads):
        raise TypeError(f"dumps and loads must be callable, got {dumps!r} and {loads!r}")
    if name == AUTO:
        raise ValueError("'auto' is the built-in serializer chain; pick another name")
    if name in _REGISTRY and not replace:
        raise ValueError(
            f"a serializer named {name!r} is already registered; pass replace=True to replace it"
        )
    _REGISTRY[name] = Serializer(name, _portable("dumps", dumps), _portable("loads", loads))


def _auto_links() -> tuple[Serializer, ...]:
    # cloudpickle, then dill; dill only if installed and not known not to work.
    # Not probed here unless dill is imported already: importing it would cost
    # every program's first pool more than the pool itself.
    links: list[Serializer] = [AUTO_CLOUDPICKLE] if _available("cloudpickle") else []
    if _available("dill"):
        if _dill_status is _UNPROBED and "dill" in sys.modules:
            dill_problem()
        if _dill_status is None or _dill_status is _UNPROBED:
            links.append(_AUTO_DILL)
    return tuple(links)


def available_serializers() -> list[str]:
    """Names accepted by ``serializer=``, ``"auto"`` first: the ones installed
    and working on this interpreter (finding out whether dill does imports it)."""
    return [
        AUTO,
        *(
            name
            for name, serializer in _REGISTRY.items()
            if _available(name) and (serializer is not DILL or dill_problem() is None)
        ),
    ]


def serializer_chain(spec: str | SupportsDumpsLoads) -> tuple[Serializer, ...]:
    """The serializers to try, in order, for the callable of a pool built with ``spec``.

    Raises :class:`ValueError` for an unknown name and :class:`ImportError` when a
    named serializer's package is not installed, or does not work on this
    interpreter (:func:`dill_problem`).
    """
    if not isinstance(spec, str):
        if not (callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None))):
            raise TypeError(
                f"serializer must be a name or an object with dumps() and loads(), got {spec!r}"
            )
        name = getattr(spec, "__name__", type(spec).__name__)
        return (Serializer(name, _portable("dumps", spec.dumps), _portable("loads", spec.loads)),)
    if spec == AUTO:
        return (_PICKLE_MAIN_BY_VALUE, *_auto_links())
    try:
        serializer = _REGISTRY[spec]
    except KeyError:
        raise ValueError(
            f"unknown serializer {spec!r}; choose one of {available_serializers()}, "
            "or add one with methodpool.register_serializer()"
        ) from None
    if not _available(spec):
        raise ImportError(
            f"serializer {spec!r} needs the {_NEEDS_PACKAGE[spec]!r} package, which is not "
            f"installed: pip install {_NEEDS_PACKAGE[spec]}"
        )
    if serializer is DILL:
        problem = dill_problem()
        if problem is not None:
            raise ImportError(
                f"serializer 'dill' does not work here: {problem}. Use serializer='auto' "
                "or 'cloudpickle', or a dill release that supports this Python"
            )
    return (serializer,)


def fallback_chain(spec: str | SupportsDumpsLoads) -> tuple[Serializer, ...]:
    """The serializers for arguments and results that plain pickle cannot carry.

    Empty for ``"pickle"`` (strict stdlib behaviour).
    """
    if spec == AUTO:
        return _auto_links()
    chain = serializer_chain(spec)
    return () if chain == (PICKLE,) else chain
