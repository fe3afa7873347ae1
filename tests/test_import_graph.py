"""The project's own import graph, read from the source (ast), imports inside functions included.

Layers, bottom up: the library (every ``icpo_core`` module outside the engines and the stages: ``algorithm``,
``data``, ``models``, ``rollout``, ``bench``, ``report``, ``grading``, and the top-level modules such as
``config``, ``steplog``, ``checkpoint_layout``), the engines (``icpo_core.engines``), the CLI stages
(``icpo_core.stages`` and ``icpo_core.cli``), the orchestration (``flows``, ``tasks``). Checked here:

- no import circle (``if TYPE_CHECKING:`` imports are annotations only, never executed: they make none);
- no layer imports a layer above it (the library no engine, stage or flow; an engine no stage or flow; a stage no
  flow), and grading, under everything else, imports nothing of the project but itself;
- the project's own modules are imported at module top (or under ``if TYPE_CHECKING:``), everywhere: an import
  inside a function hides an edge of the graph, and with it a circle. Heavy third-party packages (torch, vLLM,
  verl, ray, transformers, peft, mlflow, ...) may be imported inside functions; a piece two modules share belongs
  in its one home instead of a function-level import;
- a module imported by a name computed at run time (``importlib.import_module``) only where listed below.

Names handed to verl or to a subprocess as strings (the launcher module, the agent-loop manager, the reward path,
the ``verl.plugins`` entry point, the grader's worker) are imported by those processes, not by this one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("icpo_core", "flows", "tasks")
ENGINES = ("icpo_core.engines",)
STAGES = ("icpo_core.stages", "icpo_core.cli")
ORCHESTRATION = ("flows", "tasks")

# module -> why it imports a project module inside a function. Keep it empty: a project module that cannot be
# imported at the top of another one is a piece without its one home (move the piece, not the import).
IN_FUNCTION_OK: dict[str, str] = {}

# module -> why it imports project modules by a name computed at run time. Both are entry points at the top of
# the graph (nothing imports them), so no circle can hide behind them.
DYNAMIC_OK = {
    # a stage imports what it runs at its top (torch, transformers, verl); the CLI imports only the stage of the
    # command it runs, after validating params, so `icpo validate` and `icpo --help` stay at about a second
    "icpo_core.cli": "runs the stage its command names",
    # prefect.yaml is the single source of the deployments: their entrypoints are read from it
    "flows.serve": "loads the flows prefect.yaml names",
}


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
TREES = {m: ast.parse(p.read_text(), str(p)) for m, p in MODULES.items()}


def _resolve(name: str) -> str | None:
    """The project module an import names (``a.b.c`` -> ``a.b.c`` or its package ``a.b``), else None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_type_checking(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(module: str, tree: ast.Module) -> list[tuple[str, int, bool, bool]]:
    """(imported project module, line, at module top, for type checking only) for every import statement."""
    typing_only = {id(s) for n in tree.body if _is_type_checking(n) for s in n.body}
    top = {id(n) for n in tree.body} | typing_only
    out = []
    is_pkg = MODULES[module].name == "__init__.py"
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
            if target and target != module and not module.startswith(target + "."):
                out.append((target, node.lineno, id(node) in top, id(node) in typing_only))
    return out


GRAPH = {m: _imports(m, t) for m, t in TREES.items()}


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
        for w, _, _, typing_only in GRAPH[v]:
            if typing_only:
                continue
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


def _library(module: str) -> bool:
    return _within(module, ("icpo_core",)) and not _within(module, ENGINES + STAGES)


def _upward(importer, above: tuple[str, ...]) -> list[str]:
    return [
        f"{m}:{line} imports {t}"
        for m, edges in GRAPH.items()
        if importer(m)
        for t, line, _, _ in edges
        if _within(t, above)
    ]


def test_the_layers_name_the_packages_they_are_meant_to():
    """The checks below classify modules by prefix: a renamed package must not drop out of them silently."""
    for name in (
        "algorithm",
        "bench",
        "data",
        "grading",
        "models",
        "report",
        "rollout",
        "steplog",
        "checkpoint_layout",
    ):
        assert f"icpo_core.{name}" in MODULES and _library(f"icpo_core.{name}"), name
    assert "icpo_core.engines.local.trainer" in MODULES and "icpo_core.engines.verl.overrides" in MODULES
    assert "icpo_core.stages.train" in MODULES and "flows.reproduce" in MODULES


def test_no_import_circles():
    assert _cycles() == []


def test_the_library_imports_no_engine_stage_or_orchestration():
    assert _upward(_library, ENGINES + STAGES + ORCHESTRATION) == []


def test_the_engines_import_no_stage_or_orchestration():
    assert _upward(lambda m: _within(m, ENGINES), STAGES + ORCHESTRATION) == []


def test_the_stages_import_no_orchestration():
    assert _upward(lambda m: _within(m, STAGES), ORCHESTRATION) == []


def test_grading_imports_nothing_of_the_project_but_itself():
    """Grading sits under the data, the algorithm, the engines and the bench: it must not reach up into them."""
    grading = ("icpo_core.grading",)
    out = [
        f"{m}:{line} imports {t}"
        for m, edges in GRAPH.items()
        if _within(m, grading)
        for t, line, _, _ in edges
        if not _within(t, grading)
    ]
    assert out == []


def test_the_projects_own_modules_are_imported_at_module_top():
    inside = sorted(
        f"{m}:{line} imports {t}"
        for m, edges in GRAPH.items()
        if m not in IN_FUNCTION_OK
        for t, line, top, _ in edges
        if not top
    )
    assert inside == []


def test_modules_are_imported_by_a_computed_name_only_where_listed():
    found = set()
    for module, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if name in ("import_module", "__import__"):
                    found.add(module)
    assert found == set(DYNAMIC_OK)


def test_the_listed_exceptions_are_still_needed():
    assert set(IN_FUNCTION_OK) <= {m for m, edges in GRAPH.items() if any(not top for _, _, top, _ in edges)}
