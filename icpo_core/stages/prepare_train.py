"""``icpo prepare-train``: the training set as verl parquet, plus the synthetic held-out eval sets.

Writes ``data/train.parquet`` (verl schema + ``target``), ``data/eval/synthetic_l<level>.jsonl`` (always: they
are the offline benchmarks) and ``metrics/prepare_train.json``. All outputs are written atomically.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

from icpo_core import paths
from icpo_core.data.train_set import TOKEN_FILTERED, build_train_set, write_eval_sets
from icpo_core.errors import UserError
from icpo_core.io_utils import atomic_path, atomic_write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(paths.TRAIN_PARQUET), help="training parquet (default: %(default)s)")
    p.add_argument("--eval-dir", default=str(paths.EVAL_DIR), help="eval jsonl folder (default: %(default)s)")
    p.add_argument("--model", default=str(paths.BASE_MODEL_DIR), help="tokenizer for the token-length filter")
    p.add_argument("--metrics", default=str(paths.METRICS_DIR / "prepare_train.json"), help="stats JSON")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    params = args.params_obj
    start = time.perf_counter()
    tokenizer_dir = Path(args.model)
    if params.data.train.source in TOKEN_FILTERED and not tokenizer_dir.is_dir():
        raise UserError(
            f"{tokenizer_dir}: no base model; the token-length filter needs it (run `icpo base-model`)"
        )
    with atomic_path(args.out) as tmp_train, atomic_path(args.eval_dir) as tmp_eval:
        stats = build_train_set(params, tmp_train, tokenizer_dir if tokenizer_dir.is_dir() else None)
        evals = write_eval_sets(params, tmp_eval)
    metrics = {
        **asdict(stats),
        "eval_sets": evals,
        "output": str(args.out),
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_json(args.metrics, metrics)
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(stats.dropped.items())) or "none"
    print(
        f"prepare-train: {stats.dataset} ({stats.layout}): {stats.rows_in} rows in, {stats.rows_kept} kept, "
        f"dropped: {dropped} -> {args.out}; {sum(evals.values())} eval rows in {len(evals)} files -> "
        f"{args.eval_dir} ({metrics['seconds']} s)"
    )
    return 0
