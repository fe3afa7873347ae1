"""``icpo report``: the GRPO-vs-ICPO study from this checkout's metrics and bench files, with statistics.

Runs and seeds: ``base`` plus ``params.study.runs`` at ``params.seeds`` and ``params.study.ablations`` at
``params.study.ablation_seeds`` (``params.report.runs`` at ``params.seed`` until the study params exist). One
run at one seed is the instance ``<run>_s<seed>``; a run whose seeded instances are all missing but whose bare
name has files (the single-seed layout) is read as one instance.

Reads per instance ``bench/<instance>/samples.jsonl`` (per-problem verdicts: the statistics), and
``metrics/bench_<instance>.json``, ``metrics/train_<instance>.json``, ``metrics/steps_<instance>.jsonl``, and
``metrics/regime.json`` (the exploration gap) when it exists. Writes ``reports/report.md`` (led by the
preregistered primary comparison of ``study.primary`` and its verdicts, then means with 95 % CIs, the secondary
paired differences with p-values, the training-process measures over seeds, per-seed spread, training
summary), ``reports/study.json`` (the same numbers, a DVC metrics file), ``reports/table.json`` (the summary table
as rows), ``reports/curves.png`` (seed-banded training curves), ``reports/plots/steps_<run>.json`` (mean over
seeds per step, one file per run) and ``reports/plots/arms/<measure>.json`` (the same in long format, rows
``{step, arm, value, min, max, n_seeds}`` for every arm of the study: dvc.yaml's top-level ``plots:`` draw them,
coloured by arm, with the template ``.dvc/plots/arms.json``); logs all of it to MLflow. Missing instances show n/a, never
a crash. The statistical methods: ``icpo_core.report.stats``; the numbers: ``icpo_core.report.study_stats``.
"""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime
from typing import Any

from icpo_core import paths
from icpo_core.io_utils import atomic_path, atomic_write_json, atomic_write_text
from icpo_core.report.curves import plot_curves, write_arm_plot_data, write_plot_data
from icpo_core.report.markdown import comparison_markdown, primary_markdown, report_markdown, summary_markdown
from icpo_core.report.mlflow_runs import log_study
from icpo_core.report.study_data import AVERAGE, steps_files
from icpo_core.report.study_stats import build_study

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runs", help="comma-separated runs (default: base + params study.runs + study.ablations)"
    )
    p.add_argument("--seeds", help="comma-separated seeds (default: params seeds)")
    p.add_argument("--n-boot", type=int, default=None, help="bootstrap replicates (default 4000)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")


def _table_rows(study: Any) -> dict[str, Any]:
    """``reports/table.json``: one row per run (``{"rows": [...]}``, what the Prefect table artifact reads)."""
    rows = []
    for run, r in study.runs.items():
        row: dict[str, Any] = {"run": run, "method": r.label}
        for c in [*study.columns, AVERAGE]:
            cell = r.cell(c)
            row[c] = None if cell.mean is None else round(cell.mean, 4)
            row[f"{c}_ci"] = None if not cell.has_ci else [round(cell.ci_low, 4), round(cell.ci_high, 4)]
        row["n_seeds"] = max((r.cell(c).n_seeds for c in study.columns), default=0)
        rows.append(row)
    return {"columns": study.columns, "rows": rows}


def run(args: argparse.Namespace) -> int:
    params = args.params_obj
    runs = [r.strip() for r in args.runs.split(",")] if args.runs else None
    seeds = [int(s) for s in args.seeds.split(",")] if getattr(args, "seeds", None) else None
    study = build_study(params, runs, seeds, n_boot=getattr(args, "n_boot", None))
    out = paths.REPORTS_DIR
    out.mkdir(parents=True, exist_ok=True)

    trained = [r for r in study.runs if r != "base"]
    files = {r: list(steps_files(r, study.runs[r].instances).values()) for r in trained}
    with atomic_path(out / "curves.png") as tmp:
        plotted = plot_curves({r: (study.runs[r].label, files[r]) for r in trained}, tmp)
    write_plot_data(files, out / "plots")
    write_arm_plot_data(files, out / "plots")  # every arm of the study: dvc.yaml's `plots:`

    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    study_json = study.to_json()
    atomic_write_text(out / "report.md", report_markdown(study, generated, plotted))
    atomic_write_json(out / "study.json", study_json)
    atomic_write_json(out / "table.json", {"profile": params.profile, **_table_rows(study)})
    print(primary_markdown(study))
    print(summary_markdown(study))
    print(comparison_markdown(study))
    if not args.no_mlflow:
        log_study(
            params,
            study_json,
            [str(out / f) for f in ("report.md", "curves.png", "table.json", "study.json")],
        )
    log.info(
        "wrote %s", ", ".join(str(out / f) for f in ("report.md", "study.json", "table.json", "curves.png"))
    )
    return 0
