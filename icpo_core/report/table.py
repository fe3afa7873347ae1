"""The paper-style comparison table: one row per run (base, GRPO, ICPO, ablations), one column per benchmark.

Values are avg@n in percent; the average is the unweighted mean over the table's columns (n/a when a row misses
a column, so averages are only ever compared over the same benchmarks); the best value per column is bold.
Runs whose metrics are missing show "n/a" instead of stopping the report.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from icpo_core import paths
from icpo_core.config import Params

log = logging.getLogger(__name__)

TITLES = {
    "math500": "MATH-500",
    "aime24": "AIME24",
    "aime25": "AIME25",
    "amc23": "AMC23",
    "minerva": "Minerva",
    "olympiadbench": "OlympiadBench",
    "gsm8k": "GSM8K",
    "gpqa_diamond": "GPQA-D",
}
AVERAGE = "average"


def column_title(name: str) -> str:
    if name.startswith("synthetic_l"):
        return f"Synth L{name.removeprefix('synthetic_l')}"
    return TITLES.get(name, name)


def run_label(params: Params | None, run: str) -> str:
    """The paper's name for a run, derived from its algorithm params (not from its name)."""
    if run == "base":
        return "Base model"
    if params is None or run not in params.runs:
        return run
    a = params.run_algorithm(run)
    if a.n_off == 0:
        return "GRPO"
    if a.released_demos_skip_generation or a.released_constant_bonus or a.released_entropy_bonus > 0:
        return "ICPO (released code)"
    name = "ICPO†" if a.reward_shaping else "ICPO"
    if not a.errs:
        name += " − ERRS"
    if a.demo_format != "chat_turns":
        name += f" ({a.demo_format} demos)"
    return name


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

    def to_markdown(self) -> str:
        best = self.best()

        def cell(v: float | None, col: str) -> str:
            if v is None:
                return "n/a"
            s = f"{v:.2f}"
            return f"**{s}**" if col in best and round(v, 2) == round(best[col], 2) else s

        def header(col: str) -> str:
            ns = {r.n.get(col) for r in self.rows if r.n.get(col) is not None}
            return f"{column_title(col)} (avg@{ns.pop()})" if len(ns) == 1 else column_title(col)

        lines = [
            "| Method | Run | " + " | ".join(header(c) for c in self.columns) + " | Avg. |",
            "|---|---|" + "---:|" * (len(self.columns) + 1),
        ]
        for r in self.rows:
            cells = [cell(r.values.get(c), c) for c in self.columns] + [cell(r.average, AVERAGE)]
            lines.append(f"| {r.label} | `{r.run}` | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


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


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); its row shows n/a", path, e)
        return None
    return data if isinstance(data, dict) else None


def table_from_metrics(params: Params, runs: list[str], metrics_dir: Path = paths.METRICS_DIR) -> Table:
    """The table of ``runs`` from ``metrics/bench_<run>.json``; columns follow ``params.bench.benchmarks``."""
    from icpo_core.bench.registry import resolve_benchmarks

    entries = []
    for run in runs:
        path = metrics_dir / paths.bench_metrics(run).name
        m = read_json(path)
        if m is None:
            log.warning("no bench metrics for run %s (%s): row shows n/a", run, path)
        entries.append((run, run_label(params, run), m, str(path) if m else ""))
    try:
        columns = [s.name for s in resolve_benchmarks(params.bench.benchmarks, params)]
    except Exception:  # a registry problem must not stop the report: fall back to what the files hold
        columns = None
    if columns is not None:
        # benchmarks present in the files but not in params (e.g. run with --benchmarks) go last
        for _, _, m, _ in entries:
            for name in (m or {}).get("benchmarks", {}):
                if name not in columns:
                    columns.append(name)
    return build_table(entries, columns)


TRAIN_KEYS = (
    ("steps", "Steps"),
    ("wall_time_s", "Wall time (s)"),
    ("reward_on_policy_mean", "On-policy reward (mean)"),
    ("reward_on_policy_last5", "On-policy reward (last 5)"),
    ("ief_accept_rate_mean", "IEF accept rate"),
)


def training_markdown(params: Params, runs: list[str], metrics_dir: Path = paths.METRICS_DIR) -> str:
    """A second table: the training summaries (``metrics/train_<run>.json``), n/a where missing."""
    lines = [
        "| Method | Run | " + " | ".join(t for _, t in TRAIN_KEYS) + " |",
        "|---|---|" + "---:|" * len(TRAIN_KEYS),
    ]
    for run in runs:
        if run == "base":
            continue
        s = read_json(metrics_dir / paths.train_summary(run).name) or {}

        def fmt(v: Any) -> str:
            if v is None:
                return "n/a"
            return f"{v:.3f}" if isinstance(v, float) else str(v)

        cells = [fmt(s.get(k)) for k, _ in TRAIN_KEYS]
        lines.append(f"| {run_label(params, run)} | `{run}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
