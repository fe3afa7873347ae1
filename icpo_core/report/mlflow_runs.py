"""Table entries from MLflow runs (``icpo compare``) and the report's own MLflow run (``icpo report``)."""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)

_BENCH_METRIC = re.compile(r"^bench/(?P<name>[^/]+)/(?P<key>[^/]+)$")


def tag_filter(filters: list[str]) -> str:
    """``key=value`` pairs -> an MLflow filter string on tags; a raw MLflow filter (``tags.`` / ``params.`` /
    ``metrics.`` / ``attributes.`` ...) passes through. Clauses are and-ed."""
    clauses = []
    for f in filters:
        f = f.strip()
        if not f:
            continue
        if re.match(r"^(tags|params|metrics|attributes|attribute|run|tag|param|metric)\.", f):
            clauses.append(f)
            continue
        if "=" not in f:
            raise ValueError(
                f"--filter {f!r}: expected KEY=VALUE or an MLflow filter such as tags.`icpo.method` = 'icpo'"
            )
        key, value = (x.strip() for x in f.split("=", 1))
        value = value.strip("'\"").replace("'", "\\'")
        clauses.append(f"tags.`{key}` = '{value}'")
    return " and ".join(clauses)


def metrics_from_run(run_metrics: dict[str, float]) -> dict[str, Any]:
    """An MLflow run's ``bench/<name>/<key>`` metrics in the shape of ``metrics/bench_<run>.json``."""
    benches: dict[str, dict[str, Any]] = {}
    for k, v in run_metrics.items():
        m = _BENCH_METRIC.match(k)
        if m and m["name"] not in ("average", "time"):
            b = benches.setdefault(m["name"], {})
            b[m["key"]] = int(v) if m["key"] in ("n", "n_problems", "n_samples") else v
    return {"benchmarks": benches}


def search_entries(
    uri: str, experiment: str, filters: list[str], params: Any = None
) -> list[tuple[str, str, dict, str]]:
    """(run, label, metrics, source) per MLflow run with bench metrics, newest first per ``icpo.run`` tag."""
    from mlflow.tracking import MlflowClient

    from icpo_core.errors import UserError
    from icpo_core.report.table import run_label

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"MLflow experiment '{experiment}' not found at {uri}")
    try:
        flt = tag_filter(filters)
    except ValueError as e:
        raise UserError(str(e)) from None
    runs = client.search_runs([exp.experiment_id], filter_string=flt, order_by=["attributes.start_time DESC"])
    entries = []
    seen: set[str] = set()
    for r in runs:
        m = metrics_from_run(r.data.metrics)
        if not m["benchmarks"]:
            continue
        name = r.data.tags.get("icpo.run") or r.info.run_name or r.info.run_id
        key = f"{name}|{r.data.tags.get('icpo.profile', '')}|{r.data.tags.get('git_commit', '')}"
        if key in seen:  # the newest run of the same run/profile/commit
            continue
        seen.add(key)
        if params is not None and (name == "base" or name in params.runs):
            label = run_label(params, name)
        else:
            label = r.data.tags.get("icpo.method", "").upper() or name
        entries.append((name, label, m, r.info.run_id))
    return entries


def log_report(params: Any, table: Any, files: list[str]) -> str | None:
    """One MLflow run ``report`` (tag ``icpo.run=report``): the table as an MLflow table + the files."""
    try:
        from mlflow.tracking import MlflowClient

        from icpo_core.bench.mlflow_log import _base_tags
        from icpo_core.tracking import ensure_experiment, tracking_uri

        uri = tracking_uri(params)
        client = MlflowClient(tracking_uri=uri)
        exp_id = ensure_experiment(client, params.tracking.experiment, uri)
        tags = {
            **_base_tags(params),
            "icpo.run": "report",
            "icpo.method": "report",
            "icpo.variant": "report",
            "icpo.dvc_stage": "report",
        }
        run_id = client.create_run(exp_id, run_name="report", tags=tags).info.run_id
        data: dict[str, list[Any]] = {"run": [], "method": []}
        for col in [*table.columns, "average"]:
            data[col] = []
        for row in table.rows:
            data["run"].append(row.run)
            data["method"].append(row.label)
            for col in table.columns:
                data[col].append(row.values.get(col))
            data["average"].append(row.average)
        client.log_table(run_id, data=data, artifact_file="report/table.json")
        for f in files:
            client.log_artifact(run_id, f, "report")
        client.set_terminated(run_id)
        log.info("MLflow: report logged to run %s", run_id)
        return run_id
    except Exception as e:
        log.warning("MLflow logging of the report skipped: %s: %s", type(e).__name__, str(e)[:300])
        return None
