"""MLflow for the report: the study's metrics and files (``icpo report``), the newest study and the per-run
table entries (``icpo compare``)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from icpo_core.bench.mlflow_log import _base_tags
from icpo_core.errors import UserError
from icpo_core.report.labels import run_label
from icpo_core.tracking import PARENT_ENV, ensure_experiment, mlflow_client, tracking_uri

log = logging.getLogger(__name__)

# The experiment's saved view "study": MLflow's runs page with the runs grouped by the ``icpo.variant`` tag (grpo,
# icpo, luffy, ... over their seeds; base) and the charts drawn from the groups' averages with the min-max band
# of the seeds. MLflow's UI reads a saved view from the experiment tag ``mlflow.sharedViewState.<key>`` (what its
# "Share" button writes; plain JSON is accepted) when the URL carries ``viewStateShareKey=<key>``.
STUDY_VIEW_KEY = "study"
STUDY_VIEW_TAG = f"mlflow.sharedViewState.{STUDY_VIEW_KEY}"

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


def _search_runs(uri: str, experiment: str, filters: list[str], max_results: int | None = None) -> list:
    """The experiment's runs matching the ``key=value`` tag filters, newest first (UserError if none exists)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"MLflow experiment '{experiment}' not found at {uri}")
    try:
        flt = tag_filter(filters)
    except ValueError as e:
        raise UserError(str(e)) from None
    kwargs = {} if max_results is None else {"max_results": max_results}
    return client.search_runs(
        [exp.experiment_id], filter_string=flt, order_by=["attributes.start_time DESC"], **kwargs
    )


def search_entries(
    uri: str, experiment: str, filters: list[str], params: Any = None
) -> list[tuple[str, str, dict, str]]:
    """(run, label, metrics, source) per MLflow run with bench metrics, newest first per ``icpo.run`` tag."""

    runs = _search_runs(uri, experiment, filters)
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


VERDICT_CODES = {"supports": 1.0, "inconclusive": 0.0, "contradicts": -1.0}


def study_metrics(study: dict[str, Any]) -> dict[str, float]:
    """The numbers of a ``reports/study.json`` as flat MLflow metrics: the preregistered comparisons first,
    ``primary/<a>-<b>/<diff|ci_low|ci_high|p|p_seeds|mde|n_seeds_a|n_seeds_b|n_problems|verdict>`` (verdict: 1
    supports, 0 inconclusive, -1 contradicts), the regime ``regime/<zero_shot|with_demos>/<groups_with_signal|
    ci_low|ci_high|mean_reward>``, then ``study/<run>/<benchmark|average>/<mean|ci_low|ci_high|n_seeds|
    n_problems>``, ``process/<run>/<step-log key>/<mean|ci_low|ci_high|n_seeds>`` and
    ``diff/<a>-<b>/<benchmark|average>/<diff|ci_low|ci_high|p|p_seeds>``; n/a values are left out."""
    out: dict[str, float] = {}

    def put(prefix: str, d: dict[str, Any] | None, keys: tuple[str, ...]) -> None:
        for k in keys:
            v = (d or {}).get(k)
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v:
                out[f"{prefix}/{k}"] = float(v)

    cmp_keys = ("diff", "ci_low", "ci_high", "p", "p_seeds")
    for r in (study.get("primary") or {}).get("comparisons") or []:
        key = f"primary/{r['a']}-{r['b']}"
        put(key, r.get("diff"), (*cmp_keys, "n_seeds_a", "n_seeds_b", "n_problems"))
        put(
            key, {"mde": r.get("mde"), "verdict": VERDICT_CODES.get(r.get("verdict", ""))}, ("mde", "verdict")
        )
    regime = study.get("regime") or {}
    for arm in ("zero_shot", "with_demos"):
        a = regime.get(arm) or {}
        lo, hi = (a.get("ci") or [None, None])[:2]
        put(
            f"regime/{arm}",
            {**a, "ci_low": lo, "ci_high": hi},
            ("groups_with_signal", "ci_low", "ci_high", "mean_reward"),
        )
    cell_keys = ("mean", "ci_low", "ci_high", "n_seeds", "n_problems", "seed_min", "seed_max")
    for run, r in (study.get("runs") or {}).items():
        for bench, c in (r.get("benchmarks") or {}).items():
            put(f"study/{run}/{bench}", c, cell_keys)
        put(f"study/{run}/average", r.get("average"), cell_keys)
        for key, m in (r.get("process") or {}).items():
            put(f"process/{run}/{key}", m, ("mean", "ci_low", "ci_high", "n_seeds"))
    for key, v in (study.get("comparisons") or {}).items():
        for bench, c in (v.get("benchmarks") or {}).items():
            put(f"diff/{key}/{bench}", c, cmp_keys)
        put(f"diff/{key}/average", v.get("average"), cmp_keys)
    return out


def primary_tags(study: dict[str, Any]) -> dict[str, str]:
    """``icpo.primary.<a>-<b>``: each preregistered comparison's verdict line, and ``icpo.primary.question``."""
    primary = study.get("primary") or {}
    if not primary:
        return {}
    tags = {"icpo.primary.question": str(primary.get("question", ""))[:5000]}
    for r in primary.get("comparisons") or []:
        tags[f"icpo.primary.{r['a']}-{r['b']}"] = str(r.get("verdict_text") or r.get("verdict") or "n/a")
    return tags


# The study view's charts, in the order it opens on: the study's own measures first (the bench scores by method,
# then the training signal by step), then the rest of the project's step log, the trainer's internals last.
STUDY_SECTIONS = (
    ("bench", "Study: held-out bench scores by method"),
    ("signal", "Study: 0-shot reward and groups with signal, by step"),
    ("reward", "reward"),
    ("icpo", "icpo"),
    ("actor", "actor (trainer internals)"),
)
SIGNAL_CHARTS = (
    ("reward/on_policy", "0-shot reward (on-policy rollouts, no demos)"),
    ("icpo/on_policy_groups_with_signal", "On-policy groups with reward signal"),
)
# the other measures of the method, by step (MLflow's UI adds the rest of each prefix to the same section)
METHOD_CHARTS = (
    ("reward", "reward/overall", "Trained reward (on-policy and accepted IEF rows)"),
    ("reward", "reward/expert_region", "Expert-region reward (accepted IEF rows)"),
    ("icpo", "icpo/accept_rate", "IEF acceptance rate"),
    ("icpo", "icpo/groups_with_signal", "Trained groups with reward signal"),
)
INTERNAL_CHARTS = ("actor/pg_loss", "actor/pg_clipfrac", "actor/kl", "actor/entropy", "actor/grad_norm")


def _chart(kind: str, n: int, section: str, key: str, title: str) -> dict[str, Any]:
    """One chart card of MLflow's runs-compare charts (what its UI stores in ``compareRunCharts``)."""
    card: dict[str, Any] = {
        "uuid": f"icpo-chart-{n}",
        "type": kind,
        "runsCountToCompare": 20,
        "metricSectionId": f"icpo-section-{section}",
        "deleted": False,
        "isGenerated": False,
        "displayName": title,
        "metricKey": key,
    }
    if kind == "LINE":
        card.update(
            selectedMetricKeys=[key],
            lineSmoothness=0,
            xAxisScaleType="linear",
            scaleType="linear",
            range={},
            xAxisKey="step",
            selectedXAxisMetricKey="",
            yAxisKey="metric",
            yAxisExpressions=[],
            ignoreOutliers=False,
            useGlobalXaxisKey=True,
            useGlobalLineSmoothing=True,
        )
    return card


def study_charts(benchmarks: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(sections, charts) of the study view: first the bench scores by method (bars: ``bench/average/avg_at_n``,
    then each benchmark's ``bench/<name>/avg_at_n``; one bar per group = method), then the 0-shot (on-policy)
    reward and the on-policy groups with signal by step, then the sections ``reward``, ``icpo`` and, last of the
    study's own, ``actor`` (the trainer's internals). MLflow's UI adds any other metric as a chart of the section
    named by its prefix, after these (``isAccordionReordered`` keeps this order)."""
    sections = [
        {"uuid": f"icpo-section-{sid}", "name": name, "display": True, "isReordered": True}
        for sid, name in STUDY_SECTIONS
    ]
    charts: list[dict[str, Any]] = []
    bench = [("bench/average/avg_at_n", "Bench average (avg@n), by method")]
    bench += [(f"bench/{b}/avg_at_n", f"{b} (avg@n), by method") for b in benchmarks]
    for key, title in bench:
        charts.append(_chart("BAR", len(charts), "bench", key, title))
    for key, title in SIGNAL_CHARTS:
        charts.append(_chart("LINE", len(charts), "signal", key, title))
    for section, key, title in METHOD_CHARTS:
        charts.append(_chart("LINE", len(charts), section, key, title))
    for key in INTERNAL_CHARTS:
        charts.append(_chart("LINE", len(charts), "actor", key, key))
    return sections, charts


def study_view_state(benchmarks: list[str] | None = None) -> dict[str, Any]:
    """The saved view of :data:`STUDY_VIEW_KEY`: group by ``icpo.variant`` (the run of ``runs:``), average over
    the group's seeds in tables and charts, hide the study's parent and report runs (they have no variant to
    group: the filter keeps only runs with one that is not ``report``) and empty charts; the charts open on the
    study's own measures (:func:`study_charts` of ``benchmarks``, the study's bench columns)."""
    sections, charts = study_charts(list(benchmarks or []))
    return {
        "searchFilter": "tags.`icpo.variant` != 'report'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": True,
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "tag", "groupByData": "icpo.variant"}],
        },
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "runListHidden": False,
        "compareRunSections": sections,
        "compareRunCharts": charts,
        "isAccordionReordered": True,  # MLflow's UI keeps this section order (else it sorts them by name)
    }


def study_view_path(experiment_id: str) -> str:
    """The UI path (after the server's address) of the saved study view of an experiment."""
    return (
        f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&compareRunsMode=CHART"
        f"&viewStateShareKey={STUDY_VIEW_KEY}"
    )


def log_study(params: Any, study: dict[str, Any], files: list[str]) -> str | None:
    """One MLflow run ``report`` (tag ``icpo.run=report``; a child of the study's parent run when
    ``ICPO_MLFLOW_PARENT_RUN_ID`` is set): the study's metrics (``study_metrics``), the summary as an MLflow
    table and the files under ``report/``. The parent run gets the same metrics, the primary verdicts as tags
    (``primary_tags``) and ``report/study.json``, so the study's compare view shows them on the parent. Returns
    the report run's id, None when MLflow fails (the files on disk are the source of truth)."""
    try:
        import os
        import time

        from mlflow.entities import Metric

        uri = tracking_uri(params)
        client = mlflow_client(uri)
        exp_id = ensure_experiment(client, params.tracking.experiment, uri)
        tags = {
            **_base_tags(params),
            "icpo.run": "report",
            "icpo.method": "report",
            "icpo.variant": "report",
            "icpo.dvc_stage": "report",
            "icpo.study_seeds": ",".join(str(s) for s in study.get("seeds") or []),
        }
        run_id = client.create_run(exp_id, run_name="report", tags=tags).info.run_id
        view = study_view_state(study.get("columns") or list(params.bench.benchmarks))
        client.set_experiment_tag(exp_id, STUDY_VIEW_TAG, json.dumps(view))
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in study_metrics(study).items()]
        targets = [run_id]
        parent = os.environ.get(PARENT_ENV)
        if parent:
            targets.append(parent)
        for target in targets:
            for i in range(0, len(metrics), 1000):
                client.log_batch(target, metrics=metrics[i : i + 1000])
            for k, v in primary_tags(study).items():
                client.set_tag(target, k, v)
        table: dict[str, list[Any]] = {"run": [], "method": [], "benchmark": [], "mean": [], "ci_low": []}
        table.update(ci_high=[], n_seeds=[], n_problems=[])
        for run, r in (study.get("runs") or {}).items():
            for bench, c in [*(r.get("benchmarks") or {}).items(), ("average", r.get("average") or {})]:
                table["run"].append(run)
                table["method"].append(r.get("label", run))
                table["benchmark"].append(bench)
                for k in ("mean", "ci_low", "ci_high", "n_seeds", "n_problems"):
                    table[k].append(c.get(k))
        client.log_table(run_id, data=table, artifact_file="report/study_table.json")
        for f in files:
            client.log_artifact(run_id, f, "report")
        if parent:
            client.log_dict(parent, study, "report/study.json")
        client.set_terminated(run_id)
        log.info("MLflow: report logged to run %s", run_id)
        log.info(
            "MLflow: the runs grouped by method: `mlflow ui`, then open http://127.0.0.1:5000/%s",
            study_view_path(exp_id),
        )
        return run_id
    except Exception as e:
        log.warning("MLflow logging of the report skipped: %s: %s", type(e).__name__, str(e)[:300])
        return None


def latest_study(uri: str, experiment: str, filters: list[str]) -> tuple[dict[str, Any], str] | None:
    """(study.json, run id) of the newest run matching ``filters`` that holds ``report/study.json`` (the
    report runs, or a study's parent run); None when there is none."""
    import json
    import tempfile

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = _search_runs(uri, experiment, filters, max_results=200)
    for r in runs:
        try:
            names = {a.path for a in client.list_artifacts(r.info.run_id, "report")}
        except Exception:
            continue
        if "report/study.json" not in names:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(r.info.run_id, "report/study.json", tmp)
            with open(local) as f:
                return json.load(f), r.info.run_id
    return None
