"""The `ablations` flow: a grid of variants, each one DVC experiment, all under one MLflow parent run.

    python -m flows.ablations                               # grpo, icpo, icpo_rs, icpo_no_errs, icpo_released, grpo_released
    python -m flows.ablations --runs grpo icpo --seeds 0 1  # 4 variants: <run>-s<seed>

The default `dvc repro` already runs the study (study.runs x seeds, ablations x ablation_seeds); this flow
runs variants as separate DVC experiments, e.g. every ablation at more seeds than the default study.

Each variant is `dvc exp run --temp -n <variant>-<flow run id prefix> -S ... <targets>`: ``--temp`` runs it in a
scratch copy of the workspace, so variants never stack on each other's params (plain `dvc exp run` applies
its result to the workspace) and the workspace stays as committed. DVC records each variant's params and
metrics under its experiment name (`dvc exp show`).

MLflow: the flow opens a parent run; each variant's stages see ``ICPO_MLFLOW_PARENT_RUN_ID`` and open their runs
as its children, tagged ``ablation=<variant>``, ``dvc_exp``, ``prefect_flow_run_id``, ``git_commit`` (and by
the stages themselves ``icpo.run`` ..., which is what `icpo compare` reads). A failing variant is reported (logs,
summary artifact, parent run tags) and the others still run; the flow fails at the end if any did.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from tasks.artifacts import ABLATION_KEY, MLFLOW_KEY
from tasks.dvc_tasks import StageFailed, ensure_gpu_limit, project_lock, run_experiment
from tasks.mlflow_runs import (
    child_runs,
    close_parent_run,
    git_commit,
    open_parent_run,
    runs_markdown,
    stage_env_vars,
    tracking_settings,
)
from tasks.planning import read_pipeline

# The paper's ablation table (-IEF = GRPO, ICPO, ICPO-dagger = +RS, -ERRS) plus the released code's behaviour,
# ICPO's and its GRPO baseline's (compared with each other: the same loss averaging, report.pairs).
DEFAULT_RUNS = ["grpo", "icpo", "icpo_rs", "icpo_no_errs", "icpo_released", "grpo_released"]


class Variant(BaseModel):
    """One cell of the grid: a DVC experiment named ``name``, running ``targets`` with ``overrides``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    targets: list[str]
    overrides: list[str] = []


def default_grid(
    runs: list[str] | None = None,
    seeds: list[int] | None = None,
    study_runs: tuple[str, ...] = ("grpo", "icpo"),
) -> list[Variant]:
    """A variant per params.yaml run (and seed): that run's bench stage at that seed (seed 0 when none given).

    The stage is ``bench@<run>-<seed>`` for the runs of ``study.runs`` (``study_runs``) and
    ``bench_ablation@<run>-<seed>`` for the others; ``-S seeds=[s] -S study.ablation_seeds=[s]`` makes DVC
    expand exactly that seed, so the variant takes one run x seed through train, merge and benchmark.
    """
    out: list[Variant] = []
    for run in runs or DEFAULT_RUNS:
        family = "bench" if run in study_runs else "bench_ablation"
        for seed in seeds or [0]:
            out.append(
                Variant(
                    name=f"{run}-s{seed}" if seeds else run,
                    targets=[f"{family}@{run}-{seed}"],
                    overrides=[f"seeds=[{seed}]", f"study.ablation_seeds=[{seed}]"],
                )
            )
    return out


def _raw_params(project: str) -> dict[str, Any]:
    raw = yaml.safe_load((Path(project) / "params.yaml").read_text()) or {}
    return raw if isinstance(raw, dict) else {}


def _check_runs(raw: dict[str, Any], variants: list[Variant]) -> None:
    """Fail before anything runs if a default-grid run is not in params.yaml (a typo would waste a sweep)."""
    known = set(raw.get("runs") or {})
    for v in variants:
        for t in v.targets:
            if (
                "@" in t
                and t.split("@", 1)[1] not in known
                and t.split("@", 1)[1].rsplit("-", 1)[0] not in known
            ):
                raise ValueError(
                    f"variant {v.name}: target {t} names a run not in params.yaml runs {sorted(known)}"
                )


@flow(name="icpo-ablations", log_prints=True)
def ablations(
    variants: list[Variant] | None = None,
    runs: list[str] | None = None,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    force: bool = False,
    project_dir: str = ".",
    parent_run_name: str | None = None,
) -> dict[str, str]:
    """Run an ablation grid as DVC experiments under one MLflow parent run.

    Args:
        variants: explicit variants; default: ``default_grid(runs, seeds)``.
        runs: params.yaml runs for the default grid (default: grpo, icpo, icpo_rs, icpo_no_errs, icpo_released,
            grpo_released).
        seeds: optional seeds; each run x seed is one variant (its ``bench@<run>-<seed>`` stage).
        overrides: ``key=value`` overrides applied to every variant (before the variant's own).
        force: re-run every stage of each variant (`dvc exp run --force`).
        project_dir: the DVC project (a git checkout).
        parent_run_name: MLflow parent run name (default ``ablations-<flow run name>``).

    Returns: variant name -> "ok" or the failure's first line.
    """
    logger = get_run_logger()
    project = str(Path(project_dir).resolve())
    raw = _raw_params(project)
    study_runs = tuple((raw.get("study") or {}).get("runs") or ("grpo", "icpo"))
    grid = list(variants) if variants else default_grid(runs, seeds, study_runs)
    if not variants:
        _check_runs(raw, grid)
    # a broken dvc.yaml or an unknown target fails here, once, not once per variant
    read_pipeline(project, sorted({t for v in grid for t in v.targets}), with_upstream=False, status=False)
    run_id = flow_run.get_id() or "local"
    suffix = run_id[:8]
    settings = tracking_settings(project)
    commit = git_commit(project)
    ensure_gpu_limit()
    parent = open_parent_run(
        settings,
        parent_run_name or f"ablations-{flow_run.get_name() or suffix}",
        {"icpo.kind": "ablation_parent", "prefect_flow_run_id": run_id, "git_commit": commit},
    )
    logger.info("MLflow parent run %s (%s); %d variant(s)", parent, settings.uri, len(grid))

    summary: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    try:
        with project_lock(project):
            for variant in grid:
                exp_name = f"{variant.name}-{suffix}"
                env = stage_env_vars(
                    settings,
                    flow_run_id=run_id,
                    commit=commit,
                    dvc_exp=exp_name,
                    extra_tags={"ablation": variant.name},
                    parent_run_id=parent,
                )
                state = run_experiment.with_options(task_run_name=f"variant {variant.name}")(
                    name=exp_name,
                    project_dir=project,
                    overrides=[*(overrides or []), *variant.overrides],
                    targets=variant.targets,
                    force=force,
                    extra_env=env,
                    return_state=True,
                )
                if state.is_completed():
                    summary[variant.name] = "ok"
                    seconds = state.result().seconds
                else:
                    first = (state.message or state.name or "failed").splitlines()[0]
                    summary[variant.name] = first
                    seconds = None
                    logger.error("variant %s failed (continuing with the others): %s", variant.name, first)
                rows.append(
                    {
                        "variant": variant.name,
                        "dvc_experiment": exp_name,
                        "outcome": "ok" if summary[variant.name] == "ok" else "FAILED",
                        "seconds": seconds,
                        "overrides": " ".join([*(overrides or []), *variant.overrides]),
                        "targets": " ".join(variant.targets),
                    }
                )
    finally:
        # the parent run is closed even if the flow is cancelled or crashes halfway (variants not run: "not run")
        for variant in grid:
            summary.setdefault(variant.name, "not run")
        close_parent_run(settings, parent, summary)

    create_table_artifact(
        key=ABLATION_KEY, table=rows, description=f"ablation grid, MLflow parent run {parent}"
    )
    children = child_runs(settings, parent)
    create_markdown_artifact(
        key=MLFLOW_KEY,
        markdown=runs_markdown(settings, children, f"MLflow children of ablation parent run {parent}"),
        description="MLflow runs of the ablation grid",
    )
    failed = [name for name, outcome in summary.items() if outcome != "ok"]
    if failed:
        raise StageFailed(f"{len(failed)} of {len(grid)} variant(s) failed: {', '.join(failed)}")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.ablations", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--runs", nargs="+", default=None, help=f"params.yaml runs (default: {' '.join(DEFAULT_RUNS)})"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("--project-dir", default=".")
    args = p.parse_args(argv)
    state = ablations(
        runs=args.runs,
        seeds=args.seeds,
        overrides=args.overrides,
        force=args.force,
        project_dir=args.project_dir,
        return_state=True,
    )
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
