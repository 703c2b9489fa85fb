"""Developer tooling (issue 13): ruff and mypy pass over the tree with the settings in pyproject.toml.

Both run as the pre-commit hooks run them (.pre-commit-config.yaml), from the environment's own copies (the test
extra pins them). A cold mypy run of the library takes about 30 s (55 s on a loaded two-core machine); later runs
reuse .mypy_cache and take a few seconds.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tool: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        pytest.fail(f"{tool} is not installed: pip install -e '.[test]'")
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_ruff_is_clean():
    proc = _run("ruff", "check", "--output-format", "concise", ".", timeout=120)
    assert proc.returncode == 0, f"ruff check found problems:\n{proc.stdout}{proc.stderr}"


def test_mypy_is_clean():
    proc = _run("mypy", timeout=600)  # files and settings: [tool.mypy] in pyproject.toml
    assert proc.returncode == 0, f"mypy found problems:\n{proc.stdout}{proc.stderr}"
