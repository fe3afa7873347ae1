"""`icpo train` / `icpo merge` as DVC runs them: real subprocesses on a tiny project.

- a training killed with SIGKILL mid-run resumes from its last checkpoint and ends with every step exactly once,
  in the JSONL and in MLflow;
- an unreachable MLflow server does not stop training;
- the merge (verl's merger, dtype kept) reproduces the trained weights exactly and transformers loads it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from stage_helpers import env as _env
from stage_helpers import icpo as _icpo
from stage_helpers import steps as _steps

from icpo_core import checkpoint_layout as layout
from icpo_core.engines.local import checkpoint as ckpt
from icpo_core.engines.local.tiny import make_tiny_project

pytestmark = pytest.mark.slow


def test_sigkill_then_resume_has_every_step_once(tmp_path):
    root = make_tiny_project(tmp_path / "p", train={"steps": 12, "save_freq": 3, "keep_checkpoints": 2})
    # The child's output goes to a file, not a pipe: a full pipe nobody reads would stall it.
    with open(tmp_path / "killed.log", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "icpo_core.cli", "train", "--run", "icpo", "--no-progress"],
            cwd=root,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 240
        # Kill between two checkpoints, once a checkpoint and later steps exist.
        while time.monotonic() < deadline:
            s = _steps(root, "icpo")
            if len(s) >= 4 and len(s) % 3 != 0:
                break
            if proc.poll() is not None:
                pytest.fail(
                    f"training ended before it could be killed: {(tmp_path / 'killed.log').read_text()[-2000:]}"
                )
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = _steps(root, "icpo")
    assert 4 <= len(killed_at) < 12
    last_ckpt = int((root / "runs/icpo/checkpoints/latest_checkpointed_iteration.txt").read_text())
    assert last_ckpt < killed_at[-1]  # steps after the checkpoint will be redone

    done = _icpo(root, "train", "--run", "icpo", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from checkpoint step {last_ckpt}" in done.stderr
    assert _steps(root, "icpo") == list(range(1, 13))
    summary = json.loads((root / "metrics/train_icpo.json").read_text())
    assert summary["steps"] == 12 and summary["resumed_from_step"] == last_ckpt
    assert sorted(p.name for p in (root / "runs/icpo/checkpoints").glob("global_step_*")) == [
        "global_step_12",
        "global_step_9",
    ]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["icpo.run"] == "icpo" and run.data.tags["icpo.method"] == "icpo"
    history = client.get_metric_history(run.info.run_id, "reward/on_policy")
    assert sorted(m.step for m in history) == list(range(1, 13))  # no step twice, none missing
    exp = client.get_experiment_by_name("icpo-test")
    assert len(client.search_runs([exp.experiment_id])) == 1  # the resume reused the run
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "curves")}
    assert {"curves/steps_icpo.jsonl", "curves/curves_icpo.png"} <= arts

    # merge: verl's merger keeps fp32, so the merged folder holds exactly the trained weights
    merged = _icpo(root, "merge", "--run", "icpo")
    assert merged.returncode == 0, merged.stderr[-3000:]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(root / "runs/icpo/merged")
    AutoTokenizer.from_pretrained(root / "runs/icpo/merged")
    actor = root / "runs/icpo/checkpoints/global_step_12/actor"
    trained = ckpt.load_weights(actor)  # the finished run: Hugging Face weights, linked into merged/
    assert not (actor / "model_world_size_1_rank_0.pt").exists()
    for f in layout.hf_weight_files(actor):  # one copy on disk: the merged file is the same inode
        assert (root / "runs/icpo/merged" / f.name).stat().st_ino == f.stat().st_ino
    state = model.state_dict()
    assert model.dtype == torch.float32
    assert all(torch.equal(trained[k], state[k]) for k in trained)
    base = AutoModelForCausalLM.from_pretrained(root / "models/base").state_dict()
    assert any(not torch.equal(base[k], state[k]) for k in base)  # training did change the weights


def test_unreachable_mlflow_does_not_stop_training(tmp_path, monkeypatch, caplog):
    from icpo_core.config import load_params
    from icpo_core.engines.local.trainer import train_local

    root = make_tiny_project(tmp_path / "p", train={"steps": 2})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with caplog.at_level("WARNING"):
        summary = train_local(load_params(root / "params.yaml"), "grpo", root=root, progress=False)
    assert caplog.text.count("training continues without MLflow") == 1
    assert summary["steps"] == 2 and summary["mlflow_run_id"] is None
    assert _steps(root, "grpo") == [1, 2]
    assert layout.hf_weight_files(root / "runs/grpo/checkpoints/global_step_2/actor")


def test_bad_run_and_missing_checkpoint_exit_2(tmp_path):
    root = make_tiny_project(tmp_path / "p")
    bad = _icpo(root, "train", "--run", "nope")
    assert bad.returncode == 2 and "unknown run 'nope'" in bad.stderr
    nockpt = _icpo(root, "merge", "--run", "grpo")
    assert nockpt.returncode == 2 and "no checkpoint to merge" in nockpt.stderr


def test_lora_train_then_merge_gives_a_plain_merged_folder(tmp_path):
    """A LoRA training, then `icpo merge`: the folder is plain transformers weights equal to models/base with
    the checkpoint's adapters merged (the stage hands the merger models/base)."""
    from transformers import AutoModelForCausalLM

    from icpo_core.config import load_params
    from icpo_core.engines.local import lora
    from icpo_core.engines.local.trainer import train_local

    lora_cfg = {"enabled": True, "rank": 4, "alpha": 8}
    root = make_tiny_project(tmp_path / "p", train={"steps": 2, "lr": 1e-2, "lora": lora_cfg})
    # in-process with a toy reward: a random model scores 0 under the real grader, and zero advantages would
    # leave the adapters' B at zero (a merge equal to the base model proves nothing)
    train_local(
        load_params(root / "params.yaml"),
        "grpo",
        root=root,
        reward_fn=lambda texts, golds: [float(len(t) % 2 == 0) for t in texts],
        progress=False,
    )
    merged = _icpo(root, "merge", "--run", "grpo")
    assert merged.returncode == 0, merged.stderr[-3000:]
    out = root / "runs/grpo/merged"
    assert not {"adapter_config.json", "lora_adapter"} & {p.name for p in out.iterdir()}
    state = AutoModelForCausalLM.from_pretrained(out).state_dict()
    adapters = torch.load(root / "runs/grpo/checkpoints/global_step_2/actor/model_world_size_1_rank_0.pt")
    base = AutoModelForCausalLM.from_pretrained(root / "models/base").state_dict()
    want = lora.merge_lora_weights(adapters, 8 / 4, base=base)
    assert all(torch.equal(want[k], state[k]) for k in state)
    assert any(not torch.equal(base[k], state[k]) for k in base)  # the adapters did change the weights


def test_luffy_and_reward_controls_launch_on_verl(tmp_path, monkeypatch):
    """`icpo train` hands LUFFY and the reward controls to the verl launch like any run (no refusal left)."""
    import icpo_core.engines.verl as verl_engine
    from icpo_core.cli import main
    from icpo_core.engines.local.tiny import make_tiny_project

    root = make_tiny_project(
        tmp_path / "p",
        train={"engine": "verl"},
        runs={
            "luffy": {"n_off": 1, "off_policy": "expert_trace", "errs": False},
            "grpo_random_reward": {"n_off": 0, "reward": "random"},
            "grpo_format_reward": {"n_off": 0, "reward": "format"},
        },
    )
    monkeypatch.chdir(root)
    launched = []

    def fake_launch(params, run, root=".", instance=None):
        launched.append(
            (run, params.run_algorithm(run).off_policy, params.run_algorithm(run).reward, instance)
        )
        return 0

    monkeypatch.setattr(verl_engine, "launch", fake_launch)
    for run in ("luffy", "grpo_random_reward", "grpo_format_reward"):
        assert main(["train", "--run", run, "--seed", "1"]) == 0
    assert launched == [
        ("luffy", "expert_trace", "verifier", "luffy_s1"),
        ("grpo_random_reward", "ief", "random", "grpo_random_reward_s1"),
        ("grpo_format_reward", "ief", "format", "grpo_format_reward_s1"),
    ]
    assert (root / "metrics" / "train_luffy_s1.json").is_file()  # the DVC output of a verl run
    verl_summary = json.loads((root / "metrics" / "train_luffy_s1.json").read_text())
    assert verl_summary["engine"] == "verl" and verl_summary["machine"]["cores"] >= 1  # the report names it
