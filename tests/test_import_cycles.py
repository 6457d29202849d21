"""No import circle among capaug's modules: each module can be read (and imported) on its own terms.

The graph is built from the source with `ast`, so the test needs no heavy imports: an edge a -> b for every
`from .b import`, `from . import b`, `from capaug.x.b import` or `import capaug.x.b` in a.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"augment": "capaug.augment", "classifier": "capaug.classifier", "cli": "capaug.cli",
            "recipes": "capaug.recipes"}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).glob("*.py"):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def _imports(nodes, package: str, modules) -> set[str]:
    """The capaug modules the import statements among `nodes` name."""
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + [node.module or ""]) if node.level else node.module
            base = base.rstrip(".")
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        out.update(name for name in names if name in modules)
    return out


def _module_level(tree: ast.Module):
    """Statements that run at import time: the module body, including its `if` / `try` blocks (not functions)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            stack.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))


def import_graph(module_level_only: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
        nodes = _module_level(tree) if module_level_only else ast.walk(tree)
        graph[name] = _imports(nodes, package, modules) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_known_edges():
    graph = import_graph(module_level_only=True)
    assert "capaug.augment.errors" in graph["capaug.augment.io"]
    assert "capaug.augment.checkpoints" in graph["capaug.augment.train_setup"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("module_level_only", [True, False], ids=["module-level", "including-lazy"])
def test_no_import_cycle(module_level_only):
    cycle = find_cycle(import_graph(module_level_only))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
