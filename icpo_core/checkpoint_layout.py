"""The checkpoint folder both engines write: verl's FSDP actor layout, read and pruned as plain files (no torch).

```
<root>/latest_checkpointed_iteration.txt          # "N", written after global_step_N is complete
<root>/global_step_N/actor/model_world_size_W_rank_R.pt        # weights (the local engine: W = 1, no shards)
<root>/global_step_N/actor/optim_world_size_W_rank_R.pt        # AdamW state
<root>/global_step_N/actor/extra_state_world_size_W_rank_R.pt  # verl's {lr_scheduler, rng} (+ the local "icpo")
<root>/global_step_N/actor/fsdp_config.json                    # {"FSDP_version": ..., "world_size": W}
<root>/global_step_N/actor/lora_train_meta.json                 # LoRA runs only: {"r", "lora_alpha", "task_type"}
<root>/global_step_N/actor/huggingface/                         # config, generation config, tokenizer
<root>/global_step_N/actor/huggingface/model.safetensors       # a finished local run's last checkpoint only
<root>/global_step_N/data.pt                                    # verl only: the dataloader state
```

verl's ``FSDPCheckpointManager`` writes it with W ranks, the local engine (:mod:`icpo_core.engines.local.checkpoint`,
which reads and writes the torch files) with one. What is here is what needs no torch: which steps are complete,
the latest one, pruning, and the file names. The verl launcher imports it at module top (``icpo verl-cmd`` and the
resume check run before verl starts), ``icpo merge`` and the local engine too.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

LATEST_FILE = "latest_checkpointed_iteration.txt"
_STEP_DIR = re.compile(r"^global_step_(\d+)$")
_EXTRA_STATE = re.compile(r"^extra_state_world_size_(\d+)_rank_(\d+)\.pt$")
WORLD = "world_size_1_rank_0"  # the local engine's one rank
HF_DIR = "huggingface"


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"global_step_{step}"


def actor_dir(root: str | Path, step: int) -> Path:
    return step_dir(root, step) / "actor"


def hf_weight_files(actor: str | Path) -> list[Path]:
    """The Hugging Face weight files of an actor folder (a final checkpoint), or [] when it has none."""
    return sorted((Path(actor) / HF_DIR).glob("*.safetensors"))


def weight_files(actor: str | Path) -> list[Path]:
    """The files holding an actor folder's weights: ``model_*.pt`` shards, else the Hugging Face ones."""
    actor = Path(actor)
    return sorted(actor.glob("model_world_size_*_rank_*.pt")) or hf_weight_files(actor)


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


def prune(root: str | Path, max_to_keep: int | None) -> None:
    """Delete all but the newest ``max_to_keep`` checkpoints, and temporaries left by killed writes."""
    root = Path(root)
    for p in root.glob(".global_step_*"):
        shutil.rmtree(p, ignore_errors=True)
    if not max_to_keep:
        return
    for step in list_steps(root)[:-max_to_keep]:
        shutil.rmtree(step_dir(root, step), ignore_errors=True)


def remove_step_stubs(root: str | Path) -> list[int]:
    """Delete the ``global_step_N`` folders that hold no ``actor`` folder; returns their steps.

    verl's pruning (``max_actor_ckpt_to_keep``) removes an old step's actor folder and leaves the folder with the
    dataloader state (``data.pt``) behind, which lists like a checkpoint but cannot be resumed or merged. verl
    writes a step's actor folder before its ``data.pt``, so a folder without one is never a save in progress; the
    marker's step is kept whatever it holds."""
    root = Path(root)
    marker = root / LATEST_FILE
    keep = marker.read_text().strip() if marker.is_file() else None
    removed = []
    for p in root.glob("global_step_*"):
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and m.group(1) != keep and not (p / "actor").exists():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(int(m.group(1)))
    return sorted(removed)


def clear(root: str | Path) -> None:
    """Remove every checkpoint under ``root`` (a fresh start after a config change)."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
