"""One training step's group assembly (paper section 3.2-3.3) as one pure function both engines call.

Per prompt the engine hands over the verifier rewards of its N_on on-policy rows and of its off-policy rows (for
ICPO the N_off IEF rows sampled from [D; q]); :func:`plan_step` decides, for every group,

- which off-policy rows enter (ERRS, :func:`~icpo_core.algorithm.mixing.mix_group`) and which on-policy row each
  one replaces (the trained group keeps N_on members, as in GRPO),
- the reward each trained row is trained on (the annealed expert bonus of ICPO-dagger, :func:`step_bonus`,
  :func:`shaped_ief_rewards`),
- its off-policy flag (the loss shapes those tokens with f(p) = p / (p + gamma)),

and the step's group metrics under the names of :class:`StepMetrics`. What differs from GRPO: with no
off-policy rows (``n_off == 0``) every group is its on-policy group unchanged and the bonus is 0.

The engines keep only their data plumbing: the local engine trains each group as "kept on-policy rows, then
accepted off-policy rows" (:attr:`GroupPlan.rows`), verl puts each accepted row into the batch slot of the row it
replaces (:meth:`GroupPlan.by_slot`); both read the same plan. A new off-policy variant (where its rows come from,
whether ERRS applies, how its rewards are shaped) is one entry of :mod:`.variants`, for both engines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from icpo_core.algorithm.groups import GroupPlan
from icpo_core.algorithm.mixing import step_bonus
from icpo_core.algorithm.variants import off_policy_source

if TYPE_CHECKING:
    from icpo_core.config import AlgorithmParams


class StepMetrics:
    """The group metrics of one step: every engine logs them under these names (docs/architecture.md)."""

    REWARD_ON_POLICY = "reward/on_policy"  # mean verifier reward of all on-policy rows (before replacement)
    REWARD_EXPERT_REGION = "reward/expert_region"  # mean verifier reward of the accepted off-policy rows
    REWARD_OVERALL = "reward/overall"  # mean trained reward of the trained groups (bonus included)
    IEF_GENERATED = "icpo/ief_generated"  # off-policy rows generated
    IEF_ACCEPTED = "icpo/ief_accepted"  # off-policy rows that entered a group
    ACCEPT_RATE = "icpo/accept_rate"  # accepted / generated (0 when none generated)
    IEF_REWARD = "icpo/ief_reward"  # mean verifier reward of all off-policy rows, before ERRS
    BONUS = "icpo/bonus"  # the expert bonus of this step
    GROUPS_WITH_SIGNAL = "icpo/groups_with_signal"  # share of trained groups whose rewards differ
    ON_POLICY_GROUPS_WITH_SIGNAL = "icpo/on_policy_groups_with_signal"  # the same over on-policy rows only

    ALL = (
        REWARD_ON_POLICY,
        REWARD_EXPERT_REGION,
        REWARD_OVERALL,
        IEF_GENERATED,
        IEF_ACCEPTED,
        ACCEPT_RATE,
        IEF_REWARD,
        BONUS,
        GROUPS_WITH_SIGNAL,
        ON_POLICY_GROUPS_WITH_SIGNAL,
    )
    # NaN when the step has no row to average over; steps_<run>.jsonl stores them as null
    UNDEFINED_WHEN_EMPTY = (REWARD_EXPERT_REGION, IEF_REWARD)


@dataclass(frozen=True)
class StepPlan:
    """Every group of one step plus the step's bonus and group metrics (keys of :class:`StepMetrics`)."""

    groups: tuple[GroupPlan, ...]
    bonus: float
    metrics: dict[str, float]


def on_policy_rollouts(algo: AlgorithmParams) -> int:
    """On-policy rollouts generated per prompt (:meth:`OffPolicySource.rollouts_per_prompt`)."""
    return off_policy_source(algo).rollouts_per_prompt(algo)


def step_bonus_for(algo: AlgorithmParams, step: int, total_steps: int) -> float:
    """The expert bonus of 1-based ``step``: :func:`step_bonus` when reward shaping is on and the run has
    off-policy rows (ICPO-dagger; the released code's constant bonus with ``released_constant_bonus``), else 0."""
    return step_bonus(
        algo.alpha,
        step,
        total_steps,
        reward_shaping=algo.reward_shaping and algo.n_off > 0,
        constant=algo.released_constant_bonus,
    )


def plan_group(
    on_rewards: Sequence[float],
    off_rewards: Sequence[float],
    algo: AlgorithmParams,
    bonus: float,
    rng: np.random.Generator,
) -> GroupPlan:
    """One group, planned by the run's off-policy source (:mod:`.variants`, :mod:`.groups`): ICPO and its
    ablations replace on-policy rows with the ERRS-accepted off-policy rows (one ``rng`` draw per group);
    LUFFY appends its expert traces; GRPO's group is its on-policy rows."""
    return off_policy_source(algo).plan_group(on_rewards, off_rewards, algo, bonus, rng)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _has_signal(rewards: Sequence[float]) -> float:
    return float(max(rewards) != min(rewards)) if rewards else 0.0


def step_metrics(groups: Sequence[GroupPlan], bonus: float) -> dict[str, float]:
    """The group metrics of one step (:class:`StepMetrics`) from its plans."""
    on_all = [r for g in groups for r in g.on_rewards]
    off_all = [r for g in groups for r in g.off_rewards]
    trained = [r.reward for g in groups for r in g.rows]
    accepted_raw = [g.off_rewards[r.index] for g in groups for r in g.accepted_off]
    n_gen, n_acc = len(off_all), len(accepted_raw)
    m = StepMetrics
    return {
        m.REWARD_ON_POLICY: _mean(on_all),
        m.REWARD_EXPERT_REGION: _mean(accepted_raw),
        m.REWARD_OVERALL: _mean(trained),
        m.IEF_GENERATED: float(n_gen),
        m.IEF_ACCEPTED: float(n_acc),
        m.ACCEPT_RATE: n_acc / n_gen if n_gen else 0.0,
        m.IEF_REWARD: _mean(off_all),
        m.BONUS: float(bonus),
        m.GROUPS_WITH_SIGNAL: _mean([_has_signal([r.reward for r in g.rows]) for g in groups]),
        m.ON_POLICY_GROUPS_WITH_SIGNAL: _mean([_has_signal(g.on_rewards) for g in groups]),
    }


def plan_step(
    on_rewards: Sequence[Sequence[float]],
    off_rewards: Sequence[Sequence[float]],
    algo: AlgorithmParams,
    *,
    step: int,
    total_steps: int,
    rng: np.random.Generator,
) -> StepPlan:
    """The trained groups of one step: ``on_rewards[g]`` / ``off_rewards[g]`` are group g's verifier rewards.

    Groups are planned in the given order, each drawing its replacement from ``rng`` (so the draws, and the
    trained rows, are the same whichever engine calls this with the same generator state). ``step`` is 1-based
    (verl's ``global_steps``), ``total_steps`` the run's T of the annealed bonus.
    """
    if len(on_rewards) != len(off_rewards):
        raise ValueError(f"{len(on_rewards)} on-policy groups but {len(off_rewards)} off-policy groups")
    bonus = step_bonus_for(algo, step, total_steps)
    groups = tuple(
        plan_group(on, off, algo, bonus, rng) for on, off in zip(on_rewards, off_rewards, strict=True)
    )
    return StepPlan(groups=groups, bonus=bonus, metrics=step_metrics(groups, bonus))
