"""``python -m methodpool demo`` (the README's main job) and ``doctor``."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import DILL_PROBLEM, DILL_WORKS


@pytest.mark.timeout(120)
def test_demo_runs_every_method_and_reports() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "methodpool", "demo"], capture_output=True, text=True, timeout=100
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for method in ("map", "imap_unordered", "starmap_async", "apply_async"):
        assert f"\n{method} " in out
    assert "2000/2000" in out and "2000 items in 40 tasks" in out
    assert re.search(r"task 3: WorkerLostError: .* while running task 3 of job \d+;", out)
    assert "task 4: 4" in out
    assert "bound method   fails" in out


def test_doctor_lists_serializers() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "methodpool", "doctor"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    expected = ["auto", "pickle", "cloudpickle", *(["dill"] if DILL_WORKS else [])]
    assert f"serializers    {expected}" in result.stdout
    if not DILL_WORKS:
        assert f"(not usable: {DILL_PROBLEM})" in result.stdout
