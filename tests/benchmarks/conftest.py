"""Benchmarks measure; they are not part of the default test run.

Every test in this folder is marked ``bench``, which the default run deselects (``pyproject.toml``: ``-m 'not slow
and not bench'``). Run them deliberately, timed:

    python -m pytest tests/benchmarks -m bench --benchmark-enable
"""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/benchmarks/" in item.nodeid.replace("\\", "/") or item.nodeid.startswith("benchmarks/"):
            item.add_marker(pytest.mark.bench)
