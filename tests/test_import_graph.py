"""The package's import graph follows docs/architecture.md: no import cycle, no upward import.

Every ``import`` and ``from … import`` of a ditproof module anywhere in a module counts (at module
level, inside functions, and under ``TYPE_CHECKING``): a lazy import is a dependency all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# docs/architecture.md, "Layers": a module imports only from its own layer or below.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (1, ("ditproof", "ditproof.protocol", "ditproof.errors", "ditproof.hashing")),
    (2, ("ditproof.randomness", "ditproof.video")),
    (3, ("ditproof.kernels", "ditproof.models")),
    (4, ("ditproof.generation",)),
    (5, ("ditproof.metrics", "ditproof.validation", "ditproof.poc", "ditproof.pricing")),
    (6, ("ditproof.experiment", "ditproof.evaluation", "ditproof.training")),
    (7, ("ditproof.server", "ditproof.client", "ditproof.api")),
    (8, ("ditproof.cli",)),
]


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "ditproof").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                resolved = resolve(target) if target.startswith("ditproof") else None
                if resolved is not None and resolved != name:
                    graph[name].add(resolved)
    return graph


def layer_of(module: str) -> int:
    best = None
    for number, prefixes in LAYERS:
        for prefix in prefixes:
            if module == prefix or (prefix != "ditproof" and module.startswith(prefix + ".")):
                best = number
    assert best is not None, f"{module} has no layer in docs/architecture.md"
    return best


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, f"import cycles: {[sorted(c) for c in found]}"


def test_no_module_imports_from_a_higher_layer():
    graph = import_graph()
    upward = [
        f"{module} (layer {layer_of(module)}) -> {target} (layer {layer_of(target)})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_the_checker_sees_lazy_and_type_only_imports(tmp_path):
    """The graph counts an import inside a function and one under TYPE_CHECKING (so a cycle hidden
    in either is still found)."""
    graph = import_graph()
    assert "ditproof.generation.engines" in graph["ditproof.generation.generate"]  # imported inside generate()
    assert "ditproof.models.registry" in graph["ditproof.server.node"]  # under TYPE_CHECKING
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
