"""The package's layers import downwards only: no module-level import cycle between sslkd's subpackages or
modules, and the bottom layer (sslkd.core) imports nothing of sslkd but ``errors``."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sslkd"


def module_imports() -> dict[str, set[str]]:
    """Module -> the sslkd modules its module-level statements import (imports inside functions are deferred)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        imported = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sslkd"):
                imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.startswith("sslkd")}
        modules[name] = imported
    return {name: {m for m in imported if m in modules and m != name} for name, imported in modules.items()}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def subpackage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycles_between_modules_or_subpackages():
    modules = module_imports()
    assert cycle(modules) is None
    layers: dict[str, set[str]] = {}
    for name, imported in modules.items():
        layers.setdefault(subpackage(name), set()).update(subpackage(m) for m in imported
                                                         if subpackage(m) != subpackage(name))
    assert cycle(layers) is None, cycle(layers)
    assert layers["sslkd.core"] <= {"sslkd.errors"}


def test_the_cycle_finder_finds_cycles():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
