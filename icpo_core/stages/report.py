"""``icpo report``: the GRPO-vs-ICPO comparison from this checkout's metrics files.

Reads ``metrics/bench_<run>.json``, ``metrics/train_<run>.json`` and ``metrics/steps_<run>.jsonl`` for the runs
of ``params.report.runs`` and writes ``reports/report.md`` (paper-style table, best per column in bold; training
summary), ``reports/table.json``, ``reports/curves.png`` (on-policy and expert-region reward vs step, runs
overlaid) and ``reports/plots/steps_<run>.json`` (the same curves for dvc.yaml's top-level ``plots:``); logs the
table and files to MLflow. A run with missing files gets "n/a", never a crash.
"""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime

from icpo_core import paths

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", help="comma-separated runs (default: params report.runs)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")


def run(args: argparse.Namespace) -> int:
    from icpo_core.io_utils import atomic_path, atomic_write_json, atomic_write_text
    from icpo_core.report.curves import plot_curves, write_plot_data
    from icpo_core.report.table import run_label, table_from_metrics, training_markdown

    params = args.params_obj
    runs = [r.strip() for r in args.runs.split(",")] if args.runs else list(params.report.runs)
    table = table_from_metrics(params, runs)
    out = paths.REPORTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    curves = {r: (run_label(params, r), paths.train_metrics_jsonl(r)) for r in runs if r != "base"}
    with atomic_path(out / "curves.png") as tmp:
        plotted = plot_curves(curves, tmp)
    train_runs = [r for r in runs if r != "base"]
    write_plot_data(train_runs, {r: paths.train_metrics_jsonl(r) for r in train_runs}, out / "plots")
    missing = [r.run for r in table.rows if all(v is None for v in r.values.values())]
    md = [
        "# GRPO vs ICPO",
        "",
        f"Profile `{params.profile}`; generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by "
        "`icpo report`. Accuracy in % (avg@n: mean over n samples per problem, then over problems); "
        "Avg. = unweighted mean over the benchmarks; best per column in **bold**. ICPO† = ICPO with annealed "
        "expert reward shaping (RS); − ERRS = without expert-region reject sampling.",
        "",
        table.to_markdown(),
    ]
    if missing:
        md += [f"n/a: no bench metrics yet for {', '.join(f'`{r}`' for r in missing)}.", ""]
    md += [
        "## Training",
        "",
        training_markdown(params, runs),
        "## Curves",
        "",
        "![training curves](curves.png)",
        "",
    ]
    if plotted:
        md += ["Steps plotted: " + ", ".join(f"`{r}` {n}" for r, n in plotted.items()) + ".", ""]
    atomic_write_text(out / "report.md", "\n".join(md))
    atomic_write_json(out / "table.json", {"profile": params.profile, **table.to_dict()})
    print(table.to_markdown())
    if not args.no_mlflow:
        from icpo_core.report.mlflow_runs import log_report

        log_report(params, table, [str(out / "report.md"), str(out / "curves.png"), str(out / "table.json")])
    log.info("wrote %s", ", ".join(str(out / f) for f in ("report.md", "table.json", "curves.png")))
    return 0
