"""The `reproduce` flow: Prefect runs the DVC pipeline stage by stage, DVC decides what is stale.

    python -m flows.reproduce                         # like `dvc repro`, with logs/artifacts in Prefect
    python -m flows.reproduce report --force          # a target (and its upstream), forced
    python -m flows.reproduce -S train.steps=2        # overrides: one `dvc exp run --temp` experiment

1. Plan: DVC's stage graph (upstream first) and `dvc status --json`, published as the `dvc-plan` artifact.
2. Run every planned stage that is stale (or downstream of one) as its own Prefect task,
   `dvc repro --single-item <stage>`, its output streamed into the Prefect logs line by line. Download stages
   retry with backoff; GPU stages share one `gpu` concurrency slot; one flow at a time drives DVC per checkout.
   A failed stage stops the stages that depend on it; independent stages still run, finished outputs stay,
   and the next run continues from the failure (DVC skips what is done).
3. Publish the stage results, the report stage's comparison table, and the MLflow runs this flow caused (every
   stage's environment carries ICPO_TAG_PREFECT_FLOW_RUN_ID / _GIT_COMMIT / _DVC_EXP, so they are tagged).

Overrides (`-S key=value`, or a profile other than params.yaml's) run as ONE `dvc exp run --temp` experiment
instead of per-stage tasks: an override is an experiment, and DVC records its params and results under the
experiment's name while the workspace (params.yaml, dvc.lock, outputs) stays exactly as committed. Writing the
overrides into the shared checkout's params.yaml to run stage by stage would leave the workspace dirty and race
with any other flow or user working there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from tasks.artifacts import MLFLOW_KEY, PLAN_KEY, publish_report, publish_results
from tasks.dvc_tasks import StageFailed, ensure_gpu_limit, project_lock, run_experiment, stage_task
from tasks.mlflow_runs import (
    TrackingSettings,
    git_commit,
    runs_markdown,
    runs_of_flow_run,
    stage_env_vars,
    tracking_settings,
)
from tasks.planning import Plan, make_plan, plan_markdown, read_pipeline


@task(name="dvc-plan", cache_policy=NO_CACHE)
def plan_stages(project_dir: str, targets: list[str], force: bool, with_upstream: bool) -> Plan:
    """DVC's graph for the targets plus their `dvc status`, published as the `dvc-plan` markdown artifact."""
    pipeline = read_pipeline(project_dir, targets, with_upstream=with_upstream, status=not force)
    plan = make_plan(pipeline.order, pipeline.upstream, pipeline.stale, force=force, targets=targets)
    create_markdown_artifact(key=PLAN_KEY, markdown=plan_markdown(plan), description="stages DVC will run")
    get_run_logger().info(
        "plan: %d stage(s) to hand to DVC: %s", len(plan.to_run), ", ".join(plan.to_run) or "none"
    )
    return plan


def _current_profile(project_dir: str) -> str:
    raw = yaml.safe_load((Path(project_dir) / "params.yaml").read_text()) or {}
    return str(raw.get("profile", "embedded")) if isinstance(raw, dict) else "embedded"


@flow(name="icpo-reproduce", log_prints=True)
def reproduce(
    targets: list[str] | None = None,
    force: bool = False,
    overrides: list[str] | None = None,
    profile: str | None = None,
    with_upstream: bool = True,
    project_dir: str = ".",
    experiment_name: str | None = None,
    download_retries: int = 3,
    retry_backoff_s: float = 10.0,
) -> dict[str, Any]:
    """Reproduce the DVC pipeline (or `targets`) with one Prefect task per stage.

    Args:
        targets: DVC stage targets (``report``, ``train@icpo``, a foreach group like ``bench``); none = all.
        force: re-run the planned stages even if DVC says they are up to date (`dvc repro --force`).
        overrides: `-S` style ``key=value`` params overrides; they run as one `dvc exp run --temp` experiment.
        profile: a params.yaml profile; if it differs from the file's, it becomes the override ``profile=...``.
        with_upstream: also plan the targets' upstream stages (like `dvc repro`); False runs the targets only.
        project_dir: the DVC project (a git checkout).
        experiment_name: DVC experiment name in override mode (default ``repro-<flow run id prefix>``).
        download_retries: retries of the download stages (base_model, prepare_train, prepare_demos) only.
        retry_backoff_s: first retry delay; it doubles for each further retry.
    """
    logger = get_run_logger()
    project = str(Path(project_dir).resolve())
    targets = list(targets or [])
    overrides = list(overrides or [])
    if profile and profile != _current_profile(project):
        overrides.insert(0, f"profile={profile}")
    run_id = flow_run.get_id()
    settings = tracking_settings(project)
    commit = git_commit(project)
    ensure_gpu_limit()

    with project_lock(project):
        if overrides:
            name = experiment_name or f"repro-{(run_id or 'local')[:8]}"
            summary = _run_experiment(project, name, targets, overrides, force, settings, commit, run_id)
        else:
            retry = (download_retries, retry_backoff_s)
            summary = _run_stages(project, targets, force, with_upstream, settings, commit, run_id, retry)

    summary["report_artifacts"] = publish_report(project) if not overrides else []
    if summary["ran"]:
        runs = runs_of_flow_run(settings, run_id) if run_id else []
        create_markdown_artifact(
            key=MLFLOW_KEY,
            markdown=runs_markdown(settings, runs, "MLflow runs of this flow run"),
            description="MLflow runs tagged with this flow run's id",
        )
        summary["mlflow_runs"] = [r["run_id"] for r in runs]
    if summary["failed"]:
        raise StageFailed(
            f"{len(summary['failed'])} stage(s) failed: {', '.join(summary['failed'])}"
            + (f"; not run (upstream failed): {', '.join(summary['blocked'])}" if summary["blocked"] else "")
            + ". Fix and re-run: DVC skips the stages that finished."
        )
    logger.info("done: ran %s; up to date %s", summary["ran"] or "nothing", len(summary["up_to_date"]))
    return summary


def _run_stages(
    project: str,
    targets: list[str],
    force: bool,
    with_upstream: bool,
    settings: TrackingSettings,
    commit: str,
    run_id: str | None,
    retry: tuple[int, float],
) -> dict[str, Any]:
    logger = get_run_logger()
    plan = plan_stages(project, targets, force, with_upstream)
    env = stage_env_vars(settings, flow_run_id=run_id, commit=commit, dvc_exp="workspace")
    rows: list[dict[str, Any]] = []
    ran: list[str] = []
    failed: list[str] = []
    blocked: list[str] = []
    for stage in plan.order:
        if stage not in plan.to_run:
            rows.append({"stage": stage, "outcome": "up to date", "seconds": 0.0, "note": ""})
            continue
        bad = [u for u in plan.upstream.get(stage, []) if u in failed or u in blocked]
        if bad:
            logger.warning("not running %s: upstream stage(s) failed: %s", stage, ", ".join(bad))
            blocked.append(stage)
            rows.append(
                {"stage": stage, "outcome": "not run", "seconds": 0.0, "note": f"upstream failed: {bad}"}
            )
            continue
        task_for_stage = stage_task(stage, retries=retry[0], backoff_s=retry[1])
        state = task_for_stage(
            stage=stage, project_dir=project, force=force, extra_env=env, return_state=True
        )
        if state.is_completed():
            result = state.result()
            ran.append(stage)
            rows.append({"stage": stage, "outcome": result.outcome, "seconds": result.seconds, "note": ""})
        else:
            failed.append(stage)
            message = (state.message or "").splitlines()[0] if state.message else state.name
            rows.append({"stage": stage, "outcome": "FAILED", "seconds": 0.0, "note": message})
    publish_results(rows, "outcome of every planned DVC stage")
    return {
        "mode": "stages",
        "plan": plan.to_run,
        "ran": ran,
        "failed": failed,
        "blocked": blocked,
        "up_to_date": plan.up_to_date,
        "rows": rows,
    }


def _run_experiment(
    project: str,
    name: str,
    targets: list[str],
    overrides: list[str],
    force: bool,
    settings: TrackingSettings,
    commit: str,
    run_id: str | None,
) -> dict[str, Any]:
    create_markdown_artifact(
        key=PLAN_KEY,
        markdown=(
            "# DVC plan: experiment\n\n"
            f"Overrides {', '.join(f'`{o}`' for o in overrides)} run as the DVC experiment `{name}` "
            f"(`dvc exp run --temp`), targets: {', '.join(targets) or 'all stages'}, force: {force}. "
            "DVC decides what is stale inside the experiment's scratch workspace; the workspace is not "
            f"changed. Afterwards: `dvc exp show`, `dvc exp apply {name}`.\n"
        ),
        description="experiment run with params overrides",
    )
    env = stage_env_vars(settings, flow_run_id=run_id, commit=commit, dvc_exp=name)
    state = run_experiment(
        name=name,
        project_dir=project,
        overrides=overrides,
        targets=targets,
        force=force,
        extra_env=env,
        return_state=True,
    )
    ok = state.is_completed()
    row = {"stage": f"exp {name}", "outcome": "ran" if ok else "FAILED", "seconds": 0.0, "note": ""}
    if ok:
        row["seconds"] = state.result().seconds
    else:
        row["note"] = (state.message or "").splitlines()[0] if state.message else state.name
    publish_results([row], f"DVC experiment {name}")
    return {
        "mode": "experiment",
        "experiment": name,
        "plan": [name],
        "ran": [name] if ok else [],
        "failed": [] if ok else [name],
        "blocked": [],
        "up_to_date": [],
        "rows": [row],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="*", help="DVC stage targets (default: all stages)")
    p.add_argument("-f", "--force", action="store_true", help="re-run the planned stages even if up to date")
    p.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--profile", default=None, help="params.yaml profile (runs as an experiment if it differs)"
    )
    p.add_argument(
        "--no-upstream", action="store_true", help="run the targets only, not their upstream stages"
    )
    p.add_argument("--project-dir", default=".")
    args = p.parse_args(argv)
    state = reproduce(
        targets=args.targets,
        force=args.force,
        overrides=args.overrides,
        profile=args.profile,
        with_upstream=not args.no_upstream,
        project_dir=args.project_dir,
        return_state=True,
    )
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
