"""The actor's ratio metrics, defined once for both engines.

A ratio metric is a token mean over a subset of the response tokens: ``actor/ief_prob`` over off-policy (IEF or
expert-trace) tokens, ``actor/pg_clipfrac``, ``actor/pg_clipfrac_lower`` and ``actor/ppo_kl`` over on-policy
tokens, ``actor/ief_token_frac`` = off-policy tokens / response tokens. Such a mean cannot be averaged per
micro-batch (a micro-batch without an IEF token would pull ``actor/ief_prob`` towards 0), so each engine sums
:func:`token_metric_sums` over every micro-batch (and rank, mini-batch) of one update and calls
:func:`ratio_metrics` once on the totals: the local engine in its update loop, verl through the SUM-aggregated
``actor/icpo_sum/*`` metrics of its loss.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

# ratio metric -> (numerator sum, token-count sum)
RATIO_METRICS = {
    "actor/ief_prob": ("ief_prob", "ief_tokens"),
    "actor/pg_clipfrac": ("pg_clipfrac", "on_tokens"),
    "actor/pg_clipfrac_lower": ("pg_clipfrac_lower", "on_tokens"),
    "actor/ppo_kl": ("ppo_kl", "on_tokens"),
}


def token_metric_sums(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    ief_mask: torch.Tensor,
    *,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float,
) -> dict[str, float]:
    """Sums behind :func:`icpo_core.algorithm.icpo_policy_loss`'s ratio metrics (paper section 3.4 loss).

    On-policy tokens: the PPO ratio r = exp(logp - old_logp) is clipped when ``-A clip(r) > -A r``
    (``pg_clipfrac``), the dual clip binds when A < 0 and ``max(-A r, -A clip(r)) > -A c``
    (``pg_clipfrac_lower``), and ``ppo_kl`` sums ``old_logp - logp``. IEF tokens: ``ief_prob`` sums the
    current token probability p = exp(logp). Token counts ``on_tokens`` / ``ief_tokens`` come along.
    """
    with torch.no_grad():
        mask = response_mask.bool()
        ief = ief_mask.bool().reshape(-1, 1).expand_as(mask) & mask
        on = mask & ~ief
        adv = advantages.to(log_prob.dtype)
        adv = adv.unsqueeze(-1).expand_as(log_prob) if adv.dim() == 1 else adv
        neg_kl = torch.clamp(log_prob - old_log_prob, -20.0, 20.0)
        ratio = torch.exp(neg_kl)
        loss1 = -adv * ratio
        loss2 = -adv * torch.clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
        clipped = torch.maximum(loss1, loss2)
        lower = torch.gt(clipped, -adv * clip_ratio_c) & (adv < 0)
        p = torch.exp(torch.clamp(log_prob, -20.0, 20.0))
        return {
            "on_tokens": float(on.sum()),
            "ief_tokens": float(ief.sum()),
            "pg_clipfrac": float((torch.gt(loss2, loss1) & on).sum()),
            "pg_clipfrac_lower": float((lower & on).sum()),
            "ppo_kl": float((-neg_kl * on).sum()),
            "ief_prob": float((p * ief).sum()),
        }


def ratio_metrics(sums: Mapping[str, float]) -> dict[str, float]:
    """The token means of one update from the totals of :func:`token_metric_sums` (0.0 for an empty subset)."""
    out = {
        name: sums[num] / sums[count] if sums[count] else 0.0 for name, (num, count) in RATIO_METRICS.items()
    }
    tokens = sums["on_tokens"] + sums["ief_tokens"]
    out["actor/ief_token_frac"] = sums["ief_tokens"] / tokens if tokens else 0.0
    return out
