"""Group-normalised advantages over the mixed group (paper section 3.4, the GRPO estimator)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch


def group_advantages(
    rewards: torch.Tensor,
    group_index: Sequence[Hashable],
    eps: float = 1e-6,
    norm_by_std: bool = True,
) -> torch.Tensor:
    """A_i = (R_i - mean(G)) / (std(G) + eps) per group G (paper section 3.4), one scalar per trajectory.

    Identical to verl's ``compute_grpo_outcome_advantage`` (unbiased std, eps added to the std, a single-member
    group gets mean 0 and std 1; ``norm_by_std=False`` is Dr.GRPO's mean-only version). What differs from GRPO is
    only the group: in ICPO it is the *mixed* group (on-policy rows plus accepted IEF rows, rewards including the
    expert bonus), so the IEF rows raise the group's mean and give signal where all on-policy rows fail.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (one scalar per trajectory), got shape {tuple(rewards.shape)}")
    if len(group_index) != rewards.shape[0]:
        raise ValueError(f"{len(group_index)} group ids for {rewards.shape[0]} rewards")
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(group_index):
        members.setdefault(g, []).append(i)
    out = rewards.detach().clone()
    with torch.no_grad():
        for rows in members.values():
            idx = torch.tensor(rows, dtype=torch.long)
            scores = rewards[idx]
            if len(rows) == 1:
                mean, std = torch.tensor(0.0), torch.tensor(1.0)
            else:
                mean, std = scores.mean(), scores.std()  # unbiased, as torch.std and verl
            out[idx] = (scores - mean) / (std + eps) if norm_by_std else scores - mean
    return out
