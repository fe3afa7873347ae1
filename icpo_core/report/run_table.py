"""The per-run table of ``icpo compare --per-run``: one row per MLflow run with bench metrics, one column per
benchmark, values avg@n in percent, for runs no report summarised (no seeds, no intervals).

The average is the unweighted mean over the table's columns (n/a when a row misses a column, so averages are
only ever compared over the same benchmarks). Rendering: ``icpo_core.report.markdown.run_table_markdown``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from icpo_core.report.study_data import AVERAGE


@dataclass
class Row:
    run: str
    label: str
    values: dict[str, float | None]  # column -> avg@n in percent
    average: float | None
    n: dict[str, int | None] = field(default_factory=dict)  # column -> samples per problem
    source: str = ""  # where the numbers came from (metrics file / MLflow run id)


@dataclass
class Table:
    columns: list[str]
    rows: list[Row]

    def best(self) -> dict[str, float]:
        """Best value per column (and the average)."""
        out = {}
        for col in [*self.columns, AVERAGE]:
            vals = [r.average if col == AVERAGE else r.values.get(col) for r in self.rows]
            vals = [v for v in vals if v is not None]
            if vals:
                out[col] = max(vals)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": [asdict(r) for r in self.rows], "best": self.best()}


def _average(values: dict[str, float | None], columns: list[str]) -> float | None:
    vals = [values.get(c) for c in columns]
    if not vals or any(v is None for v in vals):
        return None
    return sum(vals) / len(vals)  # type: ignore[arg-type]


def build_table(
    entries: list[tuple[str, str, dict[str, Any] | None, str]], columns: list[str] | None = None
) -> Table:
    """``entries``: (run, label, bench metrics JSON or None, source). Columns default to the union of the
    benchmarks in entry order."""
    if columns is None:
        columns = []
        for _, _, m, _ in entries:
            for name in (m or {}).get("benchmarks", {}):
                if name not in columns:
                    columns.append(name)
    rows = []
    for run, label, m, source in entries:
        benches = (m or {}).get("benchmarks", {})
        values: dict[str, float | None] = {}
        ns: dict[str, int | None] = {}
        for col in columns:
            b = benches.get(col) or {}
            v = b.get("avg_at_n")
            values[col] = None if v is None else 100.0 * float(v)
            ns[col] = b.get("n")
        rows.append(Row(run, label, values, _average(values, columns), ns, source))
    return Table(columns, rows)
