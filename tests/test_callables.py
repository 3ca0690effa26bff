"""Every kind of callable through every Pool method, serializer and start method."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from callables import BEYOND_CLOUDPICKLE, CALLABLES, PICKLABLE, OwnsPool
from conftest import DILL_WORKS, SERIALIZERS, SharedPools

from methodpool import MethodPool, PoolUsedInWorkerError, SerializationError

XS = list(range(23))
EXPECTED = [2 * x + 1 for x in XS]


def run_map(pool: MethodPool, f: Callable[[int], int]) -> list[int]:
    return pool.map(f, XS)


def run_map_chunked(pool: MethodPool, f: Callable[[int], int]) -> list[int]:
    return pool.map(f, XS, chunksize=5)


def run_map_async(pool: MethodPool, f: Callable[[int], int]) -> list[int]:
    return pool.map_async(f, XS).get(timeout=30)


def run_imap(pool: MethodPool, f: Callable[[int], int]) -> list[int]:
    return list(pool.imap(f, XS))


def run_imap_chunked(pool: MethodPool, f: Callable[[int], int]) -> list[int]:
    return list(pool.imap(f, XS, chunksize=4))


def run_imap_unordered(pool: MethodPool, f: Callable[[int], int]) -> list[int]:
    return sorted(pool.imap_unordered(f, XS, chunksize=3))


def run_starmap(pool: MethodPool, f: Callable[[int], int]) -> list[int]:
    return pool.starmap(f, [(x,) for x in XS])


def run_starmap_async(pool: MethodPool, f: Callable[[int], int]) -> list[int]:
    return pool.starmap_async(f, [(x,) for x in XS]).get(timeout=30)


def run_apply(pool: MethodPool, f: Callable[[int], int]) -> list[int]:
    return [pool.apply(f, (x,)) for x in XS[:3]] + EXPECTED[3:]


def run_apply_async(pool: MethodPool, f: Callable[[int], int]) -> list[int]:
    seen: list[Any] = []
    done = threading.Event()

    def callback(value: int) -> None:
        seen.append((threading.current_thread() is not threading.main_thread(), value))
        done.set()

    results = [pool.apply_async(f, (x,), callback=callback) for x in XS]
    values = [r.get(timeout=30) for r in results]
    assert done.wait(10)
    assert sorted(v for _, v in seen) == values  # callbacks ran in the parent...
    assert all(in_handler_thread for in_handler_thread, _ in seen)  # ...on the result thread
    return values


APIS = {name.removeprefix("run_"): fn for name, fn in globals().items() if name.startswith("run_")}


def serializer_can_carry(serializer: str, name: str) -> bool:
    if serializer == "pickle":
        return name in PICKLABLE
    if name in BEYOND_CLOUDPICKLE:
        return serializer == "auto" or (serializer == "dill" and DILL_WORKS)
    return True


@pytest.mark.parametrize("api", sorted(APIS))
@pytest.mark.parametrize("kind", sorted(CALLABLES))
@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_every_callable_through_every_api(
    shared_pools: SharedPools, start_method: str, serializer: str, kind: str, api: str
) -> None:
    pool = shared_pools.get(start_method, serializer)
    f = CALLABLES[kind]()
    if serializer_can_carry(serializer, kind):
        assert APIS[api](pool, f) == EXPECTED
    else:
        with pytest.raises(SerializationError):
            APIS[api](pool, f)


def test_initializer_may_be_a_lambda(ctx: Any) -> None:
    import callables

    with MethodPool(
        2, initializer=lambda k: setattr(callables, "STATE", k), initargs=(7,), context=ctx
    ) as p:
        assert p.map(lambda _: getattr(callables, "STATE", None), range(4)) == [7, 7, 7, 7]
    assert not hasattr(callables, "STATE")  # it ran in the workers, not here


def test_method_of_object_that_owns_the_pool(pool: MethodPool) -> None:
    owner = OwnsPool(pool)
    assert owner.run(XS) == EXPECTED


def test_pool_placeholder_refuses_use_in_worker(pool: MethodPool) -> None:
    owner = OwnsPool(pool)
    with pytest.raises(PoolUsedInWorkerError, match=r"\.map, but pools cannot be used"):
        pool.apply(owner.use_pool, (1,))


def test_stdlib_pool_reference_is_replaced_too(pool: MethodPool) -> None:
    import multiprocessing.pool

    with multiprocessing.pool.ThreadPool(1) as tp:
        owner = OwnsPool(tp)  # type: ignore[arg-type]
        assert pool.map(owner.apply, [1, 2]) == [3, 5]


def test_unpicklable_arguments_and_results_travel_with_the_serializer(pool: MethodPool) -> None:
    fs = pool.map(lambda k: lambda x: x * k, [1, 2, 3])
    assert [f(10) for f in fs] == [10, 20, 30]
    assert pool.map(lambda g: g(4), [lambda x: x + 1, abs]) == [5, 4]
    assert pool.apply(lambda *, key: key(3), kwds={"key": lambda x: -x}) == -3
