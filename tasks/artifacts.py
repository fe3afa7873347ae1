"""Prefect artifacts the flows publish: the stage results, and the report stage's comparison table."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from icpo_core.paths import REPORTS_DIR

PLAN_KEY = "dvc-plan"
RESULTS_KEY = "dvc-stage-results"
TABLE_KEY = "grpo-vs-icpo-table"
REPORT_KEY = "grpo-vs-icpo-report"
MLFLOW_KEY = "mlflow-runs"
ABLATION_KEY = "ablation-summary"


def table_rows(data: Any) -> list[dict[str, Any]] | None:
    """Rows for a table artifact from ``reports/table.json``: a list of row objects, ``{"rows": [...]}``, or a
    mapping of row name -> mapping of columns. ``None`` if the shape is none of these."""
    if isinstance(data, Mapping) and isinstance(data.get("rows"), list):
        data = data["rows"]
    if isinstance(data, list) and all(isinstance(r, Mapping) for r in data):
        return [dict(r) for r in data]
    if isinstance(data, Mapping) and data and all(isinstance(v, Mapping) for v in data.values()):
        return [{"run": name, **dict(cols)} for name, cols in data.items()]
    return None


def publish_report(project_dir: str | Path) -> list[str]:
    """Publish `reports/table.json` (table) and `reports/report.md` (markdown) if the report stage wrote them.

    Returns the keys of the artifacts created.
    """
    reports = Path(project_dir) / REPORTS_DIR
    created: list[str] = []
    table_file, md_file = reports / "table.json", reports / "report.md"
    if table_file.is_file():
        data = json.loads(table_file.read_text())
        rows = table_rows(data)
        if rows is not None:
            create_table_artifact(key=TABLE_KEY, table=rows, description="GRPO vs ICPO (reports/table.json)")
        else:  # unknown shape: still show it, verbatim
            create_markdown_artifact(
                key=TABLE_KEY,
                markdown=f"```json\n{json.dumps(data, indent=2)}\n```\n",
                description="table.json",
            )
        created.append(TABLE_KEY)
    if md_file.is_file():
        create_markdown_artifact(
            key=REPORT_KEY, markdown=md_file.read_text(), description="reports/report.md"
        )
        created.append(REPORT_KEY)
    return created


def publish_results(rows: Sequence[Mapping[str, Any]], description: str) -> None:
    create_table_artifact(key=RESULTS_KEY, table=[dict(r) for r in rows], description=description)
