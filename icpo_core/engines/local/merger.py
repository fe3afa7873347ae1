"""verl's FSDP model merger, with the checkpoint's dtype kept instead of verl's hard-coded bfloat16 cast.

Why: ``verl.model_merger.fsdp_model_merger.FSDPModelMerger`` casts every tensor to bfloat16 while merging. For
verl's own paper-scale runs (bf16 models) that is what the released scripts got. The embedded default trains
fp32 with small learning rates, and bf16 has 8 mantissa bits: rounding the trained weights to bf16 undoes most
of a short run's update (and even changes the untrained weights). So for checkpoints whose base model is not
bf16, ``icpo merge`` runs verl's merger through this subclass, which merges the shards exactly as verl does
(same loading, same placements, same Hugging Face save and validation) but casts to a chosen dtype (default:
keep the stored one) and writes that dtype into ``config.json`` so transformers / vLLM load it as saved.

A finished local-engine run's last checkpoint already holds its weights in the Hugging Face layout
(``actor/huggingface/model.safetensors``, see :mod:`icpo_core.engines.local.checkpoint`): that folder is the
merged model, so :func:`merge_checkpoint` hard-links its files into the target (one copy on disk; a copy where
links cannot be made), or casts them when another dtype is asked for.

LoRA checkpoints (an actor folder with ``lora_train_meta.json``: the local engine's adapters-only files, or
verl's full peft state dict) are merged into the base weights, ``W0 + (alpha / r) * B @ A`` in float32, and
saved as a plain Hugging Face folder (no peft files; verl's own merger would write the base weights and a
separate ``lora_adapter/``). An adapters-only checkpoint takes its base weights from ``base_dir``.

Command line (same arguments as verl's): ``python -m icpo_core.engines.local.merger merge --backend fsdp
--local_dir <ckpt>/global_step_N/actor --target_dir <out> [--dtype float32|bfloat16|float16|keep]
[--base_dir models/base]``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from verl.model_merger.fsdp_model_merger import FSDPModelMerger, merge_non_dtensor_shards

from icpo_core import checkpoint_layout as layout
from icpo_core.engines.local import lora
from icpo_core.io_utils import link_or_copy_tree

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DtypePreservingFSDPMerger(FSDPModelMerger):
    """``FSDPModelMerger`` whose merged tensors keep their stored dtype (or ``target_dtype``); LoRA adapters
    are merged into the base weights."""

    def __init__(self, config, target_dtype: torch.dtype | None = None, base_dir: str | Path | None = None):
        super().__init__(config)
        self.target_dtype = target_dtype
        self.saved_dtype: torch.dtype | None = None
        self.base_dir = None if base_dir is None else Path(base_dir)
        self.lora_meta = lora.read_meta(config.local_dir)

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        # LoRA: the cast waits until the adapters are merged (B @ A is summed in float32 from the stored values)
        if self.target_dtype is not None and t.is_floating_point() and self.lora_meta is None:
            t = t.to(self.target_dtype)
        if t.is_floating_point() and self.saved_dtype is None:
            self.saved_dtype = t.dtype
        return t

    def _load_and_merge_state_dicts(
        self, world_size: int, total_shards: int, mesh_shape: tuple[int, ...], mesh_dim_names: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        # Same shard files and merge rules as the parent; the only change is no forced bfloat16 cast.
        shards = [
            torch.load(
                Path(self.config.local_dir) / f"model_world_size_{world_size}_rank_{rank}.pt",
                map_location="cpu",
                weights_only=False,
            )
            for rank in range(total_shards)
        ]
        merged: dict[str, torch.Tensor] = {}
        for key in shards[0]:
            pieces = [s[key] for s in shards]
            if isinstance(pieces[0], DTensor):
                placements = tuple(pieces[0].placements)
                if mesh_dim_names[0] in ("dp", "ddp"):
                    placements = placements[1:]  # replicated over data parallel: one copy is enough
                if len(mesh_shape) != 1 or len(placements) != 1:
                    raise NotImplementedError(
                        "FSDP + TP checkpoints are not supported (nor by verl's merger)"
                    )
                local = [self._cast(p._local_tensor) for p in pieces]
                merged[key] = self._merge_by_placement(local, placements[0])
            else:
                merged[key] = merge_non_dtensor_shards(key, [self._cast(p) for p in pieces])
        return merged

    def merge_adapters(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain weights with the LoRA adapters merged, in the output dtype; a full checkpoint as it is."""
        has_adapters = any(lora.is_adapter_key(k) for k in state_dict)
        if self.lora_meta is None:
            if has_adapters:
                raise ValueError(
                    f"{self.config.local_dir}: LoRA tensors but no {lora.META_FILE} (rank and alpha unknown)"
                )
            return state_dict
        base = None
        if not any(".base_layer." in k for k in state_dict):  # adapters only: the base weights come from disk
            if self.base_dir is None:
                raise ValueError(
                    f"{self.config.local_dir}: an adapters-only LoRA checkpoint; pass the base model folder"
                )
            base = lora.load_base_weights(self.base_dir)
        scaling = self.lora_meta["lora_alpha"] / self.lora_meta["r"]
        merged = lora.merge_lora_weights(state_dict, scaling, base=base)
        dtype = self.target_dtype or self.saved_dtype
        self.saved_dtype = dtype  # what config.json records
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in merged.items()}

    def save_hf_model_and_tokenizer(self, state_dict: dict[str, torch.Tensor]) -> None:
        state_dict = self.merge_adapters(state_dict)
        super().save_hf_model_and_tokenizer(state_dict)
        # The parent builds its save skeleton in bfloat16, so config.json says bfloat16; the tensors were
        # saved as they are. Record their real dtype, or loaders with dtype="auto" would round them.
        if self.saved_dtype is not None:
            name = str(self.saved_dtype).removeprefix("torch.")
            cfg_path = Path(self.config.target_dir) / "config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["dtype"] = name
            if "torch_dtype" in cfg:
                cfg["torch_dtype"] = name
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def has_hf_weights(local_dir: str | Path) -> bool:
    """True for an actor folder whose weights are only in ``huggingface/`` (a finished local run's last
    checkpoint): :func:`merge_checkpoint` links them instead of merging shards."""
    actor = Path(local_dir)
    return not list(actor.glob("model_world_size_*_rank_*.pt")) and bool(layout.hf_weight_files(actor))


def _stored_dtype(files: list[Path]) -> torch.dtype | None:
    """The floating dtype of the weights; opening every file checks its header against its size, so a cut or
    overwritten file raises ``SafetensorError`` here rather than in the bench that would load it."""
    from safetensors import safe_open

    found = None
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has keys(), no iteration)
                name = f.get_slice(key).get_dtype()
                if found is None and name in _SAFETENSORS_FLOATS:
                    found = _SAFETENSORS_FLOATS[name]
    return found


_SAFETENSORS_FLOATS = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def link_hf_weights(local_dir: str | Path, target_dir: str | Path, dtype: str = "keep") -> int:
    """The merged model of a checkpoint with Hugging Face weights (:func:`has_hf_weights`): its ``huggingface/``
    files hard-linked into ``target_dir`` when they already have the asked dtype, else cast and written anew (as
    verl's stock merger casts to bfloat16). Returns the bytes written (0 when all was linked)."""
    from safetensors.torch import load_file, save_file

    hf = Path(local_dir) / layout.HF_DIR
    files = layout.hf_weight_files(local_dir)
    want = None if dtype == "keep" else DTYPES[dtype]
    stored = _stored_dtype(files)
    if want is None or stored == want:
        return link_or_copy_tree(hf, target_dir)
    target = Path(target_dir)
    written = 0
    for f in sorted(hf.rglob("*")):
        out = target / f.relative_to(hf)
        out.parent.mkdir(parents=True, exist_ok=True)
        if f.suffix == ".safetensors":
            state = {k: v.to(want) if v.is_floating_point() else v for k, v in load_file(f).items()}
            save_file(state, out, metadata={"format": "pt"})
            written += out.stat().st_size
        elif f.is_file():
            shutil.copy2(f, out)
    cfg_path = target / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = dtype
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = dtype
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return written


def merge_checkpoint(
    local_dir: str | Path, target_dir: str | Path, dtype: str = "keep", base_dir: str | Path | None = None
) -> None:
    """Merge ``<ckpt>/global_step_N/actor`` into a Hugging Face folder, in this process.

    ``dtype="bfloat16"`` runs verl's stock ``FSDPModelMerger`` unchanged (it casts to bfloat16 anyway); ``keep``
    (the stored dtype) or another dtype runs :class:`DtypePreservingFSDPMerger`, as does every LoRA checkpoint
    (merged into plain weights; ``base_dir``: the base model of an adapters-only checkpoint). A checkpoint whose
    weights are already a Hugging Face folder (:func:`has_hf_weights`) is linked, not merged
    (:func:`link_hf_weights`).
    """
    import argparse

    from verl.model_merger.base_model_merger import generate_config_from_args

    if dtype != "keep" and dtype not in DTYPES:
        raise ValueError(f"dtype must be 'keep' or one of {sorted(DTYPES)}, got {dtype!r}")
    if has_hf_weights(local_dir) and lora.read_meta(local_dir) is None:
        link_hf_weights(local_dir, target_dir, dtype)
        return
    # The same namespace verl's command line builds for `merge --backend fsdp --local_dir X --target_dir Y`.
    args = argparse.Namespace(
        operation="merge",
        backend="fsdp",
        local_dir=str(local_dir),
        target_dir=str(target_dir),
        tie_word_embedding=False,
        trust_remote_code=False,
        is_value_model=False,
        use_cpu_initialization=False,
        hf_upload_path=None,
        private=False,
    )
    config = generate_config_from_args(args)
    if dtype == "bfloat16" and lora.read_meta(local_dir) is None:
        merger = FSDPModelMerger(config)
    else:
        target = None if dtype == "keep" else DTYPES[dtype]
        merger = DtypePreservingFSDPMerger(config, target_dtype=target, base_dir=base_dir)
    merger.merge_and_save()
    merger.cleanup()


def main(argv: list[str] | None = None) -> int:
    """verl's merger CLI (``merge``/``test``, ``--backend fsdp``) plus ``--dtype`` and ``--base_dir``."""
    from verl.model_merger.base_model_merger import generate_config_from_args, parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    extra = {"--dtype": "keep", "--base_dir": None}
    for flag in extra:
        if flag in argv:
            i = argv.index(flag)
            extra[flag] = argv[i + 1]
            del argv[i : i + 2]
    dtype, base_dir = extra["--dtype"], extra["--base_dir"]
    if dtype != "keep" and dtype not in DTYPES:
        print(f"--dtype must be keep or one of {sorted(DTYPES)}, got {dtype!r}", file=sys.stderr)
        return 2
    sys.argv = [sys.argv[0], *argv]
    config = generate_config_from_args(parse_args())
    if config.backend != "fsdp":
        print("only --backend fsdp is supported here; use python -m verl.model_merger", file=sys.stderr)
        return 2
    target = None if dtype == "keep" else DTYPES[dtype]
    merger = DtypePreservingFSDPMerger(config, target_dtype=target, base_dir=base_dir)
    merger.merge_and_save()
    merger.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
