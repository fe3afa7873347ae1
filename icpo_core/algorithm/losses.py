"""The ICPO actor loss (paper section 3.4): dual-clip PPO on on-policy tokens, shaped IEF tokens, KL, entropy.

All functions take padded ``[B, T]`` response tensors (log-probs of the sampled tokens) and a ``[B, T]``
response mask, like verl's ``core_algos``; the numbers equal verl's for the same inputs (tests compare them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from icpo_core.config import AlgorithmParams

# Same clamp as verl / the released code: keeps exp() finite for wildly off log-ratios.
_LOG_CLAMP = 20.0


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / (mask.sum() + 1e-8)


def _per_token(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-trajectory ``[B]`` tensor to ``[B, T]``; pass ``[B, T]`` through."""
    return x.unsqueeze(-1).expand_as(like) if x.dim() == 1 else x


def aggregate_loss(
    loss_mat: torch.Tensor,
    loss_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    *,
    batch_num_tokens: int | float | torch.Tensor | None = None,
    global_batch_size: int | float | torch.Tensor | None = None,
    dp_size: int = 1,
    loss_scale_factor: float | None = None,
) -> torch.Tensor:
    """Reduce a ``[B, T]`` loss matrix to a scalar, exactly as verl's ``agg_loss``.

    ``token-mean`` (paper and released default) divides the masked sum by the number of valid tokens. Pass
    ``batch_num_tokens`` (valid tokens in the whole mini-batch, all micro-batches and ranks) to normalise
    globally, so that accumulating micro-batch gradients equals one token-mean over the mini-batch.
    ``global_batch_size`` plays that role for the ``seq-mean-*`` modes. Same as GRPO in verl.
    """
    mask = loss_mask.to(loss_mat.dtype)
    if loss_agg_mode == "token-mean":
        denom = mask.sum() if batch_num_tokens is None else batch_num_tokens
        return (loss_mat * mask).sum() / denom * dp_size
    if loss_agg_mode == "token-sum":
        return (loss_mat * mask).sum() * dp_size
    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        seq_losses = (loss_mat * mask).sum(dim=-1)
        seq_mask = (mask.sum(dim=-1) > 0).to(loss_mat.dtype)
        n_seq = seq_mask.sum() if global_batch_size is None else global_batch_size
        loss = (seq_losses * seq_mask).sum() / n_seq * dp_size
        if loss_agg_mode == "seq-mean-token-sum-norm":
            loss = loss / (loss_scale_factor if loss_scale_factor is not None else loss_mask.shape[-1])
        return loss
    if loss_agg_mode == "seq-mean-token-mean":
        n_tok = mask.sum(dim=-1)
        seq_losses = (loss_mat * mask).sum(dim=-1) / (n_tok + 1e-8)
        seq_mask = (n_tok > 0).to(loss_mat.dtype)
        n_seq = seq_mask.sum() if global_batch_size is None else global_batch_size
        return (seq_losses * seq_mask).sum() / n_seq * dp_size
    raise ValueError(f"unknown loss_agg_mode {loss_agg_mode!r}")


def micro_batch_normalisation(
    loss_agg_mode: str,
    *,
    released_loss_agg: bool,
    micro_rows: int,
    mini_rows: int,
    mini_tokens: int,
) -> tuple[int | None, float]:
    """How one micro-batch's loss is normalised inside its mini-batch: ``(batch_num_tokens, scale)``.

    The micro-batch loss is ``aggregate_loss(..., batch_num_tokens=batch_num_tokens) * scale`` and the
    gradients of a mini-batch's micro-batches are summed before the optimizer step.

    - Default (verl 0.9.1, both engines): ``token-mean`` is ONE mean over every response token of the
      mini-batch: ``batch_num_tokens = mini_tokens``, ``scale = 1``, so every token weighs ``1 / mini_tokens``
      whatever micro-batch it lands in (summed over data-parallel ranks in verl).
    - ``released_loss_agg`` (verl 0.5, the released code): a masked mean over the micro-batch's own tokens,
      divided by the number of micro-batches (``scale = micro_rows / mini_rows``, which is ``1 / n_micro`` for
      equal micro-batches and verl 0.5's dynamic-batch formula otherwise). A token of a short-response
      micro-batch then weighs more: two 100-token and two 10-token rows in micro-batches of 2 give per-token
      weights 1/200/2 = 0.0025 and 1/20/2 = 0.025, against 1/220 = 0.004545 by default.
    - ``seq-mean-*`` modes: a mean over the micro-batch's rows weighted by its row share (the same in both
      conventions here).

    The paper (section 3.4) only says "token-mean"; the switch exists so the released code can be reproduced.
    Unchanged from GRPO: both methods use the same normalisation.
    """
    if mini_rows <= 0 or micro_rows <= 0:
        raise ValueError(f"empty batch: micro_rows={micro_rows}, mini_rows={mini_rows}")
    share = micro_rows / mini_rows
    if loss_agg_mode == "token-mean" and not released_loss_agg:
        return mini_tokens, 1.0
    return None, share


def icpo_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    ief_mask: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    gamma: float = 0.1,
    loss_agg_mode: str = "token-mean",
    batch_num_tokens: int | float | torch.Tensor | None = None,
    global_batch_size: int | float | torch.Tensor | None = None,
    dp_size: int = 1,
    loss_scale_factor: float | None = None,
    clip: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The ICPO policy objective (paper section 3.4, the mixed-policy loss), one aggregation over all tokens.

    - On-policy tokens: dual-clip PPO, ``max(-A r, -A clip(r, 1-eps_low, 1+eps_high))`` and for A < 0 also
      capped at ``-A c`` (r = exp(logp - old_logp)); identical to verl's ``compute_policy_loss_vanilla``, so with
      no IEF rows (N_off = 0) this *is* GRPO's loss.
    - IEF tokens (``ief_mask``; the demos already removed from their context): ``-A * f(p)`` with LUFFY's policy
      shaping ``f(p) = p / (p + gamma)``, ``p = exp(logp)`` the current token probability, no old ratio (the
      behaviour policy saw the demos, so pi_old(.|q) is not its sampler) and no clip. The paper writes this term
      ``CLIP(f(r_hat), A, eps)``; like the released code and LUFFY we apply no clip. A literal clip,
      ``min(f A, clip(f, 1-eps, 1+eps) A)``, could never bind from above because f(p) < 1 <= 1+eps; it would
      only change rows with A < 0 (where f < 1-eps is raised to 1-eps, removing their gradient), and with ERRS
      on, accepted IEF rows are correct and have A >= 0, so it matters only with ERRS off. Its gradient with respect
      to logp is ``-A * f'(p) * p = -A * gamma * p / (p + gamma)^2``: low-probability expert tokens are boosted.

    LUFFY (arXiv 2504.14945) uses the same off-policy term on its expert-trace tokens; ``clip=False`` is its
    ``loss_remove_clip``: on-policy tokens get the plain ``-A r`` without the PPO clip or the dual clip.

    ``advantages`` and ``ief_mask`` may be per trajectory ``[B]`` or per token ``[B, T]``.
    Metrics ``actor/pg_clipfrac``, ``actor/pg_clipfrac_lower``, ``actor/ppo_kl`` are over on-policy tokens only
    (the released code's metrics mixed in IEF tokens through a bitwise-not bug); ``actor/ief_prob`` is the mean p
    over IEF tokens and ``actor/ief_token_frac`` the IEF share of the response tokens.
    """
    adv = _per_token(advantages.to(log_prob.dtype), log_prob)
    mask = response_mask.bool()
    ief = _per_token(ief_mask.bool(), log_prob) & mask
    on = mask & ~ief

    neg_kl = torch.clamp(log_prob - old_log_prob, -_LOG_CLAMP, _LOG_CLAMP)
    ratio = torch.exp(neg_kl)
    loss1 = -adv * ratio
    loss2 = -adv * torch.clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    clipped = torch.maximum(loss1, loss2)
    loss3 = -adv * clip_ratio_c
    dual = torch.minimum(loss3, clipped)
    on_loss = torch.where(adv < 0, dual, clipped) if clip else loss1

    p = torch.exp(torch.clamp(log_prob, -_LOG_CLAMP, _LOG_CLAMP))
    ief_loss = -adv * (p / (p + gamma))

    loss_mat = torch.where(ief, ief_loss, on_loss)
    loss = aggregate_loss(
        loss_mat,
        mask,
        loss_agg_mode,
        batch_num_tokens=batch_num_tokens,
        global_batch_size=global_batch_size,
        dp_size=dp_size,
        loss_scale_factor=loss_scale_factor,
    )
    with torch.no_grad():
        n_tok = mask.sum().clamp(min=1)
        metrics = {
            "actor/pg_clipfrac": _masked_mean(torch.gt(loss2, loss1).float(), on).item(),
            "actor/pg_clipfrac_lower": _masked_mean(
                (torch.gt(clipped, loss3) & (adv < 0)).float(), on
            ).item(),
            "actor/ppo_kl": _masked_mean(-neg_kl, on).item(),
            "actor/ief_prob": _masked_mean(p, ief).item() if ief.any() else 0.0,
            "actor/ief_token_frac": (ief.sum() / n_tok).item(),
        }
    return loss, metrics


def kl_loss(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, kl_type: str = "low_var_kl") -> torch.Tensor:
    """Per-token KL estimate to the reference policy (paper: KL loss, low_var_kl, coef 0.001), ``[B, T]``.

    Same estimators as verl's ``kl_penalty``: ``kl``/``k1`` (logp - ref), ``abs``, ``mse``/``k2``, and
    ``low_var_kl``/``k3`` (Schulman's k3, clamped to [-10, 10]); a trailing ``+`` gives the k2 gradient with the
    named estimator's value (straight-through). For IEF rows the reference also sees the plain question q,
    not the demos. Unchanged from GRPO.
    """
    straight_through = kl_type.endswith("+")
    base = kl_type[:-1] if straight_through else kl_type
    diff = log_prob - ref_log_prob
    if base in ("kl", "k1"):
        value = diff
    elif base == "abs":
        value = diff.abs()
    elif base in ("mse", "k2"):
        value = 0.5 * diff.square()
    elif base in ("low_var_kl", "k3"):
        kl = torch.clamp(ref_log_prob - log_prob, -_LOG_CLAMP, _LOG_CLAMP)
        value = torch.clamp(torch.exp(kl) - kl - 1, -10.0, 10.0)
    else:
        raise ValueError(f"unknown kl_type {kl_type!r}")
    if not straight_through or base in ("mse", "k2"):
        return value
    grad_term = 0.5 * diff.square()
    return grad_term - grad_term.detach() + value.detach()


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Token entropy H = logsumexp(z) - sum softmax(z) z over the vocabulary (last dim), as verl computes it."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def effective_entropy_coeff(cfg: AlgorithmParams) -> float:
    """``entropy_coeff`` plus, on ICPO runs, ``released_entropy_bonus`` (the released actor's hidden 0.001)."""
    bonus = cfg.released_entropy_bonus if cfg.n_off > 0 else 0.0
    return float(cfg.entropy_coeff) + float(bonus)


def compute_actor_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    ref_log_prob: torch.Tensor | None,
    entropy: torch.Tensor | None,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    ief_mask: torch.Tensor,
    cfg: AlgorithmParams,
    batch_num_tokens: int | float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The full actor objective (paper section 3.4): ``policy + kl_coef * KL - entropy_coeff * H``.

    Combines the terms as verl's ``ppo_loss`` does (each term aggregated with ``cfg.loss_agg_mode`` and the same
    ``batch_num_tokens``). The entropy coefficient is :func:`effective_entropy_coeff`; the paper uses none.
    With an all-false ``ief_mask`` this is exactly verl's GRPO actor loss. Returns ``(loss, metrics)`` with
    ``actor/pg_loss``, ``actor/pg_clipfrac``, ``actor/pg_clipfrac_lower``, ``actor/ppo_kl``, ``actor/kl``,
    ``actor/entropy``, ``actor/ief_prob``, ``actor/ief_token_frac``.
    """
    agg = {"batch_num_tokens": batch_num_tokens}
    pg_loss, metrics = icpo_policy_loss(
        log_prob,
        old_log_prob,
        advantages,
        response_mask,
        ief_mask,
        clip_ratio_low=cfg.clip_ratio_low,
        clip_ratio_high=cfg.clip_ratio_high,
        clip_ratio_c=cfg.clip_ratio_c,
        gamma=cfg.gamma,
        loss_agg_mode=cfg.loss_agg_mode,
        clip=cfg.clip_on_policy,
        **agg,
    )
    loss = pg_loss
    metrics["actor/pg_loss"] = pg_loss.item()
    coeff = effective_entropy_coeff(cfg)
    if entropy is not None:
        ent = aggregate_loss(entropy, response_mask, cfg.loss_agg_mode, **agg)
        if coeff:
            loss = loss - coeff * ent
        metrics["actor/entropy"] = ent.item()
    else:
        if coeff:
            raise ValueError(f"entropy coefficient {coeff} > 0 but no entropy was given")
        metrics["actor/entropy"] = float("nan")
    if cfg.use_kl_loss:
        if ref_log_prob is None:
            raise ValueError("use_kl_loss is on but no reference log-probs were given")
        kl = aggregate_loss(
            kl_loss(log_prob, ref_log_prob, cfg.kl_type), response_mask, cfg.loss_agg_mode, **agg
        )
        loss = loss + cfg.kl_coef * kl
        metrics["actor/kl"] = kl.item()
    else:
        metrics["actor/kl"] = 0.0
    metrics["actor/entropy_coeff"] = coeff
    return loss, metrics
