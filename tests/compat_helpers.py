"""Task functions for test_stdlib_compat, ported from CPython's _test_multiprocessing.

They live at module level in a module of their own so that plain pickle carries
them by reference and workers started by spawn or forkserver can import them.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from typing import Any


def sqr(x: int, wait: float = 0.0) -> int:
    time.sleep(wait)
    return x * x


def mul(x: int, y: int) -> int:
    return x * y


def identity(x: Any) -> Any:
    return x


def raise_large_valuerror(wait: float) -> None:
    time.sleep(wait)
    raise ValueError("x" * 1024**2)


class CountedObject:
    n_instances = 0

    def __new__(cls) -> CountedObject:
        cls.n_instances += 1
        return object.__new__(cls)

    def __del__(self) -> None:
        type(self).n_instances -= 1


class SayWhenError(ValueError):
    pass


def exception_throwing_generator(total: int, when: int) -> Iterator[int]:
    if when == -1:
        raise SayWhenError("Somebody said when")
    for i in range(total):
        if i == when:
            raise SayWhenError("Somebody said when")
        yield i


class SpecialIterable:
    """Claims a length of 1, raises on the first ``next``."""

    def __iter__(self) -> SpecialIterable:
        return self

    def __next__(self) -> int:
        raise SayWhenError

    def __len__(self) -> int:
        return 1


class Unpicklable:
    def __reduce__(self) -> Any:
        raise RuntimeError("cannot pickle")


def raising() -> None:
    raise KeyError("key")


def raise_runtime_error() -> None:
    raise RuntimeError(123)  # some comment


def raise_at_3(x: int) -> int:
    if x == 3:
        raise ValueError(x)
    return x


def unpicklable_lambda_result() -> Any:
    return lambda: 42


def generator_result() -> Any:
    return (i for i in range(3))


def pid_of(_x: Any = None) -> int:
    return os.getpid()


def pid_and_sqr(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def sleep_then_return(wait: float, value: Any) -> Any:
    time.sleep(wait)
    return value


# Set by initializer() in the workers.
INIT_CALLS = 0
INIT_STATE: Any = None


def initializer(path: str, value: Any) -> None:
    global INIT_CALLS, INIT_STATE
    INIT_CALLS += 1
    INIT_STATE = value
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def worker_state(_x: Any = None) -> tuple[int, int, Any]:
    return os.getpid(), INIT_CALLS, INIT_STATE


# Set in the parent by a test: forked workers inherit it, spawned ones do not.
PARENT_MARK: Any = None


def process_facts(_x: Any = None) -> tuple[tuple[str, ...], int, Any]:
    """The class names of this process object's MRO, the parent pid, the mark."""
    mro = type(multiprocessing.current_process()).__mro__
    return tuple(c.__name__ for c in mro), os.getppid(), PARENT_MARK


def delayed(item: tuple[float, Any]) -> Any:
    wait, value = item
    time.sleep(wait)
    return value


def call(func: Any) -> Any:
    return func()
