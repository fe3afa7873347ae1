"""Training curves: on-policy reward and expert-region reward vs step, every run overlaid (GRPO vs ICPO)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

CURVES = (
    ("reward/on_policy", "On-policy reward"),
    ("reward/expert_region", "Expert-region reward (accepted IEF)"),
)


def read_steps(path: Path) -> list[dict]:
    """Rows of ``metrics/steps_<run>.jsonl`` sorted by step; the last row wins for a repeated step (resume)."""
    by_step: dict[int, dict] = {}
    try:
        with path.open() as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("step"), int | float):
                    by_step[int(row["step"])] = row
    except FileNotFoundError:
        return []
    return [by_step[s] for s in sorted(by_step)]


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, int | float) and v == v:  # skip None / NaN (e.g. no IEF row accepted that step)
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


def plot_curves(runs: dict[str, tuple[str, Path]], out_png: Path) -> dict[str, int]:
    """``runs``: run -> (label, steps jsonl). Writes ``out_png``; returns the number of steps plotted per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(6 * len(CURVES), 4), squeeze=False)
    plotted: dict[str, int] = {}
    # One colour per run in both panels.
    colors = {run: plt.get_cmap("tab10")(i % 10) for i, run in enumerate(runs)}
    for (key, title), ax in zip(CURVES, axes[0], strict=True):
        for run, (label, path) in runs.items():
            rows = read_steps(path)
            xs, ys = series(rows, key)
            if xs:
                ax.plot(
                    xs,
                    ys,
                    color=colors[run],
                    marker="o" if len(xs) < 30 else None,
                    markersize=3,
                    label=f"{label} ({run})",
                )
                plotted[run] = max(plotted.get(run, 0), len(rows))
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("mean reward")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return plotted


def write_plot_data(runs: list[str], steps_path: dict[str, Path], out_dir: Path) -> list[Path]:
    """``<out_dir>/steps_<run>.json`` per run: the curve keys per step as a JSON list, the format DVC plots read
    (DVC 3 reads JSON / YAML / CSV / TSV, not JSON lines). A run without steps gets ``[]``, so the top-level
    ``plots:`` of dvc.yaml always find their files."""
    from icpo_core.io_utils import atomic_write_text

    written = []
    for run in runs:
        rows = read_steps(steps_path[run]) if run in steps_path else []
        data = [{"step": int(r["step"]), **{k: r.get(k) for k, _ in CURVES}} for r in rows]
        written.append(atomic_write_text(out_dir / f"steps_{run}.json", json.dumps(data) + "\n"))
    return written
