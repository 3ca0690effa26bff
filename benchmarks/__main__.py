"""``python -m benchmarks``: run the suite and write the report.

Writes ``<output-dir>/benchmarks.md`` and ``<output-dir>/benchmarks.png``;
progress goes to stderr.  See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import datetime
import functools
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .harness import Result, Settings, log, run_pipe, run_startup, run_throughput
from .report import RunInfo, write_report
from .systems import all_systems
from .workloads import PIPE_MESSAGES, START_METHODS, THROUGHPUT

FULL = Settings(repeat=3, startup_repeat=7, box=1.0, item_scale=1.0)
QUICK = Settings(repeat=1, startup_repeat=3, box=0.5, item_scale=0.25)


def cpu_model() -> str:
    """The processor's name from ``/proc/cpuinfo``, or the platform's guess."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown processor"


def source_version() -> str:
    """``git describe --always --dirty`` of the checkout, or ``"unknown"``."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return described.stdout.strip()


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line (``--help`` describes it)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="MethodPool against multiprocessing.Pool and its peers, 2 workers each.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            f"reduced run: {QUICK.repeat} repeat, {QUICK.box:g} s time box, "
            f"{QUICK.item_scale:g}x the items (full: {FULL.repeat} repeats, "
            f"{FULL.box:g} s box)"
        ),
    )
    parser.add_argument("--repeat", type=int, metavar="N", help="timed repeats per case")
    parser.add_argument(
        "--only",
        action="append",
        metavar="WORKLOAD",
        help="run only workloads whose name contains this text (repeatable), e.g. 20MB, startup",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("docs"), help="where to write the report"
    )
    args = parser.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run every selected case, then write the report."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    base = QUICK if args.quick else FULL
    settings = dataclasses.replace(base, repeat=args.repeat or base.repeat)

    def selected(workload: str) -> bool:
        return not args.only or any(text in workload for text in args.only)

    # Workers started by spawn and forkserver import methodpool afresh.  The
    # standard library and the peers (installed from wheels) come with their
    # bytecode compiled; an editable checkout, with PYTHONDONTWRITEBYTECODE
    # set, would be compiled from source in every worker.  Compile it, as
    # `pip install` does.
    import methodpool

    compileall.compile_dir(Path(methodpool.__file__).parent, quiet=1)
    systems = all_systems()
    source = source_version()  # before the run: others may commit meanwhile
    load = os.getloadavg()[0]
    started = time.perf_counter()
    results: list[Result] = []

    def record(case: Callable[[], Result]) -> None:
        case_started = time.perf_counter()
        result = case()
        log(result, time.perf_counter() - case_started)
        results.append(result)

    for name, size in PIPE_MESSAGES.items():
        if selected(name):
            record(functools.partial(run_pipe, name, size, settings))
    for workload in THROUGHPUT:
        if selected(workload.name):
            for system in systems:
                record(functools.partial(run_throughput, system, workload, settings))
    for method in START_METHODS:
        if selected(f"startup/{method}"):
            for system in systems:
                record(functools.partial(run_startup, system, method, settings))

    info = RunInfo(
        command=shlex.join(["python", "-m", "benchmarks", *argv]),
        source=source,
        date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        machine=f"{platform.system()} {platform.machine()}",
        cpus=len(os.sched_getaffinity(0)),
        load=load,
        cpu_model=cpu_model(),
        settings=settings,
        seconds=time.perf_counter() - started,
    )
    for path in write_report(results, systems, info, args.output_dir):
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
