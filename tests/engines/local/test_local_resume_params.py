"""params.yaml edited mid-run: a resume with other training params is refused naming the changed keys (nothing is
touched); keys that may change on resume are not compared; checkpoints from before the params were recorded
resume with one warning."""

from __future__ import annotations

import pytest
import torch
import yaml
from local_helpers import parity_reward

from icpo_core import checkpoint_layout as layout
from icpo_core.config import load_params
from icpo_core.engines import resume_params as resume
from icpo_core.engines.local import checkpoint as ckpt
from icpo_core.engines.local.trainer import train_local
from icpo_core.errors import UserError


def test_training_params_leave_out_the_resume_safe_keys(tiny_project):
    _, params = tiny_project()
    values = resume.training_params(params, "icpo", "local")
    assert values["train.lr"] == 1e-3 and values["algorithm.n_off"] == 1 and values["seed"] == 0
    assert values["train.lora.rank"] == params.train.lora.rank  # nested sections, flattened
    assert values["train.vllm.dtype"] == params.train.vllm.dtype  # changes the samples: compared
    for key in ("train.save_freq", "train.keep_checkpoints", "train.device", "train.grade_workers"):
        assert key not in values
    assert not any(k.startswith(("train.verl.", "tracking", "bench")) for k in values)
    assert "train.vllm.kv_cache_gib" not in values
    # the run's overrides are resolved: grpo is n_off 0 under the same algorithm section
    assert resume.training_params(params, "grpo", "local")["algorithm.n_off"] == 0


def test_changed_keys_and_check_resume():
    saved = {"train.lr": 2e-05, "algorithm.n_off": 1, "train.rollout_backend": "hf", "seed": 0}
    now = {**saved, "train.lr": 1e-05, "train.rollout_backend": "vllm", "seed": 0}
    now.pop("algorithm.n_off")
    now["algorithm.k_demos"] = 2
    assert resume.changed_keys(saved, now, "local") == [
        "algorithm.k_demos: (absent) -> 2",
        "algorithm.n_off: 1 -> (absent)",
        "train.lr: 2e-05 -> 1e-05",
        'train.rollout_backend: "hf" -> "vllm"',
    ]
    state = {"params": saved, "params_hash": resume.params_hash(saved)}
    where = {"engine": "local", "step": 3, "ckpt_root": "runs/icpo/checkpoints"}
    assert resume.check_resume(state, dict(saved), **where) is True
    assert resume.check_resume({"data_pos": 4}, now, **where) is False
    with pytest.raises(UserError) as e:
        resume.check_resume(state, now, **where)
    msg = str(e.value)
    assert msg.startswith("params.yaml changed since the checkpoint at step 3 of runs/icpo/checkpoints: ")
    assert "train.lr: 2e-05 -> 1e-05; " in msg and "\n" not in msg
    assert msg.endswith("Restore the values to resume, or delete runs/icpo/checkpoints to start over")


def _edit(root, **train):
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["train"].update(train)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(root / "params.yaml")


def test_resume_with_a_changed_lr_is_refused_and_touches_nothing(tiny_project):
    root, params = tiny_project(train={"steps": 4, "save_freq": 1})
    train_local(params, "icpo", root=root, reward_fn=parity_reward, progress=False, stop_after=2)
    ckpt_root = root / "runs/icpo/checkpoints"
    steps_log = root / "metrics/steps_icpo.jsonl"
    before = (
        (ckpt_root / "global_step_2/actor/model_world_size_1_rank_0.pt").read_bytes(),
        steps_log.read_text(),
    )

    edited = _edit(root, lr=5e-4)
    with pytest.raises(UserError) as e:
        train_local(edited, "icpo", root=root, reward_fn=parity_reward, progress=False)
    msg = str(e.value)
    assert f"changed since the checkpoint at step 2 of {ckpt_root}: train.lr: 0.001 -> 0.0005." in msg
    assert f"Restore the value to resume, or delete {ckpt_root} to start over" in msg
    assert layout.latest_step(ckpt_root) == 2
    after = (
        (ckpt_root / "global_step_2/actor/model_world_size_1_rank_0.pt").read_bytes(),
        steps_log.read_text(),
    )
    assert after == before

    # the value restored: the run resumes where it was
    summary = train_local(_edit(root, lr=1e-3), "icpo", root=root, reward_fn=parity_reward, progress=False)
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4


def test_resume_safe_keys_may_change(tiny_project):
    root, params = tiny_project(train={"steps": 3, "save_freq": 1, "keep_checkpoints": 2})
    first = train_local(params, "grpo", root=root, reward_fn=parity_reward, progress=False, stop_after=2)
    edited = _edit(root, save_freq=3, keep_checkpoints=1, grade_workers=1, device="cpu")
    summary = train_local(edited, "grpo", root=root, reward_fn=parity_reward, progress=False)
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 3
    assert summary["mlflow_run_id"] == first["mlflow_run_id"]  # the same run, in MLflow too
    assert layout.list_steps(root / "runs/grpo/checkpoints") == [3]  # keep_checkpoints 1 applies


def test_a_checkpoint_without_params_resumes_with_one_warning(tiny_project, caplog):
    root, params = tiny_project(train={"steps": 3, "save_freq": 1})
    train_local(params, "grpo", root=root, reward_fn=parity_reward, progress=False, stop_after=2)
    extra_path = layout.actor_dir(root / "runs/grpo/checkpoints", 2) / "extra_state_world_size_1_rank_0.pt"
    extra = torch.load(extra_path, weights_only=False)
    for key in ("params", "params_hash"):  # as an older version wrote it
        del extra["icpo"][key]
    extra["icpo"]["fingerprint"] = "from-an-older-formula"
    torch.save(extra, extra_path)
    with caplog.at_level("WARNING"):
        summary = train_local(params, "grpo", root=root, reward_fn=parity_reward, progress=False)
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("records no training params" in m for m in warnings) == 1, warnings
    # the new checkpoint records them
    state = ckpt.read_resume_state(root / "runs/grpo/checkpoints", 3)
    assert state["params"] == resume.training_params(params, "grpo", "local")
    assert state["params_hash"] == resume.params_hash(state["params"])
