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

    from icpo_core.algorithm.losses import compute_actor_loss
    from icpo_core.config import AlgorithmParams
    from icpo_core.engines.verl.losses import finalize_actor_metrics, icpo_ppo_loss

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
    final = finalize_actor_metrics(metrics)
    for key in ("actor/ief_token_frac", "actor/ief_prob", "actor/pg_clipfrac", "actor/ppo_kl"):
        assert final[key] == pytest.approx(m[key], rel=1e-5, abs=1e-7), key
    assert 0 < m["actor/ief_token_frac"] < 1 and m["actor/ief_prob"] > 0


def test_luffy_loss_has_no_on_policy_clip(tokenizer, train_parquet):
    """``clip_on_policy: false`` (LUFFY) reaches the verl loss: the pure algorithm's unclipped loss, which here
    differs from the clipped one (old log-probs far from the current ones)."""
    from verl.workers.utils.padding import no_padding_2_padding

    from icpo_core.algorithm.losses import compute_actor_loss
    from icpo_core.config import AlgorithmParams
    from icpo_core.engines.verl.losses import icpo_ppo_loss

    out, td = _actor_data(tokenizer, train_parquet, ief_rows=[3, 7])
    mo, _ = _fake_model_output(td, requires_grad=False)
    luffy, _ = icpo_ppo_loss(_actor_cfg(), mo, td, gamma=0.1, clip_on_policy=False)
    clipped, _ = icpo_ppo_loss(_actor_cfg(), mo, td, gamma=0.1)
    logp = no_padding_2_padding(mo["log_probs"], td)
    b = out.batch
    args = (logp, b["old_log_probs"], b["ref_log_prob"], None, b["advantages"][:, 0], b["response_mask"])
    algo = AlgorithmParams(
        n_off=1, off_policy="expert_trace", errs=False, reward_shaping=False, clip_on_policy=False
    )
    expected, _ = compute_actor_loss(*args, b["icpo_ief"].bool(), algo)
    torch.testing.assert_close(luffy, expected)
    assert abs(float(luffy - clipped)) > 1e-3


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


def _verl_update_metrics(per_micro_batch: list[list[dict]], data) -> dict:
    """Aggregate loss metrics exactly as verl 0.9.1 does for one ``update_actor`` (world size 1).

    ``per_micro_batch[m]`` holds the loss's metric dicts of mini-batch m. Per mini-batch: the engine's
    ``postprocess_batch_func`` appends the micro-batch metrics, ``_postprocess_output`` all-gathers them over
    the DP group (one rank here), ``train_mini_batch`` reduces with ``Metric.aggregate_dp`` and appends the
    mini-batches; the trainer finally calls ``reduce_metrics``.
    """
    from verl.utils.metric import Metric
    from verl.utils.py_functional import append_to_dict
    from verl.workers.engine.utils import postprocess_batch_func

    out: dict = {}
    for mini in per_micro_batch:
        mb = postprocess_batch_func([{"metrics": m} for m in mini], None, data)["metrics"]
        gathered = {k: [v] for k, v in mb.items()}  # allgather_dict_into_dict over one rank
        reduced = {k: Metric.aggregate_dp(v) if isinstance(v[0], Metric) else v for k, v in gathered.items()}
        append_to_dict(out, reduced)
    return out


def test_ief_prob_is_the_mean_over_ief_tokens_across_micro_batches(tokenizer, train_parquet):
    """verl averages micro-batch values; IEF rows sit in only some micro-batches, yet actor/ief_prob is the
    mean of p over all IEF tokens of the update (and the clip metrics over all on-policy tokens)."""
    from verl.utils import tensordict_utils as tu
    from verl.utils.metric import reduce_metrics
    from verl.workers.engine.utils import prepare_micro_batches
    from verl.workers.utils.padding import no_padding_2_padding

    from icpo_core.engines.verl.losses import finalize_actor_metrics, icpo_ppo_loss

    out, td = _actor_data(tokenizer, train_parquet, ief_rows=[1, 6])  # 8 rows: IEF in micro-batches 0 and 3
    model_output, _ = _fake_model_output(td, requires_grad=False)
    logp_all = no_padding_2_padding(model_output["log_probs"], td)
    td["log_probs_full"] = model_output["log_probs"]
    tu.assign_non_tensor(td, use_dynamic_bsz=False, micro_batch_size_per_gpu=2)
    tu.assign_non_tensor(td, batch_num_tokens=int(out.batch["response_mask"].sum()))
    micro, _ = prepare_micro_batches(td)
    assert len(micro) == 4
    per_mb = []
    for mb in micro:
        _, metrics = icpo_ppo_loss(_actor_cfg(), {"log_probs": mb["log_probs_full"]}, mb, gamma=0.1)
        per_mb.append(metrics)
    assert sum(float(m["actor/icpo_sum/ief_tokens"].aggregate()) > 0 for m in per_mb) == 2
    agg = _verl_update_metrics([per_mb], td)
    final = reduce_metrics(finalize_actor_metrics(agg))

    mask = out.batch["response_mask"].bool()
    ief = out.batch["icpo_ief"].bool()[:, None] & mask
    on = mask & ~ief
    p = logp_all.exp()
    assert final["actor/ief_prob"] == pytest.approx(float(p[ief].mean()), rel=1e-5)
    assert final["actor/ppo_kl"] == pytest.approx(
        float((out.batch["old_log_probs"] - logp_all)[on].mean()), rel=1e-5
    )
    assert final["actor/ief_token_frac"] == pytest.approx(float(ief.sum() / mask.sum()))
    assert not any(k.startswith("actor/icpo_sum/") for k in final)


@pytest.mark.parametrize("released", [False, True])
def test_loss_averaging_over_micro_batches_matches_the_stated_normalisation(
    tokenizer, train_parquet, released
):
    """The summed micro-batch losses verl backpropagates: one token-mean over the mini-batch by default, the
    mean of per-micro-batch token-means with icpo.released_loss_agg (micro_batch_normalisation)."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine.utils import prepare_micro_batches
    from verl.workers.utils.padding import no_padding_2_padding

    from icpo_core.algorithm.losses import compute_actor_loss
    from icpo_core.config import AlgorithmParams
    from icpo_core.engines.verl.losses import icpo_ppo_loss

    out, td = _actor_data(tokenizer, train_parquet, ief_rows=[1, 6])
    # unequal response lengths per micro-batch, so the two conventions differ
    lengths = [8, 8, 2, 2, 5, 5, 1, 3]
    for i, n in enumerate(lengths):
        out.batch["response_mask"][i, n:] = 0
    from verl.workers.utils.padding import left_right_2_no_padding

    td = left_right_2_no_padding(out.to_tensordict())
    model_output, _ = _fake_model_output(td, requires_grad=False)
    logp_all = no_padding_2_padding(model_output["log_probs"], td)
    td["log_probs_full"] = model_output["log_probs"]
    n_tok = int(out.batch["response_mask"].sum())
    tu.assign_non_tensor(td, dp_size=1, batch_num_tokens=None if released else n_tok, global_batch_size=8)
    tu.assign_non_tensor(td, use_dynamic_bsz=False, micro_batch_size_per_gpu=2)
    micro, _ = prepare_micro_batches(td)
    total = sum(
        float(
            icpo_ppo_loss(_actor_cfg(), {"log_probs": mb["log_probs_full"]}, mb, released_loss_agg=released)[
                0
            ]
        )
        for mb in micro
    )
    b, algo = out.batch, AlgorithmParams(n_off=1)
    want = 0.0
    for s in range(0, 8, 2):
        loss, _ = compute_actor_loss(
            logp_all[s : s + 2], b["old_log_probs"][s : s + 2], b["ref_log_prob"][s : s + 2], None,
            b["advantages"][s : s + 2, 0], b["response_mask"][s : s + 2], b["icpo_ief"][s : s + 2].bool(), algo,
            batch_num_tokens=None if released else n_tok,
        )  # fmt: skip
        want += float(loss) * (2 / 8 if released else 1.0)
    assert total == pytest.approx(want, rel=1e-5)
    whole, _ = compute_actor_loss(
        logp_all, b["old_log_probs"], b["ref_log_prob"], None, b["advantages"][:, 0], b["response_mask"],
        b["icpo_ief"].bool(), algo,
    )  # fmt: skip
    assert (total == pytest.approx(float(whole), rel=1e-5)) is not released
