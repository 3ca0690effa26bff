"""The documentation's code examples run, and print what the pages say they print.

Each page runs in a fresh interpreter started with ``python -c``, so that, as at
a prompt or in a notebook, what the examples define lives in a ``__main__`` that
workers cannot import; once per start method.  In a page, in order and sharing
one namespace:

* a ```` ```pycon ```` block (``>>>`` prompts) is a doctest, its output compared
  with ``...`` matching anything;
* a ```` ```python ```` block is executed, and what it prints must match the
  comments that end its ``print(...)`` lines (``...`` matching anything); one
  whose first line is ``# NAME.py`` is written to that file instead, in a
  directory on ``sys.path``, for the next blocks to import;
* a block right after ``<!-- docs-test: skip -->`` is not run (code that needs
  another library, say), nor one right after ``<!-- docs-test: needs-dill -->``
  where the installed dill does not work on the interpreter (dill releases
  follow new Pythons with a delay; methodpool then goes without it).

The API reference must name every public name.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DILL_WORKS

import methodpool

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ["index.md", "tutorial.md", "migration.md", "serializers.md"]

RUNNER = r"""
import contextlib, doctest, io, multiprocessing, re, sys, tempfile

path, start_method, dill_works = sys.argv[1:]
multiprocessing.set_start_method(start_method)
modules = tempfile.mkdtemp()
sys.path.insert(0, modules)
namespace = vars(sys.modules["__main__"])
text = open(path, encoding="utf-8").read()
blocks = re.compile(
    r"^(?:<!--\s*docs-test:\s*(skip|needs-dill)\b[^\n]*-->\s*\n)?```(python|pycon)\n(.*?)^```",
    re.M | re.S,
)
parser = doctest.DocTestParser()
runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
ran = misprinted = 0
for match in blocks.finditer(text):
    mark, language, code = match.groups()
    if mark == "skip" or (mark == "needs-dill" and dill_works != "yes"):
        continue
    ran += 1
    line = text.count("\n", 0, match.start(2)) + 1
    name = f"{path}:{line}"
    module = re.match(r"# (\w+\.py)\n", code)
    if language == "pycon":
        test = parser.get_doctest(code, namespace, name, path, line)
        test.globs = namespace  # not a copy: later blocks see what this one defines
        runner.run(test, clear_globs=False)
    elif module:
        with open(f"{modules}/{module.group(1)}", "w", encoding="utf-8") as file:
            file.write(code)
    else:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, name, "exec"), namespace)
        comments = re.findall(r"^[ \t]*print\(.*\)[ \t]*# (.*)$", code, re.M)
        want = "".join(comment + "\n" for comment in comments)
        got = printed.getvalue()
        calls = len(re.findall(r"^[ \t]*print\(", code, re.M))
        if len(comments) != calls or not doctest.OutputChecker().check_output(
            want, got, doctest.ELLIPSIS
        ):
            misprinted += 1
            print(f"{name}: printed\n{got}but its print lines' comments say\n{want}")
failed, attempted = runner.summarize(verbose=False)
print(f"{ran} blocks, {attempted} doctest examples, {failed} failed, {misprinted} misprinted")
sys.exit(1 if failed or misprinted or not ran else 0)
"""


@pytest.mark.parametrize("page", PAGES)
def test_page_examples(page: str, start_method: str) -> None:
    dill_works = "yes" if DILL_WORKS else "no"
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(DOCS / page), start_method, dill_works],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_api_reference_documents_every_public_name() -> None:
    api = (DOCS / "api.md").read_text(encoding="utf-8")
    documented = set(
        re.findall(r"^\.\. (?:auto)?(?:class|exception|function)::\s+(\w+)", api, re.M)
    )
    assert documented == set(methodpool.__all__)
