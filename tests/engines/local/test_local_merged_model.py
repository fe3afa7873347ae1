"""``icpo merge`` records the merged model in MLflow without a second copy of its weights: an external logged
model of the training run referencing the DVC path and md5, registered as a version of ``<experiment>-<run>``;
the bench's metrics are linked to it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from local_helpers import parity_reward
from mlflow.tracking import MlflowClient

from icpo_core import paths, tracking
from icpo_core.bench.mlflow_log import log_bench
from icpo_core.engines.local.trainer import train_local
from icpo_core.stages import merge


def test_merge_registers_the_merged_model_linked_to_its_training_and_bench(tiny_project, monkeypatch):
    root, params = tiny_project(train={"steps": 2, "save_freq": 2})
    monkeypatch.chdir(root)  # the stages work in the project root, as DVC runs them
    summary = train_local(
        params, "icpo", root=root, reward_fn=parity_reward, progress=False, instance="icpo_s0"
    )
    assert merge.run(argparse.Namespace(params_obj=params, run="icpo", seed=0, step=None)) == 0

    info = json.loads((root / "runs/icpo_s0" / tracking.MERGED_MODEL_FILE).read_text())
    merged = root / paths.merged_dir("icpo_s0")
    assert info["path"] == "runs/icpo_s0/merged" and info["dvc_stage"] == "merge@icpo-0"
    assert info["md5"] == tracking.dvc_md5(merged) and info["md5"].endswith(".dir")
    client = MlflowClient()
    model = client.get_logged_model(info["model_id"])
    assert model.source_run_id == summary["mlflow_run_id"] == info["run_id"]
    assert model.tags["icpo.dvc_md5"] == info["md5"] and model.tags["icpo.dvc_path"] == info["path"]
    assert model.tags["mlflow.model.isExternal"] == "true" and model.tags["icpo.instance"] == "icpo_s0"
    assert model.params["md5"] == info["md5"] and model.params["step"] == "2"
    # no weights in MLflow: the model's artifacts are the reference and MLflow's stub MLmodel
    assert {a.path for a in client.list_logged_model_artifacts(model.model_id)} == {"MLmodel", "dvc_ref.json"}
    assert sum(f.stat().st_size for f in merged.rglob("*") if f.is_file()) > 100_000
    # the training run: the model is its output, with the reference and a tag
    run = client.get_run(summary["mlflow_run_id"])
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    assert run.data.tags["icpo.model_id"] == model.model_id
    ref_file = client.download_artifacts(run.info.run_id, "model/dvc_ref.json", str(root))
    assert json.loads(Path(ref_file).read_text())["md5"] == info["md5"]
    # the registry: a version of <experiment>-<run> pointing at the logged model
    (version,) = client.search_model_versions(f"name = '{params.tracking.experiment}-icpo'")
    assert version.source == f"models:/{model.model_id}" and version.run_id == run.info.run_id

    # the bench (what `icpo bench --run icpo --seed 0` does once its metrics are in): linked to the model
    model_id = tracking.merged_model_id(params.with_seed(0), "icpo_s0")
    assert model_id == model.model_id
    metrics = {"benchmarks": {"synthetic_l1": {"avg_at_n": 0.25, "n": 4, "n_problems": 8}}, "average": {}}
    bench_run = log_bench(params.with_seed(0), "icpo", metrics, instance="icpo_s0", model_id=model_id)
    assert bench_run == run.info.run_id  # the bench logs onto the training run
    linked = {m.key: m.value for m in client.get_logged_model(model.model_id).metrics or []}
    assert linked["bench/synthetic_l1/avg_at_n"] == 0.25
    bench = client.get_run(bench_run)
    assert [i.model_id for i in bench.inputs.model_inputs] == [model.model_id]


def test_a_second_merge_replaces_the_model_reference(tiny_project, monkeypatch):
    root, params = tiny_project(train={"steps": 2, "save_freq": 2})
    monkeypatch.chdir(root)
    train_local(params, "grpo", root=root, reward_fn=parity_reward, progress=False)
    args = argparse.Namespace(params_obj=params, run="grpo", seed=None, step=None)
    assert merge.run(args) == 0
    first = tracking.merged_model_id(params, "grpo")
    assert merge.run(args) == 0
    second = tracking.merged_model_id(params, "grpo")
    assert first and second and first != second
    # another tracking store: the recorded id is not used
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'other.db'}")
    assert tracking.merged_model_id(params, "grpo") is None
