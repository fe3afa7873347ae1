"""The ICPO advantage estimator and losses in verl's calling conventions (verl 0.9.1).

The maths is :mod:`icpo_core.algorithm`; this module only adapts signatures:

- :func:`icpo_advantage`: verl's advantage-estimator interface over :func:`group_advantages` (GRPO over the
  mixed group, keyed by ``uid``);
- :func:`icpo_policy_loss_fn`: verl's policy-loss interface plus a keyword ``ief_mask``. verl's stock
  ``ppo_loss`` never passes that mask, so without it the function refuses to run instead of silently training
  IEF rows as on-policy ones;
- :func:`icpo_ppo_loss`: a mirror of verl 0.9.1's ``workers.utils.losses.ppo_loss`` that also reads the
  ``icpo_ief`` row flag; ``RayICPOTrainer`` installs it on the actor workers of every run with ``set_loss_fn``;
- :func:`finalize_actor_metrics`: the token means of the ratio metrics from the sums the loss reports.

Ratio metrics over a token subset (``actor/ief_prob`` over IEF tokens, ``actor/pg_clipfrac`` /
``actor/pg_clipfrac_lower`` / ``actor/ppo_kl`` over on-policy tokens) cannot be averaged per micro-batch: verl
takes the plain mean of the micro-batch values, so a micro-batch without an IEF token would pull
``actor/ief_prob`` towards 0. The loss therefore reports numerators and token counts with SUM aggregation (each
scaled by ``dp_size``, as verl's ``aggregate_dp`` averages over ranks before summing over micro-batches), and
:func:`finalize_actor_metrics` divides them once the whole update is summed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from icpo_core.algorithm.actor_metrics import ratio_metrics, token_metric_sums
from icpo_core.algorithm.advantages import group_advantages
from icpo_core.algorithm.batch_keys import IEF_KEY
from icpo_core.algorithm.losses import aggregate_loss, icpo_policy_loss, kl_loss, micro_batch_normalisation

NAME = "icpo"
SUM_PREFIX = (
    "actor/icpo_sum/"  # per-micro-batch sums (SUM-aggregated); finalize_actor_metrics turns them into means
)


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


def _clip_ratios(config: Any) -> dict[str, float]:
    """``clip_ratio_low`` / ``clip_ratio_high`` (falling back to ``clip_ratio``) and ``clip_ratio_c`` of an actor config."""
    if config is None:
        return {"clip_ratio_low": 0.2, "clip_ratio_high": 0.2, "clip_ratio_c": 3.0}
    clip = getattr(config, "clip_ratio", 0.2)
    low, high = getattr(config, "clip_ratio_low", None), getattr(config, "clip_ratio_high", None)
    return {
        "clip_ratio_low": low if low is not None else clip,
        "clip_ratio_high": high if high is not None else clip,
        "clip_ratio_c": config.get("clip_ratio_c", 3.0),
    }


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
    clip: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Paper section 3.4 loss (dual-clip PPO on-policy, ``-A p/(p+gamma)`` on IEF tokens), verl's signature.

    The off-policy rows are IEF rows (ICPO) or expert traces (LUFFY); ``clip=False`` is LUFFY's
    ``loss_remove_clip`` (``algorithm.clip_on_policy: false``): on-policy tokens get the plain ``-A r``."""
    if ief_mask is None:
        raise ValueError(
            "the 'icpo' policy loss needs the per-row IEF mask, which verl's stock ppo_loss does not pass; "
            "launch with `python -m icpo_core.engines.verl.launcher` (RayICPOTrainer installs icpo_ppo_loss)"
        )
    if rollout_is_weights is not None:
        raise ValueError(
            "rollout correction weights are not supported by the project's loss (every verl run, GRPO too): IEF "
            "rows' rollout log-probs are demo-conditioned; keep algorithm.rollout_correction off"
        )
    info = dict(getattr(config, "global_batch_info", {}) or {}) if config is not None else {}
    return icpo_policy_loss(
        log_prob,
        old_log_prob,
        advantages,
        response_mask,
        ief_mask,
        **_clip_ratios(config),
        gamma=gamma,
        loss_agg_mode=loss_agg_mode,
        batch_num_tokens=info.get("batch_num_tokens"),
        global_batch_size=info.get("global_batch_size"),
        dp_size=info.get("dp_size", 1) or 1,
        loss_scale_factor=info.get("loss_scale_factor"),
        clip=clip,
    )


def _total(value: Any) -> float:
    """Sum of one metric as verl hands it back: a float, a list (one per mini-batch) or a ``Metric``."""
    from verl.utils.metric import Metric

    if isinstance(value, Metric):
        return float(np.sum(value.values))
    if isinstance(value, list | tuple):
        return float(sum(_total(v) for v in value))
    return float(value)


def finalize_actor_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Replace the ``actor/icpo_sum/*`` sums of one update by token means (module docstring).

    ``actor/ief_prob`` = sum of p over IEF tokens / IEF tokens (0.0 when the update had none);
    ``actor/pg_clipfrac``, ``actor/pg_clipfrac_lower``, ``actor/ppo_kl`` over on-policy tokens;
    ``actor/ief_token_frac`` = IEF tokens / response tokens. Exact over every micro-batch, rank, mini-batch
    and epoch of the update. Other keys pass through.
    """
    sums = {k[len(SUM_PREFIX) :]: _total(v) for k, v in metrics.items() if k.startswith(SUM_PREFIX)}
    if not sums:
        return metrics
    out = {k: v for k, v in metrics.items() if not k.startswith(SUM_PREFIX)}
    out.update(ratio_metrics(sums))
    return out


def icpo_ppo_loss(
    config: Any,
    model_output: dict,
    data: Any,
    dp_group: Any = None,
    gamma: float = 0.1,
    released_loss_agg: bool = False,
    clip_on_policy: bool = True,
    off_policy_rows: bool = True,
):
    """verl 0.9.1's ``ppo_loss`` with the ICPO policy term: reads ``icpo_ief`` and passes it as ``ief_mask``.

    The actor loss of every verl run (``RayICPOTrainer`` installs it for GRPO too). With no IEF row it is
    verl's ``ppo_loss`` with the ``vanilla`` policy loss (dual-clip PPO; tests compare them), so GRPO loses
    nothing and gains the two switches below. ``off_policy_rows`` (``icpo.n_off > 0``): the batch must carry
    the ``icpo_ief`` flag; GRPO batches (false) carry none and every row is on-policy. Rollout-correction
    weights (``rollout_is_weights``) are refused, not dropped (:func:`icpo_policy_loss_fn`).

    Pinned to verl 0.9.1 (``verl.workers.utils.losses.ppo_loss``): same global-batch bookkeeping, same
    entropy and KL terms (``actor.entropy_coeff``, ``actor.use_kl_loss`` / ``kl_loss_type`` / ``kl_loss_coef``),
    over every response token, IEF ones included, as the paper and the released code do.

    ``released_loss_agg`` (``icpo.released_loss_agg``): the released code's verl 0.5 averaging instead, as
    :func:`icpo_core.algorithm.micro_batch_normalisation` states it: each term a masked mean over this
    micro-batch's own tokens, times the micro-batch's share of its rank's mini-batch rows (= 1 / number of
    micro-batches), ranks averaged by FSDP's gradient reduction.

    ``clip_on_policy`` (``icpo.clip_on_policy``): false for LUFFY, whose on-policy tokens are not clipped.
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

    dp = int(data["dp_size"] or 1)
    scale = 1.0
    if released_loss_agg:
        rows_per_rank = (data["global_batch_size"] or 0) / dp
        if not rows_per_rank:
            raise ValueError("released_loss_agg needs verl's global_batch_size (rows of the mini-batch)")
        num_tokens, scale = micro_batch_normalisation(
            config.loss_agg_mode,
            released_loss_agg=True,
            micro_rows=int(log_prob.shape[0]),
            mini_rows=rows_per_rank,
            mini_tokens=0,
        )
        # per micro-batch: no global token count, no data-parallel rescaling
        config.global_batch_info.update(batch_num_tokens=num_tokens, global_batch_size=None, dp_size=1)
    fields = ["response_mask", "old_log_probs", "advantages"]
    has_flag = IEF_KEY in data
    if has_flag:
        fields.append(IEF_KEY)
    elif off_policy_rows:
        raise ValueError(
            f"the batch has no {IEF_KEY!r} row flag, but this run has off-policy rows (icpo.n_off > 0): the "
            "ICPO agent-loop manager sets it (actor_rollout_ref.rollout.agent.agent_loop_manager_class)"
        )
    for optional in ("ref_log_prob", "rollout_is_weights"):
        if optional in data:
            fields.append(optional)
    data = data.select(*fields).to_padded_tensor()
    response_mask = data["response_mask"].to(bool)
    info = {k: v for k, v in config.global_batch_info.items() if k != "loss_scale_factor"}

    if has_flag:
        ief_mask = data[IEF_KEY].reshape(-1).bool()
    else:  # GRPO: every row on-policy
        ief_mask = torch.zeros(response_mask.shape[0], dtype=torch.bool, device=response_mask.device)
    pg_loss, _ = icpo_policy_loss_fn(
        old_log_prob=data["old_log_probs"],
        log_prob=log_prob,
        advantages=data["advantages"],
        response_mask=response_mask,
        loss_agg_mode=config.loss_agg_mode,
        config=config,
        rollout_is_weights=data.get("rollout_is_weights", None),
        ief_mask=ief_mask,
        gamma=gamma,
        clip=clip_on_policy,
    )
    sums = token_metric_sums(
        log_prob.detach(),
        data["old_log_probs"],
        data["advantages"],
        response_mask,
        ief_mask,
        **_clip_ratios(config),
    )
    # x dp_size: verl's aggregate_dp averages over ranks, then sums over micro-batches
    metrics: dict[str, Any] = {
        SUM_PREFIX + k: Metric(value=v * dp, aggregation=AggregationType.SUM) for k, v in sums.items()
    }
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
    return policy_loss * scale, metrics
