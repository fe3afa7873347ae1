"""``icpo compare --experiment NAME [--filter KEY=VALUE ...]``: the report's tables from MLflow.

By default the newest MLflow run matching the filters that holds ``report/study.json`` (an ``icpo report`` run
or a study's parent run) is read, and the report's tables print from it: means with 95 % CIs per run and
benchmark, and the paired comparison with the baseline. ``--per-run`` (or no study in the experiment) builds
the plain table instead, for runs that no report summarised (another machine, a Prefect deployment, an older
commit): every run with ``bench/<name>/avg_at_n`` metrics becomes a row (the newest per run name, profile and
commit). Filters are tag equalities (``icpo.method=icpo``) or raw MLflow filter clauses.
"""

from __future__ import annotations

import argparse

from icpo_core.errors import UserError
from icpo_core.io_utils import atomic_write_json
from icpo_core.report.markdown import (
    comparison_markdown,
    primary_markdown,
    run_table_markdown,
    summary_markdown,
)
from icpo_core.report.mlflow_runs import latest_study, search_entries
from icpo_core.report.run_table import build_table
from icpo_core.report.study_data import Study
from icpo_core.tracking import tracking_uri


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--experiment", default=None, help="MLflow experiment (default: params tracking.experiment)"
    )
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        help="KEY=VALUE tag filter (repeatable, and-ed), or a raw MLflow filter like \"tags.`icpo.profile` = 'x'\"",
    )
    p.add_argument("--benchmarks", help="comma-separated columns of the per-run table (default: all found)")
    p.add_argument(
        "--per-run", action="store_true", help="the per-run table of bench metrics, not the newest study"
    )
    p.add_argument("--json", dest="json_out", help="also write the table (or the study) as JSON here")


def run(args: argparse.Namespace) -> int:
    params = args.params_obj
    experiment = args.experiment or params.tracking.experiment
    uri = tracking_uri(params)
    try:
        found = None if args.per_run else latest_study(uri, experiment, args.filter)
        entries = [] if found else search_entries(uri, experiment, args.filter, params)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"MLflow at {uri}: {type(e).__name__}: {e}") from None
    if found:
        study_json, run_id = found
        study = Study.model_validate(study_json)
        print(f"Study of MLflow run {run_id} (mean [95 % CI] in %):\n")
        if study.primary is not None:
            print(primary_markdown(study))
        print(summary_markdown(study))
        if study.comparisons:
            print(comparison_markdown(study))
        if args.json_out:
            atomic_write_json(args.json_out, {"experiment": experiment, "run_id": run_id, **study_json})
        return 0
    if not entries:
        raise UserError(
            f"no runs with bench metrics in experiment '{experiment}' matching {args.filter or 'all'}"
        )
    columns = [c.strip() for c in args.benchmarks.split(",")] if args.benchmarks else None
    table = build_table(entries, columns)
    print(run_table_markdown(table))
    if args.json_out:
        atomic_write_json(args.json_out, {"experiment": experiment, "filter": args.filter, **table.to_dict()})
    return 0
