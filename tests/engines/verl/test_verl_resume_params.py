"""params.yaml edited during a verl run: checked before verl launches (no verl, no Ray here).

A checkpoint root as verl leaves it (a complete ``global_step_N`` with verl's extra state, and the params file a
fresh start records): a changed training key is refused naming the key and the fix, unchanged params and a
changed resume-safe key pass, and a checkpoint without a record (or with a damaged one) is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from verl_fixtures import fake_verl_step

from icpo_core.config import parse_params
from icpo_core.engines import resume_params
from icpo_core.engines.verl import resume
from icpo_core.errors import DataError, UserError

ROOT = Path(__file__).resolve().parents[3]


def _params(**train):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"] = {**raw["train"], "engine": "verl"}
    for key, value in train.items():  # "verl__nnodes" -> train.verl.nnodes
        section, _, name = key.rpartition("__")
        target = raw["train"].setdefault(section, {}) if section else raw["train"]
        target[name] = value
    return parse_params(raw)


def test_verl_training_params_compare_what_a_step_computes():
    values = resume_params.training_params(_params(), "icpo", "verl")
    assert values["train.lr"] == _params().train.lr and values["seed"] == 0
    assert values["train.lora.rank"] == _params().train.lora.rank
    # verl knobs that change a step (or whether its checkpoint loads) are compared
    for key in ("train.verl.extra_overrides", "train.verl.nnodes", "train.verl.n_gpus_per_node"):
        assert key in values
    # launch-only verl knobs, and the local engine's own knobs, are not
    for key in (
        "train.verl.ppo_micro_batch_size_per_gpu",
        "train.verl.tensor_parallel",
        "train.verl.val_n",
        "train.micro_batch_size",
        "train.rollout_backend",
        "train.save_freq",
    ):
        assert key not in values
    # the local engine keeps its own set: all of train.verl safe, its rollout backend compared
    local = resume_params.training_params(_params(), "icpo", "local")
    assert "train.rollout_backend" in local and not any(k.startswith("train.verl.") for k in local)


def test_a_fresh_start_records_the_params_atomically(tmp_path):
    root = tmp_path / "runs/icpo/checkpoints"
    assert resume.check_or_record(_params(), "icpo", root) is None
    record = json.loads((root / resume.PARAMS_FILE).read_text())
    training = resume_params.training_params(_params(), "icpo", "verl")
    assert record["params"] == training and record["params_hash"] == resume_params.params_hash(training)
    assert record["engine"] == "verl" and record["run"] == "icpo"
    assert sorted(p.name for p in root.iterdir()) == [resume.PARAMS_FILE]  # no temporary left behind

    # a fresh start after an edit (no complete step yet: nothing trained with the old params) records anew
    assert resume.check_or_record(_params(lr=1e-5), "icpo", root) is None
    assert json.loads((root / resume.PARAMS_FILE).read_text())["params"]["train.lr"] == 1e-5


def test_a_resume_with_a_changed_key_is_refused_naming_it_and_the_fix(tmp_path):
    root = tmp_path / "runs/icpo/checkpoints"
    resume.check_or_record(_params(lr=1e-3), "icpo", root)
    fake_verl_step(root, 2)
    record_before = (root / resume.PARAMS_FILE).read_bytes()

    with pytest.raises(UserError) as e:
        resume.check_or_record(_params(lr=1e-5), "icpo", root)
    msg = str(e.value)
    assert msg == (
        f"params.yaml changed since the checkpoint at step 2 of {root}: train.lr: 0.001 -> 1e-05. "
        f"Restore the value to resume, or delete {root} to start over"
    )
    # a loss / rollout setting set through extra_overrides is a change too
    with pytest.raises(UserError, match=r"train\.verl\.extra_overrides: \[\] -> \[\"actor_rollout_ref"):
        resume.check_or_record(
            _params(lr=1e-3, verl__extra_overrides=["actor_rollout_ref.rollout.temperature=0.7"]),
            "icpo",
            root,
        )
    assert (root / resume.PARAMS_FILE).read_bytes() == record_before  # a refusal touches nothing

    # unchanged params, and a changed resume-safe key, resume from the checkpoint
    assert resume.check_or_record(_params(lr=1e-3), "icpo", root) == 2
    safe = _params(lr=1e-3, save_freq=7, verl__ppo_micro_batch_size_per_gpu=1, verl__val_n=4)
    assert resume.check_or_record(safe, "icpo", root) == 2
    assert (root / resume.PARAMS_FILE).read_bytes() == record_before


def test_a_checkpoint_without_a_record_is_refused(tmp_path):
    root = tmp_path / "ckpt"
    fake_verl_step(root, 3)  # a checkpoint whose record is gone
    with pytest.raises(DataError) as e:
        resume.check_or_record(_params(lr=1e-3), "icpo", root)
    assert str(e.value).startswith(f"{root}: the checkpoint at step 3 has no record of its training params")
    assert str(e.value).endswith(f"delete {root} to start over")
    assert not (root / resume.PARAMS_FILE).exists()  # nothing recorded: the next launch is refused too


def test_a_damaged_record_is_one_data_error_naming_it(tmp_path):
    root = tmp_path / "ckpt"
    fake_verl_step(root, 1)
    (root / resume.PARAMS_FILE).write_bytes(b'{"params": {"train.lr": 0.0')  # cut mid-write by hand
    with pytest.raises(DataError) as e:
        resume.check_or_record(_params(), "icpo", root)
    assert str(e.value).startswith(f"{root / resume.PARAMS_FILE}: damaged record of the training params (")
    assert str(e.value).endswith(f"delete {root} to start over")


def test_keys_added_since_a_checkpoint_resume_at_their_default_and_offload_is_placement_only():
    """A checkpoint recorded before train.deterministic / algorithm.think_format existed resumes while they stay at
    their defaults (the behaviour it was trained with) and is refused naming the key when one is switched on; the
    actor's FSDP offload moves tensors, so a verl resume may change it."""
    now = resume_params.training_params(_params(), "icpo", "verl")
    old = {k: v for k, v in now.items() if k not in ("train.deterministic", "algorithm.think_format")}
    state = {"params": old, "params_hash": resume_params.params_hash(old)}
    assert resume_params.check_resume(state, now, engine="verl", step=3, ckpt_root="ck") is True
    switched = resume_params.training_params(_params(deterministic=True), "icpo", "verl")
    with pytest.raises(UserError, match=r"train\.deterministic: \(absent\) -> true"):
        resume_params.check_resume(state, switched, engine="verl", step=3, ckpt_root="ck")
    assert "train.verl.optimizer_offload" not in now and "train.verl.param_offload" not in now
