"""Tracking settings by the contract, and the environment the flows hand to every stage."""

from __future__ import annotations

from tasks.mlflow_runs import TrackingSettings, runs_markdown, stage_env_vars, tracking_settings


def test_default_store_is_the_projects_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text("tracking: {experiment: sweep}\n")
    s = tracking_settings(tmp_path)
    assert s.uri == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    assert s.experiment == "sweep"
    assert s.artifact_location == (tmp_path.resolve() / "mlflow" / "artifacts").as_uri()


def test_params_uri_then_environment_win(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "params.yaml").write_text(
        "profile: big\ntracking: {tracking_uri: 'http://a:5000'}\nprofiles: {big: {tracking: {experiment: big}}}\n"
    )
    s = tracking_settings(tmp_path)
    assert (s.uri, s.experiment, s.artifact_location) == ("http://a:5000", "big", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://b:5000")
    assert tracking_settings(tmp_path).uri == "http://b:5000"


def test_stage_env_carries_tags_parent_and_absolute_uri(tmp_path):
    s = TrackingSettings(uri=f"sqlite:///{tmp_path}/m/mlflow.db", experiment="e", artifact_location=None)
    env = stage_env_vars(
        s,
        flow_run_id="f-1",
        commit="abc",
        dvc_exp="icpo-1234",
        extra_tags={"ablation": "icpo"},
        parent_run_id="p",
    )
    assert env == {
        "MLFLOW_TRACKING_URI": s.uri,
        "ICPO_TAG_PREFECT_FLOW_RUN_ID": "f-1",
        "ICPO_TAG_GIT_COMMIT": "abc",
        "ICPO_TAG_DVC_EXP": "icpo-1234",
        "ICPO_TAG_ABLATION": "icpo",
        "ICPO_MLFLOW_PARENT_RUN_ID": "p",
    }
    assert (tmp_path / "m").is_dir()  # sqlite needs the folder to exist before the first stage opens it


def test_runs_markdown_links_a_server_ui():
    run = {"run_id": "r1", "name": "icpo", "status": "FINISHED", "experiment_id": "3", "tag:dvc_exp": "x"}
    md = runs_markdown(TrackingSettings("http://h:5000/", "e", None), [run], "t")
    assert "[icpo](http://h:5000/#/experiments/3/runs/r1)" in md
    local = runs_markdown(TrackingSettings("sqlite:///m.db", "e", None), [run], "t")
    assert "mlflow ui --backend-store-uri sqlite:///m.db" in local and "`r1`" in local
