"""The report's markdown: the preregistered primary comparison first, then the exploration gap, the results with
their CIs, the secondary comparisons, the training-process measures, the seed spread, the training summaries and
the curves. Everything is rendered from a :class:`~icpo_core.report.study_data.Study` (or, for ``icpo compare
--per-run``, a :class:`~icpo_core.report.run_table.Table`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from icpo_core import paths
from icpo_core.config import is_paper_profile
from icpo_core.report import paper
from icpo_core.report.curves import CURVES
from icpo_core.report.labels import LUFFY_INFORMATION
from icpo_core.report.power import detectability
from icpo_core.report.run_table import Table
from icpo_core.report.stats import format_ci, format_p, format_value
from icpo_core.report.study_data import AVERAGE, Cell, Decoding, Study, read_json
from icpo_core.report.study_stats import format_mde

# the held-out answer measures of the process table (icpo_core.report.study_stats.ANSWER_KEYS)
ANSWER_TITLES = {
    "bench/no_answer_rate": "Held-out samples with no answer",
    "bench/mean_tokens": "Held-out response tokens",
}

TITLES = {
    "math500": "MATH-500",
    "aime24": "AIME24",
    "aime25": "AIME25",
    "amc23": "AMC23",
    "minerva": "Minerva",
    "olympiadbench": "OlympiadBench",
    "gsm8k": "GSM8K",
    "numinamath": "NuminaMath",
    "gpqa_diamond": "GPQA-D",
}
MEASURES = {"avg": "the held-out benchmark average (unweighted mean over the benchmarks), in points"}


def column_title(name: str) -> str:
    if name == AVERAGE:
        return "Avg."
    if name.startswith("synthetic_l"):
        level, _, variant = name.removeprefix("synthetic_l").partition("_")
        return f"Synth L{level}" + (f" ({variant.replace('avg', 'avg@')})" if variant else "")
    return TITLES.get(name, name)


def decoding_title(d: Decoding) -> str:
    if d.mode == "greedy":
        return "greedy"
    return f"{d.mode}, T {d.temperature:g}" if d.temperature is not None else d.mode


def _ci(c: Any) -> str:
    return format_ci(c.mean, c.ci_low, c.ci_high)


def _pair_name(study: Study, a: str, b: str) -> str:
    return f"{study.labels.get(a, a)} − {study.labels.get(b, b)} (`{a}` − `{b}`)"


# ------------------------------------------------------------------------------------------- per-run table
def run_table_markdown(table: Table) -> str:
    """``icpo compare --per-run``: avg@n per run and benchmark, the best per column in bold."""
    best = table.best()

    def cell(v: float | None, col: str) -> str:
        if v is None:
            return "n/a"
        s = f"{v:.2f}"
        return f"**{s}**" if col in best and round(v, 2) == round(best[col], 2) else s

    def header(col: str) -> str:
        ns = {r.n.get(col) for r in table.rows if r.n.get(col) is not None}
        return f"{column_title(col)} (avg@{ns.pop()})" if len(ns) == 1 else column_title(col)

    lines = [
        "| Method | Run | " + " | ".join(header(c) for c in table.columns) + " | Avg. |",
        "|---|---|" + "---:|" * (len(table.columns) + 1),
    ]
    for r in table.rows:
        cells = [cell(r.values.get(c), c) for c in table.columns] + [cell(r.average, AVERAGE)]
        lines.append(f"| {r.label} | `{r.run}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ primary comparison, regime
def _measure_name(measure: str | list[str]) -> str:
    return f"[{', '.join(measure)}]" if isinstance(measure, list) else measure


def machines_markdown(study: Study) -> str:
    """Where the runs trained, and what that means for the verdict: bf16 kernels differ between machine kinds and
    change the trajectories, so a verdict is only shown to hold on the kinds named here."""
    n = sum(len(v) for v in study.machines.values())
    parts = [f"{k}: {len(v)} run(s)" for k, v in study.machines.items()]
    if len(study.machines) == 1:
        text = (
            f"**Machine.** All {n} trained runs ran on one machine kind, {next(iter(study.machines))}. The verdict "
            "is not checked on another kind: CPUs and GPUs differ in their bf16 kernels, which change the "
            "trajectories at the same seeds; rerun the study there to check it."
        )
    elif study.machines:
        text = (
            f"**Machines.** The trained runs ran on {len(study.machines)} machine kinds ({'; '.join(parts)}); the "
            "verdict pools them. It is not shown to hold on each kind alone."
        )
    else:
        text = "**Machine.** Not recorded: no train summary of this study names its machine"
        if study.machines_unrecorded:
            text += f" ({len(study.machines_unrecorded)} run(s) trained before summaries recorded it)"
        return text + ". The verdict is not checked on more than one machine kind.\n"
    if study.machines_unrecorded:
        text += (
            f" Not recorded for {len(study.machines_unrecorded)} run(s) (their train summary predates it)."
        )
    return text + "\n"


def primary_markdown(study: Study) -> str:
    """The preregistered question, measure and decision rule, one row of numbers and ONE verdict line per
    comparison; then the exploration gap of the regime."""
    pr = study.primary
    if pr is None:
        return "No primary comparison is preregistered (params `study.primary`).\n\n" + regime_markdown(study)
    conf = f"{100 * (1 - pr.alpha):g} %"
    if isinstance(pr.measure, list):
        names = ", ".join(f"`{m}`" for m in pr.measure)
        measure = f"the unweighted mean over the benchmarks {names}, in points"
    else:
        measure = MEASURES.get(pr.measure, f"the benchmark `{pr.measure}`, in points")
    lines = [
        f"**Question.** {pr.question}",
        "",
        f"**Measure.** `{_measure_name(pr.measure)}`: {measure}. **Decision rule** (params `study.primary`, written before the "
        f"runs): {pr.rule}.",
        "",
        f"| Comparison | Δ points [{conf} CI] | p (seeds) | p (problems) | MDE ({100 * pr.power:g} % power) | "
        "Seeds A / B | Problems |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in pr.comparisons:
        d = r.diff
        if d is None:
            lines.append(f"| {_pair_name(study, r.a, r.b)} | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        p_seeds = format_p(d.p_seeds) + (f" (min {format_p(d.p_seeds_min)})" if d.p_seeds is not None else "")
        mde = "n/a" if r.mde is None else format_mde(r.mde) + ("" if r.seed_variance_known else " (1 seed)")
        lines.append(
            f"| {_pair_name(study, r.a, r.b)} | {format_ci(d.diff, d.ci_low, d.ci_high, signed=True)} | "
            f"{p_seeds} | {format_p(d.p)} | {mde} | {d.n_seeds_a} / {d.n_seeds_b} | {d.n_problems} |"
        )
    lines.append("")
    lines += [f"- Verdict, {_pair_name(study, r.a, r.b)}: **{r.verdict_text}**" for r in pr.comparisons]
    lines += ["", machines_markdown(study)]
    lines += [
        "",
        f"CI: the two-level bootstrap over seeds and problems ({study.method.n_boot} replicates, paired over "
        "problems). p (seeds): exact permutation test over the trained models (min: the smallest p these seed "
        "counts allow). p (problems): sign-flip test over problems. MDE: from the measured seed and problem "
        "variances (`icpo_core.report.power`).",
        "",
    ]
    return "\n".join(lines) + "\n" + regime_markdown(study)


def regime_markdown(study: Study) -> str:
    """The exploration gap: groups with reward signal 0-shot vs with demos, with intervals (metrics/regime.json)."""
    head = "### Exploration gap (the regime)\n\n"
    g = study.regime
    if g is None:
        return head + study.regime_note + "\n"
    z, w = g.zero_shot, g.with_demos
    reward = ""
    if z.mean_reward is not None and w.mean_reward is not None:
        reward = f" Mean reward: 0-shot {z.mean_reward:.3f}, with demos {w.mean_reward:.3f}."
    return head + (
        f"Share of on-policy groups with reward signal (rewards not all equal among k = {g.k} rollouts) on "
        f"{g.problems} problems, levels {', '.join(map(str, g.levels)) or 'n/a'}: "
        f"**0-shot {format_ci(z.groups_with_signal, *z.ci)}** vs **with demos "
        f"{format_ci(w.groups_with_signal, *w.ci)}** [95 % CI].{reward} Source: {study.regime_note}.\n"
    )


# -------------------------------------------------------------------------------------------- study tables
def summary_markdown(study: Study) -> str:
    """Runs x benchmarks: mean over seeds and problems with its 95 % CI; Avg. = unweighted mean over benchmarks."""
    cols = study.columns
    head = [f"{column_title(c)} ({decoding_title(study.benchmarks.get(c, Decoding()))})" for c in cols]
    lines = [
        "| Method | Run | Seeds | " + " | ".join(head) + " | Avg. |",
        "|---|---|---:|" + "---:|" * (len(cols) + 1),
    ]
    for run, r in study.runs.items():
        cells = [r.cell(c) for c in [*cols, AVERAGE]]
        n_seeds = max((c.n_seeds for c in cells), default=0)
        expected = len(r.instances)
        seeds = "n/a" if n_seeds == 0 else str(n_seeds) if n_seeds == expected else f"{n_seeds} of {expected}"
        lines.append(f"| {r.label} | `{run}` | {seeds} | " + " | ".join(_ci(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def cells_markdown(study: Study) -> str:
    """One row per run and benchmark: decoding, seeds, problems, the score and pass@k with their CIs."""
    lines = [
        "| Benchmark | Method | Run | Decoding | Seeds | Problems | Score [95 % CI] | pass@k [95 % CI] |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for c in study.columns:
        for run, r in study.runs.items():
            cell = r.cell(c)
            pk = cell.pass_at_k
            pass_s = f"pass@{cell.pass_k} {_ci(pk)}" if pk is not None else "n/a"
            lines.append(
                f"| {column_title(c)} | {r.label} | `{run}` | {decoding_title(study.benchmarks.get(c, Decoding()))} | "
                f"{cell.n_seeds or 'n/a'} | {cell.n_problems or 'n/a'} | {_ci(cell)} | {pass_s} |"
            )
    return "\n".join(lines) + "\n"


def comparison_markdown(study: Study) -> str:
    """Paired differences of every comparison (primary pairs, every run - baseline, ``report.pairs``) per
    benchmark and averaged, each row labelled primary (the measure of a preregistered pair, decided above) or
    secondary: points with 95 % CI, p-values, the MDE at 80 % power and the seeds per run a
    ``target_difference``-point difference would need. A CI that spans zero reads "not detectable at this size
    (MDE x points)" before its interval."""
    t = f"{study.method.target_difference:g}"
    # the column whose rows are the primary comparison's own (a list measure has no column of its own)
    measure = AVERAGE if study.primary is None or study.primary.measure == "avg" else study.primary.measure
    measure = None if isinstance(measure, list) else measure
    lines = [
        "| Comparison | Benchmark | Δ points [95 % CI] | p (problems) | p (seeds) | Seeds A / B | Problems | "
        f"MDE (80 % power) | Seeds for ±{t} |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in study.comparisons.values():
        for c in [*study.columns, AVERAGE]:
            role = "primary" if v.role == "primary" and c == measure else "secondary"
            name = f"{role} · {_pair_name(study, v.a, v.b)}"
            cmp, pw = v.at(c), v.power.get(c)
            if cmp is None:
                lines.append(f"| {name} | {column_title(c)} | n/a | n/a | n/a | n/a | n/a | n/a | n/a |")
                continue
            p_seeds = format_p(cmp.p_seeds)
            if cmp.p_seeds is not None and cmp.p_seeds_min is not None:
                p_seeds += f" (min {format_p(cmp.p_seeds_min)})"
            delta = format_ci(cmp.diff, cmp.ci_low, cmp.ci_high, signed=True)
            if text := detectability(cmp.diff, cmp.ci_low, cmp.ci_high, pw):
                delta = f"{text}: {delta}"
            mde = "n/a" if pw is None else f"{pw.mde:.0f}" + ("" if pw.seed_variance_known else " (1 seed)")
            need = "n/a"
            if pw is not None and pw.seed_variance_known:
                n = pw.seeds_needed(study.method.target_difference)
                need = str(n) if n is not None else "more problems"
            lines.append(
                f"| {name} | {column_title(c)} | {delta} | {format_p(cmp.p)} | "
                f"{p_seeds} | {cmp.n_seeds_a} / {cmp.n_seeds_b} | {cmp.n_problems} | {mde} | {need} |"
            )
    return "\n".join(lines) + "\n"


def _process_decimals(key: str) -> int:
    """Fixed digits per process column, so that rows compare at a glance: token counts 0, clip fractions (small
    shares) 3, other shares and rewards 2."""
    if key.endswith("tokens"):
        return 0
    return 3 if "clipfrac" in key else 2


def process_markdown(study: Study) -> str:
    """Per run the training-process measures: mean over steps, 95 % t interval across seeds."""
    titles = {**dict(CURVES), **ANSWER_TITLES}
    keys = study.process_keys
    lines = [
        "| Method | Run | " + " | ".join(titles.get(k, k) for k in keys) + " |",
        "|---|---|" + "---:|" * len(keys),
    ]
    for run, r in study.runs.items():
        if not any(m.mean is not None for m in r.process.values()):
            continue
        cells = []
        for k in keys:
            m = r.process.get(k)
            if m is None or m.mean is None:
                cells.append("n/a")
            else:
                d = _process_decimals(k)
                if m.ci_low is None or m.ci_high is None:
                    cells.append(f"{m.mean:.{d}f} (1 seed)")
                else:
                    cells.append(f"{m.mean:.{d}f} [{m.ci_low:.{d}f}, {m.ci_high:.{d}f}] ({m.n_seeds} seeds)")
        lines.append(f"| {r.label} | `{run}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def spread_markdown(study: Study) -> str:
    """Each seed's score per run and benchmark (at the digits of that cell's CI), min-max and sd over seeds."""
    lines = ["| Method | Run | Benchmark | Per seed | Min–max | SD |", "|---|---|---|---|---:|---:|"]
    for run, r in study.runs.items():
        for c in [*study.columns, AVERAGE]:
            cell: Cell = r.cell(c)
            if not cell.per_seed:
                lines.append(f"| {r.label} | `{run}` | {column_title(c)} | n/a | n/a | n/a |")
                continue
            d = cell.decimals()
            per = ", ".join(
                f"{'s' + k if k != '-' else 'single'} {format_value(v, d)}" for k, v in cell.per_seed.items()
            )
            sd = format_value(cell.seed_sd, d) if cell.seed_sd is not None else "n/a"
            lines.append(
                f"| {r.label} | `{run}` | {column_title(c)} | {per} | "
                f"{format_value(cell.seed_min, d)}–{format_value(cell.seed_max, d)} | {sd} |"  # type: ignore[arg-type]
            )
    return "\n".join(lines) + "\n"


TRAIN_KEYS = (
    ("steps", "Steps"),
    ("wall_time_s", "Wall time (s)"),
    ("reward_on_policy_mean", "On-policy reward (mean)"),
    ("reward_on_policy_last5", "On-policy reward (last 5)"),
    ("ief_accept_rate_mean", "IEF accept rate"),
    ("compute_gen_tokens", "Generated tokens"),
    ("compute_prefill_tokens", "Prompt tokens"),
    ("compute_expert_tokens", "Expert-trace tokens"),
    ("compute_train_tokens", "Trainer tokens"),
)


def training_markdown(study: Study, metrics_dir: Path = paths.METRICS_DIR) -> str:
    """The training summaries (``metrics/train_<instance>.json``), one row per trained instance, n/a where
    missing."""

    def fmt(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float) and v.is_integer() and abs(v) >= 1000:
            return f"{int(v):,}"  # token counts
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [
        "| Method | Run | " + " | ".join(t for _, t in TRAIN_KEYS) + " |",
        "|---|---|" + "---:|" * len(TRAIN_KEYS),
    ]
    for run, r in study.runs.items():
        if run == "base":
            continue
        for seed, name in r.instances.items():
            s = read_json(metrics_dir / paths.train_summary(name).name) or {}
            cells = [fmt(s.get(k)) for k, _ in TRAIN_KEYS]
            lines.append(f"| {r.label} s{seed} | `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- the paper's table
def paper_markdown(study: Study) -> str:
    """Under a paper profile: which of the numbers are comparable with the paper's table, and the paper's own
    numbers on those rows beside ours (:mod:`icpo_core.report.paper`); nothing under another profile."""
    if not is_paper_profile(study.profile):
        return ""
    shared = paper.shared_rows(study.profile)
    names = ", ".join(column_title(b) for b in shared)
    table = paper.PAPER_TABLES.get(study.profile)
    lines = [
        f"These numbers are comparable with the paper's table ({paper.PAPER}) only on the rows both report: "
        f"{names}. {' and '.join(paper.NOT_PUBLIC)} have no public data, and our Avg. is over "
        f"{', '.join(column_title(c) for c in study.columns) or 'our benchmarks'}, not the paper's rows. The paper's "
        f"GRPO average disagrees with itself ({paper.GRPO_AVERAGE_MAIN_TABLE} main table, "
        f"{paper.GRPO_AVERAGE_ABLATION_TABLE} ablation table, the mean of its own row); a comparison uses the "
        f"per-benchmark rows and, where it quotes an average, {paper.GRPO_AVERAGE_ABLATION_TABLE}.",
        "",
    ]
    if table is None:
        return "\n".join([*lines, "The paper's numbers for this profile's model are not in our sources.", ""])
    lines += ["| Benchmark | Method | Run | Ours [95 % CI] | Paper |", "|---|---|---|---:|---:|"]
    for bench in shared:
        for run, numbers in table.items():
            if bench not in numbers:
                continue
            r = study.runs.get(run)
            ours = _ci(r.cell(bench)) if r is not None else "n/a (not in the study)"
            label = r.label if r is not None else run
            lines.append(f"| {column_title(bench)} | {label} | `{run}` | {ours} | {numbers[bench]:.2f} |")
    return "\n".join([*lines, ""]) + "\n"


# ----------------------------------------------------------------------------------------------- the report
def _method_text(study: Study) -> list[str]:
    seeds = ", ".join(str(s) for s in study.seeds)
    return [
        f"Scores in % over seeds {seeds} (ablations: {', '.join(map(str, study.ablation_seeds))}) and the "
        "benchmark's problems; a problem's score is the mean correctness of its samples (greedy: 0 / 1). "
        f"95 % CI: two-level percentile bootstrap ({study.method.n_boot} replicates): seeds resampled with "
        "replacement, then problems with replacement (the same problem draw for all seeds; for Avg., the "
        "unweighted mean over the benchmarks, one seed draw shared by the benchmarks). With one seed a CI holds "
        "the problem noise only; with few seeds it under-states the seed-to-seed noise. A cell shows the digits "
        "its CI supports (rounded at the first significant digit of the CI half-width).",
        "",
        "ICPO† = ICPO with annealed expert reward shaping (RS); − ERRS = without expert-region reject sampling; "
        "ICPO without demos = ICPO's extra rollouts and ERRS sampled from the plain prompt. LUFFY "
        f"{LUFFY_INFORMATION}: an upper reference, not a peer.",
    ]


def report_markdown(study: Study, generated: str, plotted: dict[str, dict[str, int]] | None = None) -> str:
    """``reports/report.md``: the primary comparison first, then everything else (secondary)."""
    missing = {r: v.missing for r, v in study.runs.items() if v.missing}
    md = [
        "# GRPO vs ICPO",
        "",
        f"Profile `{study.profile}`; generated {generated} by `icpo report`.",
        "",
        "## Primary comparison (preregistered)",
        "",
        primary_markdown(study),
        "## Method",
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
    against_paper = paper_markdown(study)
    if against_paper:
        md += ["## Against the paper's table", "", against_paper]
    md += [
        "## Per benchmark: seeds, problems, pass@k",
        "",
        cells_markdown(study),
        f"## Secondary comparisons (baseline `{study.baseline}`, `report.pairs`; not preregistered)",
        "",
        "Secondary: every row but the one marked primary (the primary comparison's measure, decided above). "
        "Δ = A − B in points, on the problems both answered. CI: paired bootstrap (one problem draw for both "
        "runs, the seeds of each run drawn independently: different runs are independent trainings). "
        "p (problems): two-sided sign-flip test; per problem the difference of the two runs' seed-mean scores, "
        "whose sign is exchangeable under the null (the two runs' models are equally good on every problem); "
        f"{study.method.n_perm} random flips. It treats the trained models as given. p (seeds): exact "
        "permutation test that exchanges whole trained models (seeds) between the runs; min = the smallest p its "
        "seed counts allow.",
        "",
        comparison_markdown(study),
        "## Training process and held-out answers [95 % interval across seeds]",
        "",
        f"Training measures: per seed the mean over its steps; held-out answers: per seed the mean over the "
        f"benchmarks of its bench file. Interval: {study.process_interval}. Shares and rewards as logged (0-1).",
        "",
        process_markdown(study),
        "## Seed-to-seed spread",
        "",
        spread_markdown(study),
        "## Training",
        "",
        training_markdown(study),
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
    return "\n".join(md)
