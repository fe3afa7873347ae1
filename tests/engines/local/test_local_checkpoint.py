"""verl actor layout, atomic writes, pruning, and a resume that restores weights, optimizer and RNG."""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from icpo_core import checkpoint_layout as layout
from icpo_core.engines.local import checkpoint as ckpt


def _train_once(model, opt):
    loss = sum(p.square().sum() for p in model.parameters())
    loss.backward()
    opt.step()
    opt.zero_grad()


def test_layout_roundtrip_and_pruning(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    root = tmp_path / "ckpt"
    (root / ".global_step_9.abc.tmp").mkdir(parents=True)  # left over by a killed write
    for step in (1, 2, 3):
        _train_once(model, opt)
        torch.manual_seed(100 + step)
        ckpt.save_checkpoint(
            root,
            step,
            model=model,
            optimizer=opt,
            tokenizer=tok,
            resume_state={"data_pos": 7 * step},
            max_to_keep=2,
        )
    assert layout.list_steps(root) == [2, 3]
    assert (root / layout.LATEST_FILE).read_text().strip() == "3"
    assert not list(root.glob(".global_step_*"))
    actor = layout.actor_dir(root, 3)
    for name in ("model", "optim", "extra_state"):
        assert (actor / f"{name}_world_size_1_rank_0.pt").is_file()
    assert json.loads((actor / "fsdp_config.json").read_text()) == {"FSDP_version": 1, "world_size": 1}
    assert (actor / "huggingface" / "config.json").is_file()
    assert (actor / "huggingface" / "tokenizer.json").is_file()
    extra = torch.load(actor / "extra_state_world_size_1_rank_0.pt", weights_only=False)
    assert set(extra) >= {"lr_scheduler", "rng", "icpo"}

    saved = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = opt.state_dict()["state"][0]["exp_avg"].clone()

    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    torch.manual_seed(0)
    state = ckpt.load_checkpoint(root, layout.latest_step(root), model=fresh, optimizer=fresh_opt)
    assert state == {"data_pos": 21, "step": 3}
    assert all(torch.equal(saved[k], v) for k, v in fresh.state_dict().items())
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], saved_opt)


def test_rng_state_restored(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    opt = torch.optim.AdamW(model.parameters())
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    ckpt.save_checkpoint(
        tmp_path, 1, model=model, optimizer=opt, tokenizer=tok, resume_state={}, max_to_keep=1
    )
    after = (torch.rand(2), np.random.random(), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ckpt.load_checkpoint(tmp_path, 1)
    assert torch.equal(torch.rand(2), after[0])
    assert np.random.random() == after[1]
    assert random.random() == after[2]


def test_latest_ignores_incomplete_folders(tmp_path):
    (tmp_path / "global_step_5" / "actor").mkdir(parents=True)  # no extra_state: incomplete
    assert layout.latest_step(tmp_path) is None
    (tmp_path / layout.LATEST_FILE).write_text("5\n")
    assert layout.latest_step(tmp_path) is None


def test_final_checkpoint_holds_the_weights_once_in_the_hugging_face_layout(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train_once(model, opt)
    root = tmp_path / "ckpt"
    actor = ckpt.save_checkpoint(
        root,
        5,
        model=model,
        optimizer=opt,
        tokenizer=tok,
        resume_state={"data_pos": 3},
        max_to_keep=1,
        final=True,
    )
    assert layout.latest_step(root) == 5  # complete, as verl's layout counts it (the extra state is there)
    assert not list(actor.glob("model_*.pt")) and not list(actor.glob("optim_*.pt"))
    assert [f.name for f in layout.weight_files(actor)] == ["model.safetensors"]
    # the folder is a Hugging Face model as it stands: what merge links and the bench loads
    as_hf = AutoModelForCausalLM.from_pretrained(actor / "huggingface")
    trained = model.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in as_hf.state_dict().items())
    assert as_hf.dtype == torch.float32

    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert ckpt.load_checkpoint(root, 5, model=fresh) == {"data_pos": 3, "step": 5}
    loaded = fresh.state_dict()
    assert all(torch.equal(trained[k], loaded[k]) for k in trained)  # the tied LM head included
    assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr()


def test_damaged_final_weights_name_the_file(tiny_model_dir, tmp_path):
    import pytest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icpo_core.errors import DataError

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    opt = torch.optim.AdamW(model.parameters())
    actor = ckpt.save_checkpoint(
        tmp_path, 1, model=model, optimizer=opt, tokenizer=tok, resume_state={}, max_to_keep=1, final=True
    )
    weights = actor / "huggingface" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(DataError, match=r"model\.safetensors: damaged checkpoint \(cannot be read"):
        ckpt.load_checkpoint(tmp_path, 1, model=model)
