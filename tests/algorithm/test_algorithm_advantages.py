"""Group advantages: hand-computed cases and equality with verl's GRPO estimator."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icpo_core.algorithm import mix_group, shaped_ief_rewards
from icpo_core.algorithm.advantages import group_advantages


def _verl_adv(rewards: torch.Tensor, index, eps=1e-6, norm=True) -> torch.Tensor:
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    T = 3
    tok = torch.zeros(len(rewards), T)
    tok[:, -1] = rewards
    adv, _ = compute_grpo_outcome_advantage(
        tok,
        torch.ones(len(rewards), T),
        np.array(index, dtype=object),
        epsilon=eps,
        norm_adv_by_std_in_grpo=norm,
    )
    return adv[:, 0]


def test_hand_computed():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), ["a"] * 4)
    std = np.std([1, 0, 0, 0], ddof=1)  # unbiased: 0.5
    assert adv.tolist() == pytest.approx(
        [0.75 / (std + 1e-6), -0.25 / (std + 1e-6), -0.25 / (std + 1e-6), -0.25 / (std + 1e-6)]
    )
    # all-equal rewards: zero advantage (no signal), as in GRPO
    assert group_advantages(torch.ones(4), [0] * 4).abs().max() == 0
    # single member: mean 0, std 1
    assert group_advantages(torch.tensor([2.0]), ["x"]).item() == pytest.approx(2.0 / (1 + 1e-6))
    # Dr.GRPO: mean only
    assert group_advantages(torch.tensor([1.0, 0.0]), [0, 0], norm_by_std=False).tolist() == [0.5, -0.5]


def test_errors():
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.ones(2, 2), [0, 0])
    with pytest.raises(ValueError, match="group ids"):
        group_advantages(torch.ones(3), [0, 0])


def test_icpo_signal_where_grpo_has_none():
    """All on-policy rows wrong: GRPO gets zero advantage; one accepted IEF row gives the group signal."""
    on = [0.0] * 8
    assert group_advantages(torch.tensor(on), [0] * 8).abs().max() == 0
    mix = mix_group(on, [1.0], errs=True, delta=1.0, rng=np.random.default_rng(0))
    rewards = [on[i] for i in mix.on_keep] + shaped_ief_rewards([1.0], mix.ief_keep, 0.0, 1.0)
    adv = group_advantages(torch.tensor(rewards), [0] * 8)
    assert adv[-1] > 0 and (adv[:-1] < 0).all()


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    seed=st.integers(0, 2**31),
    binary=st.booleans(),
    norm=st.booleans(),
)
def test_equals_verl_on_random_groups(sizes, seed, binary, norm):
    rng = np.random.default_rng(seed)
    index = [f"g{g}" for g, n in enumerate(sizes) for _ in range(n)]
    rng.shuffle(index)  # groups need not be contiguous
    r = (
        rng.integers(0, 2, len(index)).astype(np.float32)
        if binary
        else rng.normal(size=len(index)).astype(np.float32)
    )
    rewards = torch.from_numpy(r)
    ours = group_advantages(rewards, index, eps=1e-6, norm_by_std=norm)
    theirs = _verl_adv(rewards.clone(), index, norm=norm)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 9), min_size=1, max_size=5),
    values=st.lists(st.sampled_from([0.0, 1.0, 1.5, 2.0]), min_size=5, max_size=5),
)
def test_all_equal_rewards_give_no_signal(sizes, values):
    """A group whose rewards are all equal (all right or all wrong) contributes zero advantage, as in GRPO.

    Exact for rewards a float32 mean reproduces exactly (binary rewards, binary + a dyadic bonus). For other
    values the float32 mean can be an ulp off, and (R - mean) / (std + 1e-6) turns that into noise of order
    0.1: verl's estimator does the same (test_equals_verl_on_random_groups covers such values).
    """
    rewards = torch.tensor([values[g] for g, n in enumerate(sizes) for _ in range(n)], dtype=torch.float32)
    index = [g for g, n in enumerate(sizes) for _ in range(n)]
    assert group_advantages(rewards, index).abs().max() == 0
