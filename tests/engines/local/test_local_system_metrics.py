"""``tracking.system_metrics``: MLflow's own system metrics (``system/...``, psutil) on every training run and on
the run a bench logs to, none when off; a finished run gets them for its bench and keeps its status and end."""

from __future__ import annotations

import time

import pytest
import yaml
from local_helpers import parity_reward
from mlflow.tracking import MlflowClient

from icpo_core.bench.mlflow_log import bench_system_metrics
from icpo_core.config import load_params
from icpo_core.engines.local.trainer import LocalTrainer, train_local

pytest.importorskip("psutil")


@pytest.fixture
def fast_sampling(monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # MLflow's default: 10 s


def _params(root, on: bool):
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["tracking"]["system_metrics"] = on
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(root / "params.yaml")


def _system(run_id: str) -> dict[str, float]:
    return {k: v for k, v in MlflowClient().get_run(run_id).data.metrics.items() if k.startswith("system/")}


@pytest.mark.parametrize("on", [True, False])
def test_training_logs_system_metrics_only_when_asked(tiny_project, fast_sampling, on, monkeypatch):
    root, _ = tiny_project(train={"steps": 3, "save_freq": 3})
    params = _params(root, on)
    slow = LocalTrainer.train_step

    def train_step(self, step):  # a step longer than one sampling interval
        time.sleep(0.3)
        return slow(self, step)

    monkeypatch.setattr(LocalTrainer, "train_step", train_step)
    summary = train_local(params, "grpo", root=root, reward_fn=parity_reward, progress=False)
    system = _system(summary["mlflow_run_id"])
    if on:
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(system)
    else:
        assert system == {}
    assert MlflowClient().get_run(summary["mlflow_run_id"]).info.status == "FINISHED"


def test_a_bench_on_a_finished_run_logs_system_metrics_and_keeps_its_end(tiny_project, fast_sampling):
    root, _ = tiny_project()
    params = _params(root, True)
    client = MlflowClient()
    exp = client.get_experiment_by_name(params.tracking.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(params.tracking.experiment)
    run_id = client.create_run(exp_id, run_name="trained").info.run_id
    client.set_terminated(run_id, "FINISHED")
    before = client.get_run(run_id).info
    with bench_system_metrics(params, run_id):
        assert client.get_run(run_id).info.status == "RUNNING"  # MLflow's monitor stops at a finished run
        time.sleep(1.0)
    after = client.get_run(run_id).info
    assert (after.status, after.end_time) == ("FINISHED", before.end_time)
    assert "system/cpu_utilization_percentage" in _system(run_id)
    # off: nothing started, nothing changed
    other = client.create_run(exp_id, run_name="off").info.run_id
    client.set_terminated(other, "FINISHED")
    with bench_system_metrics(_params(root, False), other):
        assert client.get_run(other).info.status == "FINISHED"
    assert _system(other) == {}
