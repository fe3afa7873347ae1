"""Training curves vs step, one line per run, mean over its seeds with a min-max band over the seeds.

Panels: on-policy reward, the share of on-policy groups with reward signal, expert-region reward (accepted IEF
rows), IEF acceptance, the PPO clip fraction, KL and entropy. At each step the line is the mean over the seeds
that logged a finite value at that step, the band spans the smallest and the largest seed (min-max: with 3 seeds
a +-1 sd band would rest on a 3-point variance; min-max shows every seed). A run with one seed is a plain line.
The report's table of the same measures (mean over steps, t interval across seeds): ``study_stats``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

from icpo_core.io_utils import atomic_write_text
from icpo_core.steplog import read_steps

log = logging.getLogger(__name__)

CURVES = (
    ("reward/on_policy", "On-policy reward"),
    ("icpo/on_policy_groups_with_signal", "On-policy groups with reward signal"),
    ("reward/expert_region", "Expert-region reward (accepted IEF)"),
    ("icpo/accept_rate", "IEF acceptance rate"),
    ("actor/pg_clipfrac", "PPO clip fraction (on-policy tokens)"),
    ("response/clip_ratio", "Rollouts cut at max length"),
    ("actor/kl", "KL to the reference"),
    ("actor/entropy", "Entropy"),
)


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, int | float) and v == v:  # skip None / NaN (e.g. no IEF row accepted that step)
            xs.append(int(r["step"]))
            ys.append(float(v))
    return xs, ys


def seed_band(per_seed_rows: list[list[dict]], key: str) -> dict[str, list]:
    """Mean, min, max and the number of seeds per step of ``key`` over seeds (finite values only)."""
    by_step: dict[int, list[float]] = {}
    for rows in per_seed_rows:
        xs, ys = series(rows, key)
        for x, y in zip(xs, ys, strict=True):
            if math.isfinite(y):
                by_step.setdefault(x, []).append(y)
    steps = sorted(by_step)
    return {
        "step": steps,
        "mean": [sum(by_step[s]) / len(by_step[s]) for s in steps],
        "min": [min(by_step[s]) for s in steps],
        "max": [max(by_step[s]) for s in steps],
        "n": [len(by_step[s]) for s in steps],
    }


def plot_curves(runs: dict[str, tuple[str, list[Path]]], out_png: Path) -> dict[str, dict[str, int]]:
    """``runs``: run -> (label, steps jsonl of each seed). Writes ``out_png`` (one panel per ``CURVES`` key);
    returns per plotted run ``{"seeds": seeds with steps, "steps": most steps of a seed, "bands": panels where
    the run has a seed band}``. The report plots the study with it, the local trainer one run (its MLflow
    artifact). matplotlib is imported here: the report stage's other work and the trainer's import skip it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 3
    nrows = math.ceil(len(CURVES) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.8 * nrows), squeeze=False)
    flat = list(axes.ravel())
    plotted: dict[str, dict[str, int]] = {}
    colors = {run: plt.get_cmap("tab10")(i % 10) for i, run in enumerate(runs)}
    loaded = {run: [read_steps(p) for p in paths_] for run, (_, paths_) in runs.items()}
    for (key, title), ax in zip(CURVES, flat, strict=False):
        for run, (label, _) in runs.items():
            per_seed = [r for r in loaded[run] if r]
            band = seed_band(per_seed, key)
            if not band["step"]:
                continue
            n_seeds = max(band["n"])
            ax.plot(
                band["step"],
                band["mean"],
                color=colors[run],
                marker="o" if len(band["step"]) < 30 else None,
                markersize=3,
                label=f"{label} ({run}, {n_seeds} seed{'s' if n_seeds != 1 else ''})",
            )
            info = plotted.setdefault(
                run, {"seeds": len(per_seed), "steps": max(len(r) for r in per_seed), "bands": 0}
            )
            if n_seeds > 1:
                ax.fill_between(
                    band["step"], band["min"], band["max"], color=colors[run], alpha=0.2, linewidth=0
                )
                info["bands"] += 1
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
    for ax in flat[len(CURVES) :]:
        ax.axis("off")
    fig.suptitle("Mean over seeds; band: min-max over seeds", fontsize=10)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return plotted


def plot_data(per_seed_rows: list[list[dict]]) -> list[dict]:
    """Rows for DVC plots: per step the mean over seeds of every ``CURVES`` key (None where no seed has a
    finite value), plus ``<key>/min`` and ``<key>/max`` over seeds and ``n_seeds``."""
    out: dict[int, dict] = {}
    for key, _ in CURVES:
        band = seed_band(per_seed_rows, key)
        for i, s in enumerate(band["step"]):
            row = out.setdefault(s, {"step": s})
            row[key] = band["mean"][i]
            row[f"{key}/min"] = band["min"][i]
            row[f"{key}/max"] = band["max"][i]
            row["n_seeds"] = max(row.get("n_seeds", 0), band["n"][i])
    steps = sorted({int(r["step"]) for rows in per_seed_rows for r in rows} | set(out))
    return [{"step": s, **{k: None for k, _ in CURVES}, **out.get(s, {})} for s in steps]


ARMS_DIR = "arms"  # reports/plots/arms/<measure>.json: every arm of the study in one file per measure
ARMS_TEMPLATE = "arms"  # .dvc/plots/arms.json: DVC's custom template, one line (and seed band) per arm


def arms_file(key: str) -> str:
    """The long-format file of step-log key ``key`` under ``reports/plots`` (``arms/reward_on_policy.json``)."""
    return f"{ARMS_DIR}/{re.sub(r'[^A-Za-z0-9]+', '_', key).strip('_')}.json"


def arm_rows(runs: dict[str, list[list[dict]]], key: str) -> list[dict]:
    """Long-format rows of ``key`` for DVC plots: ``{"step", "arm", "value", "min", "max", "n_seeds"}`` per arm
    (run) and step, the value the mean over the arm's seeds that logged a finite one, min / max over them."""
    rows = []
    for arm, per_seed in runs.items():
        band = seed_band(per_seed, key)
        rows += [
            {
                "step": s,
                "arm": arm,
                "value": band["mean"][i],
                "min": band["min"][i],
                "max": band["max"][i],
                "n_seeds": band["n"][i],
            }
            for i, s in enumerate(band["step"])
        ]
    return rows


def write_arm_plot_data(runs: dict[str, list[Path]], out_dir: Path) -> list[Path]:
    """``<out_dir>/arms/<measure>.json`` for every ``CURVES`` measure: :func:`arm_rows` of every run given (the
    study's runs and ablations: the arms come from params.yaml, not from dvc.yaml), for dvc.yaml's top-level
    ``plots:`` with the template ``arms`` (a line per arm, coloured by arm; see :func:`dvc_plots`). Every file is
    written, ``[]`` while no arm has the measure."""
    loaded = {run: [r for r in (read_steps(p) for p in paths_) if r] for run, paths_ in runs.items()}
    return [
        atomic_write_text(out_dir / arms_file(key), json.dumps(arm_rows(loaded, key)) + "\n")
        for key, _ in CURVES
    ]


def dvc_plots(plots_dir: str = "reports/plots") -> list[dict]:
    """dvc.yaml's top-level ``plots:`` for the files of :func:`write_arm_plot_data` (a test keeps dvc.yaml equal
    to it): one plot per ``CURVES`` measure, x ``step``, y ``value``, template ``arms``."""
    return [
        {
            re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_"): {
                "title": title,
                "template": ARMS_TEMPLATE,
                "x": "step",
                "y": {f"{plots_dir}/{arms_file(key)}": "value"},
                "y_label": key,
            }
        }
        for key, title in CURVES
    ]


def write_plot_data(runs: dict[str, list[Path]], out_dir: Path) -> list[Path]:
    """``<out_dir>/steps_<run>.json`` per run (``plot_data`` of its seeds) as a JSON list, the format DVC plots
    read (DVC 3 reads JSON / YAML / CSV / TSV, not JSON lines). A run without steps gets ``[]``, so the
    top-level ``plots:`` of dvc.yaml always find their files."""
    written = []
    for run, paths_ in runs.items():
        data = plot_data([r for r in (read_steps(p) for p in paths_) if r])
        written.append(atomic_write_text(out_dir / f"steps_{run}.json", json.dumps(data) + "\n"))
    return written
