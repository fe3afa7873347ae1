"""``icpo bench --run <run>``: LIMO-style benchmark of a run's merged model (``base``: the base model).

Writes ``bench/<run>/samples.jsonl`` (one row per completion, appended as problems finish; an interrupted bench
resumes without regenerating finished problems) and ``metrics/bench_<run>.json`` (per benchmark avg@n, pass@k;
unweighted average; generation vs grading time), and logs ``bench/<name>/...`` to the run's MLflow run, linked to
the merged model's MLflow logged model (``icpo merge`` records it); ``tracking.system_metrics``: MLflow's system
metrics on that run while the bench runs.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from icpo_core import paths, tracking
from icpo_core.bench.backends import make_backend
from icpo_core.bench.mlflow_log import bench_run, bench_system_metrics, log_bench
from icpo_core.bench.registry import resolve_benchmarks
from icpo_core.bench.runner import BenchRunner
from icpo_core.errors import UserError
from icpo_core.io_utils import atomic_write_json

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="'base' or a run of params.yaml `runs`")
    p.add_argument(
        "--benchmarks", help="comma-separated names / suites / files (default: params bench.benchmarks)"
    )
    p.add_argument("--seed", type=int, default=None, help="training seed of the study instance <run>_s<seed>")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems of each benchmark")
    p.add_argument("--model", default=None, help="benchmark this model folder instead of the run's")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")


def run(args: argparse.Namespace) -> int:
    params = args.params_obj
    run_name = args.run
    if run_name != "base" and run_name not in params.runs:
        raise UserError(f"--run: unknown run '{run_name}'; params.yaml runs: {sorted(params.runs)} or 'base'")
    if args.seed is not None:
        params = params.with_seed(args.seed)  # the instance's sampling seed
    instance = paths.instance(run_name, args.seed)
    model_dir = paths.merged_dir(instance) if args.model is None else Path(args.model)
    if not (model_dir / "config.json").is_file():
        stage = (
            "base_model"
            if run_name == "base"
            else f"merge@{run_name}" + ("" if args.seed is None else f"-{args.seed}")
        )
        raise UserError(f"{model_dir}: no Hugging Face model folder (run `dvc repro {stage}` first)")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be >= 1")
    names = args.benchmarks.split(",") if args.benchmarks else params.bench.benchmarks
    specs = resolve_benchmarks([n.strip() for n in names if n.strip()], params)
    bench = params.bench
    runner = BenchRunner(
        model_dir,
        paths.bench_dir(instance),
        backend_factory=lambda: make_backend(bench.backend, model_dir, bench, params.seed),
        backend_name=bench.backend,
        seed=params.seed,
        grade_workers=bench.grade_workers,
        grade_timeout_s=bench.grade_timeout_s,
        chunk_prompts=bench.batch_size if bench.backend == "hf" else 1024,
        limit=args.limit,
    )
    run_id = None if args.no_mlflow else bench_run(params, run_name, instance=instance)
    with bench_system_metrics(params, run_id):  # tracking.system_metrics: MLflow's system/... while it runs
        metrics = runner.run(specs, instance)
    atomic_write_json(paths.bench_metrics(instance), metrics)
    for name, m in metrics["benchmarks"].items():
        ks = " ".join(f"{k}={v:.3f}" for k, v in m.items() if k.startswith("pass_at_"))
        print(f"{name:>16}: avg@{m.get('n')} {m['avg_at_n']:.3f}  {ks}  ({m['n_problems']} problems)")
    avg = metrics["average"]["avg_at_n"]
    t = metrics["timing"]
    print(f"{'average':>16}: {avg:.3f}   generate {t['generate_s']:.1f}s, grade {t['grade_s']:.1f}s")
    if not args.no_mlflow:
        # the merged model's MLflow logged model (recorded by `icpo merge`): the metrics are linked to it
        model_id = tracking.merged_model_id(params, instance) if args.model is None else None
        log_bench(params, run_name, metrics, instance=instance, run_id=run_id, model_id=model_id)
    return 0
