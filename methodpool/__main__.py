"""Command line: ``python -m methodpool demo | doctor``."""

from __future__ import annotations

import argparse
import importlib.metadata
import multiprocessing
import platform
import sys


def doctor() -> None:
    """Print what methodpool will use on this machine."""
    from ._serializers import available_serializers

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
        print(f"  {package:<12} {version}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m methodpool")
    parser.add_argument("command", choices=["demo", "doctor"])
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run

        run()
    else:
        doctor()


if __name__ == "__main__":
    main()
