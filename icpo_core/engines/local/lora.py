"""LoRA for the local engine (peft): wrap the policy, run the reference pass with the adapters off, and merge.

- :func:`wrap` adds the adapters of ``train.lora`` to a causal LM, their random init seeded by the run's seed
  (the global RNG is left as it was, so the rest of the run draws what a full fine-tuning run draws);
- :func:`reference` is the frozen base model for the KL term: the SAME module with its adapters disabled, so a
  LoRA run holds one copy of the base weights;
- :func:`merge_lora_weights` is the pure merge ``W = W0 + (alpha / r) * B @ A`` on state dicts, in peft's key
  layout (``base_model.model.<path>.base_layer.weight``, ``<path>.lora_A.default.weight``) or verl's lora-only
  checkpoint layout (adapters only, base weights passed separately); it returns plain Hugging Face names and
  never writes into its inputs. :func:`export_weights` applies it to a live model (the vLLM weight push).

Checkpoints of a LoRA run keep only the adapter tensors plus ``lora_train_meta.json`` (rank and alpha), the
file verl's FSDP checkpoint manager writes next to a LoRA checkpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from icpo_core.config import LoraParams

ADAPTER = "default"  # peft's name of the one adapter
META_FILE = "lora_train_meta.json"  # verl's name: {"r", "lora_alpha", "task_type"}
_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>A|B)\.(?P<adapter>[^.]+)\.weight$")


def is_peft(model: Any) -> bool:
    """True for a peft-wrapped model (its state dict is in peft's layout)."""
    try:
        from peft import PeftModel
    except ImportError:  # peft not installed: no model can be a peft model
        return False
    return isinstance(model, PeftModel)


def is_adapter_key(name: str) -> bool:
    """A LoRA adapter tensor (verl's rule for its lora-only checkpoints: the name holds ``lora_``)."""
    return "lora_" in name


def peft_config(cfg: LoraParams) -> Any:
    """The ``peft.LoraConfig`` of ``train.lora`` (causal LM, no bias training, plain alpha / r scaling)."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.peft_target_modules,
        bias="none",
    )


def wrap(model: torch.nn.Module, cfg: LoraParams, seed: int) -> Any:
    """``model`` with the adapters of ``cfg`` (peft ``get_peft_model``); only the adapters require grad.

    A is drawn from a generator seeded with ``seed`` (B starts at zero, so the wrapped model computes what
    ``model`` computes); the caller's RNG state is restored afterwards.
    """
    from peft import get_peft_model

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        wrapped = get_peft_model(model, peft_config(cfg))
    return wrapped


@contextmanager
def reference(model: Any) -> Iterator[Any]:
    """The base model of a peft ``model`` (its adapters disabled for the block), or ``model`` itself."""
    if is_peft(model):
        with model.disable_adapter():
            yield model
    else:
        yield model


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates: the adapters of a LoRA model, every parameter otherwise."""
    return [p for p in model.parameters() if p.requires_grad]


def scaling_of(model: Any) -> float:
    """``alpha / r`` of a peft model's adapter (plain scaling only: no rsLoRA, no per-module patterns)."""
    cfg = model.peft_config[ADAPTER]
    if cfg.use_rslora or cfg.rank_pattern or cfg.alpha_pattern:
        raise ValueError("only plain LoRA scaling (alpha / r for every module) can be merged here")
    return cfg.lora_alpha / cfg.r


def train_meta(model: Any) -> dict[str, Any]:
    """What ``lora_train_meta.json`` holds (verl's format): rank, alpha, task type."""
    cfg = model.peft_config[ADAPTER]
    return {"r": int(cfg.r), "lora_alpha": int(cfg.lora_alpha), "task_type": "CAUSAL_LM"}


def read_meta(folder: str | Path) -> dict[str, Any] | None:
    """``lora_train_meta.json`` of a checkpoint's actor folder, or None for a full fine-tuning checkpoint."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    if int(meta.get("r", 0)) <= 0 or int(meta.get("lora_alpha", 0)) <= 0:
        raise ValueError(f"{path}: needs a positive 'r' and 'lora_alpha' (got {meta})")
    return meta


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of a peft model (peft's key names), detached, on CPU: what a checkpoint keeps."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if is_adapter_key(k)}


def merge_lora_weights(
    state_dict: Mapping[str, torch.Tensor],
    scaling: float,
    base: Mapping[str, torch.Tensor] | None = None,
    adapter: str = ADAPTER,
) -> dict[str, torch.Tensor]:
    """Plain Hugging Face weights with every adapter merged: ``W0 + scaling * B @ A`` per adapted module.

    ``state_dict`` is in peft's layout (base weights under ``.base_layer.``, adapters ``lora_A`` / ``lora_B``),
    or holds only the adapters when ``base`` (plain names) provides the rest. The sum is computed in float32 and
    stored in W0's dtype. New tensors are made for merged weights; the inputs are not modified.
    """
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        name = key.removeprefix(_PEFT_PREFIX)
        m = _LORA_KEY.match(name)
        if m:
            if m["adapter"] != adapter:
                raise ValueError(f"{key}: adapter {m['adapter']!r}, expected {adapter!r}")
            pairs.setdefault(m["module"], {})[m["which"]] = value
        elif is_adapter_key(name):
            raise ValueError(f"{key}: only LoRA A/B matrices of linear layers can be merged")
        else:
            out[name.replace(".base_layer.", ".")] = value
    for key, value in (base or {}).items():
        out.setdefault(key, value)
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{module}: lora_A and lora_B are both needed (got {sorted(ab)})")
        key = f"{module}.weight"
        if key not in out:
            raise KeyError(
                f"{key}: no base weight for the adapter of {module} (pass the base model's weights)"
            )
        w0 = out[key]
        delta = ab["B"].to(w0.device, torch.float32) @ ab["A"].to(w0.device, torch.float32)
        if delta.shape != w0.shape:
            raise ValueError(f"{module}: B @ A is {tuple(delta.shape)}, the weight {tuple(w0.shape)}")
        out[key] = (w0.float() + scaling * delta).to(w0.dtype)
    return out


@torch.no_grad()
def export_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights an inference engine needs, plain names: the state dict, adapters merged for a peft model."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return merge_lora_weights(state, scaling_of(model)) if is_peft(model) else state


def load_base_weights(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face folder's ``*.safetensors`` files (plain names), on CPU."""
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(f, device="cpu"))
    return out
