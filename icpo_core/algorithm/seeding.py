"""Seeds per (run seed, step, purpose), shared by both engines so a step's draws do not depend on earlier steps."""

from __future__ import annotations

import numpy as np

# The streams of one step's randomness (the third component of :func:`step_seed`).
MIXING_STREAM = 1  # demo draws and the replaced on-policy slots
SAMPLING_STREAM = 2  # the rollout engine's sampling seed
CONTROL_STREAM = 3  # the reward variants' draws (coin flips, shuffles)


def step_seed(seed: int, step: int, stream: int) -> int:
    """A 63-bit seed per (run seed, step, purpose): a step's randomness does not depend on earlier steps."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(2, np.uint64)[0] >> np.uint64(1))
