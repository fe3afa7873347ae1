"""The actor loss installed with set_loss_fn, on verl's real actor data path (DataProto -> TensorDict ->
no-padding), forward and backward on CPU; equal to verl's stock ppo_loss when no row is IEF."""

from __future__ import annotations

import typing

import pytest
import torch
from verl_fixtures import fake_generate, load_batch

from icpo_core.config import AlgorithmParams


def _actor_cfg(**kw):
    from verl.workers.config import FSDPActorConfig

    base = dict(
        strategy="fsdp", ppo_mini_batch_size=2, ppo_micro_batch_size_per_gpu=2, rollout_n=4, clip_ratio_low=0.2,
        clip_ratio_high=0.2, use_kl_loss=True, kl_loss_coef=0.001, kl_loss_type="low_var_kl",
    )  # fmt: skip
    base.update(kw)
    return FSDPActorConfig(**base)


def _actor_data(tokenizer, train_parquet, ief_rows, flag=True):
    """A trainer batch as _update_actor sends it: padded DataProto -> TensorDict -> no-padding + batch info.
    ``flag`` false: no ``icpo_ief`` key at all, as in a GRPO run's batches."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    batch = load_batch(tokenizer, train_parquet, 2).repeat(4, interleave=True)
    out = fake_generate(tokenizer)(batch)
    g = torch.Generator().manual_seed(0)
    n, r = out.batch["responses"].shape
    out.batch["old_log_probs"] = -torch.rand(n, r, generator=g) * 2
    out.batch["ref_log_prob"] = out.batch["old_log_probs"] + 0.1 * torch.randn(n, r, generator=g)
    out.batch["advantages"] = torch.randn(n, 1, generator=g) * out.batch["response_mask"]
    if flag:
        ief = torch.zeros(n)
        ief[list(ief_rows)] = 1.0
        out.batch["icpo_ief"] = ief
    td = left_right_2_no_padding(out.to_tensordict())
    tu.assign_non_tensor(td, dp_size=1, batch_num_tokens=None, global_batch_size=None)
    return out, td


def _fake_model_output(td, requires_grad=True, entropy=False):
    """Per-token log-probs (and with ``entropy`` token entropies) over all valid tokens (prompt + response), as
    the FSDP engine returns them."""
    ids = td["input_ids"]
    total = ids.values().numel()
    logp = (-torch.rand(total, generator=torch.Generator().manual_seed(1)) * 2).requires_grad_(requires_grad)
    out = {"log_probs": torch.nested.nested_tensor_from_jagged(logp, offsets=ids.offsets())}
    if entropy:
        ent = torch.rand(total, generator=torch.Generator().manual_seed(2)) * 3
        out["entropy"] = torch.nested.nested_tensor_from_jagged(ent, offsets=ids.offsets())
    return out, logp


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


@pytest.mark.parametrize("flag", ["all_false", "absent"])
def test_no_ief_rows_equals_verl_ppo_loss(tokenizer, train_parquet, flag):
    """GRPO is the n_off = 0 case: with no IEF row (an all-false flag, or none at all as in a GRPO run's batches)
    the project's loss equals verl's stock ppo_loss (vanilla): value and gradient, entropy and KL terms on."""
    from verl.workers.utils.losses import ppo_loss

    from icpo_core.engines.verl.losses import icpo_ppo_loss

    _, td = _actor_data(tokenizer, train_parquet, ief_rows=[], flag=flag == "all_false")
    cfg = {"entropy_coeff": 0.01, "clip_ratio_high": 0.28}
    mo, leaf = _fake_model_output(td, entropy=True)
    ours, _ = icpo_ppo_loss(_actor_cfg(**cfg), mo, td, off_policy_rows=flag == "all_false")
    mo_v, leaf_v = _fake_model_output(td, entropy=True)
    theirs, _ = ppo_loss(_actor_cfg(**cfg), mo_v, td)
    torch.testing.assert_close(ours, theirs)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(leaf.grad, leaf_v.grad)
    assert leaf.grad.abs().sum() > 0


def test_a_run_with_off_policy_rows_refuses_a_batch_without_the_flag(tokenizer, train_parquet):
    """ICPO / LUFFY (``off_policy_rows``): a batch without ``icpo_ief`` is an error, never all on-policy."""
    from icpo_core.engines.verl.losses import icpo_ppo_loss

    _, td = _actor_data(tokenizer, train_parquet, ief_rows=[], flag=False)
    mo, _ = _fake_model_output(td, requires_grad=False)
    with pytest.raises(ValueError, match="icpo_ief"):
        icpo_ppo_loss(_actor_cfg(), mo, td)


@pytest.mark.parametrize("global_batch", [False, True])
@pytest.mark.parametrize(
    "loss_agg_mode", typing.get_args(AlgorithmParams.model_fields["loss_agg_mode"].annotation)
)
def test_an_all_false_ief_mask_is_verls_vanilla_policy_loss(loss_agg_mode, global_batch):
    """With no IEF row the project's policy loss is verl 0.9.1's ``compute_policy_loss_vanilla`` (GRPO's
    dual-clip PPO) on random tensors where both clips bind: the same value, gradient and clip metrics, for
    every loss_agg_mode a run can set, per micro-batch and with verl's global-batch normalisation."""
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

    from icpo_core.engines.verl.losses import icpo_policy_loss_fn

    g = torch.Generator().manual_seed(0)
    b, t = 8, 16
    mask = (torch.arange(t)[None, :] < torch.randint(2, t + 1, (b,), generator=g)[:, None]).float()
    old = -torch.rand(b, t, generator=g) * 3
    logp = old + torch.randn(
        b, t, generator=g
    )  # ratios from ~0.1 to ~10: the PPO clip and the dual clip bind
    adv = (torch.randn(b, 1, generator=g) * 2).expand(b, t) * mask
    cfg = _actor_cfg(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0, loss_agg_mode=loss_agg_mode)
    if global_batch:  # as the engine sets it: two ranks, this micro-batch a part of the mini-batch
        cfg.global_batch_info.update(
            dp_size=2, batch_num_tokens=int(mask.sum()) * 3, global_batch_size=b * 3, loss_scale_factor=None
        )
    ours_lp, theirs_lp = logp.clone().requires_grad_(True), logp.clone().requires_grad_(True)
    ours, ours_m = icpo_policy_loss_fn(
        old, ours_lp, adv, mask, loss_agg_mode, cfg, ief_mask=torch.zeros(b, dtype=torch.bool)
    )
    theirs, theirs_m = compute_policy_loss_vanilla(old, theirs_lp, adv, mask, loss_agg_mode, cfg)
    torch.testing.assert_close(ours, theirs)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours_lp.grad, theirs_lp.grad)
    for key in ("actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/ppo_kl"):
        assert ours_m[key] == pytest.approx(theirs_m[key], rel=1e-5, abs=1e-7), key
    assert theirs_m["actor/pg_clipfrac"] > 0.1 and theirs_m["actor/pg_clipfrac_lower"] > 0  # not vacuous


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


def test_a_grpo_run_gets_the_project_loss_and_its_algorithm_keys(
    tmp_path, monkeypatch, tokenizer, train_parquet
):
    """verl used to install the project's loss only when n_off > 0, so a GRPO run with ``released_loss_agg: true``
    or ``clip_on_policy: false`` silently ran stock verl's loss. Now ``RayICPOTrainer.init_workers`` installs it
    on every run; for such a GRPO config the installed loss reads both keys (the summed micro-batch losses are
    the released per-micro-batch averaging of the unclipped objective, as icpo_core.algorithm states it)."""
    from pathlib import Path

    import ray
    import yaml
    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine.utils import prepare_micro_batches
    from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

    from icpo_core.algorithm.losses import compute_actor_loss
    from icpo_core.config import parse_params
    from icpo_core.engines.verl import overrides as ov
    from icpo_core.engines.verl.losses import icpo_ppo_loss
    from icpo_core.engines.verl.trainer import RayICPOTrainer

    root = Path(__file__).resolve().parents[3]
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["runs"]["grpo"] = {"n_off": 0, "released_loss_agg": True, "clip_on_policy": False}
    params = parse_params(raw)
    algo = params.run_algorithm("grpo")
    overrides = [o for o in ov.override_list(params, "grpo", tmp_path) if not o.startswith("hydra.")]
    with initialize_config_dir(config_dir=str(Path(ov.__file__).parent / "config"), version_base=None):
        cfg = compose("icpo_trainer", overrides=overrides)

    class WorkerGroup:
        loss_fn = None

        def set_loss_fn(self, fn):
            self.loss_fn = ray.cloudpickle.loads(ray.cloudpickle.dumps(fn))  # it travels to the workers

    monkeypatch.setattr(RayPPOTrainer, "init_workers", lambda self: None)
    trainer = RayICPOTrainer.__new__(RayICPOTrainer)
    trainer.config, trainer.actor_rollout_wg = cfg, WorkerGroup()
    trainer.init_workers()
    fn = trainer.actor_rollout_wg.loss_fn
    assert fn is not None and fn.func is icpo_ppo_loss
    assert fn.keywords["released_loss_agg"] is True and fn.keywords["clip_on_policy"] is False
    assert fn.keywords["off_policy_rows"] is False  # GRPO batches carry no icpo_ief flag

    # the installed loss on a GRPO batch (no icpo_ief key), micro-batches of unequal response lengths
    out, _ = _actor_data(tokenizer, train_parquet, ief_rows=[], flag=False)
    for i, n in enumerate([8, 8, 2, 2, 5, 5, 1, 3]):
        out.batch["response_mask"][i, n:] = 0
    out.batch["old_log_probs"] -= 1.0  # ratios far above 1 + eps: the PPO clip would bind
    td = left_right_2_no_padding(out.to_tensordict())
    mo, _ = _fake_model_output(td, requires_grad=False)
    logp = no_padding_2_padding(mo["log_probs"], td)
    td["log_probs_full"] = mo["log_probs"]
    n_tok = int(out.batch["response_mask"].sum())
    tu.assign_non_tensor(td, dp_size=1, batch_num_tokens=n_tok, global_batch_size=8)
    tu.assign_non_tensor(td, use_dynamic_bsz=False, micro_batch_size_per_gpu=2)
    micro, _ = prepare_micro_batches(td)
    total = sum(float(fn(model_output={"log_probs": mb["log_probs_full"]}, data=mb)[0]) for mb in micro)
    b, none = out.batch, torch.zeros(8, dtype=torch.bool)
    want = sum(
        float(
            compute_actor_loss(
                logp[s : s + 2], b["old_log_probs"][s : s + 2], b["ref_log_prob"][s : s + 2], None,
                b["advantages"][s : s + 2, 0], b["response_mask"][s : s + 2], none[s : s + 2], algo,
            )[0]
        )
        * 2 / 8
        for s in range(0, 8, 2)
    )  # fmt: skip
    assert total == pytest.approx(want, rel=1e-5)
    stock, _ = compute_actor_loss(
        logp, b["old_log_probs"], b["ref_log_prob"], None, b["advantages"][:, 0], b["response_mask"], none,
        algo.model_copy(update={"released_loss_agg": False, "clip_on_policy": True}),
    )  # fmt: skip
    assert abs(total - float(stock)) > 1e-3  # what stock verl's loss would have trained instead
