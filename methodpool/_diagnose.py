"""Finding which part of an object a serializer chokes on.

Runs only after a serializer failed, so it may be slow: it serializes the
object's parts one by one and descends into the first part that fails, until
it reaches a part none of whose own parts fail.  The result is an attribute
path such as ``self.conn._sock`` for the error message.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterator
from typing import Any

_MAX_DEPTH = 12
_MAX_CHILDREN = 200


def _children(obj: Any, path: str, root: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, types.MethodType):
        # A bound method's instance reads best as the "self" its code uses.
        yield ("self" if path == root else f"{path}.__self__"), obj.__self__
        yield f"{path}.__func__", obj.__func__
    elif isinstance(obj, functools.partial):
        yield f"{path}.func", obj.func
        for index, arg in enumerate(obj.args):
            yield f"{path}.args[{index}]", arg
        for key, value in obj.keywords.items():
            yield f"{path}.keywords[{key!r}]", value
    elif isinstance(obj, types.FunctionType):
        code = obj.__code__
        for name, cell in zip(code.co_freevars, obj.__closure__ or (), strict=False):
            try:
                yield f"{path} (closure variable {name!r})", cell.cell_contents
            except ValueError:  # empty cell
                continue
        for name in code.co_names:
            if name in obj.__globals__:
                yield f"{path} (global {name!r})", obj.__globals__[name]
        for index, default in enumerate(obj.__defaults__ or ()):
            yield f"{path}.__defaults__[{index}]", default
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield f"{path}[{key!r}]", value
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for index, item in enumerate(obj):
            yield f"{path}[{index}]", item
    elif not isinstance(obj, (type, types.ModuleType, types.BuiltinFunctionType)):
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            for key, value in state.items():
                yield f"{path}.{key}", value
        for cls in type(obj).__mro__:
            for slot in cls.__dict__.get("__slots__", ()):
                if hasattr(obj, slot) and slot not in ("__dict__", "__weakref__"):
                    yield f"{path}.{slot}", getattr(obj, slot)


def _fails(dumps: Callable[[Any], bytes], obj: Any) -> BaseException | None:
    try:
        dumps(obj)
    except Exception as exc:
        return exc
    return None


def find_unserializable(
    obj: Any, dumps: Callable[[Any], bytes], root: str
) -> tuple[str, Any, BaseException | None]:
    """The deepest part of ``obj`` that ``dumps`` fails on: ``(path, part, error)``.

    ``root`` names ``obj`` in the path; a bound method's instance is called
    ``self``.  ``error`` is ``None`` only if ``obj`` itself serializes.
    """
    path, culprit, error = root, obj, _fails(dumps, obj)
    if error is None:
        return path, culprit, None
    seen = {id(obj)}
    for _ in range(_MAX_DEPTH):
        failing_child = None
        for index, (child_path, child) in enumerate(_children(culprit, path, root)):
            if index >= _MAX_CHILDREN:
                break
            if id(child) in seen:
                continue
            seen.add(id(child))
            child_error = _fails(dumps, child)
            if child_error is not None:
                failing_child = child_path, child, child_error
                break
        if failing_child is None:
            break
        path, culprit, error = failing_child
    return path, culprit, error
