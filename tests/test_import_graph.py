"""The project's own import graph: no circles, no import from a lower layer up into the CLI stages or the
orchestration, and the project's own imports at module top (function-level imports only for heavy optional
dependencies). Read from the source (ast), so it covers imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("icpo_core", "flows", "tasks")
LOWER = ("icpo_core.engines", "icpo_core.bench", "icpo_core.algorithm", "icpo_core.data", "icpo_core.grading")
UPPER = ("icpo_core.stages", "flows", "tasks")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an import names (``a.b.c`` -> ``a.b.c`` or its package ``a.b``), else None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported project module, line, at module top) for every import statement of ``module``."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    # `if TYPE_CHECKING:` imports are annotations only: never executed, so they make no circle
    typing_only = {
        id(sub)
        for n in tree.body
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
        for node in n.body
        for sub in ast.walk(node)
    }
    top |= {id(n) for n in tree.body if isinstance(n, ast.If) for n in n.body}
    out = []
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            target = _resolve(name)
            # a module's own parent packages are loaded before it: importing from them is no circle
            if id(node) in typing_only:
                continue
            if target and target != module and not module.startswith(target + "."):
                out.append((target, node.lineno, id(node) in top))
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w, _, _ in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in GRAPH:
        if m not in index:
            visit(m)
    return out


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_import_circles():
    assert _cycles() == []


def test_no_import_from_a_lower_layer_up_into_stages_flows_or_tasks():
    up = [
        f"{m}:{line} imports {t}"
        for m, edges in GRAPH.items()
        if _within(m, LOWER)
        for t, line, _ in edges
        if _within(t, UPPER)
    ]
    assert up == []


def test_grading_imports_nothing_of_the_project_but_itself():
    """Grading sits under the data, the algorithm, the engines and the bench: it must not reach up into them."""
    out = [
        f"{m}:{line} imports {t}"
        for m, edges in GRAPH.items()
        if _within(m, ("icpo_core.grading",))
        for t, line, _ in edges
        if not _within(t, ("icpo_core.grading",))
    ]
    assert out == []
