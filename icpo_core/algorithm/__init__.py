"""The ICPO method (arXiv 2510.26519, section 3) as pure torch / numpy functions; both engines call these.

GRPO is the special case ``n_off == 0``: no IEF prompts, no mixing, an all-false IEF mask.
"""

from icpo_core.algorithm.advantages import group_advantages
from icpo_core.algorithm.demos import (
    Demo,
    DemoPool,
    build_ief_messages,
    build_ief_prompt,
    released_icl_prompt,
)
from icpo_core.algorithm.losses import (
    aggregate_loss,
    compute_actor_loss,
    effective_entropy_coeff,
    entropy_from_logits,
    icpo_policy_loss,
    kl_loss,
    micro_batch_normalisation,
)
from icpo_core.algorithm.mixing import GroupMix, annealed_bonus, mix_group, shaped_ief_rewards, step_bonus

__all__ = [
    "Demo",
    "DemoPool",
    "GroupMix",
    "aggregate_loss",
    "annealed_bonus",
    "build_ief_messages",
    "build_ief_prompt",
    "compute_actor_loss",
    "effective_entropy_coeff",
    "entropy_from_logits",
    "group_advantages",
    "icpo_policy_loss",
    "kl_loss",
    "micro_batch_normalisation",
    "mix_group",
    "released_icl_prompt",
    "shaped_ief_rewards",
    "step_bonus",
]
