"""``icpo prepare-demos``: the demo cache of solved problems with worked solutions (``data/demos.parquet``).

Stored as parquet (id, problem, solution, answer, source), never pickle; stats in ``metrics/prepare_demos.json``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

from icpo_core import paths
from icpo_core.data.demo_sources import build_demos
from icpo_core.data.schema import DEMO_SCHEMA, check_schema, write_demos
from icpo_core.io_utils import atomic_path, atomic_write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(paths.DEMOS_PARQUET), help="demo parquet (default: %(default)s)")
    p.add_argument("--metrics", default=str(paths.METRICS_DIR / "prepare_demos.json"), help="stats JSON")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    rows, stats = build_demos(args.params_obj)
    with atomic_path(args.out) as tmp:
        write_demos(rows, tmp)
        check_schema(tmp, DEMO_SCHEMA)
    metrics = {**asdict(stats), "output": str(args.out), "seconds": round(time.perf_counter() - start, 2)}
    atomic_write_json(args.metrics, metrics)
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(stats.dropped.items())) or "none"
    print(
        f"prepare-demos: {stats.dataset} ({stats.source}): {stats.rows_in} rows in, {stats.rows_kept} kept, "
        f"dropped: {dropped} -> {args.out} ({metrics['seconds']} s)"
    )
    return 0
