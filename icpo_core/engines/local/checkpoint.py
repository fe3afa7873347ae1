"""The local engine's checkpoints: verl's FSDP actor layout with one rank (:mod:`icpo_core.checkpoint_layout`, which
also finds, prunes and names them), written atomically, pruned to ``max_ckpt_to_keep``. This module reads and
writes the torch files.

It is what verl's ``FSDPCheckpointManager`` writes with one rank, so ``python -m verl.model_merger merge
--backend fsdp`` reads the local engine's checkpoints as it reads verl's. The ``icpo`` entry of the extra
state holds what a resume needs beyond verl's keys: step, data position, config fingerprint.

Disk: a finished run's last checkpoint (``final=True``) has no ``optim_*.pt`` (nothing trains from it, and
AdamW's state is twice the weights), and a full model's weights are saved once, in the Hugging Face layout under
``huggingface/`` instead of ``model_*.pt`` (verl's ``checkpoint.save_contents: [hf_model, extra]``): that folder
*is* the merged model, and ``icpo merge`` hard-links its files into ``runs/<run>/merged`` instead of writing a
second copy (a study of eight fp32 runs kept 4 GB twice before). :func:`load_weights` / :func:`load_checkpoint`
read either layout; verl's own merger needs the model shard, so it does not apply to a final checkpoint (nor is
it needed). LoRA checkpoints keep their adapters-only ``model_*.pt`` (the merge adds the base weights). The free
space is checked against :func:`estimate_bytes` before a write, and a write that still meets a full disk leaves no
folder behind (:class:`~icpo_core.io_utils.DiskFullError` naming the fix). A checkpoint file that cannot be read
raises a :class:`~icpo_core.errors.DataError` naming it.

A LoRA policy (a peft model) is saved as verl saves one with ``save_lora_only``: the model file holds only the
adapter tensors (peft names), the optimizer file their AdamW state, and ``lora_train_meta.json`` the rank and
alpha the merge needs; the base weights stay in models/base.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icpo_core import checkpoint_layout as layout
from icpo_core.engines.local import lora
from icpo_core.errors import DataError
from icpo_core.io_utils import (
    atomic_path,
    atomic_write_text,
    check_free_space,
    disk_full_error,
    free_bytes,
    is_disk_full,
)

log = logging.getLogger(__name__)


def get_rng_state() -> dict[str, Any]:
    """Same keys as verl's ``BaseCheckpointManager.get_rng_state`` (plus cuda when available)."""
    state: dict[str, Any] = {
        "cpu": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


_SLACK = 8 * 1024**2  # config, tokenizer, RNG state, filesystem overhead


def estimate_bytes(model: torch.nn.Module, *, with_optimizer: bool = True) -> int:
    """Bytes of one checkpoint: the saved tensors (adapters only for LoRA) plus AdamW's two moments of the
    trainable ones when ``with_optimizer``."""
    if lora.is_peft(model):
        saved = sum(v.numel() * v.element_size() for v in lora.adapter_state_dict(model).values())
    else:
        seen: set[int] = set()
        saved = 0
        for v in model.state_dict().values():
            if v.untyped_storage().data_ptr() not in seen:  # tied weights are saved once
                seen.add(v.untyped_storage().data_ptr())
                saved += v.numel() * v.element_size()
    optim = sum(2 * p.numel() * 4 for p in lora.trainable_parameters(model)) if with_optimizer else 0
    return saved + optim + _SLACK


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tokenizer: Any,
    resume_state: dict[str, Any],
    max_to_keep: int | None,
    final: bool = False,
) -> Path:
    """Write ``global_step_<step>`` atomically, then point the marker at it and prune old ones.

    ``final=True`` (a finished run's last checkpoint) leaves out the AdamW state and saves a full model's weights
    in the Hugging Face layout under ``huggingface/`` instead of ``model_*.pt`` (module docstring). The free space
    is checked first; a full disk mid-write raises :class:`~icpo_core.io_utils.DiskFullError` and leaves the
    previous checkpoints as they were."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    prev = layout.latest_step(root)
    fix = (
        f"free some space (or lower train.keep_checkpoints) and rerun: training resumes from step {prev}"
        if prev is not None
        else "free some space and rerun"
    )
    need = estimate_bytes(model, with_optimizer=not final)
    check_free_space(root, need, f"checkpoint step {step}", fix)
    target = layout.step_dir(root, step)
    try:
        with atomic_path(target) as tmp:
            actor = tmp / "actor"
            actor.mkdir(parents=True)
            hf = actor / layout.HF_DIR
            if lora.is_peft(model):
                (actor / lora.META_FILE).write_text(json.dumps(lora.train_meta(model), indent=4))
                torch.save(lora.adapter_state_dict(model), actor / f"model_{layout.WORLD}.pt")
            elif final:  # the weights once, as the merged model will be (merge links these files)
                model.save_pretrained(hf)
            else:
                torch.save(
                    {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    actor / f"model_{layout.WORLD}.pt",
                )
            if not final:
                torch.save(optimizer.state_dict(), actor / f"optim_{layout.WORLD}.pt")
            extra = {"lr_scheduler": None, "rng": get_rng_state(), "icpo": dict(resume_state, step=step)}
            torch.save(extra, actor / f"extra_state_{layout.WORLD}.pt")
            (actor / "fsdp_config.json").write_text(
                json.dumps({"FSDP_version": 1, "world_size": 1}, indent=4)
            )
            model.config.save_pretrained(hf)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(hf)
            tokenizer.save_pretrained(hf)
        atomic_write_text(root / layout.LATEST_FILE, f"{step}\n")
    except Exception as e:
        # torch's writer reports a full disk as assorted RuntimeErrors ("iostream error", "unexpected pos"):
        # a checkpoint that does not fit in what is free (the partial one is gone by now) is a full disk too
        if is_disk_full(e) or free_bytes(root) < need:
            raise disk_full_error(e, target, fix) from None
        raise
    layout.prune(root, max_to_keep)
    return layout.actor_dir(root, step)


def load_checkpoint(
    root: str | Path,
    step: int,
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load weights / optimizer / RNG of ``global_step_<step>`` in place; returns the ``icpo`` resume state."""
    actor = layout.actor_dir(root, step)
    extra = _load_file(actor / f"extra_state_{layout.WORLD}.pt", weights_only=False)
    if model is not None:
        state = load_weights(actor)
        try:
            load_model_state(model, state, actor)
        except (RuntimeError, ValueError) as e:
            raise _damaged(
                layout.weight_files(actor)[0], f"weights do not fit the model ({str(e)[:120]})"
            ) from None
    if optimizer is not None:
        try:
            optimizer.load_state_dict(_load_file(actor / f"optim_{layout.WORLD}.pt"))
        except (KeyError, ValueError, RuntimeError) as e:
            raise _damaged(
                actor / f"optim_{layout.WORLD}.pt", f"not this optimizer's state ({str(e)[:120]})"
            ) from None
    if restore_rng and extra.get("rng"):
        set_rng_state(extra["rng"])
    return dict(extra.get("icpo") or {})


def _damaged(path: Path, why: str) -> DataError:
    step_dir = path.parent.parent
    return DataError(
        f"{path}: damaged checkpoint ({why}); delete {step_dir} to resume from an older checkpoint "
        f"(or from scratch when it is the only one)"
    )


def _load_file(path: Path, weights_only: bool = True) -> Any:
    """``torch.load`` of one checkpoint file; a missing, truncated or corrupt file is a :class:`DataError`."""
    if not path.is_file():
        raise _damaged(path, "file missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # zip / unpickling errors of a cut or overwritten file
        raise _damaged(path, f"cannot be read: {type(e).__name__}: {str(e).splitlines()[0][:120]}") from None


def load_weights(actor: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a world-size-1 actor folder: ``model_*.pt``, or a final checkpoint's Hugging Face files
    (which, as ``save_pretrained`` writes them, hold a tied weight once); a damaged file is a :class:`DataError`."""
    actor = Path(actor)
    shard = actor / f"model_{layout.WORLD}.pt"
    hf_files = layout.hf_weight_files(actor)
    if shard.is_file() or not hf_files:
        return _load_file(shard)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in hf_files:
        try:
            state.update(load_file(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise _damaged(f, f"cannot be read: {type(e).__name__}: {str(e).splitlines()[0][:120]}") from None
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str | Path = "") -> None:
    """Load a checkpoint's weights: a full state dict (a tied weight may be there under one of its names only,
    as in Hugging Face files), or (peft model) exactly its adapter tensors."""
    if not lora.is_peft(model):
        result = model.load_state_dict(state, strict=False)
        names_of: dict[int, set[str]] = {}
        for k, v in model.state_dict().items():
            names_of.setdefault(v.untyped_storage().data_ptr(), set()).add(k)
        own = model.state_dict()
        missing = [
            k
            for k in result.missing_keys
            if not (names_of[own[k].untyped_storage().data_ptr()] & state.keys())
        ]
        if result.unexpected_keys or missing:
            raise ValueError(
                f"{where}: not this model's weights ({len(result.unexpected_keys)} unexpected keys, e.g. "
                f"{sorted(result.unexpected_keys)[:2]}; {len(missing)} missing, e.g. {sorted(missing)[:2]})"
            )
        return
    expected = {k for k in model.state_dict() if lora.is_adapter_key(k)}
    if set(state) != expected:
        extra, missing = sorted(set(state) - expected), sorted(expected - set(state))
        raise ValueError(
            f"{where}: not the adapters of this LoRA model ({len(extra)} unexpected keys, e.g. {extra[:2]}; "
            f"{len(missing)} missing, e.g. {missing[:2]})"
        )
    model.load_state_dict(state, strict=False)


def read_resume_state(root: str | Path, step: int) -> dict[str, Any]:
    """The ``icpo`` resume state of a checkpoint without loading weights."""
    return load_checkpoint(root, step, restore_rng=False)
