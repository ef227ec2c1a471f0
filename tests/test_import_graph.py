"""The package's import graph keeps the design's shape: no cycles between modules, and every import between the
package's parts points down the layers below (docs/architecture.md, "Packages"). Every import counts: at module
level, inside a function (a lazy import is still a dependency) and under `TYPE_CHECKING`."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import prefactor_otel

ROOT = Path(prefactor_otel.__file__).parent

# Lower layers first. A module may import its own part and the parts of lower layers only; parts on one layer are
# independent of each other. `prefactor_otel` itself is the public face (lazy names, `python -m`), above all.
LAYERS: list[set[str]] = [
    {"_logging", "_version"},
    {"model"},
    {"config"},
    {"mapping"},
    {"transport", "durability"},
    {"control"},
    {"pipeline"},
    {"sdk", "gateway"},
    {"devserver"},
    {"tools"},
    {"prefactor_otel"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(("prefactor_otel", *parts))] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """The package's modules that `name` imports (a package stands for its `__init__`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from package import module` imports the module; `from module import name` the module
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import a.b.c` names the deepest module that exists
                target = target.rpartition(".")[0]
            if target.startswith("prefactor_otel") and target != name:
                yield target


GRAPH = {name: sorted(set(_imports(name, path))) for name, path in MODULES.items()}


def _part(module: str) -> str:
    """The layer unit of a module: its subpackage, a private top-level module, or the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else "prefactor_otel"


def test_every_module_belongs_to_a_layer():
    assert sorted({_part(m) for m in MODULES} - set(RANK)) == []


def upward_imports(graph: dict[str, list[str]]) -> list[str]:
    return [
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if _part(target) != _part(module) and RANK[_part(target)] >= RANK[_part(module)]
    ]


def import_cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components: a component of more than one module is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, []):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_imports_point_down_the_layers():
    assert upward_imports(GRAPH) == []


def test_no_import_cycles():
    assert import_cycles(GRAPH) == []


def test_the_checks_see_an_upward_import_and_a_cycle():
    # the checks above would pass on an empty graph: shown one of each, they must find it
    graph = {
        "prefactor_otel.pipeline.items": ["prefactor_otel.model.ids", "prefactor_otel.sdk.stats"],
        "prefactor_otel.sdk.stats": ["prefactor_otel.sdk.metrics"],
        "prefactor_otel.sdk.metrics": ["prefactor_otel.sdk.stats"],
        "prefactor_otel.transport.wire": ["prefactor_otel.durability.spool"],
    }
    assert upward_imports(graph) == [
        "prefactor_otel.pipeline.items -> prefactor_otel.sdk.stats",
        "prefactor_otel.transport.wire -> prefactor_otel.durability.spool",
    ]
    assert import_cycles(graph) == [["prefactor_otel.sdk.metrics", "prefactor_otel.sdk.stats"]]
    assert "prefactor_otel.model.ids" in GRAPH["prefactor_otel.pipeline.items"]  # the real graph is read
