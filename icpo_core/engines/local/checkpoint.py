"""Checkpoints in verl's FSDP actor layout, written atomically, pruned to ``max_ckpt_to_keep``.

```
<root>/latest_checkpointed_iteration.txt          # "N", written after global_step_N is complete
<root>/global_step_N/actor/model_world_size_1_rank_0.pt        # full state dict (world size 1: no shards)
<root>/global_step_N/actor/optim_world_size_1_rank_0.pt        # AdamW state
<root>/global_step_N/actor/extra_state_world_size_1_rank_0.pt  # verl's {lr_scheduler, rng} + "icpo" resume state
<root>/global_step_N/actor/fsdp_config.json                    # {"FSDP_version": 1, "world_size": 1}
<root>/global_step_N/actor/lora_train_meta.json                 # LoRA runs only: {"r", "lora_alpha", "task_type"}
<root>/global_step_N/actor/huggingface/                         # config, generation config, tokenizer
```

This is what verl's ``FSDPCheckpointManager`` writes with one rank, so ``python -m verl.model_merger merge
--backend fsdp`` reads the local engine's checkpoints as it reads verl's. The ``icpo`` entry of the extra
state holds what a resume needs beyond verl's keys: step, data position, config fingerprint.

A LoRA policy (a peft model) is saved as verl saves one with ``save_lora_only``: the model file holds only the
adapter tensors (peft names), the optimizer file their AdamW state, and ``lora_train_meta.json`` the rank and
alpha the merge needs; the base weights stay in models/base.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icpo_core.engines.local import lora
from icpo_core.io_utils import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

LATEST_FILE = "latest_checkpointed_iteration.txt"
_STEP_DIR = re.compile(r"^global_step_(\d+)$")
_EXTRA_STATE = re.compile(r"^extra_state_world_size_(\d+)_rank_(\d+)\.pt$")
WORLD = "world_size_1_rank_0"


def actor_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"global_step_{step}" / "actor"


def is_complete(actor: str | Path) -> bool:
    """True when an actor folder holds the extra state of every rank of some world size W.

    verl's ``FSDPCheckpointManager`` writes ``extra_state_world_size_{W}_rank_{r}.pt`` for r = 0..W-1 (the
    local engine is W = 1); a folder missing a rank (a killed multi-rank save) is not complete.
    """
    actor = Path(actor)
    if not actor.is_dir():
        return False
    ranks: dict[int, set[int]] = {}
    for f in actor.iterdir():
        m = _EXTRA_STATE.match(f.name)
        if m and f.is_file():
            ranks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return any(w > 0 and got >= set(range(w)) for w, got in ranks.items())


def list_steps(root: str | Path) -> list[int]:
    """Steps of the complete ``global_step_N`` folders under ``root`` (:func:`is_complete`), ascending."""
    root = Path(root)
    if not root.is_dir():
        return []
    steps = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and is_complete(p / "actor"):
            steps.append(int(m.group(1)))
    return sorted(steps)


def latest_step(root: str | Path) -> int | None:
    """The step in ``latest_checkpointed_iteration.txt`` if its folder is complete, else the newest complete one."""
    root = Path(root)
    steps = list_steps(root)
    marker = root / LATEST_FILE
    if marker.is_file():
        try:
            n = int(marker.read_text().strip())
            if n in steps:
                return n
        except ValueError:
            pass
    return steps[-1] if steps else None


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


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tokenizer: Any,
    resume_state: dict[str, Any],
    max_to_keep: int | None,
) -> Path:
    """Write ``global_step_<step>`` atomically, then point the marker at it and prune old ones."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(root / f"global_step_{step}") as tmp:
        actor = tmp / "actor"
        actor.mkdir(parents=True)
        if lora.is_peft(model):
            state_dict = lora.adapter_state_dict(model)
            (actor / lora.META_FILE).write_text(json.dumps(lora.train_meta(model), indent=4))
        else:
            state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state_dict, actor / f"model_{WORLD}.pt")
        torch.save(optimizer.state_dict(), actor / f"optim_{WORLD}.pt")
        extra = {"lr_scheduler": None, "rng": get_rng_state(), "icpo": dict(resume_state, step=step)}
        torch.save(extra, actor / f"extra_state_{WORLD}.pt")
        (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 1, "world_size": 1}, indent=4))
        hf = actor / "huggingface"
        model.config.save_pretrained(hf)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(hf)
        tokenizer.save_pretrained(hf)
    atomic_write_text(root / LATEST_FILE, f"{step}\n")
    prune(root, max_to_keep)
    return actor_dir(root, step)


def prune(root: str | Path, max_to_keep: int | None) -> None:
    """Delete all but the newest ``max_to_keep`` checkpoints, and temporaries left by killed writes."""
    root = Path(root)
    for p in root.glob(".global_step_*"):
        shutil.rmtree(p, ignore_errors=True)
    if not max_to_keep:
        return
    for step in list_steps(root)[:-max_to_keep]:
        shutil.rmtree(root / f"global_step_{step}", ignore_errors=True)


def load_checkpoint(
    root: str | Path,
    step: int,
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load weights / optimizer / RNG of ``global_step_<step>`` in place; returns the ``icpo`` resume state."""
    actor = actor_dir(root, step)
    extra = torch.load(actor / f"extra_state_{WORLD}.pt", map_location="cpu", weights_only=False)
    if model is not None:
        state = torch.load(actor / f"model_{WORLD}.pt", map_location="cpu", weights_only=True)
        load_model_state(model, state, actor)
    if optimizer is not None:
        optimizer.load_state_dict(
            torch.load(actor / f"optim_{WORLD}.pt", map_location="cpu", weights_only=True)
        )
    if restore_rng and extra.get("rng"):
        set_rng_state(extra["rng"])
    return dict(extra.get("icpo") or {})


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str | Path = "") -> None:
    """Load a checkpoint's model file: a full state dict, or (peft model) exactly its adapter tensors."""
    if not lora.is_peft(model):
        model.load_state_dict(state)
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


def clear(root: str | Path) -> None:
    """Remove every checkpoint under ``root`` (a fresh start after a config change)."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
