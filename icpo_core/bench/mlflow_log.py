"""Benchmark metrics into MLflow: on the training run of a DVC run (``find_run``), or a run of its own for
``base``. MLflow trouble warns and is skipped; ``metrics/bench_<run>.json`` is the source of truth."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from icpo_core.config import Params
from icpo_core.tracking import (
    ensure_experiment,
    env_tags,
    find_run,
    git_commit,
    mlflow_client,
    run_tags,
    system_metrics,
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


def bench_run(params: Params, run: str, *, instance: str | None = None) -> str | None:
    """The MLflow run the bench of ``instance`` (``<run>_s<seed>``; default: ``run``) logs to: the instance's
    training run (``find_run``), else a run of its own (``base``, or a training run not in this store: a
    bench-only run with the same tags). None when MLflow fails (one warning)."""
    name = instance or run
    try:
        uri = tracking_uri(params)
        client = mlflow_client(uri)
        run_id = find_run(params, name)
        if run_id is None:
            exp_id = ensure_experiment(client, params.tracking.experiment, uri)
            if run == "base":
                tags = _base_tags(params)
            else:
                tags = run_tags(params, run, stage=f"bench@{name}", instance=instance)
            created = client.create_run(exp_id, run_name=name, tags=tags)
            run_id = created.info.run_id
            client.set_terminated(run_id)
        return run_id
    except Exception as e:
        # one line: a store error's message can carry the driver's whole traceback
        first = next((ln for ln in str(e).splitlines() if ln.strip()), "")[:200]
        log.warning("MLflow: no run for bench %s: %s: %s", name, type(e).__name__, first)
        return None


@contextlib.contextmanager
def bench_system_metrics(params: Params, run_id: str | None) -> Iterator[None]:
    """MLflow's system metrics on the bench's run while the block runs (``tracking.system_metrics``).

    MLflow's monitor stops at a run that is not RUNNING: a finished run is marked RUNNING for the bench and
    set back to its status and end time afterwards (the training's duration is kept)."""
    if not (params.tracking.system_metrics and run_id):
        yield
        return
    uri = tracking_uri(params)
    before = None
    try:
        client = mlflow_client(uri)
        before = client.get_run(run_id).info
        if before.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
    except Exception as e:
        log.warning("MLflow system metrics of the bench skipped: %s: %s", type(e).__name__, str(e)[:300])
        yield
        return
    try:
        with system_metrics(True, run_id, uri):
            yield
    finally:
        if before.status != "RUNNING":
            try:
                client.set_terminated(run_id, status=before.status, end_time=before.end_time)
            except Exception as e:
                log.warning("MLflow: run %s left RUNNING after the bench: %s", run_id, str(e)[:300])


def log_bench(
    params: Params,
    run: str,
    metrics: dict[str, Any],
    *,
    instance: str | None = None,
    run_id: str | None = None,
    model_id: str | None = None,
) -> str | None:
    """Log the metrics of ``instance`` (``<run>_s<seed>``; default: ``run``) and the metrics JSON as an
    artifact, on ``run_id`` (default: :func:`bench_run`); returns the MLflow run id or None. ``model_id``: the
    MLflow logged model of the merged folder (``icpo merge``): the metrics are linked to it and the run lists it
    as its input model."""
    name = instance or run
    try:
        from mlflow.entities import LoggedModelInput, Metric

        uri = tracking_uri(params)
        client = mlflow_client(uri)
        run_id = run_id or bench_run(params, run, instance=instance)
        if run_id is None:
            return None
        now = int(time.time() * 1000)
        # A bench rerun after a kill between this call and DVC's record of the stage logs the same metrics
        # again: only values the run lacks (or that changed) are logged, so each is in its history once.
        logged = client.get_run(run_id).data.metrics
        items = [
            Metric(k, v, now, 0, model_id=model_id)
            for k, v in metric_items(metrics).items()
            if k not in logged or (logged[k] != v and not k.startswith("bench/time/"))
        ]
        for s in range(0, len(items), 1000):
            client.log_batch(run_id, metrics=items[s : s + 1000])
        client.log_dict(run_id, metrics, f"bench/bench_{name}.json")
        if model_id:
            client.log_inputs(run_id, models=[LoggedModelInput(model_id)])
            client.set_tag(run_id, "icpo.model_id", model_id)
        log.info("MLflow: bench metrics of %s logged to run %s", name, run_id)
        return run_id
    except Exception as e:
        log.warning("MLflow logging of bench %s skipped: %s: %s", name, type(e).__name__, str(e)[:300])
        return None
