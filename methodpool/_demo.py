"""``python -m methodpool demo``: every Pool method with callables the stdlib refuses.

Runs under spawn (the default on macOS, Windows and, from Python 3.14, Linux),
where nothing is inherited and every callable must really travel; then shows a
progress bar, the statistics of a call, a dead worker that costs one task, and
what the stdlib pool says to the same callables.
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.pool
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from ._errors import WorkerLostError
from ._pool import MethodPool


class Scorer:
    """An object like those in real code: it holds a lock and its own pool."""

    def __init__(self, pool: MethodPool, weight: int) -> None:
        self.pool = pool
        self.lock = threading.Lock()
        self.weight = weight

    def score(self, x: int) -> int:
        with self.lock:
            return self.weight * x * x

    def score_all(self, xs: list[int]) -> list[int]:
        return self.pool.map(self.score, xs)


def _die_on_three(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def _stdlib_verdict(func: Callable[[int], Any]) -> str:
    ctx = multiprocessing.get_context("spawn")
    with multiprocessing.pool.Pool(1, context=ctx) as pool:
        try:
            pool.apply_async(func, (1,)).get(timeout=10)
        except Exception as exc:
            return f"fails: {type(exc).__name__}"
    return "works"


def run(out: Callable[[str], object] = print) -> None:
    """Run the tour, printing one line per call; raises if any result is wrong."""
    started = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    offset = 10
    with MethodPool(2, context=ctx) as pool:
        scorer = Scorer(pool, weight=3)
        add_offset = lambda x: x + offset  # noqa: E731 - the point is a lambda
        xs = list(range(6))

        def closure(x: int) -> int:
            return scorer.weight * x + offset

        calls: list[tuple[str, str, Callable[[], Any], Any]] = [
            (
                "map",
                "bound method (object holds a lock and the pool)",
                lambda: scorer.score_all(xs),
                [3 * x * x for x in xs],
            ),
            (
                "map_async",
                "lambda",
                lambda: pool.map_async(add_offset, xs).get(),
                [x + offset for x in xs],
            ),
            ("imap", "closure", lambda: list(pool.imap(closure, xs)), [3 * x + offset for x in xs]),
            (
                "imap_unordered",
                "lambda",
                lambda: sorted(pool.imap_unordered(add_offset, xs)),
                [x + offset for x in xs],
            ),
            (
                "starmap",
                "lambda of two arguments",
                lambda: pool.starmap(lambda a, b: a * b, [(x, x) for x in xs]),
                [x * x for x in xs],
            ),
            (
                "starmap_async",
                "closure over a lambda",
                lambda: pool.starmap_async(lambda f, x: f(x), [(add_offset, x) for x in xs]).get(),
                [x + offset for x in xs],
            ),
            ("apply", "bound method", lambda: pool.apply(scorer.score, (4,)), 48),
            (
                "apply_async",
                "lambda returning a lambda",
                lambda: pool.apply_async(lambda k: lambda x: k * x, (5,)).get()(2),
                10,
            ),
        ]
        out(f"MethodPool(2, context=spawn), serializer={pool.serializer!r}\n")
        out(f"{'method':<15} {'callable':<50} result")
        for method, kind, call, expected in calls:
            result = call()
            if result != expected:
                raise AssertionError(f"{method} with {kind}: got {result!r}, expected {expected!r}")
            out(f"{method:<15} {kind:<50} {result!r}")

        out("\nA progress bar, per item, and the statistics of that call:")
        try:
            bar = io.StringIO()
            pool.map(scorer.score, range(2000), chunksize=50, progress={"file": bar, "ncols": 70})
            out("  " + bar.getvalue().strip().split("\r")[-1])
        except ImportError as exc:  # tqdm is an optional extra
            out(f"  (no bar: {exc})")
            pool.map(scorer.score, range(2000), chunksize=50)
        stats = pool.stats()[-1]
        out(
            f"  {stats.items} items in {stats.tasks} tasks, {stats.wall_seconds * 1000:.0f} ms; "
            f"callable serialized once ({stats.callable_bytes} bytes, "
            f"{stats.serialize_seconds * 1000:.1f} ms); {stats.bytes_sent} bytes of tasks sent"
        )

        out("\nA worker killed mid-task costs that task only:")
        # One call, so that the tasks are numbered here as in the pool's messages.
        outcomes = pool.imap(_die_on_three, range(6))
        for x in range(6):
            try:
                out(f"  task {x}: {outcomes.next(timeout=30)}")
            except WorkerLostError as exc:
                out(f"  task {x}: WorkerLostError: {exc}")
    out("\nThe same callables in multiprocessing.Pool (spawn):")
    for kind, func in (("bound method", scorer.score), ("lambda", add_offset)):
        out(f"  {kind:<14} {_stdlib_verdict(func)}")
    out(f"\nDone in {time.perf_counter() - started:.1f} s.")
