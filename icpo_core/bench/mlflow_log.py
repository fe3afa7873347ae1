"""Benchmark metrics into MLflow: on the training run of a DVC run (``find_run``), or a run of its own for
``base``. MLflow trouble warns and is skipped; ``metrics/bench_<run>.json`` is the source of truth."""

from __future__ import annotations

import logging
import os
from typing import Any

from icpo_core.config import Params
from icpo_core.tracking import (
    ensure_experiment,
    env_tags,
    find_run,
    git_commit,
    mlflow_client,
    run_tags,
    tracking_uri,
)

log = logging.getLogger(__name__)


def metric_items(metrics: dict[str, Any]) -> dict[str, float]:
    """``bench/<name>/<metric>`` for every numeric per-benchmark metric, plus ``bench/average/avg_at_n`` and
    ``bench/time/{generate_s,grade_s}``."""
    out: dict[str, float] = {}
    for name, m in metrics.get("benchmarks", {}).items():
        for key, value in m.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
                out[f"bench/{name}/{key}"] = float(value)
    avg = metrics.get("average", {}).get("avg_at_n")
    if avg is not None:
        out["bench/average/avg_at_n"] = float(avg)
    for key in ("generate_s", "grade_s"):
        if metrics.get("timing", {}).get(key) is not None:
            out[f"bench/time/{key}"] = float(metrics["timing"][key])
    return out


def _base_tags(params: Params) -> dict[str, str]:
    tags = {
        "icpo.run": "base",
        "icpo.instance": "base",
        "icpo.method": "base",
        "icpo.variant": "base",
        "icpo.engine": "none",
        "icpo.profile": params.profile,
        "icpo.dvc_stage": "bench_base",
        "git_commit": git_commit(),
    }
    tags.update(env_tags())
    parent = os.environ.get("ICPO_MLFLOW_PARENT_RUN_ID")
    if parent:
        tags["mlflow.parentRunId"] = parent
    return tags


def log_bench(
    params: Params, run: str, metrics: dict[str, Any], *, instance: str | None = None
) -> str | None:
    """Log the metrics of ``instance`` (``<run>_s<seed>``; default: ``run``) and the metrics JSON as an
    artifact, on the instance's training run; returns the MLflow run id or None."""
    name = instance or run
    try:
        from mlflow.entities import Metric

        uri = tracking_uri(params)
        client = mlflow_client(uri)
        run_id = find_run(params, name)
        if run_id is None:
            exp_id = ensure_experiment(client, params.tracking.experiment, uri)
            if run == "base":
                tags = _base_tags(params)
            else:
                # The training run is not in this store (e.g. trained elsewhere): a bench-only run, same tags.
                tags = run_tags(params, run, stage=f"bench@{name}", instance=instance)
            created = client.create_run(exp_id, run_name=name, tags=tags)
            run_id = created.info.run_id
            client.set_terminated(run_id)
        import time

        now = int(time.time() * 1000)
        # A bench rerun after a kill between this call and DVC's record of the stage logs the same metrics
        # again: only values the run lacks (or that changed) are logged, so each is in its history once.
        logged = client.get_run(run_id).data.metrics
        items = [
            Metric(k, v, now, 0)
            for k, v in metric_items(metrics).items()
            if k not in logged or (logged[k] != v and not k.startswith("bench/time/"))
        ]
        for s in range(0, len(items), 1000):
            client.log_batch(run_id, metrics=items[s : s + 1000])
        client.log_dict(run_id, metrics, f"bench/bench_{name}.json")
        log.info("MLflow: bench metrics of %s logged to run %s", name, run_id)
        return run_id
    except Exception as e:
        log.warning("MLflow logging of bench %s skipped: %s: %s", name, type(e).__name__, str(e)[:300])
        return None
