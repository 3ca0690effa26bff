"""Workers that cannot start: a clear WorkerStartError in seconds, never a respawn storm.

Each case is a real script run in a fresh interpreter, as a user would run it.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from methodpool._startup import (
    FORKSERVER_IMPORTS_MAIN,
    START_FAILURES_MAX,
    counts_as_start_failure,
    explain_start_failure,
)

# spawn and forkserver workers import the main module; fork workers do not.
IMPORTING = ["spawn", "forkserver"]
ENDS_WITHIN = 30  # seconds; a respawn storm runs until the timeout


def run_script(
    tmp_path: Path, body: str, *args: str, stdin: bool = False
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "report.py").write_text(textwrap.dedent(REPORT))
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(body))
    command = [sys.executable, "-" if stdin else str(script), *args]
    return subprocess.run(
        command,
        input=script.read_text() if stdin else None,
        capture_output=True,
        text=True,
        timeout=ENDS_WITHIN,
        cwd=tmp_path,
    )


REPORT = """
    import multiprocessing
    from methodpool import WorkerStartError

    def report(make, call):
        # Where the fork server imports the main module, a failure to import it
        # comes from making the pool; elsewhere, from its first call.
        pool = None
        try:
            pool = make()
            call(pool)
            print("RAN")
        except WorkerStartError as exc:
            print("ERROR", exc)
        if pool is not None:
            pool.terminate()
            pool.join()
        print("CHILDREN", len(multiprocessing.active_children()))
"""


@pytest.mark.parametrize("start_method", IMPORTING)
def test_a_pool_created_at_import_time_says_so(tmp_path: Path, start_method: str) -> None:
    result = run_script(
        tmp_path,
        """
        import multiprocessing, sys
        from methodpool import MethodPool
        from report import report
        ctx = multiprocessing.get_context(sys.argv[1])
        make = lambda: MethodPool(2, context=ctx, import_main=True)
        report(make, lambda pool: pool.map(abs, [-1]))
        """,
        start_method,
    )
    assert "ERROR" in result.stdout, result.stdout + result.stderr
    assert "creates a pool when it is imported" in result.stdout
    assert "if __name__ == '__main__':" in result.stdout
    assert re.search(r"job\.py, line \d+\) creates a pool", result.stdout)
    if start_method == "forkserver" and FORKSERVER_IMPORTS_MAIN:
        assert "the fork server" in result.stdout
    assert "CHILDREN 0" in result.stdout
    assert len(result.stderr.splitlines()) < 25, result.stderr


@pytest.mark.parametrize("start_method", IMPORTING)
def test_a_script_read_from_standard_input_fails_at_once(tmp_path: Path, start_method: str) -> None:
    result = run_script(
        tmp_path,
        """
        import multiprocessing, sys
        from methodpool import MethodPool, WorkerStartError
        if __name__ == "__main__":
            try:
                MethodPool(2, context=multiprocessing.get_context(sys.argv[1]), import_main=True)
            except WorkerStartError as exc:
                print("ERROR", exc)
            print("CHILDREN", len(multiprocessing.active_children()))
        """,
        start_method,
        stdin=True,
    )
    assert "ERROR" in result.stdout and "standard input" in result.stdout, result.stderr
    assert "'fork' start method" in result.stdout and "CHILDREN 0" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("start_method", IMPORTING)
def test_a_main_module_only_the_parent_can_import(tmp_path: Path, start_method: str) -> None:
    result = run_script(
        tmp_path,
        """
        import multiprocessing, sys, types
        from methodpool import MethodPool
        from report import report
        if __name__ == "__main__":  # made by the parent, at run time
            sys.modules["generated"] = types.ModuleType("generated")
        import generated
        if __name__ == "__main__":
            ctx = multiprocessing.get_context(sys.argv[1])
            make = lambda: MethodPool(2, context=ctx, import_main=True)
            report(make, lambda pool: pool.apply(abs, (-1,)))
        """,
        start_method,
    )
    assert "ERROR" in result.stdout, result.stdout + result.stderr
    assert "import the main module" in result.stdout and "CHILDREN 0" in result.stdout
    tracebacks = result.stderr.count("No module named 'generated'")
    if start_method == "forkserver" and FORKSERVER_IMPORTS_MAIN:
        # The fork server's own import fails first: it dies (3.14), or it
        # carries on and its workers fail (3.15 ignores a failed preload).
        assert "the fork server" in result.stdout or "in a row exited" in result.stdout
        assert 1 <= tracebacks <= START_FAILURES_MAX + 1
    else:
        assert f"{START_FAILURES_MAX} worker processes in a row exited" in result.stdout
        # The workers' own tracebacks, one per attempt, and no more attempts
        # than the rule allows: the pool's two first workers start together,
        # so the first one's replacement may start before the second fails.
        assert START_FAILURES_MAX <= tracebacks <= START_FAILURES_MAX + 1


@pytest.mark.parametrize("start_method", IMPORTING)
def test_replacements_that_cannot_start_fail_the_calls(tmp_path: Path, start_method: str) -> None:
    # The pool starts; then the main module stops importing (its config is
    # gone), and a worker dies: its replacements cannot start.
    result = run_script(
        tmp_path,
        """
        import multiprocessing, os, signal, sys, time
        from methodpool import MethodPool, WorkerLostError
        from report import report
        if os.path.exists("gone"):
            raise RuntimeError("the configuration is gone")
        if __name__ == "__main__":
            ctx = multiprocessing.get_context(sys.argv[1])
            pool = MethodPool(2, context=ctx, import_main=True)
            pool.map(abs, range(10))
            make = lambda: pool
            open("gone", "w").close()
            os.kill(pool._pool[0].pid, signal.SIGKILL)
            def calls(pool):
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    try:
                        pool.apply(os.getpid)
                    except WorkerLostError:
                        pass
                    time.sleep(0.05)
            report(make, calls)
        """,
        start_method,
    )
    assert "CHILDREN 0" in result.stdout, result.stdout + result.stderr
    if start_method == "forkserver" and FORKSERVER_IMPORTS_MAIN:
        # Replacements fork from the fork server, which imported the module
        # while it still could: they start.
        assert "RAN" in result.stdout, result.stdout + result.stderr
    else:
        assert "ERROR" in result.stdout, result.stdout + result.stderr
        assert result.stderr.count("RuntimeError: the configuration is gone") == START_FAILURES_MAX


# -- by default ("auto"), workers do not import the main module ------------------


@pytest.mark.parametrize("start_method", IMPORTING)
def test_an_unguarded_script_works_when_workers_skip_the_main_module(
    tmp_path: Path, start_method: str
) -> None:
    result = run_script(
        tmp_path,
        """
        import multiprocessing, sys
        from methodpool import MethodPool
        from report import report
        ctx = multiprocessing.get_context(sys.argv[1])
        make = lambda: MethodPool(2, context=ctx)
        report(make, lambda pool: print(pool.map(lambda x: -x, [1, 2])))
        """,
        start_method,
    )
    if start_method == "forkserver" and FORKSERVER_IMPORTS_MAIN:
        assert "ERROR" in result.stdout, result.stdout + result.stderr
        assert "creates a pool when it is imported" in result.stdout
    else:
        assert "[-1, -2]\nRAN" in result.stdout, result.stdout + result.stderr
    assert "CHILDREN 0" in result.stdout


@pytest.mark.parametrize("start_method", IMPORTING)
def test_a_script_read_from_standard_input_works_by_value(
    tmp_path: Path, start_method: str
) -> None:
    result = run_script(
        tmp_path,
        """
        import multiprocessing, sys
        from methodpool import MethodPool
        def negate(x):
            return -x
        if __name__ == "__main__":
            with MethodPool(2, context=multiprocessing.get_context(sys.argv[1])) as pool:
                print(pool.map(negate, [1, 2]))
        """,
        start_method,
        stdin=True,
    )
    if start_method == "forkserver" and FORKSERVER_IMPORTS_MAIN:
        assert "standard input" in result.stderr and "WorkerStartError" in result.stderr
    else:
        assert result.stdout == "[-1, -2]\n", result.stderr


@pytest.mark.parametrize("start_method", IMPORTING)
@pytest.mark.parametrize("import_main", [False, True])
def test_workers_import_the_main_module_only_when_asked(
    tmp_path: Path, start_method: str, import_main: bool
) -> None:
    # The main module notes each process that imports it; its initializer's
    # arguments hold an instance of a class it defines.
    result = run_script(
        tmp_path,
        f"""
        import multiprocessing, os, sys
        from methodpool import MethodPool
        with open("imported", "a") as log:
            print(os.getpid(), file=log)
        class Setting:
            def __init__(self, value):
                self.value = value
        def init(setting):
            os.environ["SETTING"] = str(setting.value)
        def value(_):
            return int(os.environ["SETTING"])
        if __name__ == "__main__":
            ctx = multiprocessing.get_context(sys.argv[1])
            with MethodPool(2, init, (Setting(7),), context=ctx, import_main={import_main}) as pool:
                print(pool.map(value, range(4), chunksize=1))
        """,
        start_method,
    )
    assert result.stdout == "[7, 7, 7, 7]\n", result.stderr
    importers = (tmp_path / "imported").read_text().split()
    if import_main:
        assert len(importers) > 1  # the workers (or the fork server) too
    elif not (start_method == "forkserver" and FORKSERVER_IMPORTS_MAIN):
        assert len(importers) == 1  # the parent only


def test_a_guarded_script_runs(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        """
        import multiprocessing
        from methodpool import MethodPool
        if __name__ == "__main__":
            with MethodPool(2, context=multiprocessing.get_context("spawn")) as pool:
                print(pool.map(lambda x: -x, [1, 2]))
        """,
    )
    assert result.stdout.strip() == "[-1, -2]", result.stderr


def test_the_message_for_an_unknown_cause_says_what_happened() -> None:
    message = explain_start_failure("fork", -9, "was killed by SIGKILL", None)
    assert message.startswith(f"{START_FAILURES_MAX} worker processes in a row exited")
    assert "was killed by SIGKILL" in message


def test_a_dask_pool_created_at_import_time_says_so(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    result = run_script(
        tmp_path,
        """
        from methodpool import DaskPool, WorkerStartError
        try:
            pool = DaskPool(1)
        except WorkerStartError as exc:
            print("ERROR", exc)
        """,
    )
    assert "ERROR Dask could not start" in result.stdout, result.stdout + result.stderr
    assert "job.py, line 4) creates a pool when it is imported" in result.stdout


def test_workers_killed_while_they_start_are_not_start_failures() -> None:
    assert not counts_as_start_failure("spawn", -signal.SIGKILL)
    assert not counts_as_start_failure("fork", -signal.SIGTERM)
    # A forkserver worker's status can be lost when it is killed early.
    assert not counts_as_start_failure("forkserver", 255)
    assert counts_as_start_failure("spawn", 255)
    assert counts_as_start_failure("forkserver", 1)
    assert counts_as_start_failure("spawn", -signal.SIGSEGV)
