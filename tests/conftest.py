"""Fixtures shared by the test suite.

Every test that takes ``start_method`` (or ``ctx``/``pool``) runs under fork,
spawn and forkserver.  Pools that tests only use (not break) are shared per
(start method, serializer) for the whole session: spawn start-up is what
makes a test suite slow.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
from collections.abc import Iterator
from typing import Any

import pytest

from methodpool import MethodPool, _sharedmem
from methodpool._serializers import dill_problem
from methodpool._transport import _buffers

# DaskPool's tests need the optional distributed package (methodpool[dask]).
collect_ignore = [] if importlib.util.find_spec("distributed") else ["test_dask.py"]

# Whether the installed dill works on this interpreter (a dill release older than
# the Python may serialize no function at all), found as methodpool finds it: by
# trying.  Where it does not, serializer="dill" refuses to start and "auto" goes
# without dill, so the dill cases are skipped and "auto" carries less.
DILL_PROBLEM = dill_problem()
DILL_WORKS = DILL_PROBLEM is None
needs_dill = pytest.mark.skipif(not DILL_WORKS, reason=f"dill does not work: {DILL_PROBLEM}")
DILL = pytest.param("dill", marks=needs_dill)

# Those this system has (Windows: spawn alone).
START_METHODS = [
    method
    for method in ["fork", "spawn", "forkserver"]
    if method in multiprocessing.get_all_start_methods()
]
SERIALIZERS = ["auto", "pickle", "cloudpickle", DILL]
ANY_CALLABLE_SERIALIZERS = ["auto", "cloudpickle", DILL]
# How "auto" names the by-value serializers it tried, in error messages.
AUTO_BY_VALUE = "'cloudpickle' or 'dill'" if DILL_WORKS else "'cloudpickle'"


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def ctx(start_method: str) -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context(start_method)


class SharedPools:
    """One running 2-worker pool per (start method, serializer), made on demand."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, str], MethodPool] = {}

    def get(self, start_method: str, serializer: str = "auto") -> MethodPool:
        key = (start_method, serializer)
        pool = self._pools.get(key)
        if pool is None or pool._state != "RUN":
            pool = MethodPool(
                2, context=multiprocessing.get_context(start_method), serializer=serializer
            )
            self._pools[key] = pool
        return pool

    def close_all(self) -> None:
        for pool in self._pools.values():
            pool.terminate()
            pool.join()


@pytest.fixture(scope="session")
def shared_pools() -> Iterator[SharedPools]:
    pools = SharedPools()
    yield pools
    pools.close_all()


@pytest.fixture
def pool(shared_pools: SharedPools, start_method: str) -> MethodPool:
    """A shared running pool with the default serializer."""
    return shared_pools.get(start_method)


@pytest.fixture
def fresh_pool(ctx: multiprocessing.context.BaseContext) -> Iterator[MethodPool]:
    """A pool of its own, for tests that close, terminate or break it."""
    pool = MethodPool(2, context=ctx)
    yield pool
    pool.terminate()
    pool.join()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before open, or between open and read
        return False


@pytest.fixture(autouse=True, scope="session")
def _no_shm_leftovers() -> Iterator[None]:
    """Every shared memory segment a pool of this session created is gone at its end."""
    created: list[str] = []
    original_init = _sharedmem._Segment.__init__
    original_buffer_init = _buffers._Segment.__init__

    def recording_init(self: Any, data: bytes) -> None:
        original_init(self, data)
        created.append(self.memory.name)

    def recording_buffer_init(self: Any, name: str, size: int) -> None:
        # The data plane's segments made in this process: argument segments
        # (and result segments of forked workers, which record them in vain).
        original_buffer_init(self, name, size)
        created.append(name)

    _sharedmem._Segment.__init__ = recording_init  # type: ignore[method-assign]
    _buffers._Segment.__init__ = recording_buffer_init  # type: ignore[method-assign]
    yield
    _sharedmem._Segment.__init__ = original_init  # type: ignore[method-assign]
    _buffers._Segment.__init__ = original_buffer_init  # type: ignore[method-assign]
    leaked = [name for name in created if os.path.exists(f"/dev/shm/{name}")]
    assert not leaked, f"shared memory left behind: {leaked}"
