"""A catalogue of callables, one of each kind a user may hand to a pool.

Each entry is ``name -> factory``; a factory builds the callable fresh (so a
test may mutate it) and every callable maps ``x -> 2 * x + 1`` for ints.
``PICKLABLE`` lists those plain pickle can carry by reference.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from methodpool import MethodPool


def module_function(x: int) -> int:
    return 2 * x + 1


class Affine:
    def __init__(self, a: int = 2, b: int = 1) -> None:
        self.a, self.b = a, b

    def apply(self, x: int) -> int:
        return self.a * x + self.b

    def __call__(self, x: int) -> int:
        return self.apply(x)

    @classmethod
    def class_apply(cls, x: int) -> int:
        return 2 * x + 1

    @staticmethod
    def static_apply(x: int) -> int:
        return 2 * x + 1


class WithLock(Affine):
    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def apply(self, x: int) -> int:
        with self.lock:
            return super().apply(x)


class OwnsPool(Affine):
    """The common pattern: an object that keeps its pool and maps its own method."""

    def __init__(self, pool: MethodPool) -> None:
        super().__init__()
        self.pool = pool

    def run(self, xs: list[int]) -> list[int]:
        return self.pool.map(self.apply, xs)

    def use_pool(self, x: int) -> Any:
        return self.pool.map(abs, [x])


def make_closure(a: int = 2, b: int = 1) -> Callable[[int], int]:
    def affine(x: int) -> int:
        return a * x + b

    return affine


def make_local_class_method() -> Callable[[int], int]:
    class Local:
        def apply(self, x: int) -> int:
            return 2 * x + 1

    return Local().apply


def make_nested() -> Callable[[int], int]:
    def outer() -> Callable[[int], int]:
        def inner(x: int) -> int:
            return module_function(x)

        return inner

    return outer()


CALLABLES: dict[str, Callable[[], Callable[[int], int]]] = {
    "module_function": lambda: module_function,
    "bound_method": lambda: Affine().apply,
    "callable_instance": lambda: Affine(),
    "classmethod": lambda: Affine.class_apply,
    "staticmethod": lambda: Affine.static_apply,
    "partial_of_function": lambda: functools.partial(Affine.apply, Affine()),
    "lambda": lambda: lambda x: 2 * x + 1,
    "closure": make_closure,
    "nested_function": make_nested,
    "method_of_local_class": make_local_class_method,
    "partial_of_lambda": lambda: functools.partial(lambda a, x: a * x + 1, 2),
    "bound_method_holding_lock": lambda: WithLock().apply,
}
PICKLABLE = {
    "module_function",
    "bound_method",
    "callable_instance",
    "classmethod",
    "staticmethod",
    "partial_of_function",
}
# Plain cloudpickle cannot carry a lock; "auto" (whose cloudpickle link recreates
# locks) and dill can.
BEYOND_CLOUDPICKLE = {"bound_method_holding_lock"}
