"""Loss averaging: one token-mean over the mini-batch (verl 0.9.1) vs the released per-micro-batch mean."""

from __future__ import annotations

import pytest
import torch

from icpo_core.algorithm.losses import aggregate_loss, micro_batch_normalisation


def _token_weights(released: bool) -> torch.Tensor:
    """d(loss)/d(per-token loss) for two 100-token and two 10-token rows in micro-batches of 2."""
    lengths = [100, 100, 10, 10]
    mask = torch.zeros(4, 100)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    loss_mat = torch.zeros(4, 100, requires_grad=True)
    mini_tokens = int(mask.sum())
    total = torch.zeros(())
    for s in (0, 2):
        num_tokens, scale = micro_batch_normalisation(
            "token-mean", released_loss_agg=released, micro_rows=2, mini_rows=4, mini_tokens=mini_tokens
        )
        total = (
            total + aggregate_loss(loss_mat[s : s + 2], mask[s : s + 2], batch_num_tokens=num_tokens) * scale
        )
    total.backward()
    return loss_mat.grad


def test_hand_computed_token_weights():
    ours = _token_weights(released=False)
    released = _token_weights(released=True)
    # ours: every valid token weighs 1 / 220, wherever it sits
    assert ours[0, 0].item() == pytest.approx(1 / 220) and ours[2, 0].item() == pytest.approx(1 / 220)
    assert ours[0, 0].item() == pytest.approx(0.004545, abs=1e-6)
    # released (verl 0.5): 1/200/2 for the long micro-batch, 1/20/2 for the short one
    assert released[0, 50].item() == pytest.approx(0.0025)
    assert released[3, 9].item() == pytest.approx(0.025)
    # padding never gets a weight; both conventions sum to one over the valid tokens
    assert released[2, 10:].abs().sum() == 0 and ours[2, 10:].abs().sum() == 0
    assert ours.sum().item() == pytest.approx(1.0) and released.sum().item() == pytest.approx(1.0)


def test_seq_mean_modes_weight_micro_batches_by_rows_in_both_conventions():
    for released in (False, True):
        assert micro_batch_normalisation(
            "seq-mean-token-mean", released_loss_agg=released, micro_rows=3, mini_rows=12, mini_tokens=99
        ) == (None, 0.25)
    with pytest.raises(ValueError, match="empty"):
        micro_batch_normalisation(
            "token-mean", released_loss_agg=False, micro_rows=0, mini_rows=4, mini_tokens=1
        )
