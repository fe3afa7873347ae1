"""The training rewards of each reward variant: the verifier's, or a control that ignores correctness.

"Spurious Rewards: Rethinking Training Signals in RLVR" (Shao et al., 2025) shows large RLVR gains on some models
from rewards unrelated to correctness. A run with such a reward tells how much of a method's gain over the base
model is not from learning to be right:

- :func:`shuffled_rewards`: the step's verifier rewards permuted across the step's trajectories. It keeps the real
  reward's sparsity and magnitude (the share of rewarded rows, and so roughly the share of groups with signal)
  and breaks its link to correctness: the null control of DESIGN section 10;
- :func:`random_rewards`: a coin flip per trajectory, 1 with probability ``algorithm.random_reward_p`` (the
  paper's Bernoulli(0.5)); it gives almost every group signal, which the real reward does not;
- :func:`format_rewards`: 1 when the response has a ``\\boxed{}`` answer, whatever it says.

Every function takes the step's verifier rewards and responses in the engines' common order (prompt by prompt:
its on-policy rows, then its off-policy rows) and the step's generator :func:`control_rng` (1-based step), so the
i-th trajectory of a step gets the same reward on either engine. Groups, advantages and the loss are unchanged:
what differs from GRPO is only the reward. :mod:`.variants` registers them by name (``algorithm.reward``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from icpo_core.algorithm.seeding import CONTROL_STREAM, step_seed
from icpo_core.grading import last_boxed

if TYPE_CHECKING:
    from icpo_core.config import AlgorithmParams


def control_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of step ``step``'s (1-based) reward draws: independent of every other draw of the step."""
    return np.random.default_rng(step_seed(seed, step, CONTROL_STREAM))


def verifier_rewards(
    verifier: Sequence[float], responses: Sequence[str], rng: np.random.Generator, algo: AlgorithmParams
) -> list[float]:
    """The verifier's rewards unchanged (nothing drawn from ``rng``)."""
    return [float(r) for r in verifier]


def shuffled_rewards(
    verifier: Sequence[float], responses: Sequence[str], rng: np.random.Generator, algo: AlgorithmParams
) -> list[float]:
    """The step's verifier rewards in a random order over its trajectories (one permutation from ``rng``)."""
    return [float(verifier[int(i)]) for i in rng.permutation(len(verifier))]


def random_rewards(
    verifier: Sequence[float], responses: Sequence[str], rng: np.random.Generator, algo: AlgorithmParams
) -> list[float]:
    """One Bernoulli(``algo.random_reward_p``) draw per trajectory from ``rng``."""
    return [float(x) for x in (rng.random(len(verifier)) < algo.random_reward_p)]


def format_rewards(
    verifier: Sequence[float], responses: Sequence[str], rng: np.random.Generator, algo: AlgorithmParams
) -> list[float]:
    """1 for a response with a ``\\boxed{}`` answer, else 0 (nothing drawn from ``rng``)."""
    return [0.0 if last_boxed(text) is None else 1.0 for text in responses]
