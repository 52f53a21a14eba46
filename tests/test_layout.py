"""The package's layering rules, checked on the source (design.md, "Layers").

No module imports another module's ``_private`` names; ``expr``, ``plan`` and ``ops`` never
import Beam; no import circle between mmbeam's modules (imports inside functions included,
``TYPE_CHECKING`` blocks excluded); Beam's private attributes are read in one module only.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "mmbeam"


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.module, [alias.name for alias in node.names]))
    return out


def test_no_module_imports_another_modules_private_names():
    bad = [f"{name}: from {module} import {n}"
           for name, path in MODULES.items() for module, names in _imports(path)
           if module.startswith("mmbeam") and module != name
           for n in names if n.startswith("_") and not n.startswith("__")]
    assert bad == []


@pytest.mark.parametrize("package", ["mmbeam.expr", "mmbeam.plan", "mmbeam.ops"])
def test_pure_layers_never_import_beam(package):
    bad = [name for name, path in MODULES.items() if name.startswith(package)
           for module, _ in _imports(path) if module.split(".")[0] == "apache_beam"]
    assert bad == []


def test_no_import_circle_between_mmbeam_modules():
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, names in _imports(path):
            targets = [module] + [f"{module}.{n}" for n in names]
            graph[name].update(t for t in targets if t in MODULES and t != name)
    # a package's __init__ re-exporting its submodules is not a circle: drop the edges from a
    # package to its own submodules
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_beam_private_attributes_are_read_in_one_module():
    private = re.compile(r"\b(grouping|buffer|runner)\._[a-z]\w*|transforms_stack")
    users = sorted(name for name, path in MODULES.items() if private.search(path.read_text()))
    assert users == ["mmbeam.beam_internals"]
