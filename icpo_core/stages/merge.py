"""`icpo merge --run <run>`: the run's last checkpoint -> a Hugging Face folder (runs/<run>/merged), with verl's
FSDP model merger, for checkpoints of both engines (the same verl actor layout). A finished local run's last
checkpoint already holds its weights as a Hugging Face folder: they are hard-linked, not written a second time.

bfloat16 base models go through verl's stock ``FSDPModelMerger`` (what ``python -m verl.model_merger merge
--backend fsdp`` runs; it casts to bfloat16, as the released scripts got). Any other dtype goes through
:class:`icpo_core.engines.local.merger.DtypePreservingFSDPMerger`, verl's merger with the cast taken out, because
rounding fp32 weights to bf16 erases a small-learning-rate run. Both run in this process. A LoRA checkpoint
(``train.lora``) always goes through the subclass, which merges the adapters into the base weights (models/base
for the local engine's adapters-only checkpoints): the output is a plain Hugging Face folder either way.

The merged folder is then recorded in MLflow without a second copy of its weights: an external logged model of
the training run that references its DVC path and md5 (:func:`icpo_core.tracking.register_merged_model`).
"""

from __future__ import annotations

import argparse
import logging
import pickle
import zipfile
from pathlib import Path

from safetensors import SafetensorError

from icpo_core import checkpoint_layout as layout
from icpo_core import paths, tracking
from icpo_core.engines.local.merger import has_hf_weights, merge_checkpoint
from icpo_core.errors import DataError, UserError
from icpo_core.io_utils import atomic_path, check_free_space, disk_full_error, is_disk_full

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a key of params.yaml `runs`")
    p.add_argument("--seed", type=int, default=None, help="training seed of the study instance <run>_s<seed>")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")


def run(args: argparse.Namespace) -> int:
    params = args.params_obj
    if args.run not in params.runs:
        raise UserError(f"unknown run '{args.run}': params.yaml runs has {sorted(params.runs)}")
    name = paths.instance(args.run, args.seed)
    root = paths.checkpoints_dir(name)
    step = args.step if args.step is not None else layout.latest_step(root)
    if step is None:
        seed = "" if args.seed is None else f" --seed {args.seed}"
        raise UserError(f"{root}: no checkpoint to merge; run `icpo train --run {args.run}{seed}` first")
    actor = layout.actor_dir(root, step)
    if not (actor / "fsdp_config.json").is_file():
        raise UserError(f"{actor}: not a verl FSDP actor checkpoint (no fsdp_config.json)")
    target = paths.merged_dir(name)
    # bf16 models: verl's stock merger (bf16 output, as verl's own runs); otherwise the stored dtype is kept.
    dtype = "bfloat16" if params.model.save_dtype == "bfloat16" else "keep"
    weights = layout.weight_files(actor)
    if not weights:
        raise UserError(
            f"{actor}: checkpoint has no model file; delete {actor.parent} and rerun the training"
        )
    model_file = weights[0]
    # the merged folder is about the size of the full weights (the base model's for adapters-only checkpoints);
    # a finished local run's Hugging Face weights are hard-linked, not copied (nothing to write when kept as-is)
    lora_ckpt = (actor / "lora_train_meta.json").is_file()
    linked = has_hf_weights(actor) and not lora_ckpt and dtype == "keep"
    need = (
        0
        if linked
        else max(
            sum(f.stat().st_size for f in weights), _folder_bytes(paths.BASE_MODEL_DIR) if lora_ckpt else 0
        )
    )
    check_free_space(target.parent, need + 32 * 1024**2, f"merge {name}", "free some space and rerun")
    if linked:
        log.info("linking %s's Hugging Face weights -> %s (a finished run's last checkpoint)", actor, target)
    else:
        log.info("merging %s -> %s with verl's FSDP model merger (dtype: %s)", actor, target, dtype)
    try:
        with atomic_path(target) as tmp:
            merge_checkpoint(actor, tmp, dtype, base_dir=paths.BASE_MODEL_DIR)
    except Exception as e:
        if is_disk_full(e):
            raise disk_full_error(e, target, "free some space and rerun") from None
        if isinstance(e, EOFError | pickle.UnpicklingError | zipfile.BadZipFile | SafetensorError) or (
            isinstance(e, RuntimeError) and "PytorchStreamReader" in str(e)
        ):
            raise DataError(
                f"{model_file}: damaged checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]}); delete "
                f"{actor.parent} and rerun the training (it resumes from an older checkpoint or from scratch)"
            ) from None
        raise
    log.info("%s: merged step %d into %s", name, step, target)
    # MLflow: a logged model of the training run that references the folder (DVC path + md5), no weights copied
    seeded = params.with_seed(args.seed) if args.seed is not None else params
    tracking.register_merged_model(seeded, args.run, name if args.seed is not None else None, step=step)
    return 0


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
