"""Code defined where workers cannot import it: ``python -c``, a REPL, a script's main block.

Each case runs in a fresh interpreter, as a user would run it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROGRAM = textwrap.dedent(
    """
    import multiprocessing, threading
    from methodpool import MethodPool

    class Counter:                      # a class defined in __main__
        def __init__(self):
            self.lock = threading.Lock()
            self.step = 2
        def bump(self, x):
            with self.lock:
                return x + self.step

    def double(x):                      # a function defined in __main__
        return 2 * x

    def make_scaler(k):
        return lambda x: Point(x * k)

    class Point:                        # instances come back as results
        def __init__(self, v):
            self.v = v

    ctx = multiprocessing.get_context(METHOD)
    with MethodPool(2, context=ctx) as pool:
        assert pool.map(Counter().bump, range(4)) == [2, 3, 4, 5]
        assert pool.map(double, range(4)) == [0, 2, 4, 6]
        points = pool.map(make_scaler(3), range(3))
        assert [p.v for p in points] == [0, 3, 6]
        assert all(type(p) is Point for p in points), "result class is not the parent's"
        assert pool.apply(lambda p: p.v + 1, (Point(1),)) == 2

    print("ok")
    """
)


def run(args: list[str], stdin: str | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.timeout(90)
def test_python_dash_c(start_method: str) -> None:
    assert run(["-c", PROGRAM.replace("METHOD", repr(start_method))]).strip() == "ok"


@pytest.mark.timeout(90)
def test_repl_reading_stdin(start_method: str) -> None:
    # `python -i` with piped input runs the interactive loop; a blank line ends
    # each compound statement as at a real prompt.
    program = PROGRAM.replace("METHOD", repr(start_method))
    lines = []
    for block in textwrap.dedent(program).split("\n\n"):
        lines.append(block.strip("\n") + "\n\n")
    result = subprocess.run(
        [sys.executable, "-i", "-q"],
        input="".join(lines),
        capture_output=True,
        text=True,
        timeout=60,
    )
    # At a prompt an error does not stop what follows: "ok" is printed anyway.
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "ok" in result.stdout.split()


@pytest.mark.timeout(90)
def test_definitions_inside_the_main_block(start_method: str, tmp_path: Path) -> None:
    # Workers started by spawn import the script as __mp_main__, which does
    # not run the main block: these names exist only in the parent.
    body = textwrap.indent(PROGRAM.replace("METHOD", repr(start_method)), "    ")
    script = tmp_path / "script.py"
    script.write_text(f"if __name__ == '__main__':\n{body}")
    assert run([str(script)], cwd=tmp_path).strip() == "ok"


REGISTERED_AT_THE_PROMPT = textwrap.dedent(
    """
    import multiprocessing, pickle
    from methodpool import MethodPool, register_serializer

    def tagged_dumps(obj):              # defined in __main__: no worker can import it
        return b"T" + pickle.dumps(obj)

    register_serializer("tagged", tagged_dumps, lambda data: pickle.loads(data[1:]))
    ctx = multiprocessing.get_context(METHOD)
    with MethodPool(2, context=ctx, serializer="tagged") as pool:
        assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]
        assert pool.apply(divmod, (7, 2)) == (3, 1)
    print("ok")
    """
)


@pytest.mark.timeout(90)
def test_serializer_registered_at_the_prompt(start_method: str) -> None:
    # Its functions travel by value: by name, spawn and forkserver workers
    # could not unpickle their own process object and would restart forever.
    program = REGISTERED_AT_THE_PROMPT.replace("METHOD", repr(start_method))
    assert run(["-c", program]).strip() == "ok"
