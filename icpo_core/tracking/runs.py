"""Training runs in MLflow: their tags and config, the run-id file beside the checkpoints, and
:func:`open_training_run`, the one way both engines open (or, after a restart, re-attach to) a training's run."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from icpo_core import paths
from icpo_core.config import Params
from icpo_core.io_utils import atomic_write_json
from icpo_core.tracking.store import mlflow_client, tracking_uri
from icpo_core.tracking.study import study_id, study_parent_run
from icpo_core.tracking.tags import PARENT_ENV, env_tags, flatten, git_commit
from icpo_core.tracking.tracker import Tracker
from icpo_core.tracking.wandb_run import TrackerGroup, WandbTracker, wandb_config, wandb_id_path

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run.json"  # stored next to the checkpoints, so a resumed training reuses its run
CONFIG_ARTIFACT = "config/run_config.json"


def run_tags(
    params: Params,
    run: str,
    *,
    stage: str | None = None,
    root: str | Path = ".",
    instance: str | None = None,
    parent: bool = True,
) -> dict[str, str]:
    """The tags of a training run's MLflow run; ``instance`` (``<run>_s<seed>``) marks one seed of the study
    and nests the run under the study's parent run (``parent`` False: without that tag, MLflow is not asked)."""
    algo = params.run_algorithm(run)
    name = instance or run
    tags = {
        "icpo.run": run,
        "icpo.instance": name,
        "icpo.seed": str(params.seed),
        "icpo.study": study_id(params),
        "icpo.method": algo.method,
        "icpo.variant": run,
        "icpo.engine": params.train.engine,
        "icpo.profile": params.profile,
        "icpo.dvc_stage": stage or (f"train@{run}-{params.seed}" if instance else f"train@{run}"),
        "git_commit": git_commit(root),
    }
    tags.update(env_tags())
    if parent:
        parent_id = os.environ.get(PARENT_ENV) or (study_parent_run(params, root) if instance else None)
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
    return tags


def run_config(params: Params, run: str) -> dict[str, Any]:
    """The resolved config of one training run (what its MLflow params and config artifact hold)."""
    return {
        "run": run,
        "profile": params.profile,
        "seed": params.seed,
        "model": params.model.model_dump(),
        "data": params.data.model_dump(),
        "algorithm": params.run_algorithm(run).model_dump(),
        "train": params.train.model_dump(),
    }


def run_id_path(run: str) -> Path:
    """Where training run (instance) ``run`` keeps its MLflow run id: beside its checkpoints."""
    return paths.checkpoints_dir(run) / RUN_ID_FILE


def read_run_id(path: str | Path, uri: str) -> str | None:
    """The stored MLflow run id of a training run, if it was made against the same tracking URI."""
    data = read_run_meta(path)
    return data.get("run_id") if data.get("tracking_uri") == uri else None


def read_run_meta(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_run_id(path: str | Path, run_id: str, uri: str, **extra: Any) -> None:
    """Store the MLflow run id of a training run (``extra``: e.g. the config fingerprint it belongs to)."""
    atomic_write_json(path, {"run_id": run_id, "tracking_uri": uri, **extra})


def find_run(params: Params, run: str, root: str | Path = ".") -> str | None:
    """The MLflow run id of training run (instance) ``run`` (the one its checkpoints recorded, else the newest
    tagged ``icpo.instance=<run>`` of this profile), or None when there is none or the store is unreachable."""
    uri = tracking_uri(params, root)
    stored = read_run_id(Path(root) / run_id_path(run), uri)
    try:
        client = mlflow_client(uri)
        if stored:
            try:
                if client.get_run(stored).info.lifecycle_stage == "active":
                    return stored
            except Exception:
                pass
        exp = client.get_experiment_by_name(params.tracking.experiment)
        if exp is None:
            return None
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`icpo.instance` = '{run}' and tags.`icpo.profile` = '{params.profile}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None
    except Exception as e:
        log.warning("MLflow (%s) unreachable while looking up run %r: %s", uri, run, e)
        return None


def open_training_run(
    params: Params,
    run: str,
    *,
    root: str | Path = ".",
    instance: str | None = None,
    fingerprint: str | None = None,
    loggers: Sequence[str] | None = None,
) -> Tracker | TrackerGroup:
    """Create the MLflow run of training run ``run`` (instance ``instance``), or re-attach to the one its
    run-id file (:func:`run_id_path`, beside the checkpoints) names after a restart; both engines call it.

    A new run gets :func:`run_tags`, the flattened :func:`run_config` as params and the config as the artifact
    ``config/run_config.json``; its id is written to the run-id file. ``fingerprint`` (the local engine's
    inputs): logged as a param and stored in the run-id file; a stored run of another fingerprint is not
    re-attached (the training starts over, so does its run). MLflow unreachable: the returned tracker is a
    no-op with ``run_id`` None (:class:`Tracker`), and training goes on. ``tracking.system_metrics``: MLflow's
    system metrics while the run is open.

    ``loggers`` (default ``tracking.loggers``) with ``wandb``: a :class:`.wandb_run.TrackerGroup` that writes the
    same metrics, params (the run's config) and tags to a wandb run as well (:class:`.wandb_run.WandbTracker`).
    verl passes ``["mlflow"]``: its own wandb logger writes there.
    """
    root = Path(root)
    name = instance or run
    uri = tracking_uri(params, root)
    tracker = Tracker(
        uri, params.tracking.experiment, root=root, system_metrics=params.tracking.system_metrics
    )
    id_file = root / run_id_path(name)
    stored = read_run_id(id_file, uri)
    if stored and fingerprint is not None and read_run_meta(id_file).get("fingerprint") != fingerprint:
        stored = None
    config = run_config(params, run)
    run_params = flatten(config)
    extra = {} if fingerprint is None else {"fingerprint": fingerprint}
    run_params.update(extra)
    tags = run_tags(params, run, root=root, instance=instance)
    run_id = tracker.start(name, tags=tags, params=run_params, resume_run_id=stored)
    if run_id:
        id_file.parent.mkdir(parents=True, exist_ok=True)
        write_run_id(id_file, run_id, uri, **extra)
        if run_id != stored:
            tracker.log_dict(config, CONFIG_ARTIFACT)
    if "wandb" not in (params.tracking.loggers if loggers is None else loggers):
        return tracker
    wandb = WandbTracker(wandb_id_path(name, root))
    wandb.start(wandb_config(params, name, tags, root, fingerprint), params=run_params)
    return TrackerGroup(tracker, [wandb])
