"""Package metadata (issue 13): the version comes from the installed distribution, and the annotations ship."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import subprocess
import sys
import tomllib
from pathlib import Path

import geofed_secure

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_the_installed_distributions():
    assert geofed_secure.__version__ == importlib.metadata.version("geofed-secure")


def test_version_without_metadata_is_unknown():
    # A source tree on sys.path that was never installed: no metadata to read, and the import still works.
    code = ("import importlib.metadata as m\n"
            "def missing(name):\n"
            "    raise m.PackageNotFoundError(name)\n"
            "m.version = missing\n"
            "import geofed_secure\n"
            "print(geofed_secure.__version__)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "0+unknown"


def test_py_typed_marker_ships():
    assert importlib.resources.files("geofed_secure").joinpath("py.typed").is_file()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["geofed_secure"]
