"""``python -m benchmarks.dataplane``: big numpy arrays through each pool.

float64 arrays of 8 MB and 256 KB, ``map(chunksize=1)``, 2 workers started
by fork: as arguments (the task returns a float), as results (the task gets
an int and returns a worker-made array, made once per worker so the task
costs nothing), and both (the task returns its argument).  MB/s counts the
array bytes of the items (one array per item; "both" moves each twice), per
second of the whole call: the median of ``--repeat`` timed calls after one
untimed call.  Beside it, the rate of an in-process copy of the same array
(``bytearray(memoryview(array))``, what each side of MethodPool's data plane
does once).

Writes the "Data plane" section of ``<output-dir>/benchmarks.md`` (between
its markers; the rest of the file is left as it is) and
``<output-dir>/benchmarks-dataplane.png``; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.workloads import arguments_in, arrays_out, echo

SIZES = {"8MB": 8 * 1024 * 1024, "256KB": 256 * 1024}
ITEMS = {"8MB": 48, "256KB": 1024}
DIRECTIONS = ("arguments", "results", "both")
WORKERS = 2
BEGIN = "<!-- dataplane: written by python -m benchmarks.dataplane -->"
END = "<!-- /dataplane -->"

MapCall = Callable[[Callable[[Any], Any], list[Any]], list[Any]]


@contextmanager
def stdlib_pool() -> Iterator[MapCall]:
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        yield lambda func, items: pool.map(func, items, chunksize=1)


@contextmanager
def methodpool_pool() -> Iterator[MapCall]:
    from methodpool import MethodPool

    with MethodPool(WORKERS, context=multiprocessing.get_context("fork")) as pool:
        yield lambda func, items: pool.map(func, items, chunksize=1)


@contextmanager
def joblib_parallel() -> Iterator[MapCall]:
    from joblib import Parallel, delayed

    # loky, joblib's default: memmaps array arguments of 1 MB or more.
    with Parallel(n_jobs=WORKERS, batch_size=1) as parallel:
        yield lambda func, items: parallel(delayed(func)(item) for item in items)


@contextmanager
def mpire_pool() -> Iterator[MapCall]:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=WORKERS, start_method="fork", keep_alive=True) as pool:
        yield lambda func, items: pool.map(func, items, chunk_size=1, progress_bar=False)


SYSTEMS: dict[str, Callable[[], Any]] = {
    "multiprocessing.Pool": stdlib_pool,
    "joblib (loky)": joblib_parallel,
    "mpire": mpire_pool,
    "MethodPool": methodpool_pool,
}


def items_for(direction: str, size: str) -> tuple[Callable[[Any], Any], list[Any], int]:
    """The task, its items, and the array bytes they stand for."""
    n = SIZES[size] // 8
    count = ITEMS[size]
    if direction == "results":
        return arrays_out, [n] * count, count * SIZES[size]
    arrays = [np.full(n, float(i)) for i in range(count)]
    func = arguments_in if direction == "arguments" else echo
    return func, arrays, count * SIZES[size]


def copy_rate(size: str, repeat: int) -> float:
    """MB/s of an in-process copy of one array of ``size``."""
    array = np.ones(SIZES[size] // 8)
    times = []
    for _ in range(max(repeat, 5)):
        started = time.perf_counter()
        for _ in range(20):
            bytearray(memoryview(array).cast("B"))
        times.append((time.perf_counter() - started) / 20)
    return SIZES[size] / statistics.median(times) / 1e6


def measure(system: str, repeat: int) -> dict[tuple[str, str], float | str]:
    """MB/s per (direction, size) for one system, or the error text."""
    rates: dict[tuple[str, str], float | str] = {}
    try:
        with SYSTEMS[system]() as run:
            for size in SIZES:
                for direction in DIRECTIONS:
                    func, items, nbytes = items_for(direction, size)
                    run(func, items[:4])  # warm-up: workers started, pages faulted
                    times = []
                    for _ in range(repeat):
                        started = time.perf_counter()
                        run(func, items)
                        times.append(time.perf_counter() - started)
                    rate = nbytes / statistics.median(times) / 1e6
                    rates[(direction, size)] = rate
                    print(f"{system:22} {direction:9} {size:5} {rate:8.0f} MB/s", file=sys.stderr)
    except ImportError as exc:
        return {key: f"not installed ({exc.name})" for key in _keys()}
    return rates


def _keys() -> list[tuple[str, str]]:
    return [(direction, size) for size in SIZES for direction in DIRECTIONS]


def render(
    results: dict[str, dict[tuple[str, str], float | str]],
    copies: dict[str, float],
    command: str,
    repeat: int,
) -> str:
    """The Markdown of the section."""
    base = results["multiprocessing.Pool"]
    header = ["system", *(f"{size} {direction}" for direction, size in _keys())]
    lines = [
        BEGIN,
        "## Data plane: big numpy arrays (MB/s, higher is better)",
        "",
        f"`{command}` on {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{len(os.sched_getaffinity(0))} CPUs, load {os.getloadavg()[0]:.2f}. "
        f"float64 arrays, `map(chunksize=1)`, {WORKERS} workers, fork; median of "
        f"{repeat} calls of {ITEMS['8MB']} (8 MB) or {ITEMS['256KB']} (256 KB) items. "
        "*arguments*: the task gets an array and returns a float; *results*: it gets "
        "an int and returns an array; *both*: it returns its argument (the MB/s count "
        "each array once). Ratios to `multiprocessing.Pool` in brackets.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for system, rates in results.items():
        cells = [system]
        for key in _keys():
            rate = rates.get(key)
            if isinstance(rate, float):
                ratio = rate / base[key] if isinstance(base.get(key), float) else None
                cells.append(f"{rate:,.0f}" + (f" (×{ratio:.1f})" if ratio else ""))
            else:
                cells.append(str(rate or "—"))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        "| in-process copy of one array | "
        + " | ".join(f"{copies[size]:,.0f}" for _, size in _keys())
        + " |"
    )
    lines += [
        "",
        "MethodPool puts buffers of 256 KiB or more through shared memory (see "
        "[the data plane](dataplane.md)); `shared_buffers=False` sends them "
        "through the pipe, as the others do. joblib memmaps array arguments of "
        "1 MB or more to a folder and its workers read them in place, read-only "
        "(no copy: here the task reads one item), not its results; mpire pickles "
        "both through pipes.",
        "",
        "![data plane](benchmarks-dataplane.png)",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Put ``section`` in ``path`` in place of the old one, or at its end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def draw(results: dict[str, dict[tuple[str, str], float | str]], path: Path) -> None:
    """A grouped bar chart: MB/s per workload, one bar per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = _keys()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(results)
    for offset, (system, rates) in enumerate(results.items()):
        values = [rates[k] if isinstance(rates.get(k), float) else 0.0 for k in keys]
        ax.bar([i + offset * width for i in range(len(keys))], values, width, label=system)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))])
    ax.set_xticklabels([f"{size}\n{direction}" for direction, size in keys])
    ax.set_ylabel("MB/s (log)")
    ax.set_yscale("log")
    ax.set_title(f"float64 arrays, map(chunksize=1), {WORKERS} workers, fork")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dataplane", description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per case (median)")
    parser.add_argument("--only", action="append", help="only systems whose name contains this")
    parser.add_argument("--output-dir", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    chosen = [s for s in SYSTEMS if not args.only or any(t in s for t in args.only)]
    if "multiprocessing.Pool" not in chosen:
        chosen.insert(0, "multiprocessing.Pool")  # the ratios' base
    results = {system: measure(system, args.repeat) for system in chosen}
    copies = {size: copy_rate(size, args.repeat) for size in SIZES}
    command = shlex.join(["python", "-m", "benchmarks.dataplane", *argv])
    section = render(results, copies, command, args.repeat)
    write_section(args.output_dir / "benchmarks.md", section)
    draw(results, args.output_dir / "benchmarks-dataplane.png")
    print(section)


if __name__ == "__main__":
    main()
