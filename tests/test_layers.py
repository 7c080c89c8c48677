"""The packages form layers: a module imports only from its own package or a lower layer (never a package beside
it), every project import goes through the one namespace, and no modules import each other."""

import ast
from pathlib import Path

from tests.conftest import ROOT

NAMESPACE = "mobile_vision_export"
# lowest first; packages in one layer never import each other (int8 gets what it measures with from its caller)
LAYERS = [{"models"}, {"export"}, {"validate"}, {"int8", "profiling"}, {"report"}, {"pipeline"}]
PACKAGES = set().union(*LAYERS)


def _layer(package: str) -> int:
    return next(k for k, layer in enumerate(LAYERS) if package in layer)


def _imported_names(path: Path) -> set[str]:
    """Absolute module names `path` imports, at any depth of its code (a deferred import is still a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(names)
    return found


def _imports(path: Path) -> set[str]:
    """Project modules `path` imports, named as in the repository (models.registry)."""
    prefix = NAMESPACE + "."
    return {n.removeprefix(prefix) for n in _imported_names(path) if n.startswith(prefix)}


def _python_files() -> list[Path]:
    folders = [*sorted(PACKAGES), NAMESPACE, "tests", "bench", "scripts"]
    return [path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))]


def _modules() -> dict[str, set[str]]:
    modules = {}
    for package in sorted(PACKAGES):
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = _imports(path)
    return {name: {i for i in imports if i in modules} for name, imports in modules.items()}


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{name} imports {target}"
        for name, imports in _modules().items()
        for target in imports
        if target.split(".")[0] != name.split(".")[0] and _layer(target.split(".")[0]) >= _layer(name.split(".")[0])
    ]
    assert upward == []


def test_every_project_import_goes_through_the_namespace():
    """A bare `models.x` would load a second copy of our module, or the user's own `models` package."""
    bare = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _python_files()
        for name in _imported_names(path)
        if name.split(".")[0] in PACKAGES
    ]
    assert bare == []


def test_the_layer_check_sees_the_imports():
    assert "models.weights" in _modules()["pipeline.sources"]


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
