"""The same rewards through both engines' step code give the same trained rows, rewards, flags and metrics.

Local: :func:`plan_local_step` (the rollout layout the local trainer trains from). verl: ``mix_generated`` on a real
verl ``DataProto`` (on-policy rows, then the IEF rows, rewards in ``rm_scores``), as the agent-loop manager calls it.
Every run of params.yaml goes through both: GRPO, compute-matched GRPO, ICPO, ICPO without demos, ICPO-dagger, -ERRS,
the released-code switches, LUFFY (verl: ``insert_expert_traces`` + ``plan_expert_traces``) and the reward
controls, shuffled included (local: ``training_rewards`` over the
prompt-major rollouts; verl: ``apply_reward_control`` on the batch), with the same control generator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from icpo_core.algorithm import off_policy_source, reward_variant, training_rewards
from icpo_core.algorithm.control_rewards import control_rng
from icpo_core.config import AlgorithmParams, load_params
from icpo_core.engines.local.step_batch import plan_local_step
from icpo_core.steplog import _clean

PARAMS = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
N_PROMPTS, PROMPT_LEN, RESP_LEN, STEP, TOTAL = 3, 5, 6, 2, 8


def _rewards(n_on: int, n_off: int, seed: int) -> list[list[float]]:
    """Per prompt: n_on on-policy then n_off IEF verifier rewards (one group all wrong, so signal varies)."""
    rng = np.random.default_rng(seed)
    groups = [[float(x) for x in rng.integers(0, 2, n_on + n_off)] for _ in range(N_PROMPTS)]
    groups[0][:n_on] = [0.0] * n_on
    return groups


CONTROL_SEED = 11


class _Tok:
    """The format control's reader: a response whose (row-id) token is even has a boxed answer."""

    pad_token_id = 0

    @staticmethod
    def decode(ids, skip_special_tokens=True) -> str:
        return "so \\boxed{1}" if int(ids[0]) % 2 == 0 else "no answer"


def _local_rewards(groups: list[list[float]], tokens: list[int], algo) -> list[float]:
    """What the local trainer trains on: the verifier's rewards (prompt-major), or the run's control of them."""
    flat = [r for g in groups for r in g]
    texts = [_Tok.decode([t]) for t in tokens]
    return training_rewards(algo, flat, texts, control_rng(CONTROL_SEED, STEP))


def _verl_step(groups: list[list[float]], algo, rng: np.random.Generator):
    """verl's layout: B * N_on on-policy rows (grouped by uid), then the N_off IEF rows of each group."""
    from verl import DataProto

    from icpo_core.engines.verl.batch_ops import apply_reward_control, mix_generated, on_policy_metrics

    n_on, n_off = algo.n_on, algo.n_off
    uids = np.repeat(np.array([f"u{g}" for g in range(N_PROMPTS)], dtype=object), n_on)
    src = np.repeat(np.arange(N_PROMPTS) * n_on, n_off).astype(np.int64)
    rewards = [g[i] for g in groups for i in range(n_on)] + [
        g[n_on + j] for g in groups for j in range(n_off)
    ]
    origin = [(g, "on", i) for g in range(N_PROMPTS) for i in range(n_on)]
    origin += [(g, "off", j) for g in range(N_PROMPTS) for j in range(n_off)]
    n = len(rewards)
    lengths = torch.arange(n) % (RESP_LEN - 1) + 1  # responses of different lengths
    resp_mask = (torch.arange(RESP_LEN)[None, :] < lengths[:, None]).long()
    rm = torch.zeros(n, RESP_LEN)
    rm[torch.arange(n), lengths - 1] = torch.tensor(rewards)
    prompts = torch.full((n, PROMPT_LEN), 7)
    prompts[n_on * N_PROMPTS :, 0] = 9  # IEF rows were generated from a different (demo) prompt
    responses = torch.arange(n)[:, None].repeat(1, RESP_LEN)  # row id in every token
    out = DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], 1),
            "attention_mask": torch.cat([torch.ones(n, PROMPT_LEN, dtype=torch.long), resp_mask], 1),
            "rm_scores": rm,
        },
        non_tensors={"uid": np.concatenate([uids, uids[src]])},
    )
    n_rows_on = n_on * N_PROMPTS
    off = [False] * n_rows_on + [True] * len(src)
    apply_reward_control(out, out.non_tensor_batch["uid"], off, algo, control_rng(CONTROL_SEED, STEP), _Tok())
    if n_off == 0:
        return out, on_policy_metrics(uids, out, algo, STEP, TOTAL), origin
    final, metrics = mix_generated(uids, out, src, algo, STEP, TOTAL, rng)
    return final, metrics, origin


def _verl_luffy_step(groups: list[list[float]], algo):
    """LUFFY on verl: n_on - n_off rollouts per group (the rows vLLM generates), the trace rows inserted."""
    from verl import DataProto

    from icpo_core.data.expert_traces import ExpertTrace
    from icpo_core.engines.verl.batch_ops import (
        apply_reward_control,
        expert_trace_rows,
        insert_expert_traces,
        plan_expert_traces,
    )

    n_on, n_off, n_gen = algo.n_on, algo.n_off, algo.n_on - algo.n_off
    uids = np.repeat(np.array([f"u{g}" for g in range(N_PROMPTS)], dtype=object), n_on)
    generated, slots = expert_trace_rows(uids, algo)
    n = len(generated)
    lengths = torch.arange(n) % (RESP_LEN - 1) + 1
    resp_mask = (torch.arange(RESP_LEN)[None, :] < lengths[:, None]).long()
    rm = torch.zeros(n, RESP_LEN)
    rm[torch.arange(n), lengths - 1] = torch.tensor([g[i] for g in groups for i in range(n_gen)])
    prompts = torch.full((n, PROMPT_LEN), 7)
    responses = (torch.arange(n)[:, None] + 1).repeat(1, RESP_LEN)
    out = DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], 1),
            "attention_mask": torch.cat([torch.ones(n, PROMPT_LEN, dtype=torch.long), resp_mask], 1),
            "rm_scores": rm,
        },
        non_tensors={"uid": uids[generated]},
    )
    origin = {
        k + 1: (g, "on", i) for k, (g, i) in enumerate((g, i) for g in range(N_PROMPTS) for i in range(n_gen))
    }
    traces, trace_rewards = [], []
    for k, slot in enumerate(slots):
        g, j = int(slot) // n_on, k % n_off
        token = 100 + k
        origin[token] = (g, "off", j)
        traces.append(ExpertTrace((token,) * (2 + k % 3), "trace", False))
        trace_rewards.append(groups[g][n_gen + j])
    final = insert_expert_traces(uids, out, generated, slots, traces, trace_rewards, pad_token_id=0)
    off = final.batch["icpo_ief"].bool().tolist()
    apply_reward_control(final, uids, off, algo, control_rng(CONTROL_SEED, STEP), _Tok())
    metrics = plan_expert_traces(uids, final, algo, STEP, TOTAL)
    return final, metrics, origin


def _variants() -> list[tuple[str, AlgorithmParams]]:
    """Every run of params.yaml, and ICPO / LUFFY with each reward control."""
    out = [(r, PARAMS.run_algorithm(r)) for r in sorted(PARAMS.runs)]
    for base in ("icpo", "luffy"):
        for reward in ("shuffled", "random", "format"):
            algo = PARAMS.run_algorithm(base).model_copy(update={"reward": reward, "random_reward_p": 0.4})
            out.append((f"{base}_{reward}", algo))
    return out


@pytest.mark.parametrize(("run", "algo"), _variants(), ids=[name for name, _ in _variants()])
@pytest.mark.parametrize("seed", [0, 1])
def test_both_engines_train_the_same_rows(run, algo, seed):
    luffy = off_policy_source(algo).supplied_off_per_prompt(algo) > 0
    n_first = (
        algo.n_on - algo.n_off if luffy else algo.n_on
    )  # per prompt: on-policy rollouts, then off-policy
    groups = _rewards(n_first, algo.n_off, seed)
    if luffy:
        final, verl_metrics, origin = _verl_luffy_step(groups, algo)
        on_tok = {(g, i): g * n_first + i + 1 for g in range(N_PROMPTS) for i in range(n_first)}
        off_base = 100
    else:
        final, verl_metrics, origin = _verl_step(groups, algo, np.random.default_rng(seed))
        on_tok = {(g, i): g * n_first + i for g in range(N_PROMPTS) for i in range(n_first)}
        off_base = n_first * N_PROMPTS
    # each local rollout's verl token (the row id its response carries), prompt-major as the local engine lays out
    tokens = [t for g in range(N_PROMPTS) for t in [*(on_tok[g, i] for i in range(n_first)),
              *(off_base + g * algo.n_off + j for j in range(algo.n_off))]]  # fmt: skip
    rewards = _local_rewards(groups, tokens, algo)
    if reward_variant(algo).control:
        assert rewards != [r for g in groups for r in g]  # the control did replace the verifier's rewards
    local = plan_local_step(rewards, N_PROMPTS, algo, step=STEP, total_steps=TOTAL,
                            rng=np.random.default_rng(seed))  # fmt: skip
    verl_rows = [origin[int(final.batch["responses"][i, 0])] for i in range(len(final))]

    per = n_first + algo.n_off
    local_rows = [
        (p, "off" if r % per >= n_first else "on", r % per - (n_first if r % per >= n_first else 0))
        for p, r in zip(local.prompt_of_row, local.rollout_rows, strict=True)
    ]
    local_set = {
        (row, round(rew, 6), ief)
        for row, rew, ief in zip(local_rows, local.rewards, local.off_policy, strict=True)
    }
    verl_rewards = final.batch["rm_scores"].sum(-1).tolist()
    verl_ief = (final.batch["icpo_ief"].bool().tolist() if "icpo_ief" in final.batch.keys()  # noqa: SIM118
                else [False] * len(final))  # fmt: skip
    verl_set = {
        (row, round(rew, 6), ief) for row, rew, ief in zip(verl_rows, verl_rewards, verl_ief, strict=True)
    }
    assert local_set == verl_set
    assert len(local_rows) == len(verl_rows) == N_PROMPTS * algo.n_on  # the trained group keeps N_on rows
    # verl keeps its group-major slots; every IEF row sits in a slot of its own group, with the plain prompt
    assert [row[0] for row in verl_rows] == [g for g in range(N_PROMPTS) for _ in range(algo.n_on)]
    assert (final.batch["prompts"] == 7).all()
    if algo.n_off and algo.reward_shaping:
        assert any(rew > 1.0 for rew in local.rewards)  # the bonus reached accepted IEF rows
    # same metric names and values; undefined ones are null in the local step log and absent in verl's
    assert set(verl_metrics) <= set(local.metrics)
    for name, value in local.metrics.items():
        assert verl_metrics.get(name) == pytest.approx(_clean(value)), name
