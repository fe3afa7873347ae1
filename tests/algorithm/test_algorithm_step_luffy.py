"""LUFFY through the one group step (plan_step) and the one loss: hand cases against LUFFY's released formulas.

LUFFY's released recipe (exp_scripts/train.sh, mix_src/mix_core_alg.py): a group of rollout.n = 8 is 7 on-policy
rollouts and 1 expert trace; ``adv_estimator=grpo`` with ``grpo_use_std=False`` gives ``A_i = R_i - mean(group)``
over all 8, the trace included; on-policy tokens: ``-A * ratio`` without clip (``loss_remove_clip``); expert
tokens: ``-A * p / (p + 0.1)`` (``off_policy_reshape=p_div_p_0.1``), no ratio, no clip.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icpo_core.algorithm import plan_step
from icpo_core.algorithm.advantages import group_advantages
from icpo_core.algorithm.losses import icpo_policy_loss
from icpo_core.algorithm.step import on_policy_rollouts
from icpo_core.config import DEFAULT_RUNS, AlgorithmParams


@pytest.fixture
def luffy() -> AlgorithmParams:
    return AlgorithmParams(**{**AlgorithmParams().model_dump(), "n_on": 8, **DEFAULT_RUNS["luffy"]})


def test_the_group_is_seven_rollouts_then_the_trace_all_trained_no_draw(luffy):
    assert on_policy_rollouts(luffy) == 7
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    plan = plan_step([[0, 0, 1, 0, 0, 0, 0], [0] * 7], [[1.0], [0.0]], luffy, step=1, total_steps=8, rng=rng)
    assert rng.bit_generator.state == state  # nothing replaced, nothing drawn
    g = plan.groups[0]
    assert [(r.source, r.index, r.slot, r.off_policy) for r in g.rows] == [
        *[("on", i, i, False) for i in range(7)],
        ("off", 0, 7, True),
    ]
    assert [r.reward for r in g.rows] == [0, 0, 1, 0, 0, 0, 0, 1.0]  # verifier rewards, no bonus
    assert g.by_slot() == list(g.rows)
    # a wrong (e.g. truncated) trace still trains: LUFFY has no rejection step
    assert plan.groups[1].rows[-1].reward == 0.0 and plan.groups[1].rows[-1].off_policy
    m = plan.metrics
    assert m["icpo/ief_generated"] == 2 and m["icpo/ief_accepted"] == 2 and m["icpo/accept_rate"] == 1.0
    assert m["reward/on_policy"] == pytest.approx(1 / 14) and m["reward/overall"] == pytest.approx(2 / 16)
    assert m["icpo/bonus"] == 0.0


def test_advantages_are_reward_minus_the_mixed_group_mean(luffy):
    plan = plan_step(
        [[0, 0, 1, 0, 0, 0, 0]], [[1.0]], luffy, step=1, total_steps=8, rng=np.random.default_rng(0)
    )
    rewards = torch.tensor([r.reward for r in plan.groups[0].rows])
    adv = group_advantages(rewards, [0] * 8, eps=luffy.adv_eps, norm_by_std=luffy.norm_adv_by_std)
    # hand case: mean 2/8 = 0.25 -> correct rows 0.75, wrong rows -0.25 (the released grpo_use_std=False)
    assert adv.tolist() == pytest.approx([-0.25, -0.25, 0.75, -0.25, -0.25, -0.25, -0.25, 0.75])
    # GRPO's normalised version would divide by the std (0.463): LUFFY's is larger and not scale-free
    grpo = group_advantages(rewards, [0] * 8, eps=1e-6, norm_by_std=True)
    assert grpo[2] == pytest.approx(0.75 / float(rewards.std()), rel=1e-4)


def test_loss_is_the_released_token_formula_on_a_hand_case(luffy):
    # two rows: an on-policy rollout (A = -0.25) and the expert trace (A = 0.75), two tokens each
    p_now = torch.tensor([[0.5, 0.2], [0.05, 0.9]])
    p_old = torch.tensor([[0.25, 0.4], [0.5, 0.5]])  # the trace's old probs play no part
    adv = torch.tensor([-0.25, 0.75])
    off = torch.tensor([False, True])
    loss, m = icpo_policy_loss(
        torch.log(p_now),
        torch.log(p_old),
        adv,
        torch.ones(2, 2),
        off,
        gamma=luffy.gamma,
        clip=luffy.clip_on_policy,
    )
    on_terms = [0.25 * 0.5 / 0.25, 0.25 * 0.2 / 0.4]  # -A * ratio, ratios 2.0 and 0.5: no clip to [0.8, 1.2]
    off_terms = [-0.75 * 0.05 / 0.15, -0.75 * 0.9 / 1.0]  # -A * p / (p + 0.1)
    assert loss.item() == pytest.approx(sum(on_terms + off_terms) / 4, rel=1e-6)
    assert m["actor/ief_token_frac"] == 0.5 and m["actor/ief_prob"] == pytest.approx(0.475)
