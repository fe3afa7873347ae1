"""ICPOAgentLoopManager's batch transforms on real DataProto batches (project parquet -> verl RLHFDataset),
with a fake generation server in place of vLLM + the reward loop; then verl's own advantage and loss path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl_fixtures import SUFFIX, decode_prompt, fake_generate, load_batch

N_ON, N_PROMPTS = 4, 3


def _config(demos_parquet, **icpo):
    base = {
        "n_on": N_ON, "n_off": 2, "k_demos": 1, "demo_format": "chat_turns", "errs": True, "delta": 1.0,
        "reward_shaping": True, "alpha": 1.0, "gamma": 0.1, "released_demos_skip_generation": False,
        "released_constant_bonus": False, "demo_path": str(demos_parquet), "prompt_suffix": SUFFIX, "seed": 0,
    }  # fmt: skip
    base.update(icpo)
    return OmegaConf.create(
        {
            "icpo": base,
            "trainer": {"total_training_steps": 10},
            "actor_rollout_ref": {"rollout": {"n": N_ON}, "actor": {"optim": {"total_training_steps": 10}}},
        }
    )


def _manager(monkeypatch, tokenizer, demos_parquet, n_workers=4, **icpo):
    """The real manager class, its stock generate_sequences replaced by the fake server (no Ray)."""
    from verl.experimental.agent_loop import AgentLoopManager

    from icpo_core.engines.verl.manager import ICPOAgentLoopManager

    gen = fake_generate(tokenizer)
    calls = []

    async def fake_stock(self, prompts):
        assert len(prompts) % n_workers == 0  # the stock manager chunks over its workers
        calls.append(len(prompts))
        return gen(prompts)

    monkeypatch.setattr(AgentLoopManager, "generate_sequences", fake_stock)
    mgr = ICPOAgentLoopManager.__new__(ICPOAgentLoopManager)
    mgr.agent_loop_workers = [None] * n_workers
    mgr._setup_icpo(_config(demos_parquet, **icpo))
    return mgr, gen, calls


def _rollout_batch(tokenizer, train_parquet, step=1):
    batch = load_batch(tokenizer, train_parquet, N_PROMPTS)
    gen_batch = batch.repeat(N_ON, interleave=True)
    gen_batch.meta_info["global_steps"] = step
    return batch, gen_batch


def test_icpo_step_on_real_batches(monkeypatch, tokenizer, train_parquet, demos_parquet):
    mgr, gen, calls = _manager(monkeypatch, tokenizer, demos_parquet)
    batch, gen_batch = _rollout_batch(tokenizer, train_parquet, step=3)
    out = mgr.generate_sequences(gen_batch)

    # generation saw B*N_on plain prompts + B*N_off demo prompts (padded to the 4 workers: 12 + 6 -> 20)
    assert calls == [20]
    seen = gen.seen[: N_PROMPTS * (N_ON + 2)]
    plain, ief = seen[: N_PROMPTS * N_ON], seen[N_PROMPTS * N_ON :]
    assert all(len(m) == 1 for m in plain)
    assert all(len(m) == 3 and m[0]["content"].endswith(SUFFIX) and m[1]["role"] == "assistant" for m in ief)
    for m in ief:  # never the question itself as its demo
        assert m[0]["content"] != m[2]["content"]

    # the trainer gets exactly B*N_on rows back, in group order, with the IEF flag
    assert len(out) == N_PROMPTS * N_ON
    ief_rows = out.batch["icpo_ief"].bool()
    assert (
        ief_rows.sum() == N_PROMPTS * 2
    )  # the fake server answers every demo prompt correctly: all accepted
    assert "rollout_log_probs" not in out.batch.keys()  # noqa: SIM118
    for g in range(N_PROMPTS):
        assert ief_rows[g * N_ON : (g + 1) * N_ON].sum() == 2
    # plain prompt restored on IEF rows: same prompt tokens as the on-policy rows of the group, contiguous positions
    for i in range(len(out)):
        g0 = (i // N_ON) * N_ON
        on_row = next(j for j in range(g0, g0 + N_ON) if not ief_rows[j])
        assert torch.equal(out.batch["prompts"][i], out.batch["prompts"][on_row])
        assert torch.equal(out.batch["input_ids"][i, 48:], out.batch["responses"][i])
        am = out.batch["attention_mask"][i]
        assert torch.equal(out.batch["position_ids"][i], torch.clip(torch.cumsum(am, 0) - 1, min=0))
        assert "plus" in decode_prompt(tokenizer, out.batch["prompts"][i])
        assert len(out.non_tensor_batch["raw_prompt"][i]) == 1
    # bonus alpha * (1 - t/T), t = step - 1 = 2, T = 10; on-policy rows keep their 0/1 reward
    scores = out.batch["rm_scores"].sum(-1)
    assert torch.allclose(scores[ief_rows], torch.full((6,), 1.8))
    assert set(scores[~ief_rows].tolist()) <= {0.0, 1.0}
    m = mgr.last_metrics
    assert m["icpo/ief_generated"] == 6 and m["icpo/ief_accepted"] == 6 and m["icpo/accept_rate"] == 1.0
    assert m["icpo/bonus"] == pytest.approx(0.8) and m["reward/expert_region"] == 1.0
    assert m["reward/on_policy"] == 0.0 and m["icpo/on_policy_groups_with_signal"] == 0.0
    assert m["icpo/groups_with_signal"] == 1.0

    # verl's trainer side: union with the repeated batch, then the registered 'icpo' estimator == verl's grpo
    from verl.trainer.ppo.ray_trainer import compute_advantage

    import icpo_core.engines.verl.plugin  # noqa: F401

    full = batch.repeat(N_ON, interleave=True).union(out)
    full.batch["token_level_rewards"] = full.batch["rm_scores"]
    a = compute_advantage(
        full, adv_estimator="icpo", norm_adv_by_std_in_grpo=True, config=OmegaConf.create({})
    )
    adv_icpo = a.batch["advantages"].clone()
    g = compute_advantage(full, adv_estimator="grpo", norm_adv_by_std_in_grpo=True)
    torch.testing.assert_close(adv_icpo, g.batch["advantages"])
    assert (adv_icpo[ief_rows].sum(-1) > 0).all()


def test_errs_rejects_and_released_switches(monkeypatch, tokenizer, train_parquet, demos_parquet):
    # released: demos never reach generation -> the fake server answers IEF rows wrongly; ERRS off keeps them
    mgr, gen, _ = _manager(
        monkeypatch, tokenizer, demos_parquet, errs=False, released_demos_skip_generation=True,
        released_constant_bonus=True, demo_format="inline",
    )  # fmt: skip
    _, gen_batch = _rollout_batch(tokenizer, train_parquet, step=9)
    out = mgr.generate_sequences(gen_batch)
    assert all(len(m) == 1 and "Question:" not in m[0]["content"] for m in gen.seen)
    assert out.batch["icpo_ief"].sum() == N_PROMPTS * 2
    assert (out.batch["rm_scores"].sum(-1) == 0).all()  # wrong answers get no bonus, even a constant one

    # inline demos reach generation; with ERRS every IEF row is correct here, constant bonus = alpha at any step
    mgr, gen, _ = _manager(
        monkeypatch, tokenizer, demos_parquet, demo_format="inline", released_constant_bonus=True
    )
    _, gen_batch = _rollout_batch(tokenizer, train_parquet, step=9)
    out = mgr.generate_sequences(gen_batch)
    ief_msgs = gen.seen[N_PROMPTS * N_ON : N_PROMPTS * (N_ON + 2)]
    assert all(len(m) == 1 and m[0]["content"].startswith("Question: What is 1") for m in ief_msgs)
    assert torch.allclose(out.batch["rm_scores"].sum(-1)[out.batch["icpo_ief"].bool()], torch.full((6,), 2.0))


def test_errs_drops_wrong_ief_rows(monkeypatch, tokenizer, train_parquet, demos_parquet):
    from icpo_core.engines.verl import batch_ops

    mgr, _, _ = _manager(monkeypatch, tokenizer, demos_parquet, reward_shaping=False)
    _, gen_batch = _rollout_batch(tokenizer, train_parquet)
    rng = np.random.default_rng(0)
    ext, src = batch_ops.expand_with_ief(gen_batch, mgr.algo, mgr.pool, SUFFIX, rng)
    out = fake_generate(tokenizer)(ext)
    out.batch["rm_scores"][len(gen_batch) :: 2] = 0.0  # the first IEF row of each prompt is wrong
    uids = gen_batch.non_tensor_batch["uid"]
    final, m = batch_ops.mix_generated(uids, out, src, mgr.algo, 1, 10, rng)
    assert m["icpo/ief_accepted"] == N_PROMPTS and m["icpo/accept_rate"] == 0.5
    assert final.batch["icpo_ief"].sum() == N_PROMPTS
    assert len(final) == len(gen_batch)


def test_grpo_and_validation_pass_through(monkeypatch, tokenizer, train_parquet, demos_parquet):
    mgr, gen, calls = _manager(monkeypatch, tokenizer, demos_parquet, n_off=0)
    assert mgr.pool is None
    _, gen_batch = _rollout_batch(tokenizer, train_parquet)
    out = mgr.generate_sequences(gen_batch)
    assert calls == [12] and len(out) == 12 and "icpo_ief" not in out.batch.keys()  # noqa: SIM118
    assert mgr.last_metrics["icpo/ief_generated"] == 0 and mgr.last_metrics["reward/on_policy"] == 0.0

    mgr, gen, calls = _manager(monkeypatch, tokenizer, demos_parquet)
    _, val = _rollout_batch(tokenizer, train_parquet)
    val.meta_info["validate"] = True
    assert len(mgr.generate_sequences(val)) == 12 and calls == [12]


def test_rollout_n_must_match(demos_parquet):
    from icpo_core.engines.verl.manager import ICPOAgentLoopManager

    cfg = _config(demos_parquet)
    cfg.actor_rollout_ref.rollout.n = 5
    mgr = ICPOAgentLoopManager.__new__(ICPOAgentLoopManager)
    with pytest.raises(ValueError, match="rollout.n"):
        mgr._setup_icpo(cfg)
