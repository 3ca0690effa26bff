"""Sphinx configuration: ``nox -s docs`` builds the site, warnings as errors.

The pages are Markdown (MyST); the API reference is autodoc, run from MyST
``{eval-rst}`` blocks in api.md.  The code examples on the pages are run by
``tests/test_docs.py``, not by Sphinx.
"""

from __future__ import annotations

import re
from typing import Any

import methodpool

project = "methodpool"
author = "methodpool developers"
copyright = "methodpool developers"
release = version = methodpool.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Headings get anchors, so pages can link to sections: faults.md#bounded-memory.
myst_heading_anchors = 3

# Every reference must resolve: a misspelt name in a docstring or a page fails
# the build.
nitpicky = True
nitpick_ignore = [
    # Type variables and a private protocol in the signatures.
    ("py:class", "methodpool._pool.T"),
    ("py:class", "methodpool._pool.R"),
    ("py:class", "methodpool._results.T"),
    ("py:class", "methodpool._executor.R"),
    ("py:class", "methodpool._serializers.SupportsDumpsLoads"),
    # Not in the Python documentation's index.
    ("py:class", "multiprocessing.context.BaseContext"),
    # The private modules where concurrent.futures defines its public classes.
    ("py:class", "concurrent.futures._base.Executor"),
    ("py:class", "concurrent.futures._base.Future"),
]

# The Python documentation's inventory is shipped in the repository (from the
# Python 3.11 docs), so the build fetches nothing; links still point to
# docs.python.org.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", "_inventories/python.inv"),
}

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Long signatures get one parameter per line.
python_maximum_signature_line_length = 88

html_theme = "furo"
html_title = f"methodpool {release}"

# Where links from the pages to files outside docs/ (../benchmarks/README.md)
# lead on the site; on GitHub the relative links work as they are.
REPOSITORY = "https://github.com/methodpool/methodpool/blob/main/"


def _link_outside_docs(app: Any, docname: str, source: list[str]) -> None:
    source[0] = re.sub(r"\]\(\.\./([^)\s]+)\)", rf"]({REPOSITORY}\1)", source[0])


def _public_bases(app: Any, name: str, obj: Any, options: Any, bases: list[Any]) -> None:
    # pickle's exceptions are defined in its C module, _pickle, which the Python
    # documentation does not know; name them as pickle's.
    for i, base in enumerate(bases):
        if getattr(base, "__module__", None) == "_pickle":
            bases[i] = f":py:exc:`pickle.{base.__name__}`"


def setup(app: Any) -> None:
    app.connect("source-read", _link_outside_docs)
    app.connect("autodoc-process-bases", _public_bases)
