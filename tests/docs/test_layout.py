"""The import rules docs/architecture.md states hold in the code: layers import one way, and nothing in a circle.

Every import counts, the ones inside functions too (a lazy import is still
a dependency); only ``if TYPE_CHECKING:`` blocks are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGES = ("gateway", "providers", "local_engine")

# (importer prefix, imported prefix): never.
FORBIDDEN = [
    ("providers", "gateway"),
    ("local_engine", "gateway"),
    ("local_engine", "providers"),
    ("gateway", "local_engine"),  # only the local adapter (providers.local) touches the engine
    ("providers.wire", "gateway"), ("providers.wire", "providers"), ("providers.wire", "local_engine"),
    ("gateway.routing", "gateway.http"), ("gateway.routing", "gateway.routes"), ("gateway.routing", "gateway.keys"),
    ("gateway.keys", "gateway.routes"), ("gateway.ledger", "gateway.routes"), ("gateway.ledger", "gateway.http"),
    ("gateway.telemetry", "gateway.routes"), ("gateway.telemetry", "gateway.http"),
    ("gateway.http", "gateway.routes"),
    ("gateway.conversations", "gateway.http"), ("gateway.conversations", "gateway.routes"),
    ("gateway.conversations", "gateway.routing"),
    # The webhook sender knows nothing of config, keys, routing or HTTP serving: it is handed targets and events.
    ("gateway.webhooks", "gateway.config"), ("gateway.webhooks", "gateway.keys"), ("gateway.webhooks", "gateway.http"),
    ("gateway.webhooks", "gateway.routes"), ("gateway.webhooks", "gateway.routing"), ("gateway.webhooks", "gateway.ledger"),
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text())
    type_checking = {
        id(node) for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for node in ast.walk(block)
    }  # fmt: skip
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            yield base


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_modules(path):
            # "from gateway.routing import router" names a module; "from providers import X" the package.
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN)
def test_layers_import_one_way(importer: str, imported: str) -> None:
    graph = import_graph()
    broken = sorted(
        f"{source} -> {target}" for source, targets in graph.items() if within(source, importer)
        for target in targets if within(target, imported) and not within(target, importer)
    )  # fmt: skip
    assert not broken, f"{importer} must not import {imported}: {broken}"


def test_no_import_cycles() -> None:
    graph = import_graph()
    # A package's __init__ re-exporting its modules is not a cycle of the design: leave those edges out.
    edges = {source: {t for t in targets if not within(t, source)} if (ROOT / source.replace(".", "/") / "__init__.py").exists()
             else targets for source, targets in graph.items()}  # fmt: skip
    cycles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target] if target in path else [node, target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)
