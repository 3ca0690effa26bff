"""Property: a MethodPool call gives what the builtin equivalent gives.

``pool.map(f, xs) == list(map(f, xs))`` for any input, chunk size, callable,
serializer and start method; likewise for the other methods.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from conftest import SERIALIZERS, SharedPools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from methodpool import MethodPool


class Scale:
    def __init__(self, k: int) -> None:
        self.k = k

    def apply(self, x: Any) -> Any:
        return (x, self.k) if not isinstance(x, int) else x * self.k


def make_closure(k: int) -> Any:
    return lambda x: repr(x) * k if isinstance(x, str) else (x, k)


FUNCTIONS = {
    "bound_method": lambda: Scale(3).apply,
    "partial": lambda: functools.partial(Scale.apply, Scale(2)),
    "closure": lambda: make_closure(2),
    "lambda": lambda: lambda x: [x, x],
    "builtin": lambda: repr,
}
PICKLABLE = {"bound_method", "partial", "builtin"}

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner),
    max_leaves=6,
)
inputs = st.lists(values, max_size=40)
chunksizes = st.none() | st.integers(min_value=1, max_value=12)

SETTINGS = settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def pool_for(
    shared_pools: SharedPools, start_method: str, serializer: str, kind: str
) -> MethodPool:
    if serializer == "pickle" and kind not in PICKLABLE:
        pytest.skip("plain pickle cannot carry this callable (tested in test_callables.py)")
    return shared_pools.get(start_method, serializer)


@pytest.mark.parametrize("kind", sorted(FUNCTIONS))
@pytest.mark.parametrize("serializer", SERIALIZERS)
@SETTINGS
@given(xs=inputs, chunksize=chunksizes)
def test_map_and_starmap_equal_the_builtins(
    shared_pools: SharedPools,
    start_method: str,
    serializer: str,
    kind: str,
    xs: list[Any],
    chunksize: int | None,
) -> None:
    pool = pool_for(shared_pools, start_method, serializer, kind)
    f = FUNCTIONS[kind]()
    expected = list(map(f, xs))
    assert pool.map(f, xs, chunksize) == expected
    assert pool.map_async(f, xs, chunksize).get(timeout=30) == expected
    assert pool.starmap(f, [(x,) for x in xs], chunksize) == expected


@pytest.mark.parametrize("kind", sorted(FUNCTIONS))
@pytest.mark.parametrize("serializer", SERIALIZERS)
@SETTINGS
@given(
    xs=inputs,
    chunksize=st.integers(min_value=1, max_value=12),
    buffersize=st.none() | st.integers(1, 5),
)
def test_imap_equals_the_builtin(
    shared_pools: SharedPools,
    start_method: str,
    serializer: str,
    kind: str,
    xs: list[Any],
    chunksize: int,
    buffersize: int | None,
) -> None:
    pool = pool_for(shared_pools, start_method, serializer, kind)
    f = FUNCTIONS[kind]()
    expected = list(map(f, xs))
    assert list(pool.imap(f, iter(xs), chunksize, buffersize=buffersize)) == expected
    unordered = list(pool.imap_unordered(f, iter(xs), chunksize, buffersize=buffersize))
    assert sorted(map(repr, unordered)) == sorted(map(repr, expected))


@pytest.mark.parametrize("serializer", SERIALIZERS)
@SETTINGS
@given(xs=st.lists(values, max_size=10))
def test_apply_async_equals_a_call(
    shared_pools: SharedPools, start_method: str, serializer: str, xs: list[Any]
) -> None:
    pool = pool_for(shared_pools, start_method, serializer, "bound_method")
    f = FUNCTIONS["bound_method"]()
    results = [pool.apply_async(f, (x,)) for x in xs]
    assert [r.get(timeout=30) for r in results] == [f(x) for x in xs]
