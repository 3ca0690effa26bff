"""Functions, lambdas and classes defined in Jupyter notebook cells run in MethodPool.

The notebook is executed for real, in an IPython kernel, with nbclient.
"""

from __future__ import annotations

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

CELLS = [
    "import multiprocessing, threading\nfrom methodpool import MethodPool",
    "class Counter:\n"
    "    def __init__(self):\n"
    "        self.lock = threading.Lock()\n"
    "        self.step = 10\n"
    "    def bump(self, x):\n"
    "        with self.lock:\n"
    "            return x + self.step",
    "def double(x):\n    return 2 * x\n\nk = 3\ntriple = lambda x: k * x",
    "pool = MethodPool(2, context=multiprocessing.get_context(METHOD))",
    # Defined after the pool started: forked workers never saw it.
    "class Point:\n    def __init__(self, v):\n        self.v = v\n\n"
    "def to_point(x):\n    return Point(double(x))",
    "results = (\n"
    "    pool.map(Counter().bump, range(3)),\n"
    "    pool.map(double, range(3)),\n"
    "    list(pool.imap(triple, range(3))),\n"
    "    [p.v for p in pool.map(to_point, range(3))],\n"
    ")\n"
    "pool.terminate()\n"
    "print(results)",
]


@pytest.mark.timeout(120)
def test_notebook_definitions_run_in_the_pool(start_method: str) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(cell.replace("METHOD", repr(start_method))) for cell in CELLS
    ]
    nbclient.NotebookClient(notebook, timeout=90, kernel_name="python3").execute()
    output = notebook.cells[-1].outputs[0]["text"]
    assert output.strip() == "([10, 11, 12], [0, 2, 4], [0, 3, 6], [0, 2, 4])"
