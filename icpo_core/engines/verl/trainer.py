"""``RayICPOTrainer``: verl's ``RayPPOTrainer`` with the ICPO actor loss and ICPO step metrics.

The recipe shape verl uses (a trainer subclass plus a task runner), but ``fit()`` is *not* copied: the IEF
rows, ERRS, bonus and prompt restore happen in :class:`~.manager.ICPOAgentLoopManager`, and GRPO advantages
over the mixed group are verl's own. Two hooks remain:

- ``init_workers``: installs :func:`~.losses.icpo_ppo_loss` on the actor workers with ``set_loss_fn``, for every
  run (verl's registered policy losses never see the per-row IEF mask; this loss reads ``icpo_ief``). GRPO runs
  get it too: with no off-policy row it is verl's clipped PPO loss, and it honours the algorithm keys stock
  verl has no knob for (``released_loss_agg``, ``clip_on_policy``), which verl's own loss would drop;
- ``_update_actor``: turns the loss's token sums into token means (:func:`~.losses.finalize_actor_metrics`),
  adds the manager's per-step metrics (``reward/*``, ``icpo/*``) and advantage statistics
  (``adv/*``, one value per trajectory) to what verl logs.
"""

from __future__ import annotations

from functools import partial

from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.utils.config import omega_conf_to_dataclass

from icpo_core.engines.verl.icpo_block import algorithm_from_config
from icpo_core.engines.verl.losses import finalize_actor_metrics, icpo_ppo_loss


def make_actor_loss(config):
    """The loss callable the actor workers run: ``icpo_ppo_loss`` bound to the actor config and the run's typed
    algorithm params (:func:`~.icpo_block.algorithm_from_config`): gamma, the released aggregation switch,
    ``clip_on_policy`` (LUFFY: false) and whether the run has off-policy rows (GRPO: none, so its batches carry
    no ``icpo_ief`` flag)."""
    actor_cfg = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    algo = algorithm_from_config(config.icpo)
    return partial(
        icpo_ppo_loss,
        config=actor_cfg,
        gamma=algo.gamma,
        released_loss_agg=algo.released_loss_agg,
        clip_on_policy=algo.clip_on_policy,
        off_policy_rows=algo.n_off > 0,
    )


class RayICPOTrainer(RayPPOTrainer):
    """ICPO (paper section 3) on verl; with ``icpo.n_off == 0`` it is verl's GRPO trainer with the project's loss
    (equal to verl's for GRPO, plus the algorithm keys verl lacks)."""

    def init_workers(self):
        super().init_workers()
        self.actor_rollout_wg.set_loss_fn(make_actor_loss(self.config))

    def _update_actor(self, batch):
        out = super()._update_actor(batch)
        metrics = finalize_actor_metrics(dict(out.meta_info.get("metrics", {})))
        metrics.update(getattr(self.async_rollout_manager, "last_metrics", None) or {})
        metrics.update(advantage_metrics(batch))
        out.meta_info["metrics"] = metrics
        return out


def advantage_metrics(batch) -> dict[str, float]:
    """``adv/mean``, ``adv/std``, ``adv/abs_max`` over trajectories (outcome advantages: one value per row)."""
    adv, mask = batch.batch["advantages"], batch.batch["response_mask"].float()
    per_row = (adv * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return {
        "adv/mean": float(per_row.mean()),
        "adv/std": float(per_row.std()) if per_row.numel() > 1 else 0.0,
        "adv/abs_max": float(per_row.abs().max()),
    }
