"""plan_step: the one group step both engines call (which rows train, their rewards and flags, the metrics)."""

import math

import numpy as np
import pytest

from icpo_core.algorithm import StepMetrics, plan_step
from icpo_core.config import AlgorithmParams


def _algo(**kw) -> AlgorithmParams:
    base = {"n_on": 4, "n_off": 2, "errs": True, "delta": 1.0, "reward_shaping": False, "alpha": 1.0}
    return AlgorithmParams(**{**base, **kw})


def test_grpo_groups_are_the_on_policy_groups():
    algo = _algo(n_off=0, reward_shaping=True)
    plan = plan_step([[0, 1, 0, 0], [0, 0, 0, 0]], [[], []], algo, step=1, total_steps=4,
                     rng=np.random.default_rng(0))  # fmt: skip
    assert plan.bonus == 0.0  # no off-policy rows: no bonus even with reward_shaping
    for g, on in zip(plan.groups, [[0, 1, 0, 0], [0, 0, 0, 0]], strict=True):
        assert [(r.source, r.index, r.slot, r.reward, r.off_policy) for r in g.rows] == [
            ("on", i, i, float(x), False) for i, x in enumerate(on)
        ]
    m = plan.metrics
    assert set(m) == set(StepMetrics.ALL)
    assert m[StepMetrics.REWARD_ON_POLICY] == pytest.approx(1 / 8)
    assert m[StepMetrics.IEF_GENERATED] == 0 and m[StepMetrics.ACCEPT_RATE] == 0.0
    assert math.isnan(m[StepMetrics.REWARD_EXPERT_REGION]) and math.isnan(m[StepMetrics.IEF_REWARD])
    assert m[StepMetrics.GROUPS_WITH_SIGNAL] == 0.5 == m[StepMetrics.ON_POLICY_GROUPS_WITH_SIGNAL]


def test_errs_bonus_slots_and_metrics():
    algo = _algo(reward_shaping=True)
    plan = plan_step([[0, 0, 0, 0]], [[1, 0]], algo, step=2, total_steps=4, rng=np.random.default_rng(3))
    (g,) = plan.groups
    assert plan.bonus == pytest.approx(0.75)  # alpha * (1 - t/T), t = step - 1
    on = [r for r in g.rows if r.source == "on"]
    (off,) = g.accepted_off  # ERRS drops the wrong IEF row
    assert len(g.rows) == 4 and [r.source for r in g.rows] == ["on"] * 3 + ["off"]
    assert off.index == 0 and off.off_policy and off.reward == pytest.approx(1.75)
    assert off.slot == g.mix.replaced[0] and off.slot not in {r.slot for r in on}
    assert [r.slot for r in g.by_slot()] == [0, 1, 2, 3]
    m = plan.metrics
    assert m[StepMetrics.REWARD_EXPERT_REGION] == 1.0  # the verifier reward, not the shaped one
    assert m[StepMetrics.IEF_REWARD] == 0.5 and m[StepMetrics.ACCEPT_RATE] == 0.5
    assert m[StepMetrics.REWARD_OVERALL] == pytest.approx(1.75 / 4)
    assert m[StepMetrics.GROUPS_WITH_SIGNAL] == 1.0 and m[StepMetrics.ON_POLICY_GROUPS_WITH_SIGNAL] == 0.0


def test_released_switches_no_errs_constant_bonus_only_in_expert_region():
    algo = _algo(errs=False, reward_shaping=True, released_constant_bonus=True, alpha=0.5)
    plan = plan_step([[1, 1, 0, 0]], [[0, 1]], algo, step=4, total_steps=4, rng=np.random.default_rng(0))
    off = sorted(plan.groups[0].accepted_off, key=lambda r: r.index)
    assert [r.reward for r in off] == [
        0.0,
        1.5,
    ]  # both enter; the bonus (alpha, constant) only where R >= delta
    assert plan.metrics[StepMetrics.REWARD_EXPERT_REGION] == 0.5


def test_same_generator_state_same_plan_and_group_count_checked():
    algo = _algo()
    args = ([[0, 1, 0, 1], [0, 0, 0, 0]], [[1, 1], [1, 0]], algo)
    a = plan_step(*args, step=1, total_steps=2, rng=np.random.default_rng(7))
    b = plan_step(*args, step=1, total_steps=2, rng=np.random.default_rng(7))
    assert a == b
    with pytest.raises(ValueError, match="2 on-policy groups but 1 off-policy"):
        plan_step([[0] * 4, [0] * 4], [[1, 1]], algo, step=1, total_steps=2, rng=np.random.default_rng(0))
