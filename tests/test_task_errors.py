"""Tasks, arguments and results that cannot travel fail their task, clearly.

The pool keeps working after each of them.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from callables import module_function
from conftest import AUTO_BY_VALUE

import methodpool
from methodpool import (
    DeserializationError,
    MaybeEncodingError,
    MethodPool,
    RemoteTaskError,
    RemoteTraceback,
    SerializationError,
)


def still_works(pool: MethodPool) -> None:
    assert pool.map(module_function, range(10)) == [2 * x + 1 for x in range(10)]


@pytest.fixture
def module_only_the_parent_can_import(tmp_path: Path) -> Any:
    """A module created after the workers started, on a path only the parent has."""
    (tmp_path / "parent_only_mod.py").write_text(
        "class Greeter:\n"
        "    def greet(self, x):\n"
        "        return f'hi {x}'\n"
        "def greet(x):\n"
        "    return f'hi {x}'\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import parent_only_mod

        yield parent_only_mod
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("parent_only_mod", None)


def test_task_callable_missing_in_the_worker(
    fresh_pool: MethodPool, module_only_the_parent_can_import: Any
) -> None:
    still_works(fresh_pool)  # workers are up before the module exists
    mod = module_only_the_parent_can_import
    for func in (mod.greet, mod.Greeter().greet):
        with pytest.raises(DeserializationError, match="No module named 'parent_only_mod'"):
            fresh_pool.map(func, [1, 2])
    still_works(fresh_pool)


def test_argument_missing_in_the_worker(
    fresh_pool: MethodPool, module_only_the_parent_can_import: Any
) -> None:
    still_works(fresh_pool)
    results = fresh_pool.map_async(str, [module_only_the_parent_can_import.Greeter()])
    with pytest.raises(DeserializationError, match="could not load the task in the worker"):
        results.get(timeout=30)
    still_works(fresh_pool)


class NeedsTwoArgs(Exception):
    """An exception pickle can write but not rebuild (CPython gh-79492)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


def raise_needs_two_args(x: int) -> None:
    raise NeedsTwoArgs(x, "boom")


class HoldsGenerator(Exception):
    def __init__(self) -> None:
        super().__init__("with a generator")
        self.gen = (i for i in range(3))


def raise_holds_generator(x: int) -> None:
    raise HoldsGenerator()


@pytest.mark.parametrize(
    ("func", "type_name", "message"),
    [
        (raise_needs_two_args, "test_task_errors.NeedsTwoArgs", "7: boom"),
        (raise_holds_generator, "test_task_errors.HoldsGenerator", "with a generator"),
    ],
)
def test_exception_that_cannot_travel_keeps_type_message_and_traceback(
    pool: MethodPool, func: Any, type_name: str, message: str
) -> None:
    with pytest.raises(RemoteTaskError) as info:
        pool.apply(func, (7,))
    assert info.value.type_name == type_name
    assert info.value.message == message
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert f"in {func.__name__}" in str(info.value.__cause__)
    still_works(pool)


def exit_task(code: int) -> None:
    sys.exit(code)


def interrupt_task(_: int) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("func", "type_name"),
    [(exit_task, "builtins.SystemExit"), (interrupt_task, "builtins.KeyboardInterrupt")],
)
def test_exit_and_interrupt_inside_a_task_fail_only_that_task(
    pool: MethodPool, func: Any, type_name: str
) -> None:
    outcomes = [pool.apply_async(func, (3,)) for _ in range(4)]  # more than there are workers
    for outcome in outcomes:
        with pytest.raises(RemoteTaskError) as info:
            outcome.get(timeout=30)
        assert info.value.type_name == type_name
    still_works(pool)


def test_unpicklable_argument_under_strict_pickle_fails_like_the_stdlib(
    shared_pools: Any, start_method: str
) -> None:
    pool = shared_pools.get(start_method, "pickle")
    result = pool.map_async(module_function, [1, threading.Lock()], chunksize=1)
    with pytest.raises(TypeError, match=r"cannot pickle '_thread\.lock' object"):
        result.get(timeout=30)  # the stdlib's own error, as multiprocessing.Pool gives it
    still_works(pool)


def test_argument_no_serializer_can_carry_fails_its_task(pool: MethodPool) -> None:
    generator = (i for i in range(3))
    with pytest.raises(SerializationError, match=rf"{AUTO_BY_VALUE}.*generator"):
        pool.apply(module_function, (generator,))
    still_works(pool)


def make_generator(_: int) -> Any:
    return (i for i in range(3))


def test_result_no_serializer_can_carry_is_a_maybe_encoding_error(pool: MethodPool) -> None:
    with pytest.raises(MaybeEncodingError, match="Error sending result"):
        pool.apply(make_generator, (1,))
    still_works(pool)


def make_lambda(k: int) -> Any:
    return lambda x: x * k


def test_result_plain_pickle_cannot_carry_travels_by_the_serializer(pool: MethodPool) -> None:
    assert [f(2) for f in pool.map(make_lambda, [1, 5])] == [2, 10]


def test_strict_pickle_refuses_such_a_result_like_the_stdlib(
    shared_pools: Any, start_method: str
) -> None:
    pool = shared_pools.get(start_method, "pickle")
    with pytest.raises(MaybeEncodingError):
        pool.apply(make_lambda, (1,))
    with (
        multiprocessing.get_context(start_method).Pool(1) as stdlib_pool,
        pytest.raises(MaybeEncodingError),
    ):
        stdlib_pool.apply(make_lambda, (1,))


def test_public_exceptions_are_shown_under_the_name_they_are_imported_by() -> None:
    errors = [
        value
        for name in methodpool.__all__
        if isinstance(value := getattr(methodpool, name), type)
        and issubclass(value, BaseException)
        and value.__module__.startswith("methodpool")
    ]
    assert len(errors) >= 8
    for error in errors:
        assert f"{error.__module__}.{error.__qualname__}" == f"methodpool.{error.__name__}"
