"""MLflow conventions: URI precedence, tags, nesting, resume of the same run, find_run, and an unreachable server."""

from __future__ import annotations

import logging
import time

import pytest

from icpo_core import tracking
from icpo_core.config import parse_params


@pytest.fixture
def params():
    return parse_params(
        {
            "runs": {"grpo": {"n_off": 0}, "icpo_rs": {"n_off": 1, "reward_shaping": True}},
            "report": {"runs": ["base"]},
            "study": {"runs": ["grpo", "icpo_rs"], "ablations": []},
            "tracking": {"experiment": "exp-test"},
        }
    )


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlf') / 'mlflow.db'}"


def test_uri_precedence(params, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert (
        tracking.tracking_uri(params, tmp_path)
        == f"sqlite:///{(tmp_path / 'mlflow' / 'mlflow.db').resolve()}"
    )
    assert tracking.artifact_location(tracking.tracking_uri(params, tmp_path)) == (
        (tmp_path / "mlflow" / "artifacts").resolve().as_uri()
    )
    p2 = params.model_copy(
        update={"tracking": params.tracking.model_copy(update={"tracking_uri": "http://x:1"})}
    )
    assert tracking.tracking_uri(p2, tmp_path) == "http://x:1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:2")
    assert tracking.tracking_uri(p2, tmp_path) == "http://env:2"


def test_tags_and_flatten(params, monkeypatch):
    monkeypatch.setenv("ICPO_TAG_PREFECT_FLOW_RUN_ID", "abc")
    monkeypatch.setenv("ICPO_MLFLOW_PARENT_RUN_ID", "parent123")
    tags = tracking.run_tags(params, "icpo_rs")
    assert tags["icpo.run"] == "icpo_rs" and tags["icpo.variant"] == "icpo_rs"
    assert tags["icpo.method"] == "icpo" and tags["icpo.engine"] == "local"
    assert tags["icpo.profile"] == "embedded" and tags["icpo.dvc_stage"] == "train@icpo_rs"
    assert tags["prefect_flow_run_id"] == "abc" and tags["mlflow.parentRunId"] == "parent123"
    assert tags["git_commit"]
    assert tracking.run_tags(params, "grpo")["icpo.method"] == "grpo"
    flat = tracking.flatten(tracking.run_config(params, "icpo_rs"))
    assert flat["algorithm.reward_shaping"] == "True" and flat["train.engine"] == "local"
    assert flat["data.synthetic.levels"] == str(list(params.data.synthetic.levels))


def test_run_resume_nesting_and_find_run(params, sqlite_uri, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(sqlite_uri)
    t = tracking.Tracker(sqlite_uri, "exp-test", root=tmp_path)
    parent = client.create_run(_exp(client, "exp-test")).info.run_id
    monkeypatch.setenv("ICPO_MLFLOW_PARENT_RUN_ID", parent)
    run_id = t.start("grpo", tags=tracking.run_tags(params, "grpo"), params={"a.b": "1"})
    assert run_id
    t.log_metrics([(1, {"reward/overall": 0.5, "skip": float("nan")}), (2, {"reward/overall": 0.7})])
    tracking.write_run_id(tmp_path / tracking.run_id_path("grpo"), run_id, sqlite_uri)
    t2 = tracking.Tracker(sqlite_uri, "exp-test", root=tmp_path)
    assert t2.start("grpo", tags={}, resume_run_id=run_id) == run_id  # same run, not a new one
    t2.log_metrics([(3, {"reward/overall": 0.9})])
    t2.finish()
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params == {"a.b": "1"}
    assert [m.step for m in client.get_metric_history(run_id, "reward/overall")] == [1, 2, 3]
    assert "skip" not in run.data.metrics
    assert tracking.find_run(params, "grpo", root=tmp_path) == run_id
    (tmp_path / tracking.run_id_path("grpo")).unlink()
    assert tracking.find_run(params, "grpo", root=tmp_path) == run_id  # by tag
    assert tracking.find_run(params, "icpo_rs", root=tmp_path) is None


def test_open_training_run_creates_reattaches_and_starts_over(params, sqlite_uri, tmp_path, monkeypatch):
    """The one way both engines open a training's run: created with tags, params and the config artifact,
    re-attached after a restart (the id file beside the checkpoints), a new run when the local engine's
    fingerprint changed; without a fingerprint (verl) the stored run is always re-attached."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    monkeypatch.delenv("ICPO_MLFLOW_PARENT_RUN_ID", raising=False)
    client = MlflowClient(sqlite_uri)
    first = tracking.open_training_run(params, "icpo_rs", root=tmp_path, fingerprint="f1")
    run_id = first.run_id
    assert run_id and first.active
    id_file = tmp_path / tracking.run_id_path("icpo_rs")
    assert tracking.read_run_meta(id_file) == {
        "run_id": run_id,
        "tracking_uri": sqlite_uri,
        "fingerprint": "f1",
    }
    run = client.get_run(run_id)
    assert run.info.run_name == "icpo_rs" and run.data.tags["icpo.method"] == "icpo"
    assert run.data.params["algorithm.reward_shaping"] == "True" and run.data.params["fingerprint"] == "f1"
    assert [a.path for a in client.list_artifacts(run_id, "config")] == [tracking.CONFIG_ARTIFACT]
    first.finish()
    assert tracking.open_training_run(params, "icpo_rs", root=tmp_path, fingerprint="f1").run_id == run_id
    other = tracking.open_training_run(params, "icpo_rs", root=tmp_path, fingerprint="f2").run_id
    assert other and other != run_id
    assert tracking.read_run_meta(id_file)["fingerprint"] == "f2"
    # verl: no fingerprint; the stored run is re-attached whatever fingerprint the file holds
    assert tracking.open_training_run(params, "icpo_rs", root=tmp_path).run_id == other
    # a study instance: its own id file, nested under the study's parent run
    seeded = tracking.open_training_run(params, "grpo", root=tmp_path, instance="grpo_s1")
    assert (tmp_path / tracking.run_id_path("grpo_s1")).is_file()
    tags = client.get_run(seeded.run_id).data.tags
    assert tags["icpo.instance"] == "grpo_s1" and tags["icpo.run"] == "grpo" and "mlflow.parentRunId" in tags


def _exp(client, name):
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def test_unreachable_server_warns_once_and_is_a_no_op(params, caplog, monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    t0 = time.monotonic()
    t = tracking.Tracker("http://127.0.0.1:9", "exp-test")
    with caplog.at_level(logging.WARNING):
        assert t.start("grpo", tags={}) is None
        t.log_metrics([(1, {"x": 1.0})])
        t.log_dict({"a": 1}, "a.json")
        t.finish()
    assert not t.active
    assert caplog.text.count("training continues without MLflow") == 1
    assert time.monotonic() - t0 < 60
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert tracking.find_run(params, "grpo") is None


def test_experiments_are_marked_as_model_training(tmp_path, monkeypatch):
    """MLflow 3 opens an experiment without a kind on its GenAI (traces) view: every writer's experiment gets
    the training kind, on creation and when an older experiment lacks it; a kind chosen in the UI is kept."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    kind = tracking.EXPERIMENT_KIND_TAG
    assert (kind, tracking.EXPERIMENT_KIND) == ("mlflow.experimentKind", "custom_model_development")

    new_id = tracking.ensure_experiment(client, "fresh", uri, root=tmp_path)
    fresh = client.get_experiment(new_id)
    assert fresh.tags[kind] == "custom_model_development"
    assert fresh.artifact_location == (tmp_path / "artifacts").resolve().as_uri()

    old_id = client.create_experiment("made-before-the-tag")
    assert kind not in client.get_experiment(old_id).tags
    assert tracking.ensure_experiment(client, "made-before-the-tag", uri) == old_id
    assert client.get_experiment(old_id).tags[kind] == "custom_model_development"

    chosen = client.create_experiment("chosen-in-the-ui", tags={kind: "genai_development"})
    assert tracking.ensure_experiment(client, "chosen-in-the-ui", uri) == chosen
    assert client.get_experiment(chosen).tags[kind] == "genai_development"

    # the training writer goes through the same place
    t = tracking.Tracker(uri, "by-the-tracker", root=tmp_path)
    run_id = t.start("grpo", tags={})
    assert run_id
    t.finish()
    exp = client.get_experiment(client.get_run(run_id).info.experiment_id)
    assert exp.name == "by-the-tracker" and exp.tags[kind] == "custom_model_development"


def test_tagging_failure_does_not_stop_the_writer(caplog):
    """A store that refuses the tag (e.g. read-only permissions) still yields the experiment id."""

    class Exp:
        experiment_id = "7"
        tags: dict[str, str] = {}

    class ReadOnly:
        def get_experiment_by_name(self, name):
            return Exp()

        def set_experiment_tag(self, *args):
            raise PermissionError("read-only")

    with caplog.at_level(logging.INFO):
        assert tracking.ensure_experiment(ReadOnly(), "exp", "http://x:1") == "7"
    assert "cannot tag experiment" in caplog.text


def test_a_new_sqlite_store_appears_only_complete(tmp_path, monkeypatch):
    """A kill while MLflow migrates a new store must not leave a half-built file where the store belongs."""
    import mlflow.tracking

    path = tmp_path / "mlflow" / "mlflow.db"
    real = mlflow.tracking.MlflowClient

    def killed_mid_migration(tracking_uri):
        real(tracking_uri=tracking_uri)  # the schema is written ...
        raise KeyboardInterrupt("killed")  # ... and the process dies before finishing

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", killed_mid_migration)
    with pytest.raises(KeyboardInterrupt):
        tracking.create_sqlite_store(f"sqlite:///{path}")
    assert not path.exists() and not list(path.parent.iterdir())  # nothing at the store's place, no leftover
    monkeypatch.setattr(mlflow.tracking, "MlflowClient", real)
    client = tracking.mlflow_client(f"sqlite:///{path}")
    assert path.is_file() and client.search_experiments()  # created whole, then opened (Default exists)
    tracking.create_sqlite_store(f"sqlite:///{path}")  # an existing store is left alone
    assert [p.name for p in path.parent.iterdir()] == ["mlflow.db"]
