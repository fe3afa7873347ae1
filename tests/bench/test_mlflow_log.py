"""Bench metrics reach MLflow once: a rerun of a finished bench (a kill after logging, before DVC recorded the
stage) logs nothing twice, while a changed value is logged."""

from __future__ import annotations

import yaml

from icpo_core.bench.mlflow_log import log_bench


def _metrics(avg: float, generate_s: float) -> dict:
    return {
        "benchmarks": {"synthetic_l0": {"avg_at_n": avg, "n_problems": 4, "pass_at_1": avg}},
        "average": {"avg_at_n": avg},
        "timing": {"generate_s": generate_s, "grade_s": 0.5},
    }


def test_a_rerun_logs_each_bench_metric_once(tmp_path, monkeypatch):
    from icpo_core.config import load_params
    from icpo_core.tracking import mlflow_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tracking": {"experiment": "bench-log"}}))
    params = load_params(tmp_path / "params.yaml")

    run_id = log_bench(params, "base", _metrics(0.25, 3.0))
    assert run_id is not None
    assert log_bench(params, "base", _metrics(0.25, 4.0)) == run_id  # the same run, found again
    client = mlflow_client(uri)
    for key in ("bench/synthetic_l0/avg_at_n", "bench/average/avg_at_n", "bench/time/generate_s"):
        assert len(client.get_metric_history(run_id, key)) == 1, key

    log_bench(params, "base", _metrics(0.5, 4.0))  # a real change (e.g. a rebenched model) is logged
    history = client.get_metric_history(run_id, "bench/average/avg_at_n")
    assert sorted(m.value for m in history) == [0.25, 0.5]
