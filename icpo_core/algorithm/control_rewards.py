"""Reward controls: the training reward replaced by one that ignores correctness (spurious-reward controls).

"Spurious Rewards: Rethinking Training Signals in RLVR" (Shao et al., 2025) shows large RLVR gains on some models
from rewards unrelated to correctness. A run with such a reward tells how much of a method's gain over the base
model is not from learning to be right (format, length, sampling-temperature effects, the optimizer's drift):

- ``random``: a coin flip per trajectory, 1 with probability ``p`` (``algorithm.random_reward_p``, default 0.5,
  the paper's Bernoulli(0.5) choice: it maximises the share of groups with signal and does not depend on the base
  model's accuracy), drawn from the step's own seeded generator, so a step is reproducible;
- ``format``: 1 when the response has a ``\\boxed{}`` answer (:func:`icpo_core.grading.last_boxed`), whatever it
  says: the share of a gain that learning the answer format alone explains.

Everything downstream (groups, advantages, the loss) is unchanged: a control is GRPO (or ICPO) fed a different
reward. What differs from GRPO: only the reward.

Both engines replace the rewards at the same point (after grading, before :func:`~icpo_core.algorithm.plan_step`)
with the same generator, :func:`control_rng` (1-based step), over the step's trajectories in the same order
(prompt by prompt: its on-policy rows, then its off-policy rows), so the i-th trajectory of a step gets the same
coin flip on either engine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from icpo_core.algorithm.step import step_seed
from icpo_core.grading import last_boxed

CONTROL_STREAM = 3  # the step_seed stream of the control rewards (1: mixing / demos, 2: sampling)


def control_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of step ``step``'s (1-based) control rewards: independent of every other draw of the step."""
    return np.random.default_rng(step_seed(seed, step, CONTROL_STREAM))


def control_rewards(
    verifier_rewards: Sequence[float],
    responses: Sequence[str],
    mode: str,
    rng: np.random.Generator,
    p: float = 0.5,
) -> list[float]:
    """The training rewards under ``algorithm.reward`` = ``mode``: ``verifier`` returns the verifier's rewards
    unchanged (and draws nothing from ``rng``), ``random`` draws one Bernoulli(``p``) per trajectory, ``format``
    scores the presence of a ``\\boxed{}`` answer."""
    if len(verifier_rewards) != len(responses):
        raise ValueError(f"{len(verifier_rewards)} rewards for {len(responses)} responses")
    if mode == "verifier":
        return [float(r) for r in verifier_rewards]
    if mode == "random":
        return [float(x) for x in (rng.random(len(responses)) < p)]
    if mode == "format":
        return [0.0 if last_boxed(text) is None else 1.0 for text in responses]
    raise ValueError(f"unknown reward mode {mode!r} (algorithm.reward: verifier | random | format)")
