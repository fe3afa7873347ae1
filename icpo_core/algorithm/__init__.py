"""The ICPO method (arXiv 2510.26519, section 3) as pure functions; both engines call these.

GRPO is the special case ``n_off == 0``: no off-policy rows, no mixing. One step's group assembly (which rows
train, their rewards and flags, the step's group metrics) is :func:`plan_step`; the method variants (where
off-policy rows come from, which reward trains) are the named entries of :mod:`.variants`. This package
namespace is torch-free; the torch maths is in :mod:`.advantages` and :mod:`.losses`.
"""

from icpo_core.algorithm.demos import (
    Demo,
    DemoPool,
    build_ief_messages,
    build_ief_prompt,
    released_icl_prompt,
)
from icpo_core.algorithm.groups import GroupPlan, TrainedRow
from icpo_core.algorithm.mixing import GroupMix, annealed_bonus, mix_group, shaped_ief_rewards, step_bonus
from icpo_core.algorithm.seeding import step_seed
from icpo_core.algorithm.step import (
    StepMetrics,
    StepPlan,
    on_policy_rollouts,
    plan_group,
    plan_step,
    step_bonus_for,
    step_metrics,
)
from icpo_core.algorithm.variants import (
    OffPolicySource,
    RewardVariant,
    method_label,
    method_name,
    off_policy_source,
    register_off_policy,
    register_reward,
    reward_variant,
    training_rewards,
)

__all__ = [
    "Demo",
    "DemoPool",
    "GroupMix",
    "GroupPlan",
    "OffPolicySource",
    "RewardVariant",
    "StepMetrics",
    "StepPlan",
    "TrainedRow",
    "annealed_bonus",
    "build_ief_messages",
    "build_ief_prompt",
    "method_label",
    "method_name",
    "mix_group",
    "off_policy_source",
    "on_policy_rollouts",
    "plan_group",
    "plan_step",
    "register_off_policy",
    "register_reward",
    "released_icl_prompt",
    "reward_variant",
    "shaped_ief_rewards",
    "step_bonus",
    "step_bonus_for",
    "step_metrics",
    "step_seed",
    "training_rewards",
]
