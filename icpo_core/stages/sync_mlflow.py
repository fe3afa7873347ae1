"""``icpo sync-mlflow --run <run> [--seed S]``: send MLflow the training steps it misses, from the step log.

A tracking server that was down when a training ended (or a training killed between its checkpoint and its
MLflow call) leaves steps that are only in metrics/steps_<instance>.jsonl. This replays them into the run the
checkpoints recorded (runs/<instance>/checkpoints/mlflow_run.json; a new run when that one is gone): only the
steps after the last one MLflow holds, so running it twice changes nothing.
"""

from __future__ import annotations

import argparse
import json
import logging

from icpo_core import paths, steplog, tracking
from icpo_core.errors import UserError

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="a key of params.yaml `runs`")
    p.add_argument("--seed", type=int, default=None, help="training seed of the study instance <run>_s<seed>")


def run(args: argparse.Namespace) -> int:
    params = args.params_obj
    if args.run not in params.runs:
        raise UserError(f"unknown run '{args.run}': params.yaml runs has {sorted(params.runs)}")
    if args.seed is not None:
        params = params.with_seed(args.seed)
    instance = None if args.seed is None else paths.instance(args.run, args.seed)
    name = instance or args.run
    steps_path = paths.train_metrics_jsonl(name)
    rows = steplog.read_steps(steps_path)
    if not rows:
        raise UserError(
            f"{steps_path}: no training steps to send; train first (`icpo train --run {args.run}`)"
        )
    uri = tracking.tracking_uri(params)
    id_file = tracking.run_id_path(name)
    meta = tracking.read_run_meta(id_file)
    tracker = tracking.Tracker(uri, params.tracking.experiment, retry_after_s=0.0)
    run_id = tracker.start(
        name,
        tags=tracking.run_tags(params, args.run, instance=instance),
        params=tracking.flatten(tracking.run_config(params, args.run)),
        resume_run_id=tracking.read_run_id(id_file, uri),
    )
    if run_id is None:
        raise UserError(f"MLflow at {uri} is unreachable; start it (or set MLFLOW_TRACKING_URI) and rerun")
    if run_id != meta.get("run_id") and meta.get("fingerprint"):
        tracking.write_run_id(id_file, run_id, uri, fingerprint=meta["fingerprint"])
    sent = tracker.replay(rows)
    if tracker.buffered_steps:
        raise UserError(f"MLflow at {uri} went down while replaying {name}; rerun `icpo sync-mlflow` later")
    summary = paths.train_summary(name)
    done = False
    if summary.is_file():
        try:
            s = json.loads(summary.read_text())
            done = int(s.get("steps", 0)) >= int(s.get("total_steps", 1))
        except (ValueError, TypeError):
            done = False
    tracker.finish("FINISHED" if done else "KILLED")
    log.info("%s: %d steps sent to MLflow run %s (%d in the step log)", name, sent, run_id, len(rows))
    print(f"{name}: {sent} steps sent to MLflow run {run_id}")
    return 0
