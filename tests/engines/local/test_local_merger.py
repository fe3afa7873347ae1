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
