"""Serializer choice, registration, clear errors and the absence of side effects."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest
from callables import Affine, WithLock, make_closure
from conftest import AUTO_BY_VALUE, DILL_PROBLEM, DILL_WORKS, SharedPools, needs_dill

import methodpool
import methodpool._serializers
from methodpool import MethodPool, SerializationError, register_serializer
from methodpool._serializers import _REGISTRY


class HoldsSocket(Affine):
    def __init__(self) -> None:
        super().__init__()
        self.conn = Connection()


class Connection:
    def __init__(self) -> None:
        self._sock = socket.socket()

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def socket_method() -> Any:
    obj = HoldsSocket()
    yield obj.apply
    obj.conn.close()


CALLS = {
    "map": lambda pool, f: pool.map(f, [1]),
    "map_async": lambda pool, f: pool.map_async(f, [1]),
    "imap": lambda pool, f: pool.imap(f, [1]),
    "imap_unordered": lambda pool, f: pool.imap_unordered(f, [1]),
    "starmap": lambda pool, f: pool.starmap(f, [(1,)]),
    "starmap_async": lambda pool, f: pool.starmap_async(f, [(1,)]),
    "apply": lambda pool, f: pool.apply(f, (1,)),
    "apply_async": lambda pool, f: pool.apply_async(f, (1,)),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_unserializable_callable_raises_at_the_call_with_the_attribute_path(
    shared_pools: SharedPools, call: str, socket_method: Any
) -> None:
    pool = shared_pools.get("fork", "cloudpickle")
    with pytest.raises(SerializationError) as info:
        CALLS[call](pool, socket_method)  # raises here: no .get() needed
    message = str(info.value)
    assert "Affine.apply of <test_serializers.HoldsSocket" in message
    assert "'cloudpickle'" in message
    assert "self.conn._sock (socket object)" in message
    if DILL_WORKS:
        assert "try serializer='dill'" in message
    else:
        assert f"serializer='dill' cannot help: {DILL_PROBLEM}" in message
    assert isinstance(info.value, pickle.PicklingError)


def test_auto_names_every_serializer_it_tried(pool: MethodPool, socket_method: Any) -> None:
    with pytest.raises(
        SerializationError, match=rf"'pickle' or {AUTO_BY_VALUE}: self\.conn\._sock"
    ):
        pool.map(socket_method, [1])


def test_strict_pickle_suggests_the_by_value_serializers(shared_pools: SharedPools) -> None:
    pool = shared_pools.get("fork", "pickle")
    with pytest.raises(SerializationError, match=r"with 'pickle'.*use serializer='auto'"):
        pool.map(lambda x: x, [1])


def test_closure_variable_is_named(shared_pools: SharedPools) -> None:
    pool = shared_pools.get("fork", "cloudpickle")
    lock = threading.Lock()
    with pytest.raises(SerializationError, match=r"closure variable 'lock'.*\(lock object\)"):
        pool.map(lambda x: lock and x, [1])


def test_auto_carries_locks_as_new_unlocked_locks(pool: MethodPool) -> None:
    holder = WithLock()
    with holder.lock:  # held by the caller: each worker's copy gets a lock of its own
        assert pool.map(holder.apply, [1, 2], chunksize=1) == [3, 5]
    rlock = threading.RLock()
    with rlock:
        kinds = pool.apply(
            lambda lock: (type(lock).__name__, lock.acquire(blocking=False)), (rlock,)
        )
    assert kinds == (type(rlock).__name__, True)
    assert not holder.lock.locked()


def test_explicit_cloudpickle_does_not_carry_locks(shared_pools: SharedPools) -> None:
    with pytest.raises(SerializationError, match=r"with 'cloudpickle': self\.lock \(lock object\)"):
        shared_pools.get("fork", "cloudpickle").map(WithLock().apply, [1])


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (Affine().apply, "pickle"),
        (make_closure(), "cloudpickle"),
        (WithLock().apply, "cloudpickle"),
    ],
)
def test_auto_uses_the_first_serializer_that_works(obj: Any, expected: str) -> None:
    from methodpool._serializers import serializer_chain
    from methodpool._shipping import ship_callable

    assert ship_callable(obj, serializer_chain("auto")).payload.serializer == expected


def test_unknown_serializer_is_a_value_error_listing_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown serializer 'yaml'.*'auto', 'pickle'"):
        MethodPool(1, serializer="yaml")


def test_missing_package_is_an_import_error_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "dill" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(methodpool._serializers, "_found", set())  # forget it was found
    with pytest.raises(ImportError, match="pip install dill"):
        MethodPool(1, serializer="dill")


def test_non_callable_task_is_a_type_error(pool: MethodPool) -> None:
    with pytest.raises(TypeError, match="must be callable, got 3"):
        pool.map(3, [1])  # type: ignore[arg-type]


# A user serializer: JSON-framed pickle, to show that any format works.
def tagged_dumps(obj: Any) -> bytes:
    return b"TAG" + pickle.dumps(obj)


def tagged_loads(data: bytes) -> Any:
    assert data[:3] == b"TAG", "not our format"
    return pickle.loads(data[3:])


class TaggedSerializer:
    dumps = staticmethod(tagged_dumps)
    loads = staticmethod(tagged_loads)


@pytest.fixture
def tagged() -> Any:
    register_serializer("tagged", tagged_dumps, tagged_loads, replace=True)
    yield "tagged"
    _REGISTRY.pop("tagged")


def test_registered_serializer_works_under_every_start_method(ctx: Any, tagged: str) -> None:
    with MethodPool(2, context=ctx, serializer=tagged) as pool:
        assert pool.serializer == "tagged"
        assert pool.map(Affine(3, 0).apply, range(4)) == [0, 3, 6, 9]
        # arguments plain pickle refuses go through the registered serializer too
        assert pool.apply(Affine().apply, (json.loads("2"),)) == 5


def test_a_registered_serializer_that_refuses_a_lambda_points_to_the_by_value_ones(
    tagged: str,
) -> None:
    with (
        MethodPool(1, serializer=tagged) as pool,
        pytest.raises(SerializationError, match="'cloudpickle' or 'dill'") as info,
    ):
        pool.map(lambda x: x, [1])
    assert "__getstate__" not in str(info.value)


def test_serializer_object_with_dumps_and_loads(ctx: Any) -> None:
    with MethodPool(2, context=ctx, serializer=TaggedSerializer()) as pool:
        assert pool.map(Affine().apply, [1, 2]) == [3, 5]


def test_register_serializer_rejects_bad_input(tagged: str) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_serializer("tagged", tagged_dumps, tagged_loads)
    with pytest.raises(ValueError, match="'auto' is the built-in"):
        register_serializer("auto", tagged_dumps, tagged_loads)
    lock = threading.Lock()
    with pytest.raises(ValueError, match="cannot be sent to worker processes"):
        register_serializer("local", tagged_dumps, lambda data: lock, replace=True)
    with pytest.raises(TypeError, match="two functions, or one object"):
        register_serializer("nothing", 42)  # type: ignore[arg-type]
    register_serializer("module", json)  # a module with dumps/loads is fine
    _REGISTRY.pop("module")


def test_available_serializers_lists_auto_first() -> None:
    expected = ["auto", "pickle", "cloudpickle", *(["dill"] if DILL_WORKS else [])]
    assert methodpool.available_serializers()[: len(expected)] == expected


NO_SIDE_EFFECTS = textwrap.dedent(
    """
    import copyreg, multiprocessing, multiprocessing.pool, pickle, sys
    from multiprocessing.reduction import ForkingPickler
    # Stdlib modules methodpool imports, some of which register reducers of their own
    # (typing does on 3.12+).
    import dataclasses, functools, hashlib, reprlib, struct, typing
    before = (dict(copyreg.dispatch_table), dict(ForkingPickler._extra_reducers),
              dict(pickle._Pickler.dispatch))
    import methodpool
    assert "dill" not in sys.modules and "cloudpickle" not in sys.modules, "eager import"
    assert multiprocessing.get_start_method(allow_none=True) is None, "default context set"
    with methodpool.MethodPool(1) as pool:  # a pool that needs neither does not import them
        assert pool.map(abs, [-1]) == [1]
    assert "dill" not in sys.modules and "cloudpickle" not in sys.modules, "eager import"
    # The ones that work here ("dill" is left out where the installed dill does not).
    for serializer in methodpool.available_serializers():
        with methodpool.MethodPool(1, serializer=serializer) as pool:
            assert pool.map(abs, [-1]) == [1]
            pool.apply(lambda: 1) if serializer != "pickle" else None
    assert "dill" in sys.modules  # it was used, or at least tried...
    after = (dict(copyreg.dispatch_table), dict(ForkingPickler._extra_reducers),
             dict(pickle._Pickler.dispatch))
    # ...without side effects:
    assert before == after, [set(b) ^ set(a) for b, a in zip(before, after)]
    # The stdlib pool behaves as before: it still refuses a lambda, the stdlib way.
    with multiprocessing.Pool(1) as pool:
        assert pool.map(abs, [-2]) == [2]
        try:
            pool.map(lambda x: x, [1])
        except (pickle.PicklingError, AttributeError) as exc:
            assert "methodpool" not in repr(exc)
        else:
            raise AssertionError("stdlib Pool accepted a lambda")
    print("clean")
    """
)


def test_importing_and_using_methodpool_changes_no_global_state() -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_SIDE_EFFECTS], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


# -- dill where it does not work -------------------------------------------------------


def make_fib() -> Any:
    def fib(n: int) -> int:  # a closure that calls itself
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    return fib


@needs_dill
def test_dill_carries_a_recursive_closure(shared_pools: SharedPools, start_method: str) -> None:
    # dill's recurse=True (only the globals a function uses) never ends on it.
    pool = shared_pools.get(start_method, "dill")
    assert pool.map(make_fib(), range(10)) == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]


def test_a_function_that_cannot_travel_is_not_told_to_write_getstate(
    shared_pools: SharedPools,
) -> None:
    from methodpool._serializers import DILL
    from methodpool._shipping import _advice

    f = make_closure()
    f.lock = threading.Lock()  # type: ignore[attr-defined]  # carried with the function
    with pytest.raises(SerializationError, match=r"with 'cloudpickle': TypeError: .*lock") as info:
        shared_pools.get("fork", "cloudpickle").map(f, [1])
    assert "define the function at module level" in str(info.value)
    assert "__getstate__" not in str(info.value)
    assert "__getstate__" not in _advice([DILL], f)


@pytest.fixture
def broken_dill(monkeypatch: pytest.MonkeyPatch) -> str:
    """dill as it is on Python 3.15 with dill 0.4.1: it serializes no function."""

    def dump(obj: Any, recurse: bool) -> bytes:
        raise AttributeError("'code' object has no attribute 'co_lnotab'")

    monkeypatch.setattr(methodpool._serializers, "_dill_dump", dump)
    monkeypatch.setattr(methodpool._serializers, "_dill_status", methodpool._serializers._UNPROBED)
    problem = methodpool._serializers.dill_problem()
    assert problem is not None
    return problem


def test_dill_that_does_not_work_is_left_out_or_refused(
    broken_dill: str, socket_method: Any
) -> None:
    import dill

    from methodpool._serializers import fallback_chain, serializer_chain

    version = f"Python {sys.version_info.major}.{sys.version_info.minor}."
    assert f"dill {dill.__version__} cannot serialize functions on {version}" in broken_dill
    assert "co_lnotab" in broken_dill
    assert "dill" not in methodpool.available_serializers()
    assert [s.name for s in serializer_chain("auto")] == ["pickle", "cloudpickle"]
    assert [s.name for s in fallback_chain("auto")] == ["cloudpickle"]
    with pytest.raises(ImportError, match="serializer 'dill' does not work here") as info:
        MethodPool(1, serializer="dill")
    assert broken_dill in str(info.value)
    # "auto" carries what cloudpickle can (locks too), and says why it could not
    # carry the rest.
    with MethodPool(2, context=multiprocessing.get_context("fork")) as pool:
        assert pool.map(make_closure(), [1, 2]) == [3, 5]
        assert pool.map(lambda x: -x, [1]) == [-1]
        assert pool.map(WithLock().apply, [1]) == [3]
        with pytest.raises(SerializationError) as error:
            pool.map(socket_method, [1])
    message = str(error.value)
    assert "with 'pickle' or 'cloudpickle': self.conn._sock (socket object)" in message
    assert f"serializer='dill' cannot help: {broken_dill}" in message


def test_auto_made_before_dill_was_tried_gives_cloudpickles_answer(
    broken_dill: str, monkeypatch: pytest.MonkeyPatch, socket_method: Any
) -> None:
    # A pool made before anyone tried dill (which is not imported for it) keeps a
    # dill link; when it turns out dill does not work, the link answers as
    # cloudpickle does.
    from methodpool._serializers import _UNPROBED, serializer_chain

    monkeypatch.setattr(methodpool._serializers, "_dill_status", _UNPROBED)
    monkeypatch.delitem(sys.modules, "dill")
    with MethodPool(2, context=multiprocessing.get_context("fork")) as pool:
        assert pool._shipper.chain[-1].name == "dill"
        with pytest.raises(SerializationError) as error:
            pool.map(socket_method, [1])
        assert pool.map(make_closure(), [1]) == [3]
        assert pool.map(WithLock().apply, [1]) == [3]
    assert "self.conn._sock (socket object): TypeError" in str(error.value)
    assert f"serializer='dill' cannot help: {broken_dill}" in str(error.value)
    assert methodpool._serializers._dill_status == broken_dill  # remembered
    assert "dill" not in [s.name for s in serializer_chain("auto")]


@pytest.mark.skipif(DILL_WORKS, reason="the installed dill works on this interpreter")
def test_dill_that_does_not_work_here_is_refused() -> None:
    with pytest.raises(ImportError, match=f"on Python {sys.version.split()[0]}"):
        MethodPool(1, serializer="dill")
