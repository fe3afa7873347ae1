"""verl's own loggers with ``tracking.loggers: [mlflow, wandb]``: verl's ``Tracking`` (what ``RayPPOTrainer.fit``
logs through), built with the composed ``trainer.logger`` list in the environment the launch gives it, writes an
offline wandb run grouped by study, typed by method, with the project's tags and params, and the same metrics at
the same steps as verl's MLflow run; ``file`` (the project's step log) still gets every step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from wandb_reader import config_values, fresh_wandb, metric_steps, offline_runs, read_run  # noqa: F401

from icpo_core import tracking
from icpo_core.config import parse_params
from icpo_core.engines.verl import job
from icpo_core.engines.verl import overrides as ov

REPO = Path(__file__).resolve().parents[3]

pytest.importorskip("wandb")


def test_verls_tracking_writes_wandb_beside_mlflow_and_the_step_log(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from verl.utils.tracking import Tracking, _MlflowLoggingAdapter

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tracking"]["loggers"] = ["mlflow", "wandb"]
    params = parse_params(raw).with_seed(1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    step_log = tmp_path / "verl_metrics" / "launch.jsonl"
    step_log.parent.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    env = job.logger_env(params, "icpo", tmp_path, "icpo_s1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(step_log))
    # verl's MLflow logger sets MLflow's process-wide tracking URI: put it back after the test
    from mlflow.tracking._tracking_service import utils as mlflow_uri

    monkeypatch.setattr(mlflow_uri, "_tracking_uri", mlflow_uri._tracking_uri)

    # the launch opens the run with the project's params and tags, then verl's logger continues it
    assert job.open_wandb_run(params, "icpo", tmp_path, "icpo_s1", env) == env["WANDB_RUN_ID"]
    loggers = ov.verl_loggers(params)
    assert loggers == ["console", "mlflow", "wandb", "file"]
    verl_config = {
        "trainer": {"project_name": params.tracking.experiment, "logger": loggers},
        "data": {"x": 1},
    }
    t = Tracking(params.tracking.experiment, "icpo", default_backend=loggers, config=verl_config)
    for step in (1, 2, 3):
        t.log({"critic/score/mean": 0.1 * step, "reward/on_policy": 0.2 * step, "actor/kl": 0.01}, step=step)
    t.log({"val-core/synthetic_l0/acc/mean@2": 0.5}, step=3)
    t.finish()

    # offline: one folder for the launch's start and one for verl's part, one run id (`wandb sync` both)
    opened, verls = (read_run(f) for f in offline_runs(tmp_path / "runs" / "icpo_s1"))
    for got in (opened, verls):
        run = got["run"]
        assert run.run_id == env["WANDB_RUN_ID"]
        assert run.run_group == tracking.study_id(params) and run.job_type == "icpo"
        assert {"icpo.method=icpo", "icpo.instance=icpo_s1", "icpo.seed=1"} <= set(run.tags)
    flat = tracking.flatten(tracking.run_config(params, "icpo"))
    assert {
        k: str(config_values(opened["config"])[k]) for k in flat
    } == flat  # the project's params (MLflow's)
    assert config_values(verls["config"])["trainer"]["logger"] == loggers  # and verl's own config
    assert opened["history"] == []

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(params.tracking.experiment)
    (mlrun,) = client.search_runs([exp.experiment_id])
    steps = {
        k: sorted(m.step for m in client.get_metric_history(mlrun.info.run_id, k)) for k in mlrun.data.metrics
    }
    # the same metrics at the same steps; verl's MLflow logger spells a name MLflow refuses its own way
    # ("acc/mean@2" -> "acc/mean_at_2"), wandb keeps verl's name
    sanitize = _MlflowLoggingAdapter()._sanitize_key
    assert {sanitize(k): v for k, v in metric_steps(verls["history"]).items()} == steps
    assert "val-core/synthetic_l0/acc/mean@2" in metric_steps(verls["history"])
    logged = [json.loads(x) for x in step_log.read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 3]  # `file`: the step log the project exports
