"""The study's parent run: one MLflow row per study, the run x seed children nested under it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from icpo_core.config import Params
from icpo_core.tracking.store import ensure_experiment, mlflow_client, tracking_uri
from icpo_core.tracking.tags import PARENT_ENV, flatten, git_commit

log = logging.getLogger(__name__)


def study_id(params: Params) -> str:
    """What identifies a study: the runs, seeds and every knob they train with (not tracking, report or the
    preregistered primary comparison)."""
    cfg = {
        "profile": params.profile,
        "seeds": list(params.seeds),
        "study": params.study.model_dump(exclude={"primary"}),
        "runs": params.runs,
        "model": params.model.model_dump(),
        "data": params.data.model_dump(),
        "algorithm": params.algorithm.model_dump(),
        "train": params.train.model_dump(),
        "bench": params.bench.model_dump(),
    }
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]


def study_parent_run(params: Params, root: str | Path = ".") -> str | None:
    """The MLflow parent run of this study (found by tag ``icpo.study``, else created), so MLflow's runs view
    groups the run x seed children under one row per study. ``ICPO_MLFLOW_PARENT_RUN_ID`` (set by the Prefect
    flows) takes precedence. None when MLflow is unreachable (training never waits for it)."""
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    uri = tracking_uri(params, root)
    sid = study_id(params)
    try:
        from mlflow.entities import Param

        client = mlflow_client(uri)
        exp_id = ensure_experiment(client, params.tracking.experiment, uri, root)
        found = client.search_runs(
            [exp_id],
            filter_string=f"tags.`icpo.study` = '{sid}' and tags.`icpo.kind` = 'study'",
            max_results=1,
        )
        if found:
            return found[0].info.run_id
        runs = ", ".join(params.study.runs)
        tags = {
            "icpo.kind": "study",
            "icpo.study": sid,
            "icpo.profile": params.profile,
            "mlflow.note.content": f"Study {sid}: {runs} x seeds {list(params.seeds)}; ablations "
            f"{params.study.ablations or 'none'} x seeds {list(params.study.ablation_seeds)}.",
            "git_commit": git_commit(root),
        }
        run = client.create_run(exp_id, run_name=f"study-{params.profile}-{sid}", tags=tags)
        study = flatten({"seeds": list(params.seeds), "study": params.study.model_dump()})
        client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in study.items()])
        client.set_terminated(run.info.run_id)
        return run.info.run_id
    except Exception as e:
        log.warning("MLflow (%s): no study parent run (%s: %s)", uri, type(e).__name__, str(e)[:200])
        return None
