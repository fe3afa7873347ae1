"""MLflow's saved view "study" (written by the report) opens on the study's own measures: the bench scores by
method first, then the 0-shot reward and the groups with signal by step, the trainer's internals (actor/*) after
them. Checked on the view's definition as MLflow's UI reads it (experiment tag ``mlflow.sharedViewState.study``)."""

from __future__ import annotations

import json
from unittest import mock

from tests_report_helpers import make_params

from icpo_core.report import mlflow_runs
from icpo_core.report.mlflow_runs import STUDY_VIEW_TAG, study_view_path, study_view_state

# what MLflow 3's UI takes from a shared view state (its search facets and its runs-page UI state)
UI_KEYS = {
    "searchFilter", "orderByKey", "orderByAsc", "startTime", "lifecycleFilter", "modelVersionFilter",
    "datasetsFilter", "selectedColumns", "columnOrder", "columnWidths", "runsHiddenMode", "compareRunCharts",
    "compareRunSections", "viewMaximized", "runListHidden", "isAccordionReordered", "groupBy", "groupsExpanded",
    "useGroupedValuesInCharts", "hideEmptyCharts", "globalLineChartConfig", "chartsSearchFilter",
}  # fmt: skip


def displayed_order(view: dict) -> list[str]:
    """The metric keys of the view's charts in the order the UI shows them: section by section (in
    ``compareRunSections`` order, kept as given when ``isAccordionReordered``), charts in list order within."""
    assert view["isAccordionReordered"] is True
    out = []
    for section in view["compareRunSections"]:
        assert section["display"] is True
        out += [c["metricKey"] for c in view["compareRunCharts"] if c["metricSectionId"] == section["uuid"]]
    return out


def test_the_study_view_opens_on_the_studys_own_measures():
    view = study_view_state(["synthetic_l0", "synthetic_l1"])
    assert set(view) <= UI_KEYS
    order = displayed_order(view)
    assert len(order) == len(view["compareRunCharts"]) == len(set(order))  # every chart in a section, once
    bench = ["bench/average/avg_at_n", "bench/synthetic_l0/avg_at_n", "bench/synthetic_l1/avg_at_n"]
    signal = ["reward/on_policy", "icpo/on_policy_groups_with_signal"]
    assert order[:5] == bench + signal
    # then the method's other measures by step, before any internal
    assert order.index("icpo/accept_rate") < order.index("actor/pg_clipfrac")
    internals = [i for i, k in enumerate(order) if k.startswith("actor/")]
    assert internals and min(internals) > order.index("icpo/on_policy_groups_with_signal")
    assert {"actor/pg_clipfrac", "actor/kl", "actor/entropy"} <= set(order)
    charts = {c["metricKey"]: c for c in view["compareRunCharts"]}
    assert {charts[k]["type"] for k in bench} == {"BAR"}  # one bar per method (group)
    assert {(charts[k]["type"], charts[k]["xAxisKey"]) for k in signal} == {("LINE", "step")}
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "icpo.variant"}]
    assert view["useGroupedValuesInCharts"] is True
    # sections named by prefix catch the other metrics of that prefix (MLflow adds a chart per new metric)
    names = [s["name"] for s in view["compareRunSections"]]
    assert names.index("actor (trainer internals)") == len(names) - 1
    path = study_view_path("7")
    assert "compareRunsMode=CHART" in path and "viewStateShareKey=study" in path


def test_the_report_saves_the_view_with_the_studys_benchmarks(monkeypatch):
    client = mock.MagicMock()
    client.create_run.return_value.info.run_id = "r1"
    monkeypatch.setattr(mlflow_runs, "mlflow_client", lambda uri: client)
    monkeypatch.setattr(mlflow_runs, "ensure_experiment", lambda *a, **k: "7")
    params = make_params()
    study = {"columns": ["math500", "aime24"], "runs": {}, "seeds": [0]}
    assert mlflow_runs.log_study(params, study, []) == "r1"
    ((exp_id, tag, value),) = [c.args for c in client.set_experiment_tag.call_args_list]
    assert (exp_id, tag) == ("7", STUDY_VIEW_TAG)
    order = displayed_order(json.loads(value))
    assert order[:3] == ["bench/average/avg_at_n", "bench/math500/avg_at_n", "bench/aime24/avg_at_n"]
