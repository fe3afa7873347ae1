"""The ICPO method (arXiv 2510.26519, section 3) as pure torch / numpy functions; both engines call these.

GRPO is the special case ``n_off == 0``: no IEF prompts, no mixing, an all-false IEF mask. One step's group
assembly (which rows train, their rewards and flags, the step's group metrics) is :func:`plan_step`.
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
from icpo_core.algorithm.step import (
    GroupPlan,
    StepMetrics,
    StepPlan,
    TrainedRow,
    plan_group,
    plan_step,
    step_bonus_for,
    step_metrics,
)

__all__ = [
    "Demo",
    "DemoPool",
    "GroupMix",
    "GroupPlan",
    "StepMetrics",
    "StepPlan",
    "TrainedRow",
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
    "plan_group",
    "plan_step",
    "released_icl_prompt",
    "shaped_ief_rewards",
    "step_bonus",
    "step_bonus_for",
    "step_metrics",
]
