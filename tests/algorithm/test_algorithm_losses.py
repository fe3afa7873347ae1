"""The ICPO loss: equal to verl on on-policy tokens, the shaped IEF gradient analytically, full actor loss."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icpo_core.algorithm.losses import (
    aggregate_loss,
    compute_actor_loss,
    effective_entropy_coeff,
    entropy_from_logits,
    icpo_policy_loss,
    kl_loss,
)
from icpo_core.config import AlgorithmParams


def _actor_cfg(**kw):
    from verl.workers.config import FSDPActorConfig

    return FSDPActorConfig(
        strategy="fsdp", ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=2, rollout_n=8,
        clip_ratio_low=0.2, clip_ratio_high=0.2, **kw,
    )  # fmt: skip


def _batch(seed=0, B=6, T=7):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g) * 3
    old = logp + (torch.rand(B, T, generator=g) - 0.5) * 0.8  # ratios well outside the clip range too
    ref = logp + (torch.rand(B, T, generator=g) - 0.5) * 0.5
    adv = torch.randn(B, generator=g)
    mask = torch.ones(B, T)
    for b in range(B):
        mask[b, torch.randint(2, T + 1, (1,), generator=g).item() :] = 0
    return logp, old, ref, adv, mask


@pytest.mark.parametrize(
    "mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
)
def test_on_policy_loss_equals_verl_vanilla(mode):
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

    logp, old, _, adv, mask = _batch()
    adv_tok = adv[:, None] * mask
    ours, m = icpo_policy_loss(
        logp, old, adv_tok, mask, torch.zeros(len(adv), dtype=torch.bool), loss_agg_mode=mode
    )
    theirs, tm = compute_policy_loss_vanilla(
        old, logp, adv_tok, mask, loss_agg_mode=mode, config=_actor_cfg()
    )
    torch.testing.assert_close(ours, theirs)
    for k in ("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"):
        assert m[k] == pytest.approx(tm[k], abs=1e-6)
    assert 0 < m["actor/pg_clipfrac"] < 1  # the batch really exercises clipping
    assert m["actor/ief_token_frac"] == 0.0


def test_aggregate_equals_verl_with_global_tokens():
    from verl.trainer.ppo.core_algos import agg_loss

    logp, _, _, _, mask = _batch()
    for mode in ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean"):
        torch.testing.assert_close(aggregate_loss(logp, mask, mode), agg_loss(logp, mask, mode))
    torch.testing.assert_close(
        aggregate_loss(logp, mask, "token-mean", batch_num_tokens=100, dp_size=2),
        agg_loss(logp, mask, "token-mean", dp_size=2, batch_num_tokens=100),
    )
    torch.testing.assert_close(
        aggregate_loss(logp, mask, "seq-mean-token-sum-norm", global_batch_size=9, loss_scale_factor=7.0),
        agg_loss(logp, mask, "seq-mean-token-sum-norm", global_batch_size=9, loss_scale_factor=7.0),
    )
    # micro-batches with a global token count sum to the full-batch token mean
    full = aggregate_loss(logp, mask)
    n = int(mask.sum())
    parts = aggregate_loss(logp[:3], mask[:3], batch_num_tokens=n) + aggregate_loss(
        logp[3:], mask[3:], batch_num_tokens=n
    )
    torch.testing.assert_close(parts, full)
    with pytest.raises(ValueError):
        aggregate_loss(logp, mask, "nope")


def test_ief_tokens_hand_computed():
    logp = torch.log(torch.tensor([[0.5, 0.1]]))
    old = torch.zeros(1, 2)  # must be ignored for IEF rows
    loss, m = icpo_policy_loss(
        logp, old, torch.tensor([2.0]), torch.ones(1, 2), torch.tensor([True]), gamma=0.1
    )
    expected = -2.0 * (0.5 / 0.6 + 0.1 / 0.2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["actor/ief_prob"] == pytest.approx(0.3, rel=1e-6)
    assert m["actor/ief_token_frac"] == 1.0
    assert m["actor/pg_clipfrac"] == 0.0


@settings(max_examples=40, deadline=None)
@given(
    p=st.floats(1e-4, 0.999),
    a=st.floats(-3, 3).filter(lambda x: abs(x) > 1e-3),
    gamma=st.floats(0.01, 1.0),
)
def test_ief_gradient_is_shaped(p, a, gamma):
    """d loss / d logp = -A * f'(p) * p with f(p) = p/(p+gamma), i.e. -A * gamma p / (p+gamma)^2."""
    logp = torch.tensor([[math.log(p)]], dtype=torch.float64, requires_grad=True)
    loss, _ = icpo_policy_loss(
        logp, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([a], dtype=torch.float64),
        torch.ones(1, 1), torch.tensor([True]), gamma=gamma,
    )  # fmt: skip
    loss.backward()
    f_prime = gamma / (p + gamma) ** 2
    assert logp.grad.item() == pytest.approx(-a * f_prime * p, rel=1e-9, abs=1e-12)


def test_mixed_rows_split_exactly():
    """Each row's loss is the on-policy or the IEF term, never both; the mix is one token-mean over all rows."""
    logp, old, _, adv, mask = _batch(seed=3)
    ief = torch.tensor([False, True, False, True, False, False])
    mixed, m = icpo_policy_loss(logp, old, adv, mask, ief)
    on_only, _ = icpo_policy_loss(
        logp, old, adv, mask * (~ief)[:, None], torch.zeros(6, dtype=torch.bool), loss_agg_mode="token-sum"
    )
    ief_only, _ = icpo_policy_loss(
        logp, old, adv, mask * ief[:, None], torch.ones(6, dtype=torch.bool), loss_agg_mode="token-sum"
    )
    torch.testing.assert_close(mixed, (on_only + ief_only) / mask.sum())
    assert m["actor/ief_token_frac"] == pytest.approx((mask * ief[:, None]).sum().item() / mask.sum().item())
    # a per-token ief mask is the same as the per-row one
    mixed_tok, _ = icpo_policy_loss(logp, old, adv, mask, ief[:, None].expand_as(mask))
    torch.testing.assert_close(mixed, mixed_tok)


@pytest.mark.parametrize("kind", ["low_var_kl", "k3", "kl", "abs", "mse", "k2", "k3+", "low_var_kl+"])
def test_kl_equals_verl(kind):
    from verl.trainer.ppo.core_algos import kl_penalty

    logp, _, ref, _, _ = _batch()
    a = logp.clone().requires_grad_(True)
    b = logp.clone().requires_grad_(True)
    ours, theirs = kl_loss(a, ref, kind), kl_penalty(b, ref, kind)
    torch.testing.assert_close(ours, theirs)
    ours.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    with pytest.raises(ValueError):
        kl_loss(logp, ref, "bogus")


def test_entropy_equals_verl():
    from verl.utils.torch_functional import entropy_from_logits as verl_entropy

    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(entropy_from_logits(logits), verl_entropy(logits))
    assert entropy_from_logits(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))


def test_actor_loss_equals_verl_grpo_and_adds_terms():
    """n_off = 0: our actor loss == verl's pg + kl_coef * low_var_kl (token-mean), no entropy term."""
    from verl.trainer.ppo.core_algos import agg_loss, compute_policy_loss_vanilla, kl_penalty

    logp, old, ref, adv, mask = _batch(seed=5)
    ent = torch.rand_like(logp)
    cfg = AlgorithmParams(n_off=0)
    none = torch.zeros(len(adv), dtype=torch.bool)
    loss, m = compute_actor_loss(logp, old, ref, ent, adv, mask, none, cfg)
    pg, _ = compute_policy_loss_vanilla(old, logp, adv[:, None] * mask, mask, config=_actor_cfg())
    kl = agg_loss(kl_penalty(logp, ref, "low_var_kl"), mask, "token-mean")
    torch.testing.assert_close(loss, pg + 0.001 * kl)
    assert m["actor/kl"] == pytest.approx(kl.item())
    assert m["actor/pg_loss"] == pytest.approx(pg.item())
    assert m["actor/entropy"] == pytest.approx(agg_loss(ent, mask, "token-mean").item())
    for key in ("actor/pg_clipfrac", "actor/ief_prob", "actor/ief_token_frac"):
        assert key in m

    # the released hidden entropy bonus applies to ICPO runs only
    rel = AlgorithmParams(n_off=1, released_entropy_bonus=0.001)
    assert effective_entropy_coeff(rel) == 0.001
    assert effective_entropy_coeff(AlgorithmParams(n_off=0, released_entropy_bonus=0.001)) == 0.0
    loss_rel, m_rel = compute_actor_loss(logp, old, ref, ent, adv, mask, none, rel)
    torch.testing.assert_close(loss_rel, pg + 0.001 * kl - 0.001 * agg_loss(ent, mask, "token-mean"))
    assert m_rel["actor/entropy_coeff"] == 0.001

    no_kl = AlgorithmParams(n_off=0, use_kl_loss=False)
    loss_nokl, _ = compute_actor_loss(logp, old, None, None, adv, mask, none, no_kl)
    torch.testing.assert_close(loss_nokl, pg)
    with pytest.raises(ValueError, match="reference"):
        compute_actor_loss(logp, old, None, None, adv, mask, none, cfg)
    with pytest.raises(ValueError, match="no entropy"):
        compute_actor_loss(logp, old, ref, None, adv, mask, none, rel)


def test_actor_loss_backward_on_logits():
    """End to end through a softmax: finite gradients, IEF rows' old log-probs do not matter."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, 9, generator=g, requires_grad=True)
    tokens = torch.randint(0, 9, (4, 5), generator=g)
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    old = logp.detach() + 0.05
    ief = torch.tensor([False, False, True, False])
    cfg = AlgorithmParams()
    loss, _ = compute_actor_loss(
        logp, old, old, entropy_from_logits(logits), torch.randn(4, generator=g), torch.ones(4, 5), ief, cfg
    )
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    old2 = old.clone()
    old2[2] -= 5.0
    l2, _ = compute_actor_loss(
        logp.detach(),
        old2,
        old,
        None,
        torch.ones(4),
        torch.ones(4, 5),
        ief,
        AlgorithmParams(use_kl_loss=False),
    )
    l1, _ = compute_actor_loss(
        logp.detach(),
        old,
        old,
        None,
        torch.ones(4),
        torch.ones(4, 5),
        ief,
        AlgorithmParams(use_kl_loss=False),
    )
    torch.testing.assert_close(l1, l2)


def test_luffy_remove_clip_gives_the_plain_ratio_on_on_policy_tokens_and_leaves_off_policy_tokens_alone():
    from icpo_core.algorithm.losses import icpo_policy_loss

    log_prob = torch.log(torch.tensor([[0.9, 0.5], [0.3, 0.6]]))
    old = torch.log(torch.tensor([[0.3, 0.5], [0.9, 0.6]]))  # ratios 3, 1 / 1/3, 1: far outside the clip
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2)
    ief = torch.tensor([False, False])
    clipped, _ = icpo_policy_loss(log_prob, old, adv, mask, ief)
    plain, _ = icpo_policy_loss(log_prob, old, adv, mask, ief, clip=False)
    ratio = torch.exp(log_prob - old)
    assert plain.item() == pytest.approx(float((-adv[:, None] * ratio).mean()))
    assert clipped.item() != pytest.approx(plain.item())
    # off-policy (expert) tokens: f(p) = p / (p + gamma) with or without the clip
    ief = torch.tensor([True, True])
    a, _ = icpo_policy_loss(log_prob, old, adv, mask, ief)
    b, _ = icpo_policy_loss(log_prob, old, adv, mask, ief, clip=False)
    assert a.item() == pytest.approx(b.item())
