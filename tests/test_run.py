"""``python -m methodpool run script.py [args]``: legacy code, unedited, on methodpool."""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import multiprocessing
import multiprocessing.pool
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from methodpool import MethodPool, ProcessPoolExecutor
from methodpool.__main__ import main

LEGACY = """
import sys, threading
import multiprocessing, multiprocessing.pool
from multiprocessing.pool import ThreadPool
from concurrent.futures import ProcessPoolExecutor


class Model:
    def __init__(self, k):
        self.k, self.lock = k, threading.Lock()  # plain pickle cannot carry it

    def score(self, x):
        return self.k * x


class Tuned(multiprocessing.pool.Pool):  # a class of the script's, derived from Pool
    pass


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    model = Model(3)
    with multiprocessing.Pool(2) as pool:
        print("Pool", pool.map(model.score, range(4)))
    with multiprocessing.pool.Pool(2) as pool:
        print("pool.Pool", pool.map(lambda x: x + 1, range(4)))
    with Tuned(2) as pool:
        print("Tuned", pool.map(model.score, range(2)))
    with ThreadPool(2) as pool:
        print("ThreadPool", type(pool).__name__, pool.map(lambda x: x * 2, range(3)))
    print("isinstance", isinstance(pool, multiprocessing.pool.Pool))
    with ProcessPoolExecutor(2) as executor:
        print("executor", list(executor.map(model.score, range(4))))
    print("argv", sys.argv[2:])
    sys.exit(3)
"""


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    script = tmp_path / "legacy.py"
    script.write_text(textwrap.dedent(LEGACY))
    return script


def test_run_replaces_every_pool_of_a_script(legacy: Path, start_method: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "methodpool", "run", str(legacy), start_method, "-v", "--x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr  # the script's exit code
    assert result.stdout.splitlines() == [
        "Pool [0, 3, 6, 9]",
        "pool.Pool [1, 2, 3, 4]",
        "Tuned [0, 3]",
        "ThreadPool ThreadPool [0, 2, 4]",  # a thread pool stays the stdlib's
        "isinstance True",
        "executor [0, 3, 6, 9]",
        "argv ['-v', '--x']",
    ]


def test_the_stdlib_fails_on_the_same_script(legacy: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(legacy), "spawn"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "pickle" in result.stderr


def test_run_undoes_what_it_changed(tmp_path: Path) -> None:
    script = tmp_path / "inspect.py"
    script.write_text(
        textwrap.dedent(
            """
            import concurrent.futures, multiprocessing, multiprocessing.pool, sys
            import methodpool
            assert issubclass(multiprocessing.pool.Pool, methodpool.MethodPool)
            assert concurrent.futures.ProcessPoolExecutor is methodpool.ProcessPoolExecutor
            assert __name__ == "__main__" and sys.argv == [__file__, "a"]
            """
        )
    )
    stdlib_pool = multiprocessing.pool.Pool
    stdlib_executor = concurrent.futures.process.ProcessPoolExecutor
    argv, path = list(sys.argv), list(sys.path)
    main(["run", str(script), "a"])
    assert multiprocessing.pool.Pool is stdlib_pool
    assert concurrent.futures.process.ProcessPoolExecutor is stdlib_executor
    assert concurrent.futures.ProcessPoolExecutor is stdlib_executor
    assert multiprocessing.context.BaseContext.Pool is not None
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert not isinstance(pool, MethodPool)
    assert sys.argv == argv and sys.path == path
    assert ProcessPoolExecutor is not stdlib_executor


def test_run_undoes_it_when_the_script_raises(tmp_path: Path) -> None:
    script = tmp_path / "fails.py"
    script.write_text("raise KeyError('from the script')\n")
    stdlib_pool = multiprocessing.pool.Pool
    with pytest.raises(KeyError, match="from the script"):
        main(["run", str(script)])
    assert multiprocessing.pool.Pool is stdlib_pool
    assert multiprocessing.Pool.__module__ != "methodpool._patch"


def test_run_needs_a_script() -> None:
    with pytest.raises(SystemExit) as info:
        main(["run"])
    assert info.value.code == 2
