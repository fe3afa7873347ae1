"""verl's FSDP merger keeps fp32 checkpoints exact through our subclass; the stock one rounds them to bf16."""

from __future__ import annotations

import json

import torch

from icpo_core.engines.local import checkpoint as ckpt
from icpo_core.engines.local.merger import merge_checkpoint


def test_merge_is_exact_for_fp32_and_verl_stock_would_round(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # an update of the size lr 1e-6 makes: below bf16's resolution
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-6)
    opt = torch.optim.AdamW(model.parameters())
    actor = ckpt.save_checkpoint(
        tmp_path / "ckpt", 1, model=model, optimizer=opt, tokenizer=tok, resume_state={}, max_to_keep=1
    )
    trained = model.state_dict()

    merge_checkpoint(actor, tmp_path / "keep", "keep")
    kept = AutoModelForCausalLM.from_pretrained(tmp_path / "keep")
    assert json.loads((tmp_path / "keep" / "config.json").read_text())["dtype"] == "float32"
    assert kept.dtype == torch.float32
    assert all(torch.equal(trained[k], v) for k, v in kept.state_dict().items())
    AutoTokenizer.from_pretrained(tmp_path / "keep")

    merge_checkpoint(actor, tmp_path / "stock", "bfloat16")  # verl's FSDPModelMerger, unchanged
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "stock", dtype=torch.float32).state_dict()
    w = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(stock[w], trained[w])
    assert torch.equal(stock[w], trained[w].bfloat16().float())


def _final_and_shard_checkpoints(tiny_model_dir, tmp_path):
    """The same trained weights as a final checkpoint (Hugging Face weights) and a mid-run one (model shard)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-6)
    opt = torch.optim.AdamW(model.parameters())
    kw = dict(model=model, optimizer=opt, tokenizer=tok, resume_state={}, max_to_keep=1)
    final = ckpt.save_checkpoint(tmp_path / "final", 2, final=True, **kw)
    shard = ckpt.save_checkpoint(tmp_path / "shard", 2, **kw)
    return model, final, shard


def test_a_final_checkpoint_is_linked_and_equals_the_merged_shards(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, GenerationConfig

    model, final, shard = _final_and_shard_checkpoints(tiny_model_dir, tmp_path)
    merge_checkpoint(final, tmp_path / "linked", "keep")
    merge_checkpoint(shard, tmp_path / "merged", "keep")  # verl's merger (dtype kept)
    src = final / "huggingface" / "model.safetensors"
    out = tmp_path / "linked" / "model.safetensors"
    assert out.stat().st_ino == src.stat().st_ino and src.stat().st_nlink == 2  # one copy on disk
    linked = AutoModelForCausalLM.from_pretrained(tmp_path / "linked")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert linked.dtype == merged.dtype == torch.float32
    a, b = linked.state_dict(), merged.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(model.state_dict()[k], a[k]) for k in a)
    assert (
        GenerationConfig.from_pretrained(tmp_path / "linked").to_dict()
        == GenerationConfig.from_pretrained(tmp_path / "merged").to_dict()
    )
    assert json.loads((tmp_path / "linked" / "config.json").read_text())["dtype"] == "float32"


def test_a_final_checkpoint_merged_to_bf16_is_cast_not_linked(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model, final, shard = _final_and_shard_checkpoints(tiny_model_dir, tmp_path)
    merge_checkpoint(final, tmp_path / "bf16", "bfloat16")
    merge_checkpoint(shard, tmp_path / "stock", "bfloat16")  # verl's stock merger
    src = final / "huggingface" / "model.safetensors"
    assert (tmp_path / "bf16" / "model.safetensors").stat().st_ino != src.stat().st_ino
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    cast = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "stock")
    assert cast.dtype == torch.bfloat16
    a, b = cast.state_dict(), stock.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(model.state_dict()[k].bfloat16(), a[k]) for k in a)
