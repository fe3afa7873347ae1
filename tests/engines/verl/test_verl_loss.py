"""The actor loss installed with set_loss_fn, on verl's real actor data path (DataProto -> TensorDict ->
no-padding), forward and backward on CPU; equal to verl's stock ppo_loss when no row is IEF."""

from __future__ import annotations

import pytest
import torch
from verl_fixtures import fake_generate, load_batch


def _actor_cfg(**kw):
    from verl.workers.config import FSDPActorConfig

    base = dict(
        strategy="fsdp", ppo_mini_batch_size=2, ppo_micro_batch_size_per_gpu=2, rollout_n=4, clip_ratio_low=0.2,
        clip_ratio_high=0.2, use_kl_loss=True, kl_loss_coef=0.001, kl_loss_type="low_var_kl",
    )  # fmt: skip
    base.update(kw)
    return FSDPActorConfig(**base)


def _actor_data(tokenizer, train_parquet, ief_rows):
    """A trainer batch as _update_actor sends it: padded DataProto -> TensorDict -> no-padding + batch info."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    batch = load_batch(tokenizer, train_parquet, 2).repeat(4, interleave=True)
    out = fake_generate(tokenizer)(batch)
    g = torch.Generator().manual_seed(0)
    n, r = out.batch["responses"].shape
    out.batch["old_log_probs"] = -torch.rand(n, r, generator=g) * 2
    out.batch["ref_log_prob"] = out.batch["old_log_probs"] + 0.1 * torch.randn(n, r, generator=g)
    out.batch["advantages"] = torch.randn(n, 1, generator=g) * out.batch["response_mask"]
    flag = torch.zeros(n)
    flag[list(ief_rows)] = 1.0
    out.batch["icpo_ief"] = flag
    td = left_right_2_no_padding(out.to_tensordict())
    tu.assign_non_tensor(td, dp_size=1, batch_num_tokens=None, global_batch_size=None)
    return out, td


def _fake_model_output(td, requires_grad=True):
    """Per-token log-probs over all valid tokens (prompt + response), as the FSDP engine returns them."""
    ids = td["input_ids"]
    total = ids.values().numel()
    logp = (-torch.rand(total, generator=torch.Generator().manual_seed(1)) * 2).requires_grad_(requires_grad)
    return {"log_probs": torch.nested.nested_tensor_from_jagged(logp, offsets=ids.offsets())}, logp


def test_icpo_ppo_loss_on_verl_data_path(tokenizer, train_parquet):
    from verl.workers.utils.padding import no_padding_2_padding

    from icpo_core.algorithm import compute_actor_loss
    from icpo_core.config import AlgorithmParams
    from icpo_core.engines.verl.losses import icpo_ppo_loss

    out, td = _actor_data(tokenizer, train_parquet, ief_rows=[1, 6])
    model_output, leaf = _fake_model_output(td)
    loss, metrics = icpo_ppo_loss(_actor_cfg(), model_output, td, gamma=0.1)
    loss.backward()
    assert torch.isfinite(loss) and leaf.grad is not None and leaf.grad.abs().sum() > 0

    # the same numbers from the pure algorithm on padded tensors
    logp = no_padding_2_padding(model_output["log_probs"], td).detach()
    b = out.batch
    expected, m = compute_actor_loss(
        logp, b["old_log_probs"], b["ref_log_prob"], None, b["advantages"][:, 0], b["response_mask"],
        b["icpo_ief"].bool(), AlgorithmParams(n_off=1),
    )  # fmt: skip
    torch.testing.assert_close(loss.detach(), expected)
    assert metrics["actor/pg_loss"].aggregate() == pytest.approx(m["actor/pg_loss"], rel=1e-5)
    assert metrics["actor/ief_token_frac"].aggregate() == pytest.approx(m["actor/ief_token_frac"])
    assert 0 < m["actor/ief_token_frac"] < 1


def test_no_ief_rows_equals_verl_ppo_loss(tokenizer, train_parquet):
    """GRPO is the n_off = 0 case: with no IEF row our loss equals verl's stock ppo_loss (vanilla)."""
    from verl.workers.utils.losses import ppo_loss

    from icpo_core.engines.verl.losses import icpo_ppo_loss

    _, td = _actor_data(tokenizer, train_parquet, ief_rows=[])
    mo, _ = _fake_model_output(td, requires_grad=False)
    ours, _ = icpo_ppo_loss(_actor_cfg(), mo, td)
    theirs, _ = ppo_loss(_actor_cfg(), mo, td)
    torch.testing.assert_close(ours, theirs)


def test_registered_loss_refuses_without_mask():
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    import icpo_core.engines.verl.plugin  # noqa: F401

    fn = get_policy_loss_fn("icpo")
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="IEF mask"):
        fn(x, x, x, torch.ones(2, 3), config=_actor_cfg())
    logp = x.clone().requires_grad_(True)
    loss, m = fn(
        x, logp, torch.ones(2, 3), torch.ones(2, 3), config=_actor_cfg(), ief_mask=torch.tensor([True, False])
    )
    assert loss.item() == pytest.approx(-(3 * (1 / 1.1) + 3 * 1.0) / 6)
    loss.backward()  # the registered loss runs backward too; on-policy row: d/dlogp = -A r / #tokens
    assert logp.grad[1].tolist() == pytest.approx([-1 / 6] * 3)
    assert m["actor/ief_token_frac"] == 0.5
