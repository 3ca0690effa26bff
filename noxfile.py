"""Sessions: tests (each installed Python 3.10-3.15), lint, typecheck, docs, bench.

``nox -s tests`` runs the test suite on every supported interpreter it finds,
under the fork, spawn and forkserver start methods (the suite parametrizes
over them).  On a machine with pyenv, its interpreters are found without
activating them.  Python 3.14 and 3.15 can come from Debian unstable, run in a
chroot: ``.ci/sid-root`` (as root, on a Debian host) installs them as
``/usr/bin/python3.14`` and ``/usr/bin/python3.15``, on PATH like any other.
"""

from __future__ import annotations

import glob
import os

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13", "3.14", "3.15"]

# pyenv keeps each interpreter in its own folder; put them on PATH so nox
# finds python3.10 ... python3.13 without `pyenv global` changing the machine.
_pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
for _version in PYTHONS:
    for _bin in sorted(glob.glob(os.path.join(_pyenv_root, "versions", f"{_version}.*", "bin"))):
        if _bin not in os.environ["PATH"].split(os.pathsep):
            os.environ["PATH"] += os.pathsep + _bin

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite, all start methods, on one interpreter.

    In two pytest processes (pytest-xdist) unless told what to run: the suite
    mostly waits on its pools' workers, and six interpreters one process each
    would take CI about half an hour on two cores.
    """
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or ["-n", "2"]))


def _tests_under(session: nox.Session, transport: str) -> None:
    # As the tests session runs them (two pytest processes), the variable set;
    # without DaskPool's tests, whose tasks travel by Dask, not by a transport.
    session.install("-e", ".[test]")
    env = {"METHODPOOL_TRANSPORT": transport}
    default = ["-n", "2", "--ignore", "tests/test_dask.py"]
    session.run("pytest", *(session.posargs or default), env=env)


@nox.session(python="3.11")
def tests_portable(session: nox.Session) -> None:
    """The test suite under macOS's transport, forced here (see docs/platforms.md)."""
    _tests_under(session, "portable")


@nox.session(python="3.11")
def tests_windows(session: nox.Session) -> None:
    """The test suite under Windows's transport, forced here (see docs/platforms.md)."""
    _tests_under(session, "windows")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package, and on a typed example of its use."""
    session.install("-e", ".[progress]", "mypy>=1.10")
    session.run("mypy")
    session.run("mypy", "--strict", "examples/typed_usage.py")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the documentation site, warnings as errors (its examples run in ``tests``).

    ``-E`` reads every page each time: an incremental build would not repeat a
    warning from a page that has not changed since.
    """
    session.install("-e", ".[docs]")
    session.run(
        "sphinx-build", "-E", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html"
    )


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """The benchmark suite against the peers (see benchmarks/README.md)."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)
