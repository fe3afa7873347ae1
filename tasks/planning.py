"""What a reproduce run will do: DVC's stage graph in execution order, and what `dvc status` says is stale.

DVC stays the owner of the graph: stages, their order and their upstream come from DVC's own index (the same
graph `dvc repro` walks, foreach/matrix stages expanded); staleness comes from `dvc status --json`. Nothing here
parses dvc.yaml itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from icpo_core.errors import UserError

# Download / materialisation stages: network failures are transient, so they are the only ones retried.
DOWNLOAD_STAGES = frozenset({"base_model", "prepare_train", "prepare_demos"})


def is_gpu_stage(stage: str) -> bool:
    """Training, benchmark and regime stages hold the accelerator (one at a time per Prefect server)."""
    return stage.startswith(("train@", "bench@", "train_ablation@", "bench_ablation@")) or stage in (
        "bench_base",
        "regime",
    )


@dataclass(frozen=True)
class Plan:
    """Stages in execution order (upstream first) and which of them will be handed to DVC."""

    order: list[str]
    upstream: dict[str, list[str]]  # stage -> the planned stages it depends on (transitively)
    stale: dict[str, list[str]]  # stage -> `dvc status` reasons, for stale planned stages only
    to_run: list[str]  # stale, forced, or downstream of a stage that will run (DVC then decides)
    force: bool = False
    targets: list[str] = field(default_factory=list)

    @property
    def up_to_date(self) -> list[str]:
        return [s for s in self.order if s not in self.to_run]


@dataclass(frozen=True)
class Pipeline:
    """The planned part of DVC's pipeline: stage names in DAG order, their planned upstream, and staleness."""

    order: list[str]
    upstream: dict[str, list[str]]  # stage -> the planned stages it depends on (transitively)
    stale: dict[str, list[str]]  # stale planned stage -> `dvc status` reasons (empty unless status=True)


def read_pipeline(
    project_dir: str | Path, targets: Sequence[str] = (), with_upstream: bool = True, status: bool = True
) -> Pipeline:
    """DVC's stage graph for ``targets`` and, with ``status``, what `dvc status` reports stale among them.

    ``targets`` are anything `dvc repro` accepts as a stage target (``report``, ``train@icpo``, or a foreach
    group such as ``train``); none means every stage. With ``with_upstream`` the targets' upstream stages are
    planned too, like `dvc repro <target>`; without, only the targets themselves. Status is DVC's own
    per-stage check (what `dvc status --json` prints), run in this process to spare a second DVC start-up.
    """
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(project_dir)) as repo:
            graph = repo.index.graph  # edges point from a stage to the stages it depends on
            root = Path(repo.root_dir)
            selected = set(graph.nodes)
            if targets:
                selected = set()
                for target in targets:
                    selected.update(repo.stage.collect(_rooted(target, root)))
            if with_upstream:
                for stage in list(selected):
                    selected.update(nx.descendants(graph, stage))

            def name(stage) -> str:
                return _address(stage, root)

            # upstream first; ties broken by name so the order is stable from run to run
            ordered = nx.lexicographical_topological_sort(graph.reverse(copy=False), key=name)
            order = [s for s in ordered if s in selected]
            upstream = {
                name(s): sorted(name(d) for d in nx.descendants(graph, s) if d in selected) for s in order
            }
            stale: dict[str, list[str]] = {}
            if status:
                with repo.lock:  # what `dvc status` holds while it checks
                    for stage in order:
                        for changes in stage.status().values():  # {} when up to date
                            stale[name(stage)] = _reasons(changes)
            return Pipeline(order=[name(s) for s in order], upstream=upstream, stale=stale)
    except DvcException as e:
        raise UserError(f"DVC could not read the pipeline in {project_dir}: {e}") from None


def _rooted(target: str, root: Path) -> str:
    """A `dvc repro` target made independent of the current directory (DVC resolves targets against it)."""
    if ":" in target:
        path, name = target.rsplit(":", 1)
        return f"{root / path}:{name}"
    if target.endswith((".dvc", "dvc.yaml")):
        return str(root / target)
    return f"{root / 'dvc.yaml'}:{target}"


def _address(stage, root: Path) -> str:
    """The stage's name as `dvc repro` / `dvc status` spell it from the project root (DVC's own
    ``stage.addressing`` is relative to the current directory, which is not necessarily the project)."""
    dvcfile = Path(stage.dvcfile.path)
    if getattr(stage, "name", None) is None:  # a .dvc file
        return str(dvcfile.relative_to(root))
    if dvcfile.parent == root and dvcfile.name == "dvc.yaml":
        return stage.name
    return f"{dvcfile.relative_to(root)}:{stage.name}"


def _reasons(changes: Iterable[object]) -> list[str]:
    out: list[str] = []
    for change in changes:
        if isinstance(change, str):  # e.g. "always changed"
            out.append(change)
        elif isinstance(change, dict):
            for kind, items in change.items():
                if isinstance(items, dict):
                    for path, what in items.items():
                        if isinstance(what, dict):  # params: {"params.yaml": {"train.lr": "modified"}}
                            what = ", ".join(f"{key} {change}" for key, change in what.items())
                        out.append(f"{kind}: {path} ({what})")
                else:
                    out.append(f"{kind}: {items}")
    return out


def make_plan(
    order: list[str],
    upstream: dict[str, list[str]],
    stale: dict[str, list[str]],
    *,
    force: bool = False,
    targets: Sequence[str] = (),
) -> Plan:
    """Decide what DVC is asked to run: stale stages, and everything downstream of one (its inputs may change)."""
    to_run: list[str] = []
    for stage in order:
        if force or stage in stale or any(u in to_run for u in upstream.get(stage, [])):
            to_run.append(stage)
    return Plan(
        order=list(order),
        upstream=upstream,
        stale={s: stale[s] for s in order if s in stale},
        to_run=to_run,
        force=force,
        targets=list(targets),
    )


def plan_markdown(plan: Plan, max_reasons: int = 4) -> str:
    """The plan as a Markdown table (the `dvc-plan` Prefect artifact)."""
    lines = [
        "# DVC plan",
        "",
        f"Targets: {', '.join(plan.targets) or 'all stages'}; force: {plan.force}. "
        f"{len(plan.to_run)} of {len(plan.order)} stages handed to `dvc repro --single-item`, "
        f"{len(plan.up_to_date)} up to date.",
        "",
        "| # | stage | action | why |",
        "|---|---|---|---|",
    ]
    for i, stage in enumerate(plan.order, 1):
        if stage not in plan.to_run:
            action, why = "skip", "up to date"
        elif plan.force:
            action, why = "run", "forced"
        elif stage in plan.stale:
            reasons = plan.stale[stage]
            more = f"; +{len(reasons) - max_reasons} more" if len(reasons) > max_reasons else ""
            action, why = "run", "; ".join(reasons[:max_reasons]) + more
        else:
            action, why = (
                "check",
                "downstream of a stage that runs (DVC skips it if its inputs come out unchanged)",
            )
        lines.append(f"| {i} | `{stage}` | {action} | {why.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
