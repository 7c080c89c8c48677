"""The packages form layers: a module imports only from its own layer or below, and no modules import each other."""

import ast
from pathlib import Path

from tests.conftest import ROOT

LAYERS = ["models", "export", "validate", "profiling", "int8", "pipeline"]  # lowest first


def _imports(path: Path) -> set[str]:
    """Project modules `path` imports, at any depth of its code (a deferred import is still a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(n for n in names if n.split(".")[0] in LAYERS)
    return found


def _modules() -> dict[str, set[str]]:
    modules = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = _imports(path)
    return {name: {i for i in imports if i in modules} for name, imports in modules.items()}


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{name} imports {target}"
        for name, imports in _modules().items()
        for target in imports
        if LAYERS.index(target.split(".")[0]) > LAYERS.index(name.split(".")[0])
    ]
    assert upward == []


def test_no_import_cycles():
    graph = _modules()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycles = []

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(trail[trail.index(target) :] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
