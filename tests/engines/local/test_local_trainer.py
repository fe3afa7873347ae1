"""The local engine on a tiny random model: learning signal, IEF bookkeeping, determinism, resume."""

from __future__ import annotations

import json

import pytest
import torch
from local_helpers import parity_reward

from icpo_core import checkpoint_layout as layout
from icpo_core.algorithm.losses import compute_actor_loss
from icpo_core.engines.local import checkpoint as ckpt
from icpo_core.engines.local.logprobs import batched_log_probs
from icpo_core.engines.local.trainer import LocalTrainer, train_local


def _fixed_batch_loss(trainer: LocalTrainer, batch) -> float:
    lp = batched_log_probs(trainer.model, batch.seqs, 64)
    loss, _ = compute_actor_loss(
        lp,
        batch.old_log_prob,
        batch.ref_log_prob,
        None,
        batch.advantages,
        batch.seqs.response_mask,
        batch.ief_mask,
        trainer.algo,
    )
    return float(loss)


@pytest.mark.parametrize("run", ["grpo", "icpo"])
def test_updates_reduce_loss_on_a_fixed_batch(tiny_project, run):
    root, params = tiny_project(algorithm={"n_on": 4}, train={"lr": 3e-3})
    trainer = LocalTrainer(params, run, root=root, reward_fn=parity_reward, progress=False)
    trainer.setup()
    rows = trainer.prompts[:2]
    batch, metrics = trainer.rollout_step(1, rows)
    assert batch.advantages.abs().sum() > 0, "the toy reward must give a learning signal"
    if run == "icpo":
        assert metrics["icpo/ief_generated"] == 2
    else:
        assert metrics["icpo/ief_generated"] == 0 and not batch.ief_mask.any()
    # Freeze the behaviour policy so the PPO ratio can move away from 1 over repeated updates.
    batch.old_log_prob = batched_log_probs(trainer.model, batch.seqs, 64)
    before = _fixed_batch_loss(trainer, batch)
    for _ in range(5):
        out = trainer.update(batch)
    after = _fixed_batch_loss(trainer, batch)
    assert after < before - 1e-3, (before, after)
    assert out["actor/grad_norm"] > 0


def test_icpo_mixing_and_acceptance_metrics(tiny_project):
    root, params = tiny_project(algorithm={"n_on": 4, "n_off": 2}, train={"prompts_per_step": 4})
    trainer = LocalTrainer(params, "icpo", root=root, reward_fn=parity_reward, progress=False)
    trainer.setup()
    batch, m = trainer.rollout_step(1, trainer.prompts[:4])
    n_prompts, n_on, n_off = 4, params.run_algorithm("icpo").n_on, params.run_algorithm("icpo").n_off
    assert m["icpo/ief_generated"] == n_prompts * n_off
    assert batch.seqs.input_ids.shape[0] == n_prompts * n_on  # the trained group keeps its size
    assert int(batch.ief_mask.sum()) == m["icpo/ief_accepted"]
    assert m["icpo/accept_rate"] == pytest.approx(m["icpo/ief_accepted"] / m["icpo/ief_generated"])
    if m["icpo/ief_accepted"]:
        assert m["reward/expert_region"] == 1.0  # ERRS: only correct IEF rows enter
    # IEF prompts carry a demo, so generation prefilled more than the plain prompts alone
    plain = sum(len(r.prompt_ids) for r in trainer.prompts[:4]) * (n_on + n_off)
    assert m["perf/prefill_tokens"] > plain


def _comparable(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if not k.startswith(("timing/", "perf/step", "perf/tokens_per"))}
        for r in rows
    ]


def test_interrupted_run_resumes_to_the_same_result(tiny_project):
    """Deterministic on CPU, and a resumed run equals an uninterrupted one (weights, metrics, data order)."""
    root_a, params_a = tiny_project("a", train={"steps": 4, "save_freq": 1})
    root_b, params_b = tiny_project("b", train={"steps": 4, "save_freq": 1})
    train_local(params_a, "icpo", root=root_a, reward_fn=parity_reward, progress=False)
    first = train_local(params_b, "icpo", root=root_b, reward_fn=parity_reward, progress=False, stop_after=2)
    assert first["steps"] == 2
    second = train_local(params_b, "icpo", root=root_b, reward_fn=parity_reward, progress=False)
    assert second["resumed_from_step"] == 2 and second["steps"] == 4
    assert second["mlflow_run_id"] == first["mlflow_run_id"]
    steps_a = _comparable(root_a / "metrics" / "steps_icpo.jsonl")
    steps_b = _comparable(root_b / "metrics" / "steps_icpo.jsonl")
    assert [r["step"] for r in steps_b] == [1, 2, 3, 4]
    assert steps_a == steps_b
    wa = ckpt.load_weights(layout.actor_dir(root_a / "runs/icpo/checkpoints", 4))
    wb = ckpt.load_weights(layout.actor_dir(root_b / "runs/icpo/checkpoints", 4))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_changed_input_starts_fresh(tiny_project, caplog):
    """A changed input (here the data section; likewise data/*.parquet or the base model) starts the run over; a
    changed training param refuses instead (test_local_resume_params.py)."""
    import yaml

    from icpo_core.config import load_params

    root, params = tiny_project(train={"steps": 2, "save_freq": 1})
    s1 = train_local(params, "grpo", root=root, reward_fn=parity_reward, progress=False)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["data"] = {"train": {"max_tokens": 1000}}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    with caplog.at_level("WARNING"):
        s2 = train_local(
            load_params(root / "params.yaml"), "grpo", root=root, reward_fn=parity_reward, progress=False
        )
    assert "was made with different inputs" in caplog.text
    assert s2["resumed_from_step"] == 0 and s2["steps"] == 2
    assert s2["mlflow_run_id"] != s1["mlflow_run_id"]


def test_autocast_setting_picks_the_forward_precision():
    from icpo_core.engines.local.step_batch import autocast_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("auto", cuda) is torch.bfloat16
    assert autocast_dtype("bfloat16", cpu) is torch.bfloat16
    assert autocast_dtype("float32", cuda) is None


def test_bf16_autocast_on_cpu_trains_with_fp32_master_weights(tiny_project):
    """train.autocast: bfloat16 on CPU: the reference pass runs in bf16 (log-probs differ from fp32 ones), the
    update still lowers the loss, and weights and optimizer state stay fp32."""
    root, params = tiny_project(algorithm={"n_on": 4}, train={"lr": 3e-3, "autocast": "bfloat16"})
    trainer = LocalTrainer(params, "grpo", root=root, reward_fn=parity_reward, progress=False)
    trainer.setup()
    assert trainer.autocast is torch.bfloat16
    batch, _ = trainer.rollout_step(1, trainer.prompts[:2])
    fp32_ref = batched_log_probs(trainer.ref_model, batch.seqs, 64)
    mask = batch.seqs.response_mask.bool()
    assert not torch.allclose(batch.ref_log_prob[mask], fp32_ref[mask], atol=1e-4), "bf16 must be in use"
    assert torch.allclose(batch.ref_log_prob[mask], fp32_ref[mask], atol=0.5)
    batch.old_log_prob = batched_log_probs(trainer.model, batch.seqs, 64)
    before = _fixed_batch_loss(trainer, batch)
    for _ in range(5):
        trainer.update(batch)
    assert _fixed_batch_loss(trainer, batch) < before - 1e-3
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(
        v.dtype == torch.float32 for s in trainer.optimizer.state.values() for v in s.values() if v.dim()
    )
