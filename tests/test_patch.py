"""``methodpool.patch()`` / ``unpatch()`` for legacy code."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
from collections.abc import Iterator

import pytest

import methodpool
from methodpool import MethodPool


@pytest.fixture
def patched() -> Iterator[None]:
    methodpool.patch()
    yield
    methodpool.unpatch()


def test_patch_makes_multiprocessing_pool_a_methodpool(patched: None, start_method: str) -> None:
    with multiprocessing.Pool(2) as pool:
        assert isinstance(pool, MethodPool)
        assert pool.map(lambda x: x + 1, [1, 2]) == [2, 3]
    ctx = multiprocessing.get_context(start_method)
    with ctx.Pool(1) as pool:
        assert isinstance(pool, MethodPool)
        assert pool._ctx.get_start_method() == start_method
        assert pool.apply(lambda: 42) == 42


def test_patch_twice_and_unpatch_restore_the_stdlib() -> None:
    original_module, original_context = (
        multiprocessing.Pool,
        multiprocessing.context.BaseContext.Pool,
    )
    methodpool.patch()
    methodpool.patch()
    methodpool.unpatch()
    assert multiprocessing.Pool is original_module
    assert multiprocessing.context.BaseContext.Pool is original_context
    methodpool.unpatch()  # not in effect: nothing happens
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert type(pool) is multiprocessing.pool.Pool
