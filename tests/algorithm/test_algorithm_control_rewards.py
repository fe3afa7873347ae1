"""The reward variants: verifier pass-through, the shuffled null control, the coin flip, the format reward."""

from __future__ import annotations

import numpy as np
import pytest

from icpo_core.algorithm import training_rewards
from icpo_core.config import AlgorithmParams


def _algo(reward: str, **kw) -> AlgorithmParams:
    return AlgorithmParams(n_off=0, reward=reward, **kw)


def test_verifier_passes_rewards_through_and_draws_nothing():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert training_rewards(_algo("verifier"), [1, 0, 1], ["a", "b", "c"], rng) == [1.0, 0.0, 1.0]
    assert rng.bit_generator.state == state  # the other streams of the step are not shifted


def test_shuffled_keeps_the_steps_rewards_and_breaks_their_link_to_correctness():
    verifier = [1.0] * 30 + [0.0] * 970  # sparse, as the strict regime's
    texts = [""] * len(verifier)
    out = training_rewards(_algo("shuffled"), verifier, texts, np.random.default_rng(3))
    assert sorted(out) == sorted(verifier)  # same sparsity and magnitude
    assert out != verifier
    # which rows are rewarded is unrelated to which were correct: about 3 % of the correct ones stay rewarded
    assert sum(out[:30]) <= 5
    again = training_rewards(_algo("shuffled"), verifier, texts, np.random.default_rng(3))
    assert out == again
    # an all-equal step stays all-equal: no group gets signal the verifier did not give the step
    assert training_rewards(_algo("shuffled"), [0.0] * 8, [""] * 8, np.random.default_rng(0)) == [0.0] * 8


def test_random_reward_is_a_seeded_coin_flip_at_rate_p_independent_of_correctness():
    texts = ["\\boxed{7}"] * 20000
    correct = [1.0] * 10000 + [0.0] * 10000
    flips = training_rewards(_algo("random"), correct, texts, np.random.default_rng(7))
    assert set(flips) == {0.0, 1.0}
    assert abs(np.mean(flips) - 0.5) < 0.02
    assert abs(np.mean(flips[:10000]) - np.mean(flips[10000:])) < 0.03
    again = training_rewards(_algo("random"), correct, texts, np.random.default_rng(7))
    other = training_rewards(_algo("random"), correct, texts, np.random.default_rng(8))
    assert flips == again and flips != other
    low = training_rewards(_algo("random", random_reward_p=0.1), correct, texts, np.random.default_rng(7))
    assert abs(np.mean(low) - 0.1) < 0.01


def test_format_reward_scores_the_box_not_the_answer():
    texts = ["so \\boxed{8}", "the answer is 8", "\\boxed{wrong}", "\\boxed{", ""]
    assert training_rewards(_algo("format"), [1, 1, 0, 0, 0], texts, np.random.default_rng(0)) == [
        1,
        0,
        1,
        0,
        0,
    ]


def test_unknown_reward_and_length_mismatch_are_errors():
    with pytest.raises(ValueError, match="reward 'coin' is not registered"):
        _algo("coin")
    with pytest.raises(ValueError, match="2 rewards for 1"):
        training_rewards(_algo("random"), [1.0, 0.0], ["x"], np.random.default_rng(0))
