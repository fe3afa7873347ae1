"""`icpo merge --run <run>`: the run's last checkpoint -> a Hugging Face folder (runs/<run>/merged), with verl's
FSDP model merger, for checkpoints of both engines (the same verl actor layout).

bfloat16 base models go through verl's stock ``python -m verl.model_merger`` (it casts to bfloat16, as the
released scripts got). Any other dtype goes through :mod:`icpo_core.engines.local.merger`, verl's merger class
with the cast taken out, because rounding fp32 weights to bf16 erases a small-learning-rate run.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys

from icpo_core import paths
from icpo_core.errors import UserError
from icpo_core.io_utils import atomic_path

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a key of params.yaml `runs`")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")


def merge_command(local_dir: str, target_dir: str, save_dtype: str) -> list[str]:
    """The merge command line for a checkpoint whose base model was saved as ``save_dtype``."""
    args = ["merge", "--backend", "fsdp", "--local_dir", local_dir, "--target_dir", target_dir]
    if save_dtype == "bfloat16":
        return [sys.executable, "-m", "verl.model_merger", *args]
    return [sys.executable, "-m", "icpo_core.engines.local.merger", *args, "--dtype", "keep"]


def run(args: argparse.Namespace) -> int:
    from icpo_core.engines.local import checkpoint as ckpt

    params = args.params_obj
    if args.run not in params.runs:
        raise UserError(f"unknown run '{args.run}': params.yaml runs has {sorted(params.runs)}")
    root = paths.checkpoints_dir(args.run)
    step = args.step if args.step is not None else ckpt.latest_step(root)
    if step is None:
        raise UserError(f"{root}: no checkpoint to merge; run `icpo train --run {args.run}` first")
    actor = ckpt.actor_dir(root, step)
    if not (actor / "fsdp_config.json").is_file():
        raise UserError(f"{actor}: not a verl FSDP actor checkpoint (no fsdp_config.json)")
    target = paths.merged_dir(args.run)
    with atomic_path(target) as tmp:
        cmd = merge_command(str(actor), str(tmp), params.model.save_dtype)
        log.info("merging %s -> %s: %s", actor, target, " ".join(cmd))
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0:
            raise UserError(f"model merge of {actor} failed (exit {proc.returncode}); see the output above")
    log.info("%s: merged step %d into %s", args.run, step, target)
    return 0
