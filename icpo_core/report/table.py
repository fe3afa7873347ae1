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
from icpo_core.algorithm import off_policy_source, reward_variant
from icpo_core.bench.registry import resolve_benchmarks
from icpo_core.config import Params
from icpo_core.report import stats
from icpo_core.report.power import Power, detectability, paired_power
from icpo_core.report.stats import (
    RNG_SEED,
    Comparison,
    Estimate,
    bootstrap_mean,
    ci_decimals,
    format_ci,
    format_p,
    format_value,
    per_problem_scores,
    score_matrix,
)

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
        level, _, variant = name.removeprefix("synthetic_l").partition("_")
        return f"Synth L{level}" + (f" ({variant.replace('avg', 'avg@')})" if variant else "")
    return TITLES.get(name, name)


def run_label(params: Params | None, run: str) -> str:
    """The paper's name for a run, derived from its algorithm params (not from its name)."""
    if run == "base":
        return "Base model"
    if params is None or run not in params.runs:
        return run
    a = params.run_algorithm(run)
    source, reward = off_policy_source(a), reward_variant(a)
    name = source.label
    if a.released_constant_bonus or a.released_entropy_bonus > 0:
        name = "ICPO (released code)"
    elif source.generated:
        name = name.replace("ICPO", "ICPO†", 1) if a.reward_shaping else name
        name += "" if a.errs else " − ERRS"
        name += "" if a.demo_format == "chat_turns" or not source.with_demos else f" ({a.demo_format} demos)"
    if a.n_on != params.algorithm.n_on:
        name += f", {a.n_on} rollouts"
    return name if not reward.control else f"{name} ({reward.label})"


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
    ("compute_gen_tokens", "Generated tokens"),
    ("compute_prefill_tokens", "Prompt tokens"),
    ("compute_expert_tokens", "Expert-trace tokens"),
    ("compute_train_tokens", "Trainer tokens"),
)


def training_markdown(
    params: Params,
    runs: list[str],
    metrics_dir: Path = paths.METRICS_DIR,
    labels: dict[str, str] | None = None,
) -> str:
    """A second table: the training summaries (``metrics/train_<run>.json``, one row per run or instance;
    ``labels``: the method column per name), n/a where missing."""
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
            if isinstance(v, float) and v.is_integer() and abs(v) >= 1000:
                return f"{int(v):,}"  # token counts
            return f"{v:.3f}" if isinstance(v, float) else str(v)

        cells = [fmt(s.get(k)) for k, _ in TRAIN_KEYS]
        label = (labels or {}).get(run) or run_label(params, run)
        lines.append(f"| {label} | `{run}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ============================================================================================ the seed study
# One training run at one seed is an instance ``<run>_s<seed>``; ``base`` has the single instance ``base``. The
# study reads every instance's per-sample verdicts (``bench/<instance>/samples.jsonl``) and bench metrics
# (``metrics/bench_<instance>.json``), builds one seed x problem score matrix per run and benchmark and reports
# means with bootstrap CIs and paired differences (``icpo_core.report.stats``). Numbers are in percent.


def instance_name(run: str, seed: int | None) -> str:
    """``base`` -> ``base``; ``(grpo, 1)`` -> ``grpo_s1`` (:func:`icpo_core.paths.instance`)."""
    return paths.instance(run, seed)


@dataclass
class StudyConfig:
    """Which runs the study holds and at which seeds (``params.seeds`` / ``params.study``)."""

    seeds: list[int]
    runs: list[str]  # base first, then the study runs, then the ablations
    ablations: list[str]
    ablation_seeds: list[int]
    baseline: str | None  # the run every other one is compared with (GRPO)

    def seeds_of(self, run: str) -> list[int | None]:
        if run == "base":
            return [None]
        return list(self.ablation_seeds if run in self.ablations else self.seeds)


def study_config(params: Any, runs: list[str] | None = None, seeds: list[int] | None = None) -> StudyConfig:
    all_seeds = list(seeds or params.seeds)
    main_runs = list(params.study.runs)
    ablations = list(params.study.ablations)
    abl_seeds = list(params.study.ablation_seeds)
    if seeds:  # an explicit seed list (``icpo report --seeds``) applies to the ablations too
        abl_seeds = [s for s in abl_seeds if s in seeds] or all_seeds[:1]
    if runs is None:
        runs = ["base", *main_runs, *ablations] if main_runs else list(params.report.runs)
    ablations = [r for r in ablations if r in runs]
    trained = [r for r in runs if r != "base"]
    baseline = next((r for r in trained if run_label(params, r) == "GRPO"), trained[0] if trained else None)
    return StudyConfig(all_seeds, list(runs), ablations, abl_seeds, baseline)


def read_samples(path: Path) -> dict[str, dict[str, dict[int, bool]]]:
    """``benchmark -> problem_id -> sample -> correct`` from a samples.jsonl (torn / odd lines skipped; the last
    row of a repeated sample wins). Missing file: ``{}``."""
    out: dict[str, dict[str, dict[int, bool]]] = {}
    try:
        f = path.open()
    except FileNotFoundError:
        return out
    with f:
        for line in f:
            try:
                r = json.loads(line)
                key = str(r.get("problem_id", r.get("problem", "")))
                out.setdefault(str(r["benchmark"]), {}).setdefault(key, {})[int(r.get("sample", 0))] = bool(
                    r["correct"]
                )
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
    return out


@dataclass
class InstanceData:
    run: str
    seed: int | None
    name: str
    bench: dict[str, Any] | None  # metrics/bench_<instance>.json
    samples: dict[str, dict[str, dict[int, bool]]]  # bench/<instance>/samples.jsonl

    @property
    def present(self) -> bool:
        return self.bench is not None or bool(self.samples)


def load_instances(
    cfg: StudyConfig, metrics_dir: Path = paths.METRICS_DIR, bench_root: Path = paths.BENCH_DIR
) -> dict[str, list[InstanceData]]:
    """The instances of every run of the study. A trained run none of whose seeded instances exists but whose
    bare name does (the single-seed layout, ``metrics/bench_grpo.json``) is read as one instance."""

    def load(run: str, seed: int | None, name: str) -> InstanceData:
        return InstanceData(
            run,
            seed,
            name,
            read_json(metrics_dir / f"bench_{name}.json"),
            read_samples(bench_root / name / "samples.jsonl"),
        )

    out: dict[str, list[InstanceData]] = {}
    for run in cfg.runs:
        insts = [load(run, s, instance_name(run, s)) for s in cfg.seeds_of(run)]
        if run != "base" and not any(i.present for i in insts):
            legacy = load(run, None, run)
            if legacy.present:
                insts = [legacy]
        out[run] = insts
    return out


def _seed_key(seed: int | None) -> str:
    return "-" if seed is None else str(seed)


@dataclass
class Cell:
    """One run x benchmark (or the average): per-seed problem scores and what the report shows of them."""

    run: str
    benchmark: str
    seeds: list[int | None] = field(default_factory=list)  # seeds with per-problem data
    est: Any = None  # stats.Estimate in percent, None: no per-problem data
    pass_k: int | None = None
    pass_est: Any = None
    per_seed: dict[str, float] = field(default_factory=dict)  # seed -> score in percent
    mean_only: float | None = None  # from the metrics JSON when no samples exist (no CI)
    n_problems: int | None = None
    samples_per_problem: int | None = None

    @property
    def mean(self) -> float | None:
        return self.est.mean if self.est is not None else self.mean_only

    def decimals(self) -> int:
        return ci_decimals(self.est.lo, self.est.hi) if self.est is not None else 1

    def to_json(self) -> dict[str, Any]:
        vals = list(self.per_seed.values())
        out: dict[str, Any] = {
            "mean": self.mean,
            "ci_low": self.est.lo if self.est is not None else None,
            "ci_high": self.est.hi if self.est is not None else None,
            "n_seeds": len(self.per_seed),
            "n_problems": self.n_problems,
            "samples_per_problem": self.samples_per_problem,
            "per_seed": dict(self.per_seed),
            "seed_min": min(vals) if vals else None,
            "seed_max": max(vals) if vals else None,
            "seed_sd": float(np_std(vals)) if len(vals) > 1 else None,
        }
        if self.pass_k is not None:
            out["pass_k"] = self.pass_k
            out["pass_at_k"] = (
                {"mean": self.pass_est.mean, "ci_low": self.pass_est.lo, "ci_high": self.pass_est.hi}
                if self.pass_est is not None
                else None
            )
        return out


def np_std(vals: list[float]) -> float:
    """Sample standard deviation (ddof 1)."""
    m = sum(vals) / len(vals)
    return (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5


def _rng(*names: str) -> Any:
    """A Generator per cell, seeded by the cell's names: results do not depend on the order cells are made."""
    import zlib

    import numpy as np

    return np.random.default_rng([RNG_SEED, zlib.crc32("|".join(names).encode())])


@dataclass
class Study:
    cfg: StudyConfig
    columns: list[str]
    labels: dict[str, str]
    decoding: dict[str, dict[str, Any]]  # benchmark -> {"n", "temperature", "mode"}
    cells: dict[tuple[str, str], Cell]  # (run, benchmark | AVERAGE)
    comparisons: dict[
        str, dict[str, Any]
    ]  # "<a>-<b>" -> {"a", "b", "benchmarks": {col | AVERAGE: Comparison}}
    missing: dict[str, list[str]]  # run -> missing instance names
    n_boot: int
    n_perm: int
    target_difference: float = 5.0  # points: the difference whose seed count the report states (report.*)

    # ---------------------------------------------------------------------------------------- JSON (DVC metrics)
    def to_json(self, profile: str = "") -> dict[str, Any]:
        def cmp_json(c: Any) -> dict[str, Any] | None:
            if c is None:
                return None
            return {
                "diff": c.diff,
                "ci_low": c.lo,
                "ci_high": c.hi,
                "p": c.p,
                "p_seeds": c.p_seeds,
                "p_seeds_min": c.p_seeds_min,
                "n_seeds_a": c.n_seeds_a,
                "n_seeds_b": c.n_seeds_b,
                "n_problems": c.n_problems,
            }

        runs = {}
        for run in self.cfg.runs:
            runs[run] = {
                "label": self.labels[run],
                "instances": {_seed_key(s): instance_name(run, s) for s in self.cfg.seeds_of(run)},
                "missing": self.missing.get(run, []),
                "benchmarks": {c: self.cells[(run, c)].to_json() for c in self.columns},
                "average": self.cells[(run, AVERAGE)].to_json(),
            }
        return {
            "schema": 1,
            "profile": profile,
            "unit": "percent",
            "method": {
                "confidence": stats.CONFIDENCE,
                "n_boot": self.n_boot,
                "n_perm": self.n_perm,
                "rng_seed": stats.RNG_SEED,
                "target_difference": self.target_difference,
                "ci": "two-level percentile bootstrap: seeds with replacement, then problems with replacement "
                "(one problem draw shared by the seeds; one seed draw shared by the benchmarks of an average)",
                "diff_ci": "paired bootstrap: the same problem draw for both runs, seeds drawn independently per run",
                "p": "two-sided paired sign-flip test over problems (per-problem seed-mean differences)",
                "p_seeds": "exact permutation test over seeds (whole trained models exchanged between the runs)",
                "power": "minimum detectable effect at alpha 0.05 / power 0.8 from the measured seed and problem "
                "variances (icpo_core.report.power); seeds_needed for report.target_difference points",
            },
            "run_order": self.cfg.runs,  # the JSON writer may sort keys: the table's order
            "comparison_order": list(self.comparisons),
            "columns": self.columns,
            "seeds": self.cfg.seeds,
            "ablations": self.cfg.ablations,
            "ablation_seeds": self.cfg.ablation_seeds,
            "baseline": self.cfg.baseline,
            "benchmarks": self.decoding,
            "runs": runs,
            "comparisons": {
                key: {
                    "a": v["a"],
                    "b": v["b"],
                    "benchmarks": {c: cmp_json(v["benchmarks"].get(c)) for c in self.columns},
                    "average": cmp_json(v["benchmarks"].get(AVERAGE)),
                    "power": {
                        c: (pw.to_json() if (pw := (v.get("power") or {}).get(c)) is not None else None)
                        for c in [*self.columns, AVERAGE]
                    },
                }
                for key, v in self.comparisons.items()
            },
        }


def _decoding(insts: list[InstanceData], bench: str) -> dict[str, Any]:
    for i in insts:
        s = ((i.bench or {}).get("benchmarks", {}).get(bench) or {}).get("sampling") or {}
        if s:
            n, t = s.get("n"), s.get("temperature")
            mode = "greedy" if n == 1 and t == 0 else f"avg@{n}" if n else "avg@n"
            return {"n": n, "temperature": t, "mode": mode}
    return {"n": None, "temperature": None, "mode": "avg@n"}


def _make_cell(run: str, bench: str, insts: list[InstanceData], n_boot: int) -> tuple[Cell, dict]:
    """The cell and its raw per-seed problem scores ``seed -> {problem -> score}`` (fractions)."""
    cell = Cell(run, bench)
    raw: dict[int | None, dict[str, float]] = {}
    counts: dict[int | None, dict[str, list[bool]]] = {}
    for i in insts:
        problems = i.samples.get(bench)
        if problems:
            counts[i.seed] = {p: list(v.values()) for p, v in problems.items()}
            raw[i.seed] = {p: sum(v) / len(v) for p, v in counts[i.seed].items()}
    if raw:
        seeds = list(raw)
        x, ids = score_matrix([raw[s] for s in seeds])
        if ids:
            cell.seeds = seeds
            cell.est = bootstrap_mean(x, _rng(run, bench), n_boot).scaled(100.0)
            cell.n_problems = len(ids)
            cell.per_seed = {_seed_key(s): 100.0 * float(x[j].mean()) for j, s in enumerate(seeds)}
            n_min = min(len(counts[s][p]) for s in seeds for p in ids)
            n_max = max(len(counts[s][p]) for s in seeds for p in ids)
            cell.samples_per_problem = n_min if n_min == n_max else None
            if n_min > 1:  # sampled: also the unbiased pass@k at the largest k every problem allows
                rows = [[{"problem_id": p, "correct": c} for p in ids for c in counts[s][p]] for s in seeds]
                xk, _ = score_matrix([per_problem_scores(r, n_min) for r in rows])
                cell.pass_k = n_min
                cell.pass_est = bootstrap_mean(xk, _rng(run, bench, "pass"), n_boot).scaled(100.0)
        return cell, {s: {p: raw[s][p] for p in ids} for s in seeds} if ids else {}
    # no per-sample verdicts: the metrics JSON's mean per seed, without a CI
    for i in insts:
        b = (i.bench or {}).get("benchmarks", {}).get(bench) or {}
        if b.get("avg_at_n") is not None:
            cell.per_seed[_seed_key(i.seed)] = 100.0 * float(b["avg_at_n"])
            cell.n_problems = b.get("n_problems", cell.n_problems)
            cell.samples_per_problem = b.get("n", cell.samples_per_problem)
    if cell.per_seed:
        cell.mean_only = sum(cell.per_seed.values()) / len(cell.per_seed)
    return cell, {}


def _matrices(raw: dict[str, dict], columns: list[str]) -> tuple[list[Any], list[list[str]], list] | None:
    """Per column the matrix over the seeds that have every column (None when a column has no data)."""
    if not columns or any(not raw.get(c) for c in columns):
        return None
    seeds = [s for s in raw[columns[0]] if all(s in raw[c] for c in columns)]
    if not seeds:
        return None
    mats, ids = [], []
    for c in columns:
        x, i = score_matrix([raw[c][s] for s in seeds])
        if not i:
            return None
        mats.append(x)
        ids.append(i)
    return mats, ids, seeds


def build_study(
    params: Any,
    runs: list[str] | None = None,
    seeds: list[int] | None = None,
    metrics_dir: Path = paths.METRICS_DIR,
    bench_root: Path = paths.BENCH_DIR,
    n_boot: int | None = None,
    n_perm: int | None = None,
) -> Study:
    """Every cell, average and paired comparison of the study (see the module docstring of ``stats``)."""
    n_boot = n_boot or stats.N_BOOT
    n_perm = n_perm or stats.N_PERM
    cfg = study_config(params, runs, seeds)
    data = load_instances(cfg, metrics_dir, bench_root)
    columns = _columns(params, [i.bench for insts in data.values() for i in insts])
    labels = {r: run_label(params, r) for r in cfg.runs}
    decoding = {c: _decoding([i for v in data.values() for i in v], c) for c in columns}
    cells: dict[tuple[str, str], Cell] = {}
    raw: dict[str, dict[str, dict]] = {}
    for run in cfg.runs:
        raw[run] = {}
        for c in columns:
            cells[(run, c)], raw[run][c] = _make_cell(run, c, data[run], n_boot)
        avg = Cell(run, AVERAGE)
        m = _matrices(raw[run], columns)
        if m is not None:
            mats, ids, s_common = m
            avg.seeds = s_common
            avg.est = stats.bootstrap_mean(mats, _rng(run, AVERAGE), n_boot).scaled(100.0)
            avg.n_problems = sum(len(i) for i in ids)
            avg.per_seed = {
                _seed_key(s): 100.0 * sum(float(x[j].mean()) for x in mats) / len(mats)
                for j, s in enumerate(s_common)
            }
        else:
            vals = [cells[(run, c)].mean for c in columns]
            if vals and all(v is not None for v in vals):
                avg.mean_only = sum(vals) / len(vals)  # type: ignore[arg-type]
        cells[(run, AVERAGE)] = avg

    comparisons: dict[str, dict[str, Any]] = {}
    for a, b in comparison_pairs(cfg, getattr(getattr(params, "report", None), "pairs", None) or []):
        per: dict[str, Any] = {}
        pw: dict[str, Any] = {}
        for c in columns:
            per[c], pw[c] = _compare(raw[a].get(c), raw[b].get(c), a, b, c, n_boot, n_perm)
        ma, mb = _matrices(raw[a], columns), _matrices(raw[b], columns)
        if ma is not None and mb is not None:
            pairs = [
                stats.align(xa, ia, xb, ib) for xa, ia, xb, ib in zip(ma[0], ma[1], mb[0], mb[1], strict=True)
            ]
            if all(p[2] for p in pairs):
                xa_all, xb_all = [p[0] for p in pairs], [p[1] for p in pairs]
                per[AVERAGE] = stats.paired_diff(xa_all, xb_all, _rng(a, b, AVERAGE), n_boot, n_perm).scaled(
                    100.0
                )
                pw[AVERAGE] = paired_power(xa_all, xb_all).scaled(100.0)
        comparisons[f"{a}-{b}"] = {"a": a, "b": b, "benchmarks": per, "power": pw}
    missing = {r: [i.name for i in data[r] if not i.present] for r in cfg.runs}
    target = float(getattr(getattr(params, "report", None), "target_difference", 5.0))
    return Study(cfg, columns, labels, decoding, cells, comparisons, missing, n_boot, n_perm, target)


def comparison_pairs(cfg: StudyConfig, extra: list[list[str]]) -> list[tuple[str, str]]:
    """Every trained run against the baseline (GRPO), then ``report.pairs`` (e.g. ICPO - LUFFY) among the runs
    the study holds, each pair once."""
    out: list[tuple[str, str]] = []
    b = cfg.baseline
    if b:
        out += [(r, b) for r in cfg.runs if r not in ("base", b)]
    for pair in extra:
        a, b2 = pair
        if a in cfg.runs and b2 in cfg.runs and (a, b2) not in out and (b2, a) not in out:
            out.append((a, b2))
    return out


def _compare(
    ra: dict | None, rb: dict | None, a: str, b: str, col: str, n_boot: int, n_perm: int
) -> tuple[Any, Any]:
    """(paired ``Comparison``, ``Power``) of one benchmark in percent; (None, None) without common problems."""
    if not ra or not rb:
        return None, None
    xa, ia = stats.score_matrix(list(ra.values()))
    xb, ib = stats.score_matrix(list(rb.values()))
    xa, xb, common = stats.align(xa, ia, xb, ib)
    if not common:
        return None, None
    return (
        stats.paired_diff(xa, xb, _rng(a, b, col), n_boot, n_perm).scaled(100.0),
        paired_power(xa, xb).scaled(100.0),
    )


def _columns(params: Any, benches: list[dict[str, Any] | None]) -> list[str]:
    try:
        columns = [s.name for s in resolve_benchmarks(params.bench.benchmarks, params)]
    except Exception:  # a registry problem must not stop the report: fall back to what the files hold
        columns = []
    for m in benches:
        for name in (m or {}).get("benchmarks", {}):
            if name not in columns:
                columns.append(name)
    return columns


# ------------------------------------------------------------------------------------------ study markdown
def _decoding_title(d: dict[str, Any]) -> str:
    if d.get("mode") == "greedy":
        return "greedy"
    t = d.get("temperature")
    return f"{d.get('mode')}, T {t:g}" if isinstance(t, int | float) else str(d.get("mode"))


def summary_markdown(study: Study) -> str:
    """Runs x benchmarks: mean over seeds and problems with its 95 % CI; Avg. = unweighted mean over benchmarks."""
    cols = study.columns
    head = [f"{column_title(c)} ({_decoding_title(study.decoding[c])})" for c in cols]
    lines = [
        "| Method | Run | Seeds | " + " | ".join(head) + " | Avg. |",
        "|---|---|---:|" + "---:|" * (len(cols) + 1),
    ]
    for run in study.cfg.runs:
        cells = [study.cells[(run, c)] for c in [*cols, AVERAGE]]
        n_seeds = max((len(c.per_seed) for c in cells), default=0)
        expected = len(study.cfg.seeds_of(run))
        seeds = "n/a" if n_seeds == 0 else str(n_seeds) if n_seeds == expected else f"{n_seeds} of {expected}"
        shown = [format_ci(c.mean, c.est.lo if c.est else None, c.est.hi if c.est else None) for c in cells]
        lines.append(f"| {study.labels[run]} | `{run}` | {seeds} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def cells_markdown(study: Study) -> str:
    """One row per run and benchmark: decoding, seeds, problems, the score and pass@k with their CIs."""
    lines = [
        "| Benchmark | Method | Run | Decoding | Seeds | Problems | Score [95 % CI] | pass@k [95 % CI] |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for c in study.columns:
        for run in study.cfg.runs:
            cell = study.cells[(run, c)]
            est, pk = cell.est, cell.pass_est
            score = format_ci(cell.mean, est.lo if est else None, est.hi if est else None)
            pass_s = f"pass@{cell.pass_k} " + format_ci(pk.mean, pk.lo, pk.hi) if pk is not None else "n/a"
            n_seeds = len(cell.per_seed)
            lines.append(
                f"| {column_title(c)} | {study.labels[run]} | `{run}` | {_decoding_title(study.decoding[c])} | "
                f"{n_seeds if n_seeds else 'n/a'} | {cell.n_problems if cell.n_problems else 'n/a'} | "
                f"{score} | {pass_s} |"
            )
    return "\n".join(lines) + "\n"


def comparison_markdown(study: Study) -> str:
    """Paired differences (every run - baseline, then ``report.pairs``) per benchmark and averaged: points with
    95 % CI, p-values, and the power figures: the minimum detectable effect at 80 % power for these seeds and
    problems and the seeds per run a ``target_difference``-point difference would need. A CI that spans zero
    reads "not detectable at this size (MDE x points)" before its interval."""
    t = f"{study.target_difference:g}"
    lines = [
        "| Comparison | Benchmark | Δ points [95 % CI] | p (problems) | p (seeds) | Seeds A / B | Problems | "
        f"MDE (80 % power) | Seeds for ±{t} |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in study.comparisons.values():
        name = f"{study.labels[v['a']]} − {study.labels[v['b']]} (`{v['a']}` − `{v['b']}`)"
        for c in [*study.columns, AVERAGE]:
            cmp = v["benchmarks"].get(c)
            pw = (v.get("power") or {}).get(c)
            title = "Avg." if c == AVERAGE else column_title(c)
            if cmp is None:
                lines.append(f"| {name} | {title} | n/a | n/a | n/a | n/a | n/a | n/a | n/a |")
                continue
            p_seeds = format_p(cmp.p_seeds)
            if cmp.p_seeds is not None and cmp.p_seeds_min is not None:
                p_seeds += f" (min {format_p(cmp.p_seeds_min)})"
            delta = format_ci(cmp.diff, cmp.lo, cmp.hi, signed=True)
            verdict = detectability(cmp.diff, cmp.lo, cmp.hi, pw)
            if verdict:
                delta = f"{verdict}: {delta}"
            mde = "n/a" if pw is None else f"{pw.mde:.0f}" + ("" if pw.seed_variance_known else " (1 seed)")
            need = "n/a"
            if pw is not None and pw.seed_variance_known:
                n = pw.seeds_needed(study.target_difference)
                need = str(n) if n is not None else "more problems"
            lines.append(
                f"| {name} | {title} | {delta} | {format_p(cmp.p)} | "
                f"{p_seeds} | {cmp.n_seeds_a} / {cmp.n_seeds_b} | {cmp.n_problems} | {mde} | {need} |"
            )
    return "\n".join(lines) + "\n"


def spread_markdown(study: Study) -> str:
    """Each seed's score per run and benchmark (at the digits of that cell's CI), min-max and sd over seeds."""
    lines = ["| Method | Run | Benchmark | Per seed | Min–max | SD |", "|---|---|---|---|---:|---:|"]
    for run in study.cfg.runs:
        for c in [*study.columns, AVERAGE]:
            cell = study.cells[(run, c)]
            title = "Avg." if c == AVERAGE else column_title(c)
            if not cell.per_seed:
                lines.append(f"| {study.labels[run]} | `{run}` | {title} | n/a | n/a | n/a |")
                continue
            d = cell.decimals()
            vals = list(cell.per_seed.values())
            per = ", ".join(
                f"{'s' + k if k != '-' else 'single'} {format_value(v, d)}" for k, v in cell.per_seed.items()
            )
            sd = format_value(np_std(vals), d) if len(vals) > 1 else "n/a"
            lines.append(
                f"| {study.labels[run]} | `{run}` | {title} | {per} | "
                f"{format_value(min(vals), d)}–{format_value(max(vals), d)} | {sd} |"
            )
    return "\n".join(lines) + "\n"


def study_from_json(d: dict[str, Any]) -> Study:
    """The ``Study`` a ``reports/study.json`` holds (``icpo compare`` renders the report's tables from it)."""

    def est(j: dict[str, Any] | None, n_seeds: int = 0, n_problems: int = 0) -> Estimate | None:
        if not j or j.get("ci_low") is None or j.get("mean") is None:
            return None
        return Estimate(j["mean"], j["ci_low"], j["ci_high"], n_seeds, n_problems)

    def cell(run: str, col: str, j: dict[str, Any]) -> Cell:
        c = Cell(run, col)
        c.per_seed = dict(j.get("per_seed") or {})
        c.n_problems = j.get("n_problems")
        c.samples_per_problem = j.get("samples_per_problem")
        c.est = est(j, len(c.per_seed), c.n_problems or 0)
        if c.est is None:
            c.mean_only = j.get("mean")
        c.pass_k = j.get("pass_k")
        c.pass_est = est(j.get("pass_at_k"), len(c.per_seed), c.n_problems or 0)
        return c

    def cmp(j: dict[str, Any] | None) -> Comparison | None:
        if not j:
            return None
        return Comparison(
            j["diff"],
            j["ci_low"],
            j["ci_high"],
            j["p"],
            j.get("p_seeds"),
            j.get("p_seeds_min"),
            j["n_seeds_a"],
            j["n_seeds_b"],
            j["n_problems"],
        )

    runs = d.get("runs") or {}
    order = [r for r in d.get("run_order") or [] if r in runs] + [
        r for r in runs if r not in (d.get("run_order") or [])
    ]
    columns: list[str] = list(d.get("columns") or [])
    for r in runs.values():
        for c in r.get("benchmarks", {}):
            if c not in columns:
                columns.append(c)
    cfg = StudyConfig(
        list(d.get("seeds") or []),
        order,
        list(d.get("ablations") or []),
        list(d.get("ablation_seeds") or []),
        d.get("baseline"),
    )
    cells = {}
    for run, r in runs.items():
        for c in columns:
            cells[(run, c)] = cell(run, c, (r.get("benchmarks") or {}).get(c) or {})
        cells[(run, AVERAGE)] = cell(run, AVERAGE, r.get("average") or {})
    comparisons = {
        k: {
            "a": v["a"],
            "b": v["b"],
            "benchmarks": {
                **{c: cmp((v.get("benchmarks") or {}).get(c)) for c in columns},
                AVERAGE: cmp(v.get("average")),
            },
            "power": {c: Power.from_json(j) for c, j in (v.get("power") or {}).items() if j},
        }
        for k, v in sorted(
            (d.get("comparisons") or {}).items(),
            key=lambda kv: (
                (d.get("comparison_order") or []).index(kv[0])
                if kv[0] in (d.get("comparison_order") or [])
                else len(d.get("comparisons") or {})
            ),
        )
    }
    method = d.get("method") or {}
    return Study(
        cfg,
        columns,
        {run: runs[run].get("label", run) for run in order},
        dict(d.get("benchmarks") or {}),
        cells,
        comparisons,
        {run: list(r.get("missing") or []) for run, r in runs.items()},
        int(method.get("n_boot", 0)),
        int(method.get("n_perm", 0)),
        float(method.get("target_difference", 5.0)),
    )
