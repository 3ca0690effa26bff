"""The call layer: what every front end does with a call before its tasks travel.

``MethodPool`` (:mod:`methodpool._pool`) and ``DaskPool``
(:mod:`methodpool._dask`) take the same calls and must answer them the same
way, so the parts of a call that do not depend on where tasks run are here,
once: checking the arguments, serializing the callable (:class:`Shipper`),
chunking (:func:`map_chunksize`, :func:`chunks`), labels, guarded callbacks,
and reading an ``imap`` input ahead of its consumer no further than
``buffersize`` (:class:`InputFeed`).
"""

from __future__ import annotations

import io
import itertools
import logging
import pickle
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._serializers import AUTO, SupportsDumpsLoads, fallback_chain, serializer_chain
from ._shipping import ShippedCallable, describe, encode, ship_callable

if TYPE_CHECKING:
    from ._stats import PoolCounters

logger = logging.getLogger("methodpool")

_BUILTIN_SPECS = frozenset({AUTO, "pickle", "cloudpickle", "dill"})
# The serializers that carry whatever a task needs of __main__ by value.
_BY_VALUE_SPECS = frozenset({AUTO, "cloudpickle", "dill"})


# -- arguments -------------------------------------------------------------------


def check_task_timeout(task_timeout: float | None) -> None:
    """Raise :class:`ValueError` unless ``task_timeout`` is ``None`` or a positive number."""
    if task_timeout is not None and not task_timeout > 0:
        raise ValueError(f"task_timeout must be a positive number of seconds, got {task_timeout!r}")


def check_chunksize(chunksize: int | None) -> None:
    """Raise :class:`ValueError` for a ``chunksize`` below 1 (``None``: the default)."""
    if chunksize is not None and chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")


def check_buffersize(buffersize: int | None) -> None:
    """Raise :class:`ValueError` unless ``buffersize`` is ``None`` or a positive integer."""
    if buffersize is not None and (not isinstance(buffersize, int) or buffersize < 1):
        raise ValueError(f"buffersize must be a positive integer, got {buffersize!r}")


def check_callable(func: Any) -> None:
    """Raise :class:`TypeError` unless ``func`` is callable."""
    if not callable(func):
        raise TypeError(f"the task function must be callable, got {describe(func)}")


# -- chunking --------------------------------------------------------------------


def map_chunksize(length: int, workers: int) -> int:
    """The stdlib's ``map`` chunk size: about four chunks per worker (0 for no items)."""
    if length == 0:
        return 0
    chunksize, extra = divmod(length, workers * 4)
    return chunksize + 1 if extra else chunksize


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` as lists of ``size`` (the last one shorter)."""
    source = iter(items)
    return iter(lambda: list(itertools.islice(source, size)), [])


# -- labels and callbacks --------------------------------------------------------


def label(func: Any) -> str:
    """A callable's name, for progress bars and task names: ``Model.score``."""
    return str(getattr(func, "__qualname__", type(func).__qualname__))


def guarded(callback: Callable[[Any], object] | None, kind: str) -> Any:
    """``callback``, made to log what it raises instead of raising it.

    A callback that raises kills the stdlib's result-handler thread, and
    every pending ``get()`` hangs (gh-83371); the result is delivered anyway.
    """
    if callback is None:
        return None

    def run(value: Any) -> None:
        try:
            callback(value)
        except Exception:
            logger.exception("%s %r raised; the result is still delivered", kind, callback)

    return run


# -- the callable ----------------------------------------------------------------


def _is_importable_function(func: Any) -> bool:
    # A module-level function that workers can import by name: plain pickle
    # stores it as "module.name" whatever the serializer, so there is nothing
    # to ship.  Everything defined in __main__ is shipped (see _serializers).
    if type(func) not in (types.FunctionType, types.BuiltinFunctionType):
        return False
    module = getattr(func, "__module__", None)
    name = getattr(func, "__qualname__", "")
    if module in (None, "__main__", "__mp_main__") or "." in name or "<" in name:
        return False
    return getattr(sys.modules.get(module), name, None) is func


class Shipper:
    """A pool's serializer choice, and the serializing of its task callables.

    ``by_reference``: plain importable functions travel as they are, as in the
    stdlib (for the built-in serializers only: a registered one may want to
    see every callable).

    Raises :class:`ValueError` for an unknown serializer name and
    :class:`ImportError` when the chosen serializer's package is missing.
    """

    def __init__(
        self, spec: str | SupportsDumpsLoads, counters: PoolCounters, by_reference: bool = True
    ) -> None:
        self.spec = spec
        self.chain = serializer_chain(spec)
        # For arguments and results that plain pickle cannot carry (empty: "pickle").
        self.fallback = fallback_chain(spec)
        self._counters = counters
        self._by_reference = by_reference and isinstance(spec, str) and spec in _BUILTIN_SPECS

    @property
    def name(self) -> str:
        """The name of the serializer (or chain)."""
        return self.spec if isinstance(self.spec, str) else self.chain[0].name

    @property
    def carries_main_by_value(self) -> bool:
        """Whether tasks never need workers to import the main module."""
        return isinstance(self.spec, str) and self.spec in _BY_VALUE_SPECS

    def portable_arguments(self, args: Any, pickler: type[pickle.Pickler], what: str) -> Any:
        """``args`` as they are where ``pickler`` can carry them, else as a
        :class:`~methodpool._shipping.Payload` of the fallback serializers
        (:class:`~methodpool.SerializationError` if none can)."""
        try:
            pickler(io.BytesIO(), pickle.HIGHEST_PROTOCOL).dump(args)
        except Exception:
            if not self.fallback:
                raise
            return encode(args, self.fallback, what, "initargs")
        return args

    def ship(self, func: Any) -> Any:
        """``func`` as tasks carry it: itself (an importable function) or a
        :class:`~methodpool._shipping.ShippedCallable`.

        Raises :class:`TypeError` if it is not callable and
        :class:`~methodpool.SerializationError` if it cannot be serialized.
        """
        if self._by_reference and _is_importable_function(func):
            return func
        return self.ship_always(func)

    def ship_always(self, func: Any) -> ShippedCallable:
        """``func`` serialized, even an importable function (errors as :meth:`ship`)."""
        check_callable(func)
        self._counters.callables_serialized += 1
        return ship_callable(func, self.chain)


# -- buffersize --------------------------------------------------------------------


class InputFeed:
    """An input read on demand, with a count of what was read and consumed.

    ``buffersize`` is the most items (tasks) read ahead of those consumed;
    ``None``: no bound.  Not thread-safe: the caller serializes its use.
    """

    __slots__ = ("_items", "buffersize", "consumed", "exhausted", "read")

    def __init__(self, items: Iterable[Any], buffersize: int | None) -> None:
        self._items = iter(items)
        self.buffersize = buffersize
        self.read = 0
        self.consumed = 0
        self.exhausted = False

    def room(self) -> int | None:
        """How many more may be read now (``None``: any number)."""
        if self.buffersize is None:
            return None
        return max(0, self.buffersize - (self.read - self.consumed))

    def take(self, count: int) -> list[Any]:
        """Up to ``count`` more items (fewer once the input ends: then ``exhausted``).

        What the input raises propagates.
        """
        batch = list(itertools.islice(self._items, count))
        self.read += len(batch)
        if len(batch) < count:
            self.exhausted = True
        return batch

    def rest(self) -> Iterator[Any]:
        """The items not read yet, to be read by someone else; the feed is done."""
        self.exhausted = True
        return self._items
