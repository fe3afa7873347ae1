"""``tracking.loggers: [mlflow, wandb]`` on the local engine: a tiny training writes an offline wandb run (no
network: ``WANDB_MODE=offline``) with the metrics, steps, params and tags MLflow's run has; grouped by study,
typed by method; a resumed training continues it without a step twice; wandb trouble never stops training."""

from __future__ import annotations

import logging

import pytest
import yaml
from local_helpers import parity_reward
from wandb_reader import config_values, fresh_wandb, metric_steps, offline_runs, read_run  # noqa: F401

from icpo_core import tracking
from icpo_core.config import load_params
from icpo_core.engines.local.trainer import train_local

pytest.importorskip("wandb")


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # nothing under the user's home
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _with_wandb(root):
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["tracking"]["loggers"] = ["mlflow", "wandb"]
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(root / "params.yaml")


def _mlflow_steps(run_id: str) -> tuple[dict[str, list[int]], dict]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run = client.get_run(run_id)
    steps = {k: sorted(m.step for m in client.get_metric_history(run_id, k)) for k in run.data.metrics}
    return steps, run


def test_wandb_gets_the_metrics_steps_params_and_tags_mlflow_gets(tiny_project, wandb_offline):
    root, params = tiny_project(train={"steps": 3, "save_freq": 1})
    params = _with_wandb(root)
    summary = train_local(params, "icpo", root=root, reward_fn=parity_reward, progress=False)

    (folder,) = offline_runs(root / "runs" / "icpo")
    got = read_run(folder)
    steps, run = _mlflow_steps(summary["mlflow_run_id"])
    assert steps, "MLflow got no metrics"
    assert metric_steps(got["history"]) == steps  # every metric, at the same steps
    assert {r["_step"] for r in got["history"]} == {1, 2, 3}
    # grouped by study, typed by method, MLflow's tags as key=value tags, MLflow's params as the config
    wb = got["run"]
    assert wb.run_group == run.data.tags["icpo.study"] == tracking.study_id(params)
    assert wb.job_type == run.data.tags["icpo.method"] == "icpo"
    assert wb.project == params.tracking.experiment and wb.display_name == "icpo"
    expected_tags = {f"{k}={v}"[:64] for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    assert set(wb.tags) == expected_tags
    config = config_values(got["config"])
    assert {k: str(config[k]) for k in run.data.params} == run.data.params
    # the id is kept beside the checkpoints: a resumed training continues this run
    stored = (root / "runs/icpo/checkpoints" / tracking.WANDB_ID_FILE).read_text()
    assert wb.run_id in stored and '"last_step": 3' in stored


def test_a_resumed_training_continues_its_wandb_run_with_every_step_once(tiny_project, wandb_offline):
    root, params = tiny_project(train={"steps": 4, "save_freq": 1})
    params = _with_wandb(root)
    first = train_local(params, "grpo", root=root, reward_fn=parity_reward, progress=False, stop_after=2)
    second = train_local(params, "grpo", root=root, reward_fn=parity_reward, progress=False)
    assert second["resumed_from_step"] == 2 and first["mlflow_run_id"] == second["mlflow_run_id"]

    folders = offline_runs(root / "runs" / "grpo")
    assert len(folders) == 2  # offline: one folder per launch, the same run id (`wandb sync` both, in order)
    runs = [read_run(f) for f in folders]
    assert all(r["run"] and "exit" in r["kinds"] for r in runs), [r["kinds"] for r in runs]
    assert runs[0]["run"].run_id == runs[1]["run"].run_id
    history = runs[0]["history"] + runs[1]["history"]
    assert [r["_step"] for r in history] == [1, 2, 3, 4]
    steps, _ = _mlflow_steps(second["mlflow_run_id"])
    assert metric_steps(history) == steps


def test_wandb_trouble_warns_once_and_loses_no_step(tiny_project, wandb_offline, monkeypatch, caplog):
    """A failing ``run.log`` (wandb's service gone) mid-training: one warning, the steps are kept and sent by a
    later call; training finishes."""
    import wandb

    root, params = tiny_project(train={"steps": 4, "save_freq": 1})
    params = _with_wandb(root)
    real_init = wandb.init
    calls = {"n": 0}

    def init(*args, **kwargs):
        run = real_init(*args, **kwargs)
        real_log = run.log

        def flaky_log(data, step=None, **kw):
            calls["n"] += 1
            if step in (2, 3) and calls["n"] < 6:
                raise ConnectionError("wandb service gone")
            return real_log(data, step=step, **kw)

        run.log = flaky_log
        return run

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setattr(tracking.WandbTracker, "_may_try", lambda self: True)  # retry at once (no 10 s wait)
    with caplog.at_level(logging.WARNING):
        summary = train_local(params, "icpo", root=root, reward_fn=parity_reward, progress=False)
    assert summary["steps"] == 4
    warnings = [r for r in caplog.records if "wandb failed" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    (folder,) = offline_runs(root / "runs" / "icpo")
    history = read_run(folder)["history"]
    assert [r["_step"] for r in history] == [1, 2, 3, 4]
    steps, _ = _mlflow_steps(summary["mlflow_run_id"])
    assert metric_steps(history) == steps


def test_wandb_that_cannot_start_online_writes_offline(tmp_path, monkeypatch, caplog):
    """Online ``wandb.init`` fails (no API key, no network): one warning, the run is written offline instead."""
    import wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    real_init = wandb.init

    def init(*args, **kwargs):
        if kwargs.get("mode") != "offline":
            raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    t = tracking.WandbTracker(tmp_path / "ckpt" / tracking.WANDB_ID_FILE)
    init_kw = {
        "project": "p",
        "name": "x",
        "group": "g",
        "job_type": "grpo",
        "tags": [],
        "dir": str(tmp_path),
    }
    with caplog.at_level(logging.WARNING):
        assert t.start({**init_kw, "id": "abc12345"}, params={"a": "1"}) == "abc12345"
    assert t.offline and t.active
    assert [r.getMessage() for r in caplog.records if "wandb" in r.getMessage()][0].count("offline") >= 1
    t.log_metrics([(1, {"m": 1.0}), (2, {"m": 2.0, "n": None})])
    t.finish("FINISHED")
    (folder,) = offline_runs(tmp_path)
    assert metric_steps(read_run(folder)["history"]) == {"m": [1, 2]}


def test_wandb_that_cannot_start_at_all_is_a_no_op(tmp_path, monkeypatch, caplog):
    import wandb

    def init(*args, **kwargs):
        raise OSError("wandb-core did not start")

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(wandb, "init", init)
    t = tracking.WandbTracker(tmp_path / tracking.WANDB_ID_FILE)
    with caplog.at_level(logging.WARNING):
        assert t.start({"project": "p", "name": "x", "dir": str(tmp_path), "id": "a"}) is None
        t.log_metrics([(1, {"m": 1.0})])
        t.finish("FINISHED")
    assert not t.active
    # the online try, then the offline one: no more
    assert sum("wandb" in r.getMessage() for r in caplog.records) == 2
