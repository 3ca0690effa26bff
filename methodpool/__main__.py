"""Command line: ``python -m methodpool demo | bench | doctor | run SCRIPT [ARGS]``."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import multiprocessing
import os
import platform
import runpy
import sys
import tempfile
from pathlib import Path


def doctor() -> None:
    """Print what methodpool will use on this machine."""
    from ._serializers import available_serializers, dill_problem

    print(f"methodpool     {importlib.metadata.version('methodpool')}")
    print(f"Python         {platform.python_version()} ({sys.executable})")
    print(f"platform       {platform.platform()}")
    default = multiprocessing.get_context().get_start_method()
    print(f"start methods  {multiprocessing.get_all_start_methods()} (default: {default})")
    print(f"serializers    {available_serializers()}")
    for package in ("cloudpickle", "dill"):
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        problem = dill_problem() if package == "dill" and version != "not installed" else None
        print(f"  {package:<12} {version}" + (f" (not usable: {problem})" if problem else ""))


def bench(options: list[str]) -> None:
    """The benchmark suite's quick run; its table goes to standard output."""
    try:
        # Not a package dependency: the suite lives in the repository only.
        run_suite = importlib.import_module("benchmarks.__main__").main
    except ImportError:
        raise SystemExit(
            "python -m methodpool bench runs the benchmark suite of a source checkout: "
            "run it from the repository root, after pip install -e '.[bench]'"
        ) from None
    with tempfile.TemporaryDirectory() as report_dir:
        run_suite(["--quick", "--output-dir", report_dir, *options])
        print(Path(report_dir, "benchmarks.md").read_text())


def run_script(argv: list[str]) -> None:
    """Run a script as ``python SCRIPT ARGS`` does, with methodpool's pools in
    place of the stdlib's (:func:`methodpool._patch.patched_for_script`), undone
    when it ends."""
    parser = argparse.ArgumentParser(
        prog="python -m methodpool run",
        description="Run a Python script with multiprocessing.Pool, multiprocessing.pool.Pool "
        "and concurrent.futures.ProcessPoolExecutor replaced by methodpool's.",
    )
    parser.add_argument("script", help="the script, run as __main__")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments (sys.argv[1:])")
    options = parser.parse_args(argv)
    from ._patch import patched_for_script

    saved_argv, saved_path = sys.argv, sys.path[0]
    sys.argv = [options.script, *options.args]
    sys.path[0] = os.path.dirname(os.path.abspath(options.script))  # as for `python SCRIPT`
    try:
        with patched_for_script():
            runpy.run_path(options.script, run_name="__main__")
    finally:
        sys.argv, sys.path[0] = saved_argv, saved_path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:  # everything after the script is the script's
        run_script(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m methodpool")
    parser.add_argument("command", choices=["demo", "bench", "doctor", "run"])
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        bench(rest)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        from ._demo import run

        run()
    else:
        doctor()


if __name__ == "__main__":
    main()
