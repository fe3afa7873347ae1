"""The actor's ratio metrics: summed over micro-batches they equal the token means of the whole update."""

from __future__ import annotations

import pytest
import torch

from icpo_core.algorithm.actor_metrics import ratio_metrics, token_metric_sums

CLIP = {"clip_ratio_low": 0.2, "clip_ratio_high": 0.2, "clip_ratio_c": 3.0}


def _batch(rows: int = 6, width: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(rows, width, generator=g) * 3
    old = logp + torch.randn(rows, width, generator=g) * 0.5  # ratios far from 1: both clips act
    adv = torch.randn(rows, generator=g)
    mask = (torch.arange(width)[None, :] < torch.tensor([7, 3, 5, 1, 6, 2])[:, None]).long()
    ief = torch.tensor([False, True, False, False, True, False])
    return logp, old, adv, mask, ief


def _sum(parts):
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, 0.0) + v
    return out


def test_micro_batch_sums_give_the_whole_batchs_token_means():
    logp, old, adv, mask, ief = _batch()
    whole = ratio_metrics(token_metric_sums(logp, old, adv, mask, ief, **CLIP))
    parts = [
        token_metric_sums(logp[s:e], old[s:e], adv[s:e], mask[s:e], ief[s:e], **CLIP)
        for s, e in ((0, 1), (1, 4), (4, 6))
    ]
    split = ratio_metrics(_sum(parts))
    assert split == pytest.approx(whole)
    # ief_prob is the mean p over IEF tokens only (3 + 6 tokens), not diluted by the on-policy micro-batches
    p = torch.exp(logp)
    expected = float((p[1, :3].sum() + p[4, :6].sum()) / 9)
    assert whole["actor/ief_prob"] == pytest.approx(expected)
    assert whole["actor/ief_token_frac"] == pytest.approx(9 / 24)
    assert 0 < whole["actor/pg_clipfrac"] < 1


def test_empty_subsets_give_zero():
    logp, old, adv, mask, _ = _batch()
    m = ratio_metrics(token_metric_sums(logp, logp, adv, mask, torch.zeros(6, dtype=torch.bool), **CLIP))
    assert m["actor/ief_prob"] == 0.0 and m["actor/ief_token_frac"] == 0.0
    assert m["actor/pg_clipfrac"] == 0.0  # ratio 1: nothing clipped
