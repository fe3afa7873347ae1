"""The MLflow side of the flows: where runs go, the tags every stage inherits, parent runs, run links.

Stages log their own MLflow runs (``icpo_core.tracking``); the flows only pass the conventions of
docs/architecture.md down through the environment:

- ``ICPO_TAG_<NAME>=value`` becomes tag ``<name>`` on every run a stage opens (flow-run id, git commit, DVC
  experiment name, ablation variant);
- ``ICPO_MLFLOW_PARENT_RUN_ID`` nests the stage's run under a parent opened here (ablation sweeps);
- ``MLFLOW_TRACKING_URI`` is resolved once, to an absolute URI, so a stage running in a `dvc exp run --temp`
  scratch copy still logs into the project's store, not into a store inside the scratch copy.

mlflow is imported inside the functions: an up-to-date reproduce run never pays for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icpo_core.config import resolve
from icpo_core.paths import MLFLOW_DIR
from icpo_core.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from icpo_core.tracking import git_commit as head

FLOW_RUN_TAG = "prefect_flow_run_id"  # from ICPO_TAG_PREFECT_FLOW_RUN_ID
PARENT_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class TrackingSettings:
    uri: str
    experiment: str
    artifact_location: str | None  # set for the project's default sqlite store (artifacts under mlflow/)


def tracking_settings(project_dir: str | Path) -> TrackingSettings:
    """Tracking URI and experiment by the contract: $MLFLOW_TRACKING_URI, else params.yaml
    ``tracking.tracking_uri``, else ``sqlite:///<project>/mlflow/mlflow.db`` (artifacts in ``mlflow/artifacts``)."""
    import yaml

    project = Path(project_dir).resolve()
    tracking: dict[str, Any] = {}
    params_file = project / "params.yaml"
    if params_file.is_file():
        raw = yaml.safe_load(params_file.read_text()) or {}
        # the profile may override tracking; validation is the stages' job, a bad file fails there with exit 2
        tracking = (resolve(raw) if isinstance(raw, dict) else {}).get("tracking") or {}
    experiment = tracking.get("experiment") or "icpo-repro"
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.get("tracking_uri")
    if uri:
        return TrackingSettings(uri=uri, experiment=experiment, artifact_location=None)
    store = project / MLFLOW_DIR
    return TrackingSettings(
        uri=f"sqlite:///{store / 'mlflow.db'}",
        experiment=experiment,
        artifact_location=(store / "artifacts").as_uri(),
    )


def git_commit(project_dir: str | Path) -> str:
    """HEAD of the checkout (``-dirty`` with uncommitted changes to tracked files), as the stages tag it."""
    return head(project_dir)


def stage_env_vars(
    settings: TrackingSettings,
    *,
    flow_run_id: str | None,
    commit: str,
    dvc_exp: str,
    extra_tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> dict[str, str]:
    """The variables a flow adds to each stage's environment (see the module docstring)."""
    if settings.uri.startswith("sqlite:///"):
        Path(settings.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    env = {
        "MLFLOW_TRACKING_URI": settings.uri,
        "ICPO_TAG_PREFECT_FLOW_RUN_ID": flow_run_id or "",
        "ICPO_TAG_GIT_COMMIT": commit,
        "ICPO_TAG_DVC_EXP": dvc_exp,
    }
    for name, value in (extra_tags or {}).items():
        env[f"ICPO_TAG_{name.upper()}"] = value
    if parent_run_id:
        env["ICPO_MLFLOW_PARENT_RUN_ID"] = parent_run_id
    return env


def _client(settings: TrackingSettings):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=settings.uri)


def experiment_id(settings: TrackingSettings, create: bool = False) -> str | None:
    client = _client(settings)
    exp = client.get_experiment_by_name(settings.experiment)
    if exp is not None:
        return exp.experiment_id
    if not create:
        return None

    # a model-training experiment, as every project writer marks it (MLflow's UI view)
    return client.create_experiment(
        settings.experiment,
        artifact_location=settings.artifact_location,
        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
    )


def open_parent_run(settings: TrackingSettings, name: str, tags: Mapping[str, str]) -> str:
    """Create the parent run of a sweep (children attach through ICPO_MLFLOW_PARENT_RUN_ID); returns its id."""
    client = _client(settings)
    run = client.create_run(experiment_id(settings, create=True), run_name=name, tags=dict(tags))
    return run.info.run_id


def close_parent_run(settings: TrackingSettings, run_id: str, summary: Mapping[str, Any]) -> None:
    """Record the sweep's outcome on the parent run and end it (FAILED if any variant failed)."""
    client = _client(settings)
    failed = [name for name, outcome in summary.items() if outcome != "ok"]
    client.set_tag(run_id, "ablation.variants", ",".join(summary))
    client.set_tag(run_id, "ablation.failed", ",".join(failed))
    client.log_dict(run_id, dict(summary), "ablation_summary.json")
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def find_runs(settings: TrackingSettings, filter_string: str) -> list[dict[str, str]]:
    """Runs of the experiment matching an MLflow filter, as small dicts (id, name, status, tags)."""
    exp_id = experiment_id(settings)
    if exp_id is None:
        return []
    runs = _client(settings).search_runs([exp_id], filter_string=filter_string, max_results=1000)
    return [
        {
            "run_id": r.info.run_id,
            "name": r.info.run_name or "",
            "status": r.info.status,
            "experiment_id": r.info.experiment_id,
            **{f"tag:{k}": v for k, v in r.data.tags.items()},
        }
        for r in runs
    ]


def runs_of_flow_run(settings: TrackingSettings, flow_run_id: str) -> list[dict[str, str]]:
    return find_runs(settings, f"tags.{FLOW_RUN_TAG} = '{flow_run_id}'")


def child_runs(settings: TrackingSettings, parent_run_id: str) -> list[dict[str, str]]:
    return find_runs(settings, f"tags.`{PARENT_TAG}` = '{parent_run_id}'")


def run_link(settings: TrackingSettings, run: Mapping[str, str]) -> str:
    """A UI link for a tracking server; for a local store, the run id (open it with `mlflow ui`)."""
    if settings.uri.startswith(("http://", "https://")):
        base = settings.uri.rstrip("/")
        return f"[{run['name'] or run['run_id']}]({base}/#/experiments/{run['experiment_id']}/runs/{run['run_id']})"
    return f"`{run['run_id']}`"


def runs_markdown(settings: TrackingSettings, runs: list[dict[str, str]], title: str) -> str:
    lines = [f"# {title}", "", f"Tracking URI: `{settings.uri}`, experiment `{settings.experiment}`.", ""]
    if not settings.uri.startswith(("http://", "https://")):
        lines += [f"Browse: `mlflow ui --backend-store-uri {settings.uri}`", ""]
    if not runs:
        return "\n".join([*lines, "No MLflow runs were logged.", ""])
    lines += ["| run | name | status | DVC experiment |", "|---|---|---|---|"]
    for run in runs:
        lines.append(
            f"| {run_link(settings, run)} | {run['name']} | {run['status']} | {run.get('tag:dvc_exp', '')} |"
        )
    return "\n".join(lines) + "\n"
