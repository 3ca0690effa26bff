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

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DILL_WORKS

import methodpool

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ["index.md", "tutorial.md", "migration.md", "serializers.md"]
if importlib.util.find_spec("numpy"):  # its examples are about numpy arrays
    PAGES.append("dataplane.md")

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


# Pages whose examples are one session (each builds on the one before).
SESSIONS = {"tutorial.md"}
BLOCK = re.compile(
    r"^(<!--\s*docs-test:\s*skip\b[^\n]*-->\s*\n)?```(python|pycon)\n(.*?)^```", re.M | re.S
)


@pytest.mark.parametrize("page", sorted(set(PAGES) - SESSIONS))
def test_each_example_imports_the_methodpool_names_it_uses(page: str) -> None:
    # Copied on its own into a file, an example must run: the shared namespace
    # the runner above gives the blocks of a page would hide a missing import.
    text = (DOCS / page).read_text(encoding="utf-8")
    missing = []
    for match in BLOCK.finditer(text):
        skip, language, code = match.groups()
        if language == "pycon":  # the code, not its output
            code = "\n".join(line[4:] for line in code.splitlines() if line[:4] in (">>> ", "... "))
        code = re.sub(r"#[^\n]*|\"[^\"\n]*\"|'[^'\n]*'", "", code)  # comments and strings
        imported = set()
        for names in re.findall(r"from methodpool import \(?([^)\n]*)", code):
            imported |= {name.split(" as ")[-1].strip() for name in names.split(",")}
        used = {name for name in methodpool.__all__ if re.search(rf"(?<![.\w]){name}\b", code)}
        if used - imported and not skip:
            line = text.count("\n", 0, match.start()) + 1
            missing.append(f"{page}:{line}: {sorted(used - imported)}")
    assert not missing, "examples that use names they do not import:\n" + "\n".join(missing)


def test_api_reference_documents_every_public_name() -> None:
    api = (DOCS / "api.md").read_text(encoding="utf-8")
    documented = set(
        re.findall(r"^\.\. (?:auto)?(?:class|exception|function)::\s+(\w+)", api, re.M)
    )
    assert documented == set(methodpool.__all__)


def test_the_readme_example_runs_as_a_script_under_spawn(tmp_path: Path) -> None:
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    example = re.search(r"^## Example\n.*?^```python\n(.*?)^```", readme, re.M | re.S)
    assert example is not None
    script = tmp_path / "example.py"
    script.write_text(
        "import multiprocessing\nmultiprocessing.set_start_method('spawn', force=True)\n"
        + example.group(1)
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=50
    )
    assert result.stdout == "[0, 3, 6, 9, 12]\n[0, 1, 4, 9, 16]\n", result.stderr
