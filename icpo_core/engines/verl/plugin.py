"""``verl.plugins`` entry point (pyproject.toml): registers the ``icpo`` advantage estimator and policy loss.

verl imports every ``verl.plugins`` entry point at the end of ``import verl``, in the driver and in each Ray
worker, and swallows import errors (debug log only), so a test checks the names in a fresh interpreter.
With ``VERL_PLATFORM=cpu`` it also installs :mod:`.cpu_shims` (CI on machines without a GPU), so every
process verl starts gets the CPU platform. Idempotent: verl refuses to re-register a name to a *different* function object, which a reload of this
module would create, so an earlier registration of our own function (same module and name) is replaced.
"""

from __future__ import annotations

import os

from icpo_core.engines.verl import cpu_shims
from icpo_core.engines.verl.losses import NAME, icpo_advantage, icpo_policy_loss_fn


def _ours(fn: object, target: object) -> bool:
    return getattr(fn, "__module__", None) == getattr(target, "__module__", None) and getattr(
        fn, "__qualname__", None
    ) == getattr(target, "__qualname__", None)


def register() -> None:
    """Register (or re-register after a reload) ``icpo`` in verl's estimator and policy-loss registries."""
    from verl.trainer.ppo import core_algos

    current = core_algos.ADV_ESTIMATOR_REGISTRY.get(NAME)
    if current is not None and _ours(current, icpo_advantage):
        del core_algos.ADV_ESTIMATOR_REGISTRY[NAME]
    core_algos.register_adv_est(NAME)(icpo_advantage)
    core_algos.register_policy_loss(NAME)(icpo_policy_loss_fn)


register()
if os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu":
    cpu_shims.install()
