"""`icpo train --run <run> [--seed S]`: train one run of params.yaml `runs` with its engine (local in-process, or
verl). With ``--seed`` it is the study instance ``<run>_s<S>`` (params ``seed`` replaced by S).

Outputs (dvc.yaml train@<run>-<seed>): runs/<instance>/checkpoints (verl FSDP layout; persisted, so a killed run
resumes), metrics/steps_<instance>.jsonl (one line per step), metrics/train_<instance>.json (summary), one MLflow
run (a child of the study's parent run).
"""

from __future__ import annotations

import argparse
import logging

from icpo_core import paths
from icpo_core.engines import verl as verl_engine
from icpo_core.engines.local.trainer import train_local
from icpo_core.errors import UserError
from icpo_core.io_utils import atomic_write_json
from icpo_core.machine import machine

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a key of params.yaml `runs` (grpo, icpo, icpo_rs, ...)")
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="training seed (a study instance <run>_s<seed>; default: params seed)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")


def run(args: argparse.Namespace) -> int:
    params = args.params_obj
    if args.run not in params.runs:
        raise UserError(f"unknown run '{args.run}': params.yaml runs has {sorted(params.runs)}")
    params.run_algorithm(
        args.run
    )  # validate the run's overrides before anything heavy (every run: both engines)
    if args.seed is not None:
        params = params.with_seed(args.seed)
    # a study instance <run>_s<seed> (a child of the study's MLflow run), or the plain run outside the study
    instance = None if args.seed is None else paths.instance(args.run, args.seed)
    name = instance or args.run
    if params.train.engine == "verl":
        rc = int(verl_engine.launch(params, args.run, instance=instance) or 0)
        summary_path = paths.train_summary(name)
        if rc == 0 and not summary_path.exists():
            # DVC declares the summary as an output; verl's own metrics are in MLflow.
            atomic_write_json(
                summary_path,
                {"run": args.run, "instance": name, "engine": "verl", "returncode": rc, "machine": machine()},
            )
        return rc
    summary = train_local(params, args.run, progress=not args.no_progress, instance=instance)
    log.info(
        "%s: %d/%d steps, on-policy reward mean %.3f (last 5: %.3f), %.0f s",
        name,
        summary["steps"],
        summary["total_steps"],
        summary["reward_on_policy_mean"] or 0.0,
        summary["reward_on_policy_last5"] or 0.0,
        summary["wall_time_s"],
    )
    return 0
