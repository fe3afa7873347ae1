"""How one prompt's trained group is assembled from its on-policy and off-policy rows (paper section 3.2-3.3).

Two placements exist, and each off-policy source of :mod:`.variants` names one:

- :func:`replacing_group` (ICPO and its ablations): ERRS keeps an off-policy row when ``R >= delta`` (every row
  with ``errs`` off), each kept row replaces a random on-policy row, so the group keeps N_on members as in
  GRPO; kept rows in the expert region get the step's bonus (ICPO-dagger).
- :func:`appending_group` (LUFFY): every off-policy row (an expert trace) joins the ``n_on - n_off`` on-policy
  rows in the slots after them, with its verifier reward, no bonus, nothing drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from icpo_core.algorithm.mixing import GroupMix, mix_group, shaped_ief_rewards

if TYPE_CHECKING:
    from icpo_core.config import AlgorithmParams

Source = Literal["on", "off"]


@dataclass(frozen=True)
class TrainedRow:
    """One row of a trained group.

    ``source`` and ``index`` name the row in the rewards handed to the planner (``on``: the i-th on-policy row,
    ``off``: the j-th off-policy row); ``slot`` is its place in the group (an on-policy row keeps its own index,
    a replacing off-policy row takes the index of the on-policy row it replaces, an appended one the next free
    slot).
    """

    source: Source
    index: int
    slot: int
    reward: float
    off_policy: bool


@dataclass(frozen=True)
class GroupPlan:
    """One prompt's trained group: :attr:`rows` is kept on-policy rows (in order), then accepted off-policy rows."""

    rows: tuple[TrainedRow, ...]
    mix: GroupMix
    on_rewards: tuple[float, ...]
    off_rewards: tuple[float, ...]

    def by_slot(self) -> list[TrainedRow]:
        """The rows in slot order: the group with each accepted row in its replaced row's place."""
        return sorted(self.rows, key=lambda r: r.slot)

    @property
    def accepted_off(self) -> list[TrainedRow]:
        return [r for r in self.rows if r.source == "off"]


def replacing_group(
    on_rewards: Sequence[float],
    off_rewards: Sequence[float],
    algo: AlgorithmParams,
    bonus: float,
    rng: np.random.Generator,
) -> GroupPlan:
    """ICPO's group: ERRS + replacement (:func:`mix_group`, one ``rng`` draw per group), then trained rewards.

    An off-policy row enters when ``R >= delta`` (every row with ``errs`` off: the released code and the -ERRS
    ablation) and replaces a random on-policy row; accepted rows in the expert region get ``bonus`` (section
    3.3). On-policy rows keep their reward. With no off-policy rows this is GRPO's group, unchanged.
    """
    on_r = tuple(float(r) for r in on_rewards)
    off_r = tuple(float(r) for r in off_rewards)
    mix = mix_group(on_r, off_r, errs=algo.errs, delta=algo.delta, rng=rng)
    off_trained = shaped_ief_rewards(off_r, mix.ief_keep, bonus, algo.delta)
    rows = [TrainedRow("on", i, i, on_r[i], False) for i in mix.on_keep]
    rows += [
        TrainedRow("off", j, slot, r, True)
        for j, slot, r in zip(mix.ief_keep, mix.replaced, off_trained, strict=True)
    ]
    return GroupPlan(rows=tuple(rows), mix=mix, on_rewards=on_r, off_rewards=off_r)


def appending_group(
    on_rewards: Sequence[float],
    off_rewards: Sequence[float],
    algo: AlgorithmParams,
    bonus: float,
    rng: np.random.Generator,
) -> GroupPlan:
    """LUFFY's group (arXiv 2504.14945): the ``n_on - n_off`` rollouts, then the ``n_off`` expert traces in the
    slots after them, every row trained with its verifier reward; ``bonus`` and ``rng`` are not used (the
    signature is the placement's contract)."""
    on_r = tuple(float(r) for r in on_rewards)
    off_r = tuple(float(r) for r in off_rewards)
    n = len(on_r)
    mix = GroupMix(on_keep=list(range(n)), ief_keep=list(range(len(off_r))), replaced=[])
    rows = [TrainedRow("on", i, i, on_r[i], False) for i in range(n)]
    rows += [TrainedRow("off", j, n + j, off_r[j], True) for j in range(len(off_r))]
    return GroupPlan(rows=tuple(rows), mix=mix, on_rewards=on_r, off_rewards=off_r)
