"""The mixed group of ICPO (paper section 3.2-3.3): ERRS, replacement, annealed expert bonus.

Per prompt, N_on on-policy and N_off IEF trajectories are sampled. Expert Region Reject Sampling (ERRS) keeps
an IEF trajectory only if its reward reaches the threshold delta (we use ``R >= delta``; the paper writes
``R > delta``, see :func:`mix_group`); each accepted one replaces a randomly chosen
on-policy trajectory of its group, a rejected one is dropped. The trained group therefore always has N_on
members, exactly as in GRPO (GRPO is the case with no IEF rows, where nothing is replaced).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class GroupMix:
    """How one group is assembled. Row ids index the on-policy and IEF reward lists given to :func:`mix_group`.

    The trained group is ``on_keep`` (on-policy rows, in order) followed by ``ief_keep`` (accepted IEF rows);
    ``len(on_keep) + len(ief_keep) == n_on``.
    """

    on_keep: list[int]
    ief_keep: list[int]
    replaced: list[int]
    ief_rejected: list[int] = field(default_factory=list)

    @property
    def n_accepted(self) -> int:
        return len(self.ief_keep)

    @property
    def n_generated(self) -> int:
        return len(self.ief_keep) + len(self.ief_rejected)


def mix_group(
    on_rewards: Sequence[float],
    ief_rewards: Sequence[float],
    *,
    errs: bool,
    delta: float,
    rng: np.random.Generator,
) -> GroupMix:
    """ERRS + replacement for one prompt (paper section 3.2, "Expert Region Reject Sampling").

    The paper writes the expert region as ``R(tau) > delta`` with delta = 1.0; with binary rewards that literal
    reading accepts nothing, so we accept ``R >= delta`` (with delta = 1: exactly the correct answers). With
    ``errs=False`` (the released code, which has no ERRS at all, and the "-ERRS" ablation) every one is accepted. Accepted rows replace on-policy rows chosen uniformly at random
    without replacement (seeded by ``rng``); rejected rows are dropped and contribute nothing to the loss.
    Differs from GRPO only when ``ief_rewards`` is non-empty; with no IEF rows the group is the on-policy group.
    """
    n_on = len(on_rewards)
    if len(ief_rewards) > n_on:
        raise ValueError(
            f"{len(ief_rewards)} IEF trajectories for a group of {n_on}: accepted ones replace on-policy "
            "ones, so n_off must be <= n_on"
        )
    accepted = [j for j, r in enumerate(ief_rewards) if not errs or float(r) >= delta]
    rejected = [j for j in range(len(ief_rewards)) if j not in accepted]
    replaced = sorted(int(i) for i in rng.choice(n_on, size=len(accepted), replace=False))
    gone = set(replaced)
    on_keep = [i for i in range(n_on) if i not in gone]
    return GroupMix(on_keep=on_keep, ief_keep=accepted, replaced=replaced, ief_rejected=rejected)


def annealed_bonus(alpha: float, step: int, total_steps: int, constant: bool = False) -> float:
    """The expert bonus of annealed reward shaping (paper section 3.3, ICPO-dagger): ``alpha * (1 - t/T)``.

    It is alpha at t = 0 and 0 at t = T (clamped at 0 beyond T). ``constant=True`` returns alpha at every step:
    the released code never advances t, so its bonus stays +alpha for the whole run. GRPO has no bonus.
    """
    if constant:
        return float(alpha)
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    return float(alpha) * max(0.0, 1.0 - step / total_steps)


def step_bonus(
    alpha: float, global_step: int, total_steps: int, *, reward_shaping: bool, constant: bool = False
) -> float:
    """The expert bonus of training step ``global_step`` (1-based, verl's ``global_steps``), for both engines.

    The paper's ``alpha * (1 - t/T)`` with ``t = global_step - 1``: step 1 gets the full alpha, step T gets
    alpha / T. This is verl's counter convention, and what the released code would have computed had its step
    counter been set (it never is: ``constant``). 0 when ``reward_shaping`` is off (ICPO without RS, GRPO).
    The local engine and the verl manager both call this, so a run's bonus schedule does not depend on the
    engine, and a resumed run (which restarts at ``global_step = last saved + 1``) continues the same schedule.
    """
    if not reward_shaping:
        return 0.0
    if global_step < 1:
        raise ValueError(f"global_step is 1-based, got {global_step}")
    return annealed_bonus(alpha, global_step - 1, total_steps, constant=constant)


def shaped_ief_rewards(
    ief_rewards: Sequence[float], ief_keep: Sequence[int], bonus: float, delta: float
) -> list[float]:
    """Rewards of the accepted IEF rows (in ``ief_keep`` order) with the expert bonus (paper eq. for RS).

    The bonus goes to accepted rows in the expert region (``R >= delta``). With ERRS on that is every accepted
    row; with ERRS off it matches the released code, which gave the bonus only to correct IEF answers.
    """
    out = []
    for j in ief_keep:
        r = float(ief_rewards[j])
        out.append(r + bonus if r >= delta else r)
    return out
