"""``icpo report``: the GRPO-vs-ICPO study from this checkout's metrics and bench files, with statistics.

Runs and seeds: ``base`` plus ``params.study.runs`` at ``params.seeds`` and ``params.study.ablations`` at
``params.study.ablation_seeds`` (``params.report.runs`` at ``params.seed`` until the study params exist). One
run at one seed is the instance ``<run>_s<seed>``; a run whose seeded instances are all missing but whose bare
name has files (the single-seed layout) is read as one instance.

Reads per instance ``bench/<instance>/samples.jsonl`` (per-problem verdicts: the statistics), and
``metrics/bench_<instance>.json``, ``metrics/train_<instance>.json``, ``metrics/steps_<instance>.jsonl``. Writes
``reports/report.md`` (means with 95 % CIs, paired differences with p-values, per-seed spread, training
summary), ``reports/study.json`` (the same numbers, a DVC metrics file), ``reports/table.json`` (the summary table
as rows), ``reports/curves.png`` (seed-banded training curves) and ``reports/plots/steps_<run>.json`` (mean over
seeds per step, for dvc.yaml's top-level ``plots:``); logs all of it to MLflow. Missing instances show n/a, never
a crash. The statistical methods: ``icpo_core.report.stats``.
"""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime
from typing import Any

from icpo_core import paths
from icpo_core.io_utils import atomic_path, atomic_write_json, atomic_write_text

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
    from icpo_core.report.table import AVERAGE

    rows = []
    for run in study.cfg.runs:
        row: dict[str, Any] = {"run": run, "method": study.labels[run]}
        for c in [*study.columns, AVERAGE]:
            cell = study.cells[(run, c)]
            row[c] = None if cell.mean is None else round(cell.mean, 4)
            row[f"{c}_ci"] = None if cell.est is None else [round(cell.est.lo, 4), round(cell.est.hi, 4)]
        row["n_seeds"] = max((len(study.cells[(run, c)].per_seed) for c in study.columns), default=0)
        rows.append(row)
    return {"columns": study.columns, "rows": rows}


def _method_text(study: Any) -> list[str]:
    seeds = ", ".join(str(s) for s in study.cfg.seeds)
    return [
        f"Scores in % over seeds {seeds} (ablations: {', '.join(map(str, study.cfg.ablation_seeds))}) and the "
        "benchmark's problems; a problem's score is the mean correctness of its samples (greedy: 0 / 1). "
        f"95 % CI: two-level percentile bootstrap ({study.n_boot} replicates): seeds resampled with replacement, "
        "then problems with replacement (the same problem draw for all seeds; for Avg., the unweighted mean over "
        "the benchmarks, one seed draw shared by the benchmarks). With one seed a CI holds the problem noise "
        "only; with few seeds it under-states the seed-to-seed noise. A cell shows the digits its CI supports "
        "(rounded at the first significant digit of the CI half-width).",
        "",
        "ICPO† = ICPO with annealed expert reward shaping (RS); − ERRS = without expert-region reject sampling.",
    ]


def run(args: argparse.Namespace) -> int:
    from icpo_core.report.curves import plot_curves, write_plot_data
    from icpo_core.report.table import (
        build_study,
        cells_markdown,
        comparison_markdown,
        instance_name,
        spread_markdown,
        summary_markdown,
        training_markdown,
    )

    params = args.params_obj
    runs = [r.strip() for r in args.runs.split(",")] if args.runs else None
    seeds = [int(s) for s in args.seeds.split(",")] if getattr(args, "seeds", None) else None
    study = build_study(params, runs, seeds, n_boot=getattr(args, "n_boot", None))
    cfg = study.cfg
    out = paths.REPORTS_DIR
    out.mkdir(parents=True, exist_ok=True)

    def steps_files(run: str) -> list[Any]:
        files = [paths.train_metrics_jsonl(instance_name(run, s)) for s in cfg.seeds_of(run)]
        if not any(f.exists() for f in files) and paths.train_metrics_jsonl(run).exists():
            files = [paths.train_metrics_jsonl(run)]  # the single-seed layout
        return files

    trained = [r for r in cfg.runs if r != "base"]
    with atomic_path(out / "curves.png") as tmp:
        plotted = plot_curves({r: (study.labels[r], steps_files(r)) for r in trained}, tmp)
    write_plot_data({r: steps_files(r) for r in trained}, out / "plots")

    missing = {r: m for r, m in study.missing.items() if m}
    md = [
        "# GRPO vs ICPO",
        "",
        f"Profile `{params.profile}`; generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by "
        "`icpo report`.",
        "",
        *_method_text(study),
        "",
        "## Results: mean [95 % CI]",
        "",
        summary_markdown(study),
    ]
    if missing:
        md += [
            "n/a or fewer seeds: not run yet: "
            + "; ".join(f"`{r}`: {', '.join(f'`{i}`' for i in m)}" for r, m in missing.items())
            + ".",
            "",
        ]
    md += [
        "## Per benchmark: seeds, problems, pass@k",
        "",
        cells_markdown(study),
        f"## Paired comparison with `{cfg.baseline}`",
        "",
        "Δ = run − baseline in points, on the problems both answered. CI: paired bootstrap (one problem draw for "
        "both runs, the seeds of each run drawn independently: different runs are independent trainings). "
        "p (problems): two-sided sign-flip test; per problem the difference of the two runs' seed-mean scores, "
        "whose sign is exchangeable under the null (the two runs' models are equally good on every problem); "
        f"{study.n_perm} random flips. It treats the trained models as given. p (seeds): exact permutation test "
        "that exchanges whole trained models (seeds) between the runs; min = the smallest p its seed counts "
        "allow.",
        "",
        comparison_markdown(study),
        "## Seed-to-seed spread",
        "",
        spread_markdown(study),
        "## Training",
        "",
        training_markdown(
            params,
            [instance_name(r, s) for r in trained for s in cfg.seeds_of(r)],
            labels={instance_name(r, s): f"{study.labels[r]} s{s}" for r in trained for s in cfg.seeds_of(r)},
        ),
        "## Curves",
        "",
        "![training curves](curves.png)",
        "",
        "Mean over seeds per step; the band spans the lowest and highest seed (min-max).",
        "",
    ]
    if plotted:
        md += [
            "Plotted: "
            + ", ".join(f"`{r}` {v['seeds']} seed(s), {v['steps']} steps" for r, v in plotted.items())
            + ".",
            "",
        ]
    study_json = study.to_json(params.profile)
    atomic_write_text(out / "report.md", "\n".join(md))
    atomic_write_json(out / "study.json", study_json)
    atomic_write_json(out / "table.json", {"profile": params.profile, **_table_rows(study)})
    print(summary_markdown(study))
    print(comparison_markdown(study))
    if not args.no_mlflow:
        from icpo_core.report.mlflow_runs import log_study

        log_study(
            params,
            study_json,
            [str(out / f) for f in ("report.md", "curves.png", "table.json", "study.json")],
        )
    log.info(
        "wrote %s", ", ".join(str(out / f) for f in ("report.md", "study.json", "table.json", "curves.png"))
    )
    return 0
