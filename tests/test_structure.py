"""The package's shape: one directions package, no import circles, one home for uv.

Read from the source with ast (nothing is imported), so a circle hidden in a function-level
import counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "provision"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the provision modules it imports (anywhere in its body)."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # `from a.b import c`: c may be a module (a.b.c) or a name in a.b
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [t if t in files else node.module for t in targets]
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_circle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "provision"
    (pkg / "hardware").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "hardware" / "__init__.py").write_text("")
    (pkg / "hardware" / "a.py").write_text("from provision.hardware.b import x\n")
    (pkg / "hardware" / "b.py").write_text("def x():\n    from provision.hardware import a\n")
    assert cycles(import_graph(pkg)) == [["provision.hardware.a", "provision.hardware.b"]]


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_directions_are_one_package():
    assert not list(PACKAGE.glob("directions*.py"))
    assert (PACKAGE / "directions" / "__init__.py").is_file()


def test_the_environment_registry_imports_no_directions_module():
    graph = import_graph()
    assert not [m for m in graph["provision.env_registry"] if m.startswith("provision.directions")]
    assert not [m for m in graph["provision.setup"] if m.startswith("provision.directions")]


def test_uv_has_one_home():
    """The binary is found, and uv's environment built, in provision/uv.py only."""
    homes = {
        needle: sorted(
            str(p.relative_to(PACKAGE))
            for p in PACKAGE.rglob("*.py")
            if needle in p.read_text(encoding="utf-8")
        )
        for needle in ("find_uv_bin", '"UV_PYTHON_DOWNLOADS"', '"--preview-features"')
    }
    assert homes == {needle: ["uv.py"] for needle in homes}
