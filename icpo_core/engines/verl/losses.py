"""The ICPO advantage estimator and losses in verl's calling conventions (verl 0.9.1).

The maths is :mod:`icpo_core.algorithm`; this module only adapts signatures:

- :func:`icpo_advantage`: verl's advantage-estimator interface over :func:`group_advantages` (GRPO over the
  mixed group, keyed by ``uid``);
- :func:`icpo_policy_loss_fn`: verl's policy-loss interface plus a keyword ``ief_mask``. verl's stock
  ``ppo_loss`` never passes that mask, so without it the function refuses to run instead of silently training
  IEF rows as on-policy ones;
- :func:`icpo_ppo_loss`: a mirror of verl 0.9.1's ``workers.utils.losses.ppo_loss`` that also reads the
  ``icpo_ief`` row flag; ``RayICPOTrainer`` installs it on the actor workers with ``set_loss_fn``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from icpo_core.algorithm import aggregate_loss, group_advantages, icpo_policy_loss, kl_loss

IEF_KEY = "icpo_ief"
NAME = "icpo"


def icpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Any = None,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper section 3.4: GRPO normalisation over the mixed group (same numbers as verl's ``grpo``)."""
    if config is not None:
        norm_adv_by_std_in_grpo = bool(config.get("norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo))
    adv = group_advantages(
        token_level_rewards.sum(-1), list(index), eps=epsilon, norm_by_std=norm_adv_by_std_in_grpo
    )
    adv = adv.unsqueeze(-1) * response_mask
    return adv, adv


def icpo_policy_loss_fn(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
    *,
    ief_mask: torch.Tensor | None = None,
    gamma: float = 0.1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Paper section 3.4 loss (dual-clip PPO on-policy, ``-A p/(p+gamma)`` on IEF tokens), verl's signature."""
    if ief_mask is None:
        raise ValueError(
            "the 'icpo' policy loss needs the per-row IEF mask, which verl's stock ppo_loss does not pass; "
            "launch with `python -m icpo_core.engines.verl.launcher` (RayICPOTrainer installs icpo_ppo_loss)"
        )
    if rollout_is_weights is not None:
        raise ValueError(
            "rollout correction weights are not supported with ICPO: IEF rows' rollout log-probs are "
            "demo-conditioned; keep algorithm.rollout_correction off"
        )
    clip = getattr(config, "clip_ratio", 0.2) if config is not None else 0.2
    low = getattr(config, "clip_ratio_low", None) if config is not None else None
    high = getattr(config, "clip_ratio_high", None) if config is not None else None
    info = dict(getattr(config, "global_batch_info", {}) or {}) if config is not None else {}
    return icpo_policy_loss(
        log_prob,
        old_log_prob,
        advantages,
        response_mask,
        ief_mask,
        clip_ratio_low=low if low is not None else clip,
        clip_ratio_high=high if high is not None else clip,
        clip_ratio_c=config.get("clip_ratio_c", 3.0) if config is not None else 3.0,
        gamma=gamma,
        loss_agg_mode=loss_agg_mode,
        batch_num_tokens=info.get("batch_num_tokens"),
        global_batch_size=info.get("global_batch_size"),
        dp_size=info.get("dp_size", 1) or 1,
        loss_scale_factor=info.get("loss_scale_factor"),
    )


def icpo_ppo_loss(config: Any, model_output: dict, data: Any, dp_group: Any = None, gamma: float = 0.1):
    """verl 0.9.1's ``ppo_loss`` with the ICPO policy term: reads ``icpo_ief`` and passes it as ``ief_mask``.

    Pinned to verl 0.9.1 (``verl.workers.utils.losses.ppo_loss``): same global-batch bookkeeping, same
    entropy and KL terms (``actor.entropy_coeff``, ``actor.use_kl_loss`` / ``kl_loss_type`` / ``kl_loss_coef``),
    over every response token, IEF ones included, as the paper and the released code do.
    """
    from verl.utils.metric import AggregationType, Metric
    from verl.workers.utils.padding import no_padding_2_padding

    log_prob = no_padding_2_padding(model_output["log_probs"], data)
    entropy = model_output.get("entropy")
    if entropy is not None:
        entropy = no_padding_2_padding(entropy, data)

    config.global_batch_info["dp_size"] = data["dp_size"]
    config.global_batch_info["batch_num_tokens"] = data["batch_num_tokens"]
    config.global_batch_info["global_batch_size"] = data["global_batch_size"]
    config.global_batch_info["loss_scale_factor"] = config.loss_scale_factor
    global_norm = (
        data["dp_size"] > 1
        or data["batch_num_tokens"] is not None
        or data["global_batch_size"] is not None
        or config.loss_scale_factor is not None
    )
    agg_type = AggregationType.SUM if global_norm else AggregationType.MEAN

    fields = ["response_mask", "old_log_probs", "advantages", IEF_KEY]
    if "ref_log_prob" in data:
        fields.append("ref_log_prob")
    data = data.select(*fields).to_padded_tensor()
    response_mask = data["response_mask"].to(bool)
    info = {k: v for k, v in config.global_batch_info.items() if k != "loss_scale_factor"}

    pg_loss, pg_metrics = icpo_policy_loss_fn(
        old_log_prob=data["old_log_probs"],
        log_prob=log_prob,
        advantages=data["advantages"],
        response_mask=response_mask,
        loss_agg_mode=config.loss_agg_mode,
        config=config,
        ief_mask=data[IEF_KEY].reshape(-1).bool(),
        gamma=gamma,
    )
    metrics: dict[str, Any] = dict(Metric.from_dict(pg_metrics, aggregation=AggregationType.MEAN))
    metrics["actor/pg_loss"] = Metric(value=pg_loss, aggregation=agg_type)
    policy_loss = pg_loss
    if entropy is not None:
        ent = aggregate_loss(
            entropy,
            response_mask,
            config.loss_agg_mode,
            loss_scale_factor=config.loss_scale_factor,
            **info,
        )
        policy_loss = policy_loss - config.entropy_coeff * ent
        metrics["actor/entropy_loss"] = Metric(value=ent, aggregation=agg_type)
    if config.use_kl_loss:
        kld = kl_loss(log_prob, data["ref_log_prob"], config.kl_loss_type)
        kl = aggregate_loss(
            kld, response_mask, config.loss_agg_mode, loss_scale_factor=config.loss_scale_factor, **info
        )
        policy_loss = policy_loss + kl * config.kl_loss_coef
        metrics["kl_loss"] = Metric(value=kl, aggregation=agg_type)
        metrics["kl_coef"] = config.kl_loss_coef
    return policy_loss, metrics
