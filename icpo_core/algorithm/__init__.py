"""The ICPO method (arXiv 2510.26519, section 3) as pure torch / numpy functions; both engines call these.

GRPO is the special case ``n_off == 0``: no IEF prompts, no mixing, an all-false IEF mask.
"""

from icpo_core.algorithm.advantages import group_advantages
from icpo_core.algorithm.demos import Demo, DemoPool, build_ief_messages
from icpo_core.algorithm.losses import (
    aggregate_loss,
    compute_actor_loss,
    effective_entropy_coeff,
    entropy_from_logits,
    icpo_policy_loss,
    kl_loss,
)
from icpo_core.algorithm.mixing import GroupMix, annealed_bonus, mix_group, shaped_ief_rewards

__all__ = [
    "Demo",
    "DemoPool",
    "GroupMix",
    "aggregate_loss",
    "annealed_bonus",
    "build_ief_messages",
    "compute_actor_loss",
    "effective_entropy_coeff",
    "entropy_from_logits",
    "group_advantages",
    "icpo_policy_loss",
    "kl_loss",
    "mix_group",
    "shaped_ief_rewards",
]
