"""RayICPOTrainer on CPU up to the GPU boundary: the task runner builds it from the composed config and the
project's parquet; its hooks install the ICPO loss and add ICPO metrics (worker calls faked)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import yaml
from verl_fixtures import make_tokenizer, project_rows, write_demos

from icpo_core.config import parse_params
from icpo_core.engines.verl import overrides as ov

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from hydra import compose, initialize_config_dir
    from transformers import LlamaConfig

    from icpo_core.engines.verl.launcher import ICPOTaskRunner

    root = tmp_path_factory.mktemp("proj")
    (root / "data").mkdir()
    project_rows(8).to_parquet(root / "data" / "train.parquet")
    write_demos(root / "data" / "demos.parquet")
    tok = make_tokenizer()
    tok.save_pretrained(root / "models" / "base")
    LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, architectures=["LlamaForCausalLM"],
    ).save_pretrained(root / "models" / "base")  # fmt: skip
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    # No val_benchmarks: this fixture writes no data/val, so verl gets its stand-in validation set.
    raw["train"]["verl"].update(n_gpus_per_node=1, val_benchmarks=[])
    params = parse_params(raw)
    overrides = [o for o in ov.override_list(params, "icpo_rs", root) if not o.startswith("hydra.")]
    with initialize_config_dir(config_dir=str(Path(ov.__file__).parent / "config"), version_base=None):
        cfg = compose("icpo_trainer", overrides=overrides)
    return ICPOTaskRunner().build_trainer(cfg), params


@pytest.mark.slow
def test_task_runner_builds_icpo_trainer(trainer):
    from icpo_core.engines.verl.trainer import RayICPOTrainer

    tr, params = trainer
    assert isinstance(tr, RayICPOTrainer)
    assert tr.total_training_steps == params.train.steps
    # the manager reads T from here (set by the dataloader before init_workers)
    assert tr.config.actor_rollout_ref.actor.optim.total_training_steps == params.train.steps
    assert tr.config.icpo.reward_shaping is True
    assert tr.config.icpo.n_off == params.run_algorithm("icpo_rs").n_off


@pytest.mark.slow
def test_hooks_install_loss_and_add_metrics(trainer, monkeypatch):
    import ray
    from verl import DataProto
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    from icpo_core.engines.verl.losses import icpo_ppo_loss

    tr, _ = trainer

    class FakeWorkerGroup:
        loss_fn = None

        def set_loss_fn(self, fn):
            self.loss_fn = ray.cloudpickle.loads(ray.cloudpickle.dumps(fn))  # it travels to the workers

    monkeypatch.setattr(RayPPOTrainer, "init_workers", lambda self: None)
    tr.actor_rollout_wg = FakeWorkerGroup()
    tr.init_workers()
    fn = tr.actor_rollout_wg.loss_fn
    assert fn.func is icpo_ppo_loss and fn.keywords["gamma"] == 0.1
    assert (
        fn.keywords["clip_on_policy"] is True
    )  # ICPO keeps the PPO clip; LUFFY's is off (test_verl_overrides)
    assert fn.keywords["config"].kl_loss_type == "low_var_kl" and fn.keywords["config"].clip_ratio_c == 3.0
    pickle.dumps(fn.keywords["config"])

    monkeypatch.setattr(
        RayPPOTrainer,
        "_update_actor",
        lambda self, b: DataProto.from_single_dict({}, meta_info={"metrics": {"actor/pg_loss": 0.1}}),
    )

    class Mgr:
        last_metrics = {"icpo/accept_rate": 0.5, "reward/on_policy": 0.25}

    tr.async_rollout_manager = Mgr()
    adv = torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    batch = DataProto.from_single_dict({"advantages": adv, "response_mask": mask})
    metrics = tr._update_actor(batch).meta_info["metrics"]
    assert metrics["actor/pg_loss"] == 0.1 and metrics["icpo/accept_rate"] == 0.5
    assert metrics["adv/mean"] == pytest.approx(0.0) and metrics["adv/abs_max"] == 1.0
    assert metrics["adv/std"] == pytest.approx(1.0)
