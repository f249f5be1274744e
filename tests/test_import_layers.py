"""Import arrows point down only: ntm <- baselines <- benchmarks <- cli, and no module imports itself round.

Read from the source with `ast` (nothing is imported), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"ntm": 0, "baselines": 1, "benchmarks": 2, "cli": 3}
"""Floor of each top-level package: a module may import from its own floor or below."""


def project_modules() -> dict[str, Path]:
    modules = {"cli": ROOT / "cli.py"}
    for package in ("ntm", "baselines", "benchmarks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = project_modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING"


def imports(name: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level at run time) for every import statement of module `name`.

    `from a.b import c` names `a.b.c` when that is a module of the project, else `a.b`; relative imports are
    resolved. Imports under `if TYPE_CHECKING:` and inside functions are not at module level at run time.
    """
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def walk(node: ast.AST, runtime_top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, runtime_top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                module = child.module or ""
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    module = ".".join(base + ([module] if module else []))
                for alias in child.names:
                    sub = f"{module}.{alias.name}"
                    found.append((sub if sub in MODULES else module, child.lineno, runtime_top))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                walk(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.body:
                    walk(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    walk(ast.Module(body=[stmt], type_ignores=[]), runtime_top)
            else:
                walk(child, runtime_top)

    walk(ast.parse(path.read_text(), str(path)), True)
    return found


def test_the_scan_sees_the_packages():
    assert {"ntm.checkpoint", "ntm.locking", "baselines.base", "benchmarks.presets", "benchmarks.audit.run", "cli"} <= set(MODULES)
    assert ("ntm.locking", True) in {(target, top) for target, _, top in imports("baselines.base")}
    assert ("benchmarks.presets", False) in {(target, top) for target, _, top in imports("benchmarks.presets.audit")}


def test_no_import_runs_upward():
    upward = []
    for name in MODULES:
        floor = LAYERS[name.split(".")[0]]
        for target, line, _ in imports(name):
            top = target.split(".")[0]
            if top in LAYERS and LAYERS[top] > floor:
                upward.append(f"{name} (line {line}) imports {target}")
    assert not upward, "imports that reach up a layer (ntm <- baselines <- benchmarks <- cli):\n" + "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_no_import_cycle_at_module_level():
    graph = {
        name: {target for target, _, top in imports(name) if top and target in MODULES and target != name}
        for name in MODULES
    }
    assert _cycles(graph) == []


def test_presets_never_import_the_audit():
    """The audit runs on presets; the presets check their own [audit] table (`benchmarks.presets.audit`)."""
    presets = [name for name in MODULES if name == "benchmarks.presets" or name.startswith("benchmarks.presets.")]
    assert "benchmarks.presets.audit" in presets
    reaching = [
        f"{name}:{line} imports {target}"
        for name in presets
        for target, line, _ in imports(name)
        if target == "benchmarks.audit" or target.startswith("benchmarks.audit.")
    ]
    assert reaching == []
