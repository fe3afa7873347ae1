"""One bonus schedule in both engines: the local trainer's per-step bonus equals the verl manager's, also after
a resume (paper section 3.3: alpha * (1 - t/T), with verl's t = global_steps - 1)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from local_helpers import parity_reward

from icpo_core.algorithm import step_bonus
from icpo_core.engines.local.trainer import train_local

T = 4


def _verl_bonus(algo, step: int, total: int) -> float:
    """The bonus verl's ICPOAgentLoopManager applies at ``global_steps == step`` (through mix_generated)."""
    from verl import DataProto

    from icpo_core.engines.verl.batch_ops import mix_generated

    n, prompt_len, resp_len = algo.n_on, 3, 2
    rows = n + 1  # one group of n on-policy rows, then one IEF row
    rm = torch.zeros(rows, resp_len)
    rm[n, -1] = 1.0  # the IEF row is correct: accepted by ERRS, it gets the bonus
    ids = torch.arange(rows * (prompt_len + resp_len)).reshape(rows, -1) % 50 + 3
    out = DataProto.from_dict(
        tensors={
            "prompts": ids[:, :prompt_len].clone(),
            "responses": ids[:, prompt_len:].clone(),
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "rm_scores": rm,
        },
        non_tensors={"raw_prompt": np.array([[{"role": "user", "content": "q"}]] * rows, dtype=object)},
    )
    uids = np.array(["g"] * n, dtype=object)
    _, metrics = mix_generated(uids, out, np.array([0]), algo, step, total, np.random.default_rng(0))
    return metrics["icpo/bonus"]


def _bonuses(path) -> dict[int, float]:
    return {r["step"]: r["icpo/bonus"] for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.parametrize("constant", [False, True])
def test_local_and_verl_bonus_agree_at_every_step_and_after_resume(tiny_project, constant):
    algo = {"n_on": 4, "n_off": 1, "reward_shaping": True, "alpha": 1.0, "released_constant_bonus": constant}
    root, params = tiny_project(algorithm=algo, train={"steps": T, "save_freq": 1})
    train_local(params, "icpo", root=root, reward_fn=parity_reward, progress=False, stop_after=2)
    resumed = train_local(params, "icpo", root=root, reward_fn=parity_reward, progress=False)
    assert resumed["resumed_from_step"] == 2

    local = _bonuses(root / "metrics" / "steps_icpo.jsonl")
    a = params.run_algorithm("icpo")
    verl = {s: _verl_bonus(a, s, T) for s in range(1, T + 1)}
    assert local == pytest.approx(verl)
    # verl's counter convention: step 1 gets the full alpha, step T gets alpha / T (released: alpha throughout)
    expected = [1.0] * T if constant else [1 - (s - 1) / T for s in range(1, T + 1)]
    assert [local[s] for s in range(1, T + 1)] == pytest.approx(expected)


def test_step_bonus_is_off_without_shaping_and_one_based():
    assert step_bonus(1.0, 3, 10, reward_shaping=False) == 0.0
    assert step_bonus(1.0, 1, 10, reward_shaping=True) == 1.0
    assert step_bonus(1.0, 10, 10, reward_shaping=True) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="1-based"):
        step_bonus(1.0, 0, 10, reward_shaping=True)
