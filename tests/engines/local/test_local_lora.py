"""LoRA in the local engine on a tiny random model: only adapters train, the reference is the base model with no
second copy, seeded init, exact resume, adapters-only checkpoints, and merges equal to the peft forward."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from local_helpers import parity_reward, randomise_adapters

from icpo_core import checkpoint_layout as layout
from icpo_core.config import LoraParams
from icpo_core.engines.local import checkpoint as ckpt
from icpo_core.engines.local import lora
from icpo_core.engines.local import step as step_mod
from icpo_core.engines.local.logprobs import batched_log_probs
from icpo_core.engines.local.merger import merge_checkpoint
from icpo_core.engines.local.trainer import LocalTrainer, train_local
from icpo_core.errors import DataError

LORA = {"enabled": True, "rank": 4, "alpha": 8}


def _plain(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _plain_name(key: str) -> str:
    return key.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_adapter_init_is_seeded_and_leaves_the_callers_rng_alone(tiny_model_dir):
    cfg = LoraParams(**LORA)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = lora.wrap(_plain(tiny_model_dir), cfg, seed=0)
    assert torch.equal(torch.get_rng_state(), before)
    b = lora.wrap(_plain(tiny_model_dir), cfg, seed=0)
    c = lora.wrap(_plain(tiny_model_dir), cfg, seed=1)
    sa, sb, sc = (lora.adapter_state_dict(m) for m in (a, b, c))
    a_keys = [k for k in sa if ".lora_A." in k]
    assert a_keys and len(sa) == 2 * len(a_keys)  # A and B on every targeted module
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any(torch.equal(sa[k], sc[k]) for k in a_keys)
    # B starts at zero: the wrapped model computes exactly what the base model computes
    ids = torch.randint(0, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_logits(a, ids), _logits(_plain(tiny_model_dir), ids))
    targets = {k.split(".")[-4] for k in a_keys}
    assert targets == set(cfg.target_modules)


def test_lora_trains_only_the_adapters_without_a_reference_copy(tiny_project, monkeypatch):
    root, params = tiny_project(train={"lora": LORA, "lr": 1e-2}, algorithm={"n_on": 4})
    copied: list[str] = []
    real_deepcopy = copy.deepcopy

    def spy(obj, *args, **kwargs):
        if isinstance(obj, torch.nn.Module):
            copied.append(type(obj).__name__)
        return real_deepcopy(obj, *args, **kwargs)

    monkeypatch.setattr(step_mod.copy, "deepcopy", spy)
    trainer = LocalTrainer(params, "icpo", root=root, reward_fn=parity_reward, progress=False)
    trainer.setup()
    assert params.run_algorithm("icpo").use_kl_loss
    assert trainer.ref_model is None and copied == []  # no second copy of the weights
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    adapters = {id(p) for n, p in trainer.model.named_parameters() if lora.is_adapter_key(n)}
    assert optimised == adapters and adapters

    base = _plain(root / "models" / "base").state_dict()
    batch, _ = trainer.rollout_step(1, trainer.prompts[:2])
    assert batch.ref_log_prob is not None and batch.advantages.abs().sum() > 0
    batch.old_log_prob = batched_log_probs(trainer.model, batch.seqs, 64)
    for _ in range(3):
        out = trainer.update(batch)
    assert out["actor/grad_norm"] > 0
    state = trainer.model.state_dict()
    frozen = {_plain_name(k): v for k, v in state.items() if not lora.is_adapter_key(k)}
    assert set(frozen) == set(base)
    assert all(torch.equal(frozen[k], base[k]) for k in base), "a base weight moved"
    b_mats = [v for k, v in state.items() if ".lora_B." in k]
    assert all(v.abs().max() > 0 for v in b_mats), "every adapter should have been updated"


def test_reference_log_probs_are_the_base_models(tiny_project):
    root, params = tiny_project(train={"lora": LORA})
    trainer = LocalTrainer(params, "grpo", root=root, reward_fn=parity_reward, progress=False)
    trainer.setup()
    randomise_adapters(trainer.model, seed=5, scale=0.2)
    batch, _ = trainer.rollout_step(1, trainer.prompts[:2])
    base_lp = batched_log_probs(_plain(root / "models" / "base"), batch.seqs, 64)
    mask = batch.seqs.response_mask.bool()
    assert torch.allclose(batch.ref_log_prob[mask], base_lp[mask], atol=1e-6)
    # outside the reference block the adapters are on again: the policy is not the base model
    policy_lp = batched_log_probs(trainer.model, batch.seqs, 64)
    assert (policy_lp - base_lp)[mask].abs().max() > 1e-2


def _comparable(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if not k.startswith(("timing/", "perf/step", "perf/tokens_per"))}
        for r in rows
    ]


def test_lora_run_resumes_to_the_same_result(tiny_project):
    """2 steps + resume to 4 == 4 uninterrupted steps: adapters, AdamW state, data order and metrics."""
    train = {"steps": 4, "save_freq": 1, "lora": {**LORA, "dropout": 0.1}, "lr": 1e-2}  # dropout: RNG too
    root_a, params_a = tiny_project("a", train=train)
    root_b, params_b = tiny_project("b", train=train)
    full = train_local(params_a, "icpo", root=root_a, reward_fn=parity_reward, progress=False)
    assert full["lora"] is True and full["trainable_params"] > 0
    assert full["machine"]["cores"] >= 1 and full["machine"]["cpu_bf16"] in {"amx", "avx512_bf16", "none"}
    assert json.loads((root_a / "metrics" / "train_icpo.json").read_text())["machine"] == full["machine"]
    first = train_local(params_b, "icpo", root=root_b, reward_fn=parity_reward, progress=False, stop_after=2)
    assert first["steps"] == 2
    second = train_local(params_b, "icpo", root=root_b, reward_fn=parity_reward, progress=False)
    assert second["resumed_from_step"] == 2 and second["steps"] == 4
    assert _comparable(root_a / "metrics" / "steps_icpo.jsonl") == _comparable(
        root_b / "metrics" / "steps_icpo.jsonl"
    )
    actor_a = layout.actor_dir(root_a / "runs/icpo/checkpoints", 4)
    actor_b = layout.actor_dir(root_b / "runs/icpo/checkpoints", 4)
    wa = torch.load(actor_a / "model_world_size_1_rank_0.pt")
    wb = torch.load(actor_b / "model_world_size_1_rank_0.pt")
    assert wa and all(lora.is_adapter_key(k) for k in wa)  # adapters only
    assert sum(v.numel() for v in wa.values()) == full["trainable_params"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(wa[k].abs().max() > 0 for k in wa if ".lora_B." in k)
    # a finished run's last checkpoint leaves out the AdamW state (nothing resumes from it): equal weights after
    # two resumed steps are what shows the resumed AdamW state was the uninterrupted run's
    assert not (actor_a / "optim_world_size_1_rank_0.pt").exists()
    assert json.loads((actor_a / lora.META_FILE).read_text()) == {
        "r": 4,
        "lora_alpha": 8,
        "task_type": "CAUSAL_LM",
    }


def test_a_full_checkpoint_is_refused_by_a_lora_model(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain = _plain(tiny_model_dir)
    ckpt.save_checkpoint(
        tmp_path, 1, model=plain, optimizer=torch.optim.AdamW(plain.parameters()), tokenizer=tok,
        resume_state={}, max_to_keep=1,
    )  # fmt: skip
    peft_model = lora.wrap(_plain(tiny_model_dir), LoraParams(**LORA), seed=0)
    with pytest.raises(DataError, match="not the adapters of this LoRA model"):
        ckpt.load_checkpoint(tmp_path, 1, model=peft_model)


def test_lora_checkpoint_is_smaller_than_a_full_one(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def saved_bytes(model, name):
        opt = torch.optim.AdamW(lora.trainable_parameters(model), lr=1e-3)
        sum(p.square().sum() for p in lora.trainable_parameters(model)).backward()
        opt.step()  # AdamW state exists for every optimised tensor
        actor = ckpt.save_checkpoint(
            tmp_path / name, 1, model=model, optimizer=opt, tokenizer=tok, resume_state={}, max_to_keep=1
        )
        return sum(f.stat().st_size for f in actor.glob("*.pt"))

    full = saved_bytes(_plain(tiny_model_dir), "full")
    adapters = saved_bytes(lora.wrap(_plain(tiny_model_dir), LoraParams(**LORA), seed=0), "lora")
    assert adapters < full / 3, (adapters, full)


def test_merged_weights_equal_the_peft_forward_and_leave_the_model_untouched(tiny_model_dir):
    peft_model = lora.wrap(_plain(tiny_model_dir), LoraParams(**LORA), seed=0).eval()
    randomise_adapters(peft_model, seed=1, scale=0.2)
    before = {k: v.clone() for k, v in peft_model.state_dict().items()}
    merged = lora.export_weights(peft_model)
    after = peft_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "exporting changed the training model"
    plain = _plain(tiny_model_dir)
    assert set(merged) == set(plain.state_dict())
    plain.load_state_dict(merged)
    ids = torch.randint(0, 200, (3, 11), generator=torch.Generator().manual_seed(2))
    want = _logits(peft_model, ids)
    assert (want - _logits(_plain(tiny_model_dir), ids)).abs().max() > 1e-2  # the adapters matter
    assert torch.allclose(_logits(plain, ids), want, atol=1e-5)
    # the adapters-only layout with the base weights passed separately merges to the same weights
    only = lora.adapter_state_dict(peft_model)
    base = _plain(tiny_model_dir).state_dict()
    again = lora.merge_lora_weights(only, LoraParams(**LORA).scaling, base=base)
    assert all(torch.equal(again[k], merged[k]) for k in merged)
    with pytest.raises(KeyError, match="no base weight"):
        lora.merge_lora_weights(only, 2.0)


def _lora_checkpoint(tiny_model_dir, root):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    peft_model = lora.wrap(_plain(tiny_model_dir), LoraParams(**LORA), seed=0).eval()
    randomise_adapters(peft_model, seed=3, scale=0.2)
    opt = torch.optim.AdamW(lora.trainable_parameters(peft_model))
    actor = ckpt.save_checkpoint(
        root, 1, model=peft_model, optimizer=opt, tokenizer=tok, resume_state={}, max_to_keep=1
    )
    return peft_model, actor


def test_merge_writes_a_plain_folder_equal_to_the_peft_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    peft_model, actor = _lora_checkpoint(tiny_model_dir, tmp_path / "ckpt")
    ids = torch.randint(0, 200, (3, 11), generator=torch.Generator().manual_seed(4))
    want = _logits(peft_model, ids)

    merge_checkpoint(actor, tmp_path / "merged", "keep", base_dir=tiny_model_dir)
    out = tmp_path / "merged"
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "lora_adapter"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert merged.dtype == torch.float32
    assert torch.allclose(_logits(merged, ids), want, atol=1e-5)

    # verl's default LoRA layout: the full peft state dict (base_layer + adapters), no base folder needed
    full = {k: v.detach().clone() for k, v in peft_model.state_dict().items()}
    torch.save(full, actor / "model_world_size_1_rank_0.pt")
    merge_checkpoint(actor, tmp_path / "verl_layout", "keep")
    verl_merged = AutoModelForCausalLM.from_pretrained(tmp_path / "verl_layout").eval()
    assert torch.allclose(_logits(verl_merged, ids), want, atol=1e-5)

    # bf16 (what the stage asks for on bf16 models): merged in fp32, then rounded once; still no peft files
    merge_checkpoint(actor, tmp_path / "bf16", "bfloat16")
    assert not (tmp_path / "bf16" / "lora_adapter").exists()
    bf16 = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.float32).state_dict()
    exported = lora.export_weights(peft_model)
    w = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(bf16[w], exported[w].bfloat16().float())


def test_an_adapters_only_checkpoint_needs_the_base_folder(tiny_model_dir, tmp_path):
    _, actor = _lora_checkpoint(tiny_model_dir, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="adapters-only LoRA checkpoint"):
        merge_checkpoint(actor, tmp_path / "merged", "keep")
