"""The spurious-reward controls: the coin flip's rate and seeding, the format reward, verifier pass-through."""

from __future__ import annotations

import numpy as np
import pytest

from icpo_core.algorithm.control_rewards import control_rewards


def test_verifier_mode_passes_rewards_through_and_draws_nothing():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert control_rewards([1, 0, 1], ["a", "b", "c"], "verifier", rng) == [1.0, 0.0, 1.0]
    assert rng.bit_generator.state == state  # the other streams of the step are not shifted


def test_random_reward_is_a_seeded_coin_flip_at_rate_p_independent_of_correctness():
    texts = ["\\boxed{7}"] * 20000
    correct = [1.0] * 10000 + [0.0] * 10000
    flips = control_rewards(correct, texts, "random", np.random.default_rng(7), p=0.5)
    assert set(flips) == {0.0, 1.0}
    assert abs(np.mean(flips) - 0.5) < 0.02
    # unrelated to the verifier: the same rate on correct and on wrong rows
    assert abs(np.mean(flips[:10000]) - np.mean(flips[10000:])) < 0.03
    again = control_rewards(correct, texts, "random", np.random.default_rng(7), p=0.5)
    other = control_rewards(correct, texts, "random", np.random.default_rng(8), p=0.5)
    assert flips == again and flips != other
    low = control_rewards(correct, texts, "random", np.random.default_rng(7), p=0.1)
    assert abs(np.mean(low) - 0.1) < 0.01


def test_format_reward_scores_the_box_not_the_answer():
    texts = ["so \\boxed{8}", "the answer is 8", "\\boxed{wrong}", "\\boxed{", ""]
    assert control_rewards([1, 1, 0, 0, 0], texts, "format", np.random.default_rng(0)) == [1, 0, 1, 0, 0]


def test_bad_mode_and_length_mismatch_are_errors():
    with pytest.raises(ValueError, match="algorithm.reward"):
        control_rewards([1.0], ["x"], "coin", np.random.default_rng(0))
    with pytest.raises(ValueError, match="2 rewards for 1"):
        control_rewards([1.0, 0.0], ["x"], "random", np.random.default_rng(0))
