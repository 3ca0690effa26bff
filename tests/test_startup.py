"""Workers that cannot start: a clear WorkerStartError in seconds, never a respawn storm.

Each case is a real script run in a fresh interpreter, as a user would run it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from methodpool._startup import START_FAILURES_MAX, explain_start_failure

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

    def report(pool, call):
        try:
            call()
            print("RAN")
        except WorkerStartError as exc:
            print("ERROR", exc)
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
        pool = MethodPool(2, context=multiprocessing.get_context(sys.argv[1]))
        report(pool, lambda: pool.map(abs, [-1, -2]))
        """,
        start_method,
    )
    assert "ERROR" in result.stdout, result.stdout + result.stderr
    assert "creates a pool when it is imported" in result.stdout
    assert "if __name__ == '__main__':" in result.stdout and "job.py, line 5)" in result.stdout
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
                MethodPool(2, context=multiprocessing.get_context(sys.argv[1]))
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
            pool = MethodPool(2, context=multiprocessing.get_context(sys.argv[1]))
            report(pool, lambda: pool.apply(abs, (-1,)))
        """,
        start_method,
    )
    assert "ERROR" in result.stdout, result.stdout + result.stderr
    assert f"{START_FAILURES_MAX} worker processes in a row exited" in result.stdout
    assert "import the main module" in result.stdout and "CHILDREN 0" in result.stdout
    # The workers' own tracebacks, one per attempt, and no more attempts.
    assert result.stderr.count("No module named 'generated'") == START_FAILURES_MAX


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
            pool = MethodPool(2, context=multiprocessing.get_context(sys.argv[1]))
            pool.map(abs, range(10))
            open("gone", "w").close()
            os.kill(pool._pool[0].pid, signal.SIGKILL)
            def calls():
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    try:
                        pool.apply(os.getpid)
                    except WorkerLostError:
                        pass
                    time.sleep(0.05)
            report(pool, calls)
        """,
        start_method,
    )
    assert "ERROR" in result.stdout, result.stdout + result.stderr
    assert "CHILDREN 0" in result.stdout
    assert result.stderr.count("RuntimeError: the configuration is gone") == START_FAILURES_MAX


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
