"""The documentation: the site builds strictly (no warning, nothing fetched) and the README stays a short front door.

CI runs only the README's test command, so this is where the docs are built: `mkdocs build --strict` fails on a broken
link or anchor, a page missing from the nav, a module the API reference cannot load, or a docstring warning.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
QUICKSTART_COMMANDS = ('pip install -e . && geofed run', 'pip install -e ".[test]" && python -m pytest')


def test_docs_site_builds_strictly(tmp_path: Path) -> None:
    # The plugins print banners about MkDocs 2 unless told not to; they are not warnings, only noise.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    # No -q (nor -v): with --quiet, mkdocs 1.6 never counts the warnings, so --strict passes whatever they say
    # (mkdocs issue #4126); -v stops it checking anchors (#3991).
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                            check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    # The docs extra (in the test extra) provides mkdocs; without it stderr says "No module named mkdocs".
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}\n{result.stdout}"
    warnings = [line for line in result.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, "mkdocs warned:\n" + "\n".join(warnings)
    site = tmp_path / "site"
    for page in ("index.html", "getting-started/index.html", "protocols/secagg-v1/index.html",
                 "protocols/ckks-v1/index.html", "reference/geofed_secure/index.html"):
        assert (site / page).is_file(), f"{page} missing from the built site"
    # The specs are copied at build time, not by hand: the page carries the file's first heading.
    spec_title = (REPO / "protocols/secagg-v1/SPEC.md").read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip()
    assert spec_title.split(":")[0] in (site / "protocols/secagg-v1/index.html").read_text(encoding="utf-8")


def test_readme_is_a_short_front_door() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 150, "README.md is the front door; details belong in docs/"
    for command in QUICKSTART_COMMANDS:
        assert f"```bash\n{command}\n```" in text, f"Quickstart command missing or changed: {command}"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert QUICKSTART_COMMANDS[1] in ci, ".ci/run must run exactly the README's test command"


def test_readme_relative_links_exist() -> None:
    text = README.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # links inside code blocks are not links
    targets = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)
    assert targets, "README.md links to no documentation page"
    relative = [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]
    missing = [t for t in relative if not (REPO / t.split("#", 1)[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
