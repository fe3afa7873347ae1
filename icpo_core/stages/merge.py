"""`icpo merge --run <run>`: the run's last checkpoint -> a Hugging Face folder (runs/<run>/merged), with verl's
FSDP model merger, for checkpoints of both engines (the same verl actor layout).

bfloat16 base models go through verl's stock ``FSDPModelMerger`` (what ``python -m verl.model_merger merge
--backend fsdp`` runs; it casts to bfloat16, as the released scripts got). Any other dtype goes through
:class:`icpo_core.engines.local.merger.DtypePreservingFSDPMerger`, verl's merger with the cast taken out, because
rounding fp32 weights to bf16 erases a small-learning-rate run. Both run in this process. A LoRA checkpoint
(``train.lora``) always goes through the subclass, which merges the adapters into the base weights (models/base
for the local engine's adapters-only checkpoints): the output is a plain Hugging Face folder either way.
"""

from __future__ import annotations

import argparse
import logging

from icpo_core import paths
from icpo_core.errors import UserError
from icpo_core.io_utils import atomic_path

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a key of params.yaml `runs`")
    p.add_argument("--seed", type=int, default=None, help="training seed of the study instance <run>_s<seed>")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")


def run(args: argparse.Namespace) -> int:
    from icpo_core.engines.local import checkpoint as ckpt

    params = args.params_obj
    if args.run not in params.runs:
        raise UserError(f"unknown run '{args.run}': params.yaml runs has {sorted(params.runs)}")
    name = paths.instance(args.run, args.seed)
    root = paths.checkpoints_dir(name)
    step = args.step if args.step is not None else ckpt.latest_step(root)
    if step is None:
        seed = "" if args.seed is None else f" --seed {args.seed}"
        raise UserError(f"{root}: no checkpoint to merge; run `icpo train --run {args.run}{seed}` first")
    actor = ckpt.actor_dir(root, step)
    if not (actor / "fsdp_config.json").is_file():
        raise UserError(f"{actor}: not a verl FSDP actor checkpoint (no fsdp_config.json)")
    target = paths.merged_dir(name)
    # bf16 models: verl's stock merger (bf16 output, as verl's own runs); otherwise the stored dtype is kept.
    dtype = "bfloat16" if params.model.save_dtype == "bfloat16" else "keep"
    from icpo_core.engines.local.merger import merge_checkpoint

    log.info("merging %s -> %s with verl's FSDP model merger (dtype: %s)", actor, target, dtype)
    with atomic_path(target) as tmp:
        merge_checkpoint(actor, tmp, dtype, base_dir=paths.BASE_MODEL_DIR)
    log.info("%s: merged step %d into %s", name, step, target)
    return 0
