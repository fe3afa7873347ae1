"""``icpo prepare-val``: the in-training validation benchmarks as verl parquet (``data/val/<name>.parquet``).

verl validates every ``train.verl.test_freq`` steps on ``data.val_files``; the released scripts use MATH-500,
AMC23 and AIME24 (docs/method.md). ``train.verl.val_benchmarks`` names them (benchmark names, suites or
local files, exactly as ``bench.benchmarks``); every one is loaded through the benchmark registry and loaders
(:mod:`icpo_core.bench.registry`, :mod:`icpo_core.bench.loaders`), so the prompts carry the same suffix and the
same gold answers as the ``bench`` stage. Rows follow the training parquet's schema (docs/architecture.md) with
``data_source`` = the benchmark name (verl groups its ``val-core/<data_source>/...`` metrics by it) and
``extra_info.split`` = ``"test"``. The folder is replaced atomically as a whole (no stale benchmark files).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from icpo_core import paths
from icpo_core.bench.loaders import BenchProblem, load_problems
from icpo_core.bench.registry import resolve_benchmarks
from icpo_core.config import Params
from icpo_core.data.schema import ABILITY, TRAIN_SCHEMA
from icpo_core.io_utils import atomic_path, atomic_write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out-dir", default=str(paths.VAL_DIR), help="validation parquet folder (default: %(default)s)"
    )
    p.add_argument("--metrics", default=str(paths.METRICS_DIR / "prepare_val.json"), help="stats JSON")


def val_rows(name: str, problems: list[BenchProblem]) -> list[dict[str, Any]]:
    """Benchmark problems -> verl rows (the benchmark's chat prompt as is, its gold as the rule-based answer)."""
    return [
        {
            "data_source": name,
            "prompt": [{"role": m["role"], "content": m["content"]} for m in p.messages],
            "ability": ABILITY,
            "reward_model": {"style": "rule", "ground_truth": p.answer},
            "extra_info": {"index": i, "split": "test", "question": p.problem, "level": -1},
            "target": "",
        }
        for i, p in enumerate(problems)
    ]


def write_val_sets(params: Params, out_dir: str | Path) -> dict[str, int]:
    """Write one parquet per validation benchmark into ``out_dir``; returns ``{name: rows}``.

    Raises DataError when a benchmark cannot be loaded (hub unreachable, file missing, no rows, bad fields).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for spec in resolve_benchmarks(params.train.verl.val_benchmarks, params):
        table = pa.Table.from_pylist(val_rows(spec.name, load_problems(spec)), schema=TRAIN_SCHEMA)
        pq.write_table(table, paths.val_parquet(spec.name, out_dir))
        counts[spec.name] = table.num_rows
    return counts


def run(args: argparse.Namespace) -> int:
    params = args.params_obj
    start = time.perf_counter()
    with atomic_path(args.out_dir) as tmp:
        # the folder exists even when no benchmark is configured: DVC tracks it and the train stage depends on it
        counts = write_val_sets(params, tmp)
    metrics = {
        "benchmarks": counts,
        "rows": sum(counts.values()),
        "output": str(args.out_dir),
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_json(args.metrics, metrics)
    listed = ", ".join(f"{k} {v}" for k, v in counts.items()) or "none (train.verl.val_benchmarks is empty)"
    print(f"prepare-val: {listed} -> {args.out_dir} ({metrics['seconds']} s)")
    return 0
