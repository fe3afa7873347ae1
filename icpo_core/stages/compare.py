"""``icpo compare --experiment NAME [--filter KEY=VALUE ...]``: the report's table from MLflow runs.

For runs that this checkout's DVC did not produce (another machine, a Prefect deployment, an older commit):
every run of the experiment with ``bench/<name>/avg_at_n`` metrics becomes a row (the newest per run name,
profile and commit). Filters are tag equalities (``icpo.method=icpo``) or raw MLflow filter clauses.
"""

from __future__ import annotations

import argparse


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
    p.add_argument("--benchmarks", help="comma-separated columns (default: every benchmark found)")
    p.add_argument("--json", dest="json_out", help="also write the table as JSON here")


def run(args: argparse.Namespace) -> int:
    from icpo_core.errors import UserError
    from icpo_core.io_utils import atomic_write_json
    from icpo_core.report.mlflow_runs import search_entries
    from icpo_core.report.table import build_table
    from icpo_core.tracking import tracking_uri

    params = args.params_obj
    experiment = args.experiment or params.tracking.experiment
    uri = tracking_uri(params)
    try:
        entries = search_entries(uri, experiment, args.filter, params)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"MLflow at {uri}: {type(e).__name__}: {e}") from None
    if not entries:
        raise UserError(
            f"no runs with bench metrics in experiment '{experiment}' matching {args.filter or 'all'}"
        )
    columns = [c.strip() for c in args.benchmarks.split(",")] if args.benchmarks else None
    table = build_table(entries, columns)
    print(table.to_markdown())
    if args.json_out:
        atomic_write_json(args.json_out, {"experiment": experiment, "filter": args.filter, **table.to_dict()})
    return 0
