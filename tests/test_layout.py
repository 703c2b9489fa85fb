"""The package layout keeps its promises: imports only point down the layers, no cycles, no file over 600 lines.

The layers, lowest first (docs/architecture.md explains each). A module may import from its own package and
from packages of LOWER layers; packages of the same layer are independent of each other. Every import counts,
including the ones inside functions: a lazy import that runs back up is still an arrow running back up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "geofed_secure"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "seeding"),
    ("wire",),
    ("secagg",),
    ("alignment", "model"),
    ("config",),
    ("privacy",),
    ("data", "encoders"),
    ("demo",),
    ("inputs",),
    ("node", "server"),
    ("runtime",),
    ("audit",),
    ("report", "terminal"),
    ("cli",),
)
LAYER_OF = {top: i for i, tops in enumerate(LAYERS) for top in tops}
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every geofed_secure module ``path`` imports (absolute, relative, module-level or inside functions)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            found |= {target} | {n for n in names if _exists(n)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m == "geofed_secure" or m.startswith("geofed_secure.")}


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


LIBRARY = sorted(PACKAGE.rglob("*.py"))
GRAPH = {_module_name(p): _imports(p) for p in LIBRARY}


def test_every_top_level_package_has_a_layer():
    tops = {_top(m) for m in GRAPH} - {None}
    assert tops <= set(LAYER_OF), f"add these to LAYERS (and to docs/architecture.md): {sorted(tops - set(LAYER_OF))}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down_the_layers(module):
    top = _top(module)
    if top is None:  # geofed_secure/__init__.py: only the version and the error family
        assert {_top(t) for t in GRAPH[module]} <= {"errors", None}
        return
    upward = sorted(t for t in GRAPH[module] if _top(t) not in (None, top) and LAYER_OF[_top(t)] >= LAYER_OF[top])
    assert not upward, f"{module} (layer {LAYER_OF[top]}) imports from its own layer or above: {upward}"


def test_no_import_cycle_between_library_modules():
    # A package's __init__ re-exporting its own submodules, and a submodule naming its package in
    # ``from package import submodule``, are not arrows between modules: the submodule edge itself is kept.
    edges = {m: {t for t in targets if t in GRAPH and t != m and not t.startswith(m + ".") and not m.startswith(t + ".")}
             for m, targets in GRAPH.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_library_file_over_600_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.name} has {n} lines: split it by role (limit {MAX_LINES})"
