"""The same rewards through both engines' step code give the same trained rows, rewards, flags and metrics.

Local: :func:`plan_local_step` (the rollout layout the local trainer trains from). verl: ``mix_generated`` on a real
verl ``DataProto`` (on-policy rows, then the IEF rows, rewards in ``rm_scores``), as the agent-loop manager calls it.
Every run of params.yaml goes through both: GRPO, ICPO, ICPO-dagger, -ERRS and the released-code switches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from icpo_core.config import load_params
from icpo_core.engines.local.steplog import _clean
from icpo_core.engines.local.trainer import plan_local_step

PARAMS = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
N_PROMPTS, PROMPT_LEN, RESP_LEN, STEP, TOTAL = 3, 5, 6, 2, 8


def _rewards(n_on: int, n_off: int, seed: int) -> list[list[float]]:
    """Per prompt: n_on on-policy then n_off IEF verifier rewards (one group all wrong, so signal varies)."""
    rng = np.random.default_rng(seed)
    groups = [[float(x) for x in rng.integers(0, 2, n_on + n_off)] for _ in range(N_PROMPTS)]
    groups[0][:n_on] = [0.0] * n_on
    return groups


def _verl_step(groups: list[list[float]], algo, rng: np.random.Generator):
    """verl's layout: B * N_on on-policy rows (grouped by uid), then the N_off IEF rows of each group."""
    from verl import DataProto

    from icpo_core.engines.verl.batch_ops import mix_generated, on_policy_metrics

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
    if n_off == 0:
        return out, on_policy_metrics(uids, out, algo, STEP, TOTAL), origin
    final, metrics = mix_generated(uids, out, src, algo, STEP, TOTAL, rng)
    return final, metrics, origin


# LUFFY (off_policy: expert_trace) runs on the local engine only; verl refuses it before launch
@pytest.mark.parametrize("run", sorted(r for r in PARAMS.runs if PARAMS.run_algorithm(r).off_policy == "ief"))
@pytest.mark.parametrize("seed", [0, 1])
def test_both_engines_train_the_same_rows(run, seed):
    algo = PARAMS.run_algorithm(run)
    groups = _rewards(algo.n_on, algo.n_off, seed)
    local = plan_local_step([r for g in groups for r in g], N_PROMPTS, algo, step=STEP, total_steps=TOTAL,
                            rng=np.random.default_rng(seed))  # fmt: skip
    final, verl_metrics, origin = _verl_step(groups, algo, np.random.default_rng(seed))

    per = algo.n_on + algo.n_off
    local_rows = [
        (p, "off" if r % per >= algo.n_on else "on", r % per - (algo.n_on if r % per >= algo.n_on else 0))
        for p, r in zip(local.prompt_of_row, local.rollout_rows, strict=True)
    ]
    local_set = {
        (row, round(rew, 6), ief)
        for row, rew, ief in zip(local_rows, local.rewards, local.off_policy, strict=True)
    }
    verl_rows = [origin[int(final.batch["responses"][i, 0])] for i in range(len(final))]
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
