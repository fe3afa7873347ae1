"""ICPOAgentLoopManager's batch transforms on real DataProto batches (project parquet -> verl RLHFDataset),
with a fake generation server in place of vLLM + the reward loop; then verl's own advantage and loss path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl_fixtures import SUFFIX, decode_prompt, fake_generate, load_batch

from icpo_core.grading import last_boxed

N_ON, N_PROMPTS = 4, 3


def _config(demos_parquet, **icpo):
    base = {
        "n_on": N_ON, "n_off": 2, "k_demos": 1, "demo_format": "chat_turns", "errs": True, "delta": 1.0,
        "reward_shaping": True, "alpha": 1.0, "gamma": 0.1,
        "released_constant_bonus": False, "demo_path": str(demos_parquet), "prompt_suffix": SUFFIX, "seed": 0,
    }  # fmt: skip
    base.update(icpo)
    return OmegaConf.create(
        {
            "icpo": base,
            "trainer": {"total_training_steps": 10},
            "actor_rollout_ref": {
                "rollout": {"n": N_ON, "response_length": 8},
                "actor": {"optim": {"total_training_steps": 10}},
            },
        }
    )


def _manager(monkeypatch, tokenizer, demos_parquet, n_workers=4, score_fn=None, **icpo):
    """The real manager class, its stock generate_sequences replaced by the fake server (no Ray); ``tokenizer``
    is also the policy's (LUFFY's traces, the format control), ``score_fn`` the verifier of the traces."""
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
    mgr._setup_icpo(_config(demos_parquet, **icpo), tokenizer=tokenizer, score_fn=score_fn)
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
        monkeypatch, tokenizer, demos_parquet, errs=False, off_policy="ief_no_demos",
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
    ext, src = batch_ops.expand_with_ief(gen_batch, mgr.algo, mgr.source, mgr.pool, SUFFIX, rng)
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


# ------------------------------------------------------------------ LUFFY (off_policy: expert_trace)

LUFFY = {"off_policy": "expert_trace", "n_off": 1, "errs": False, "reward_shaping": False}
LONG_TARGET = "1 plus 1 = " + "1 " * 10 + "\\boxed{2}"  # 16 tokens: cut at the 8-token response width


def _graded(calls):
    """The trace verifier: the last boxed answer equals the ground truth (records its calls)."""

    def score(data_source, text, ground_truth, extra_info):
        calls.append(text)
        return float(last_boxed(text) == ground_truth)

    return score


def _luffy_parquet(tmp_path, targets):
    from verl_fixtures import project_rows

    df = project_rows(len(targets))
    df["target"] = [df["target"][i] if t is None else t for i, t in enumerate(targets)]
    path = tmp_path / "luffy_train.parquet"
    df.to_parquet(path)
    return path


def test_luffy_step_inserts_expert_traces(monkeypatch, tmp_path, demos_parquet):
    from verl_fixtures import boxed_tokenizer

    from icpo_core.data.expert_traces import expert_trace

    tok = boxed_tokenizer()
    graded: list[str] = []
    mgr, gen, calls = _manager(monkeypatch, tok, demos_parquet, score_fn=_graded(graded), **LUFFY)
    assert mgr.pool is None  # LUFFY draws no demos
    train = _luffy_parquet(tmp_path, [None, LONG_TARGET, None])
    batch, gen_batch = _rollout_batch(tok, train, step=2)
    out = mgr.generate_sequences(gen_batch)

    # vLLM was asked for n_on - n_off = 3 rollouts per prompt only (9 rows, padded to the 4 workers: 12)
    assert calls == [12]
    assert all(len(m) == 1 for m in gen.seen[:9])
    assert len(out) == N_PROMPTS * N_ON
    flag = out.batch["icpo_ief"].bool()
    assert flag.tolist() == [False, False, False, True] * N_PROMPTS  # the trace in the group's last slot
    assert "rollout_log_probs" not in out.batch.keys()  # noqa: SIM118
    assert out.meta_info == {"reward_extra_keys": ["acc"]}  # the agent loop's meta info, as generated
    b = out.batch
    width = b["prompts"].shape[1]
    for g in range(N_PROMPTS):
        t = g * N_ON + N_ON - 1
        msgs = list(batch.non_tensor_batch["raw_prompt"][g])
        want = expert_trace(tok, msgs, batch.non_tensor_batch["target"][g], 8)
        n = len(want.ids)
        assert b["responses"][t, :n].tolist() == list(want.ids)
        assert (b["responses"][t, n:] == tok.pad_token_id).all()
        assert b["response_mask"][t].tolist() == [1] * n + [0] * (8 - n)
        assert torch.equal(b["attention_mask"][t, width:], b["response_mask"][t])
        assert torch.equal(b["input_ids"][t, width:], b["responses"][t])
        for i in range(g * N_ON, t):  # the same plain prompt as the group's rollouts
            assert torch.equal(b["prompts"][t], b["prompts"][i])
            assert torch.equal(b["attention_mask"][t, :width], b["attention_mask"][i, :width])
        am = b["attention_mask"][t]
        assert torch.equal(b["position_ids"][t], torch.clip(torch.cumsum(am, 0) - 1, min=0))
        assert list(out.non_tensor_batch["raw_prompt"][t]) == msgs
    # row 0's trace is whole (ends in end-of-turn, graded right); row 1's is cut at 8 tokens before its answer
    assert tok.decode(b["responses"][3, :7].tolist(), skip_special_tokens=True) == "0 plus 0 = 0 \\boxed{0}"
    assert b["responses"][3, 6] == tok.eos_token_id
    assert int(b["response_mask"][7].sum()) == 8 and tok.eos_token_id not in b["responses"][7].tolist()
    scores = b["rm_scores"].sum(-1)
    assert scores[flag].tolist() == [1.0, 0.0, 1.0]
    assert out.non_tensor_batch["acc"].tolist() == scores.tolist()  # verl's reward info follows the rows
    assert (scores[~flag] == 0).all()  # the fake server's rollouts are wrong
    m = mgr.last_metrics
    assert m["luffy/trace_truncated"] == 1.0
    assert m["icpo/ief_generated"] == 3 and m["icpo/ief_accepted"] == 3 and m["icpo/bonus"] == 0.0
    assert m["reward/expert_region"] == pytest.approx(2 / 3) and m["reward/on_policy"] == 0.0
    assert m["perf/expert_tokens"] == 7 + 8 + 7
    assert m["icpo/groups_with_signal"] == pytest.approx(2 / 3)

    # traces are graded once per row, not once per step
    mgr.generate_sequences(_rollout_batch(tok, train, step=3)[1])
    assert len(graded) == 3

    # verl's trainer side: the batch unions with the repeated batch; LUFFY's advantages (no std normalisation)
    from verl.trainer.ppo.ray_trainer import compute_advantage

    import icpo_core.engines.verl.plugin  # noqa: F401

    full = batch.repeat(N_ON, interleave=True).union(out)
    full.batch["token_level_rewards"] = full.batch["rm_scores"]
    adv = compute_advantage(
        full,
        adv_estimator="icpo",
        norm_adv_by_std_in_grpo=False,
        config=OmegaConf.create({"norm_adv_by_std_in_grpo": False}),  # verl passes the algorithm config
    ).batch["advantages"]
    per_row = (adv * full.batch["response_mask"]).sum(-1) / full.batch["response_mask"].sum(-1)
    assert per_row[3].item() == pytest.approx(0.75) and per_row[0].item() == pytest.approx(-0.25)
    assert per_row[4:8].abs().max().item() < 1e-6  # group 1: every row wrong, no signal


def test_luffy_row_without_target_is_refused(monkeypatch, tmp_path, demos_parquet):
    from verl_fixtures import boxed_tokenizer

    from icpo_core.errors import DataError

    tok = boxed_tokenizer()
    mgr, _, _ = _manager(monkeypatch, tok, demos_parquet, score_fn=_graded([]), **LUFFY)
    _, gen_batch = _rollout_batch(tok, _luffy_parquet(tmp_path, [None, "", None]))
    with pytest.raises(DataError, match="no `target`"):
        mgr.generate_sequences(gen_batch)


# ------------------------------------------------------------------ reward controls (reward: random | format)


def test_random_reward_control_flips_the_local_engine_coins(
    monkeypatch, tokenizer, train_parquet, demos_parquet
):
    from icpo_core.algorithm.seeding import step_seed

    mgr, _, _ = _manager(
        monkeypatch, tokenizer, demos_parquet, n_off=0, reward="random", random_reward_p=0.5, seed=7
    )
    outs = {}
    for step in (4, 5):
        out = mgr.generate_sequences(_rollout_batch(tokenizer, train_parquet, step=step)[1])
        # the local engine's rule: trajectory i of step t gets draw i of default_rng(step_seed(seed, t, 3))
        want = (np.random.default_rng(step_seed(7, step, 3)).random(12) < 0.5).astype(float)
        got = out.batch["rm_scores"].sum(-1).numpy()
        np.testing.assert_array_equal(got, want)
        # on the last response token, where verl's reward loop puts it
        last = out.batch["response_mask"].sum(-1) - 1
        np.testing.assert_array_equal(out.batch["rm_scores"][torch.arange(12), last].numpy(), want)
        assert mgr.last_metrics["reward/verifier_on_policy"] == 0.0  # what the verifier said (all wrong)
        assert mgr.last_metrics["reward/on_policy"] == pytest.approx(want.mean())
        outs[step] = got
    assert 0 < outs[4].sum() < 12 and not np.array_equal(outs[4], outs[5])


def test_controls_follow_the_local_trajectory_order(tokenizer, train_parquet, demos_parquet):
    """ICPO rows: per prompt its N_on on-policy rows, then its N_off IEF rows (the local rollout layout)."""
    from icpo_core.algorithm import DemoPool, off_policy_source
    from icpo_core.algorithm.control_rewards import control_rng
    from icpo_core.config import AlgorithmParams
    from icpo_core.engines.verl.batch_ops import apply_reward_control, expand_with_ief, group_major_order

    algo = AlgorithmParams(n_on=N_ON, n_off=2, reward="random", random_reward_p=0.3)
    _, gen_batch = _rollout_batch(tokenizer, train_parquet)
    uids = np.asarray(gen_batch.non_tensor_batch["uid"])
    ext, src = expand_with_ief(
        gen_batch,
        algo,
        off_policy_source(algo),
        DemoPool.from_parquet(demos_parquet),
        SUFFIX,
        np.random.default_rng(0),
    )
    out = fake_generate(tokenizer)(ext)
    n = len(uids)
    order = group_major_order(np.concatenate([uids, uids[src]]), [False] * n + [True] * len(src))
    assert order[:6] == [0, 1, 2, 3, n, n + 1] and order[6:12] == [4, 5, 6, 7, n + 2, n + 3]
    m = apply_reward_control(
        out, np.concatenate([uids, uids[src]]), [False] * n + [True] * len(src), algo, control_rng(3, 2)
    )
    flips = (control_rng(3, 2).random(len(order)) < 0.3).astype(float)
    np.testing.assert_array_equal(out.batch["rm_scores"].sum(-1).numpy()[order], flips)
    assert m == {"reward/verifier_on_policy": 0.0}  # the verifier's IEF rows (right) are not on-policy ones


def test_format_reward_control(monkeypatch, train_parquet, demos_parquet):
    """1 for a response with a \\boxed{} answer, right or wrong: IEF rows (boxed) get 1, plain rows ('99') 0."""
    from verl_fixtures import boxed_tokenizer

    tok = boxed_tokenizer()
    mgr, _, _ = _manager(
        monkeypatch, tok, demos_parquet, n_off=2, reward="format", errs=False, reward_shaping=False
    )
    out = mgr.generate_sequences(_rollout_batch(tok, train_parquet, step=2)[1])
    flag = out.batch["icpo_ief"].bool()
    assert flag.sum() == N_PROMPTS * 2
    scores = out.batch["rm_scores"].sum(-1)
    assert scores.tolist() == [float(f) for f in flag.tolist()]

    # a wrong boxed answer scores 1 too: the fake server's IEF answers, with the ground truth changed
    mgr, gen, _ = _manager(
        monkeypatch, tok, demos_parquet, n_off=2, reward="format", errs=False, reward_shaping=False
    )
    _, gb = _rollout_batch(tok, train_parquet, step=2)
    for rm in gb.non_tensor_batch["reward_model"]:
        rm["ground_truth"] = "7"
    out = mgr.generate_sequences(gb)
    assert out.batch["rm_scores"].sum(-1)[out.batch["icpo_ief"].bool()].tolist() == [1.0] * 6


def test_policy_tokenizer_is_the_models_with_its_custom_template(tmp_path, tokenizer, demos_parquet):
    """Without a given tokenizer the manager loads the policy's (``model.path``), as verl's agent loop does."""
    from icpo_core.engines.verl.manager import ICPOAgentLoopManager

    tokenizer.save_pretrained(tmp_path / "model")
    cfg = _config(demos_parquet, **LUFFY)
    cfg.actor_rollout_ref.model = {"path": str(tmp_path / "model"), "custom_chat_template": "{{ 'x' }}"}
    mgr = ICPOAgentLoopManager.__new__(ICPOAgentLoopManager)
    mgr._setup_icpo(cfg)
    tok = mgr.policy_tokenizer
    assert tok.chat_template == "{{ 'x' }}" and tok.eos_token_id == tokenizer.eos_token_id
    assert mgr.policy_tokenizer is tok  # loaded once
    assert mgr.trace_book.max_response_length == 8  # rollout.response_length


def test_luffys_traces_are_graded_with_the_runs_think_format(monkeypatch, tokenizer, demos_parquet):
    """The manager grades LUFFY's expert traces with the training verifier under the run's think_format, as
    verl's reward loop grades the rollouts (reward_kwargs; tests/engines/verl/test_verl_reward.py)."""
    from icpo_core.engines.verl.reward import compute_score

    for fmt in ("luffy", "none"):
        mgr, _, _ = _manager(monkeypatch, tokenizer, demos_parquet, **LUFFY, think_format=fmt)
        score_fn = mgr.trace_book.score_fn
        assert score_fn.func is compute_score and score_fn.keywords == {"think_format": fmt}
