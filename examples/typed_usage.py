"""A typed use of methodpool: checked with ``mypy --strict`` in CI (``nox -s typecheck``).

Run it too: ``python examples/typed_usage.py``.
"""

from __future__ import annotations

import asyncio
import threading

from methodpool import CallStats, ListResult, MethodPool, ResultIterator, TaskResult


class Scorer:
    def __init__(self, weight: int) -> None:
        self.weight = weight
        self.lock = threading.Lock()

    def score(self, x: int) -> float:
        with self.lock:
            return self.weight * x / 2


def main() -> None:
    scorer = Scorer(3)
    with MethodPool(2) as pool:
        scores: list[float] = pool.map(scorer.score, range(10))
        lengths: ResultIterator[int] = pool.imap(len, ["a", "bb", "ccc"])
        total: int = sum(lengths)
        pending: TaskResult[str] = pool.apply_async(str.upper, ("done",))
        mapped: ListResult[float] = pool.map_async(lambda x: x / 2, [1, 2, 3])
        halves: list[float] = mapped.get(timeout=30)
        word: str = pending.get(timeout=30)

        async def gather() -> list[int]:
            squares = [y async for y in pool.imap(lambda x: x * x, range(5))]
            first: float = await pool.apply_async(scorer.score, (2,))
            return [*squares, int(first)]

        awaited: list[int] = asyncio.run(gather())
        stats: CallStats = pool.stats()[-1]
    print(scores[:3], total, halves, word, awaited, f"{stats.tasks} tasks")


if __name__ == "__main__":
    main()
