"""Workers that cannot start: recognising why, and saying so.

Workers started by spawn or forkserver import the main module before they do
anything else (as ``__mp_main__``).  When that import fails, the stdlib pool
starts another worker, which fails the same way, forever.  MethodPool's
ledger counts workers that exit before they are ready
(:data:`START_FAILURES_MAX` in a row end the pool's attempts, see
:mod:`methodpool._transport._ledger`); this module names the cause for the
:class:`~methodpool.WorkerStartError`:

* a main module that creates a pool when it is imported: a spawn worker
  importing it recognises itself (:func:`refuse_pool_while_bootstrapping`)
  and exits at once with :data:`EXIT_POOL_AT_IMPORT`, without a traceback;
  under forkserver (where the fork server imports the main module, and the
  workers only report a failure), the parent finds the line that created
  the pool outside the main block (:func:`creation_site`, read at failure);
* a main script that cannot be imported again because it has no file (read
  from standard input): known before any worker starts
  (:func:`check_main_importable`);
* anything else the import raised: the worker printed its traceback, and the
  message points there.
"""

from __future__ import annotations

import ast
import multiprocessing
import os
import signal
import sys

from ._errors import WorkerStartError

# How many workers in a row may exit before they are ready (with no worker
# becoming ready in between) before the pool stops starting them.  Two, not
# one: a worker killed while it starts (by the OOM killer, say) is not a
# broken script; a second one in a row almost always is.
START_FAILURES_MAX = 2
# Exit codes of workers killed from outside while they started (the OOM
# killer, a user, terminate()): neither counts as a start failure nor resets
# the count.  A crash (SIGSEGV, SIGABRT, ...) while importing does count.
KILLED_FROM_OUTSIDE = frozenset(
    -signum for signum in (getattr(signal, "SIGKILL", None), signal.SIGTERM) if signum is not None
)  # Windows has no SIGKILL; Process.terminate() and kill() both read -SIGTERM there
# What a forkserver worker's exit code reads when its status was lost
# (multiprocessing.popen_forkserver.Popen.poll): a worker killed while it
# started may read so; a failed import reads 1.
_FORKSERVER_STATUS_LOST = 255


def counts_as_start_failure(start_method: str, exitcode: int | None) -> bool:
    """Whether a worker that exited with ``exitcode`` before it was ready
    failed to start on its own (and was not killed from outside)."""
    if exitcode in KILLED_FROM_OUTSIDE:
        return False
    return not (start_method == "forkserver" and exitcode == _FORKSERVER_STATUS_LOST)


# From these versions on, the fork server imports the main module itself when
# it starts (CPython GH-135295), whatever a pool asks of its workers: then the
# main module must be importable under forkserver, and one that is not kills
# the fork server rather than each worker.
FORKSERVER_IMPORTS_MAIN = sys.version_info >= (3, 14, 1) or (
    (3, 13, 8) <= sys.version_info < (3, 14)
)
# Exit code of a worker that found the main module creating a pool.
EXIT_POOL_AT_IMPORT = 87

_GUARD = "put the code that creates the pool under `if __name__ == '__main__':`"


def _main_path() -> str | None:
    # What spawn and forkserver workers will import, as their preparation
    # data says (multiprocessing.spawn.get_preparation_data): the main
    # module by name if it has a spec, else by path.
    main = sys.modules.get("__main__")
    if main is None or getattr(main.__spec__, "name", None) is not None:
        return None
    path = getattr(main, "__file__", None)
    return path if isinstance(path, str) else None


def creation_site() -> tuple[str, int] | None:
    """The line of the main module's body through which a pool is being
    created right now (directly, or by functions it calls): ``(file, line)``,
    else ``None``."""
    main = sys.modules.get("__main__")
    frame = sys._getframe(1)
    while frame is not None:
        if (
            main is not None
            and frame.f_globals is vars(main)
            and frame.f_code.co_name == "<module>"
        ):
            return frame.f_code.co_filename, frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _outside_main_block(site: tuple[str, int]) -> bool:
    # Whether line `site` of the main script runs on import: at module level,
    # not under `if __name__ == "__main__":`.
    path, line = site
    try:
        with open(path, encoding="utf-8") as source:
            tree = ast.parse(source.read())
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            guarded = isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)
            return not guarded and not isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            )
    return False


def refuse_pool_while_bootstrapping() -> None:
    """Exit this process if it is a worker importing the main module (which
    is creating a pool at import time); do nothing anywhere else."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # The stdlib would raise RuntimeError from Process.start(), in every
        # worker the parent starts; the parent explains it once instead.
        raise SystemExit(EXIT_POOL_AT_IMPORT)


def check_main_importable(start_method: str) -> None:
    """Raise :class:`~methodpool.WorkerStartError` if ``start_method``'s workers
    could not import the main module at all (a script read from standard input)."""
    if start_method not in ("spawn", "forkserver"):
        return
    path = _main_path()
    if path is not None and not os.path.exists(path):
        raise WorkerStartError(
            f"{start_method} workers import the main script first, and {path!r} is no "
            "file they can import (a script read from standard input?): save the script "
            "to a file and run that, or use the 'fork' start method"
        )


def explain_start_failure(
    start_method: str,
    exitcode: int | None,
    how: str,
    site: tuple[str, int] | None,
    head: str | None = None,
) -> str:
    """The message of the :class:`~methodpool.WorkerStartError` for workers
    that exited before they were ready, the last one with ``exitcode``
    (described as ``how``), of a pool created at ``site`` (see :func:`creation_site`);
    ``head`` says what happened, if not that."""
    if head is None:
        head = (
            f"{START_FAILURES_MAX} worker processes in a row exited before they were ready "
            f"(the last one {how}), so the pool stopped starting them"
        )
    path = _main_path()
    if exitcode == EXIT_POOL_AT_IMPORT or (
        start_method == "forkserver" and site is not None and _outside_main_block(site)
    ):
        where = f" ({site[0]}, line {site[1]})" if site is not None else ""
        return (
            f"{head}: the main module{where} creates a pool when it is imported, "
            f"and every {start_method} worker imports it: {_GUARD}"
        )
    if start_method in ("spawn", "forkserver") and path is not None:
        return (
            f"{head}: {start_method} workers import the main module {path} before "
            "anything else, and the traceback a worker printed above (if any) says what "
            "failed there (a module only this process can import, a path added at run time, "
            f"code that needs the main block?): make it importable on its own and {_GUARD}, "
            "or use the 'fork' start method"
        )
    return f"{head}; what a worker printed above may say why"


def explain_cluster_failure(site: tuple[str, int] | None, error: BaseException) -> str:
    """The message of the :class:`~methodpool.WorkerStartError` for a local Dask
    cluster whose workers did not start (they are spawned, so they import the
    main module first), of a pool created at ``site``."""
    head = f"Dask could not start the local cluster's worker processes ({error})"
    if site is not None and _outside_main_block(site):
        return (
            f"{head}: the main module ({site[0]}, line {site[1]}) creates a pool when it "
            f"is imported, and every worker process Dask spawns imports it: {_GUARD}"
        )
    path = _main_path()
    if path is not None:
        return (
            f"{head}: the worker processes Dask spawns import the main module {path} "
            "first, and the traceback they logged above says what failed there: make it "
            f"importable on its own and {_GUARD}"
        )
    return f"{head}; what Dask logged above may say why"
