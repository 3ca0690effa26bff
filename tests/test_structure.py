"""The package's shape: what imports what, and what a worker process loads.

Facts the design relies on (docs/architecture.md), checked on the source and
in fresh interpreters rather than trusted.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import methodpool

PACKAGE = pathlib.Path(methodpool.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every import between methodpool's modules, lazy and TYPE_CHECKING ones included."""
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
                if node.level == 0:
                    target = node.module or ""
                for alias in node.names:
                    found.add(
                        f"{target}.{alias.name}" if f"{target}.{alias.name}" in paths else target
                    )
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {dep for dep in found if dep in paths and dep != name}
    return graph


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    assert "methodpool._transport._dispatcher" in graph["methodpool._pool"]  # the parser works
    for start in graph:
        stack, seen = [(dep, [start, dep]) for dep in graph[start]], set()
        while stack:
            name, path = stack.pop()
            assert name != start, "import cycle: " + " -> ".join(path)
            if name not in seen:
                seen.add(name)
                stack.extend((dep, [*path, dep]) for dep in graph[name])


def test_results_and_the_transport_do_not_know_the_pool() -> None:
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith(("methodpool._transport", "methodpool._results", "methodpool._calls")):
            assert "methodpool._pool" not in deps, name


def _fresh(code: str) -> str:
    # Without METHODPOOL_TRANSPORT: what the system itself gets is under test.
    env = {k: v for k, v in os.environ.items() if k != "METHODPOOL_TRANSPORT"}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    ).stdout


def test_a_worker_loads_the_wire_format_and_no_other_transport_module() -> None:
    loaded = _fresh(
        "import sys, methodpool._worker; print(sorted(m for m in sys.modules if 'methodpool' in m))"
    )
    assert "methodpool._transport._wire" in loaded
    parent_only = ["_dispatcher", "_channel", "_platform", "_ledger", "_pool", "_calls", "_stats"]
    for name in parent_only:
        assert name not in loaded, name


def test_methodpool_works_without_fcntl_and_termios() -> None:
    # Where the system has neither, the transport is the portable one (the
    # workers count what they take), and every task still arrives once.
    out = _fresh(
        "import sys\n"
        "sys.modules['fcntl'] = sys.modules['termios'] = None\n"
        "import multiprocessing\n"
        "from methodpool import MethodPool\n"
        "with MethodPool(2, context=multiprocessing.get_context('fork')) as pool:\n"
        "    print(pool.map(abs, range(-300, 0), chunksize=1) == list(range(300, 0, -1)),\n"
        "          *{type(w.channel).__name__ for w in pool._dispatcher.ledger.workers.values()})\n"
    )
    assert out.split() == ["True", "PortableChannel"]
