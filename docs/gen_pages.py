"""Pages generated at build time (mkdocs-gen-files): nothing here is copied into docs/ by hand.

1. The protocol specifications and the READMEs of ``protocols/``, ``threat_models/`` and ``audits/`` are copied
   from where they live (the tests read them there), with relative links rewritten for the site.
2. The API reference: one page per public module found under ``geofed_secure/`` at build time (the package
   layout changes; no module is listed by hand), plus ``reference/SUMMARY.md`` for mkdocs-literate-nav.
3. ``architecture.md`` gets the layers ``tests/test_layout.py`` declares, with what each part of the package says it
   is and what it imports, read from the code at build time.
"""

from __future__ import annotations

import ast
import posixpath
import re
import sys
from collections import defaultdict
from pathlib import Path

import mkdocs_gen_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from griffe_roles import strip_roles  # docs/griffe_roles.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "geofed_secure"

# repository file -> page in the site
COPIED = {
    "protocols/README.md": "protocols/index.md",
    "protocols/secagg-v1/SPEC.md": "protocols/secagg-v1.md",
    "protocols/ckks-v1/SPEC.md": "protocols/ckks-v1.md",
    "threat_models/README.md": "threat-models.md",
    "audits/README.md": "audits.md",
}

_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _rewrite_link(text: str, target: str, source: str, page: str) -> str:
    """A link of ``source`` (repository path) as it must read on ``page`` (site path)."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
        return f"[{text}]({target})"
    path, _, anchor = target.partition("#")
    repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
    fragment = f"#{anchor}" if anchor else ""
    if repo_path in COPIED:
        site_target = COPIED[repo_path]
    elif repo_path.startswith("docs/") and (ROOT / repo_path).is_file():
        site_target = repo_path.removeprefix("docs/")
    else:
        # Not part of the site (a code file, vectors.json, a folder): name it instead of linking to nothing.
        return text if f"`{repo_path}`" in text else f"{text} (`{repo_path}`)"
    return f"[{text}]({posixpath.relpath(site_target, posixpath.dirname(page))}{fragment})"


def copy_with_links(source: str, page: str) -> None:
    lines = (ROOT / source).read_text(encoding="utf-8").splitlines(keepends=True)
    out, in_fence = [], False
    for line in lines:
        if _FENCE.match(line):
            in_fence = not in_fence
        if not in_fence:
            line = _LINK.sub(lambda m: _rewrite_link(m.group(1), m.group(2), source, page), line)
        out.append(line)
    with mkdocs_gen_files.open(page, "w") as f:
        f.write("".join(out))


def public_modules() -> list[tuple[str, ...]]:
    """Dotted-name parts of every public module and package under the package, sorted."""
    modules = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        elif parts[-1] == "__main__":
            continue
        if any(part.startswith("_") for part in parts):
            continue  # private module or package
        # Only regular packages: a folder caught half-created (no __init__.py yet) is left out.
        if not all((ROOT / Path(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            continue
        modules.append(parts)
    return modules


def write_reference() -> None:
    nav = mkdocs_gen_files.Nav()
    modules = public_modules()
    packages = {parts[:i] for parts in modules for i in range(1, len(parts))}
    for parts in modules:
        is_package = parts in packages or (ROOT / Path(*parts) / "__init__.py").is_file()
        doc = Path(*parts, "index.md") if is_package else Path(*parts[:-1], f"{parts[-1]}.md")
        nav[parts] = doc.as_posix()
        with mkdocs_gen_files.open(Path("reference") / doc, "w") as f:
            f.write(f"::: {'.'.join(parts)}\n")
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as f:
        f.writelines(nav.build_literate_nav())


def subpackage_imports() -> dict[str, set[str]]:
    """Top-level part of the package -> the other top-level parts it imports (absolute and relative, any depth)."""
    imports: dict[str, set[str]] = defaultdict(set)
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        rel = path.relative_to(ROOT / PACKAGE).parts
        part = rel[0].removesuffix(".py")
        if part == "__init__":
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except SyntaxError:
            continue  # a file caught mid-edit; the API reference build will say more
        imports.setdefault(part, set())
        package = [PACKAGE, *rel[:-1]]  # the package the file is in
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                names = [module] + ([f"{module}.{a.name}" for a in node.names] if module == PACKAGE else [])
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                pieces = name.split(".")
                if pieces[0] == PACKAGE and len(pieces) > 1 and pieces[1] != part:
                    imports[part].add(pieces[1])
    return imports


def _cycles(imports: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of parts that reach each other through imports (each pair once)."""

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in imports.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reachable = {part: reach(part) for part in imports}
    return sorted((a, b) for a in imports for b in imports if a < b and b in reachable[a] and a in reachable[b])


def layers() -> list[tuple[str, ...]]:
    """The layers, lowest first, as ``tests/test_layout.py`` declares them (``LAYERS``); [] if it declares none."""
    path = ROOT / "tests" / "test_layout.py"
    if not path.is_file():
        return []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "LAYERS" and node.value is not None:
            return [tuple(layer) for layer in ast.literal_eval(node.value)]
    return []


def summary_line(part: str) -> str:
    """First paragraph of a top-level module's or sub-package's docstring, on one line."""
    path = ROOT / PACKAGE / f"{part}.py"
    if not path.is_file():
        path = ROOT / PACKAGE / part / "__init__.py"
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError):
        doc = ""
    text = " ".join(doc.split("\n\n", 1)[0].split())
    return strip_roles(text).replace("|", "\\|")


def _code_list(names: set[str] | list[str]) -> str:
    return ", ".join(f"`{name}`" for name in sorted(names))


def append_layer_table() -> None:
    imports = subpackage_imports()
    declared = layers()
    layer_of = {part: i for i, parts in enumerate(declared) for part in parts}
    lines = [
        "\n## Layers and imports (generated when the site is built)\n\n",
        ("Read by `docs/gen_pages.py` each time the site is built: the layers as `tests/test_layout.py` declares them "
         "(`LAYERS`), what each part says it is (the first paragraph of its docstring), and the parts of the package "
         "it imports today (every import, relative ones and those inside functions included).\n\n"),
    ]
    if declared:
        lines.append("| layer | part | what it is | imports |\n|---|---|---|---|\n")
        for i, parts in enumerate(declared):
            for part in parts:
                if part not in imports:
                    lines.append(f"| {i} | `{part}` | (no such module or sub-package at this build) | |\n")
                    continue
                used = imports[part]
                upward = {u for u in used if layer_of.get(u, len(declared)) >= i}
                cell = _code_list(used - upward) or "(nothing of the package)"
                if upward:
                    cell += f"; **against the layering:** {_code_list(upward)}"
                lines.append(f"| {i} | `{part}` | {summary_line(part)} | {cell} |\n")
    rest = sorted(set(imports) - set(layer_of))
    if rest:
        lines.append("\nParts that no layer names:\n\n" if declared else "")
        lines.append("| part | what it is | imports |\n|---|---|---|\n")
        for part in rest:
            lines.append(f"| `{part}` | {summary_line(part)} | {_code_list(imports[part]) or '(nothing of the package)'} |\n")
    cycles = _cycles(imports)
    if cycles:
        pairs = "; ".join(f"`{a}` and `{b}`" for a, b in cycles)
        lines.append(f"\nImport cycles between parts at this build: {pairs}.\n")
    else:
        lines.append("\nNo import cycle between parts at this build.\n")
    with mkdocs_gen_files.open("architecture.md", "a") as f:
        f.writelines(lines)


for source, page in COPIED.items():
    copy_with_links(source, page)
write_reference()
append_layer_table()
