"""The study's numbers: per run and benchmark the seed x problem score matrix, its mean with a two-level bootstrap
CI, paired comparisons with p over problems and over seeds and their power, the preregistered primary
comparison with its verdict, and the training-process measures over seeds.

The statistics themselves live in ``icpo_core.report.stats`` (bootstrap, permutation tests, t interval) and
``icpo_core.report.power`` (MDE); this module applies them to the files of a study (``study_data``).
"""

from __future__ import annotations

import logging
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from icpo_core import machine, paths
from icpo_core.bench.registry import resolve_benchmarks
from icpo_core.report import stats
from icpo_core.report.curves import read_steps
from icpo_core.report.labels import run_label
from icpo_core.report.power import paired_power
from icpo_core.report.study_data import (
    AVERAGE,
    REGIME_FILE,
    Cell,
    Decoding,
    Diff,
    InstanceData,
    Interval,
    Method,
    Pair,
    Primary,
    PrimaryResult,
    ProcessMeasure,
    Regime,
    RunData,
    Study,
    StudyConfig,
    load_instances,
    read_json,
    seed_key,
    steps_files,
    study_config,
)

log = logging.getLogger(__name__)

# The training-process measures: per seed the mean over its steps, then an interval across seeds.
PROCESS_KEYS = (
    "reward/on_policy",
    "icpo/on_policy_groups_with_signal",
    "icpo/accept_rate",
    "actor/pg_clipfrac",
    "response/clip_ratio",
)
# Held-out answers, per seed from its bench file (mean over the study's benchmarks), interval as the process ones:
# the share of samples with no gradable answer (mostly cut at max_tokens on the embedded default) and their length.
ANSWER_KEYS = ("bench/no_answer_rate", "bench/mean_tokens")
PROCESS_INTERVAL = (
    "per seed the mean over its logged steps; across seeds the mean with a 95 % Student-t interval "
    "(mean ± t(0.975, seeds − 1) · sd / √seeds); n/a with one seed"
)
METHOD_NOTES = {
    "ci": "two-level percentile bootstrap: seeds with replacement, then problems with replacement "
    "(one problem draw shared by the seeds; one seed draw shared by the benchmarks of an average)",
    "diff_ci": "paired bootstrap: the same problem draw for both runs, seeds drawn independently per run",
    "p": "two-sided paired sign-flip test over problems (per-problem seed-mean differences)",
    "p_seeds": "exact permutation test over seeds (whole trained models exchanged between the runs)",
    "power": "minimum detectable effect at alpha 0.05 / power 0.8 from the measured seed and problem "
    "variances (icpo_core.report.power); seeds_needed for report.target_difference points",
    "process": PROCESS_INTERVAL,
}
Raw = dict[Any, dict[str, float]]  # seed -> problem -> score (fraction)


def _rng(*names: str) -> np.random.Generator:
    """A Generator per cell, seeded by the cell's names: results do not depend on the order cells are made."""
    return np.random.default_rng([stats.RNG_SEED, zlib.crc32("|".join(names).encode())])


def _decoding(insts: list[InstanceData], bench: str) -> Decoding:
    for i in insts:
        s = ((i.bench or {}).get("benchmarks", {}).get(bench) or {}).get("sampling") or {}
        if s:
            n, t = s.get("n"), s.get("temperature")
            mode = "greedy" if n == 1 and t == 0 else f"avg@{n}" if n else "avg@n"
            return Decoding(n=n, temperature=t, mode=mode)
    return Decoding()


def _cell(per_seed: dict[str, float], est: stats.Estimate | None = None, **kw: Any) -> Cell:
    vals = list(per_seed.values())
    mean = est.mean if est is not None else (sum(vals) / len(vals) if vals else None)
    return Cell(
        mean=mean,
        ci_low=est.lo if est is not None else None,
        ci_high=est.hi if est is not None else None,
        n_seeds=len(vals),
        per_seed=per_seed,
        seed_min=min(vals) if vals else None,
        seed_max=max(vals) if vals else None,
        seed_sd=float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
        **kw,
    )


def _make_cell(run: str, bench: str, insts: list[InstanceData], n_boot: int) -> tuple[Cell, Raw]:
    """The cell and its raw per-seed problem scores ``seed -> {problem -> score}`` (fractions)."""
    raw: Raw = {}
    counts: dict[int | None, dict[str, list[bool]]] = {}
    for i in insts:
        problems = i.samples.get(bench)
        if problems:
            counts[i.seed] = {p: list(v.values()) for p, v in problems.items()}
            raw[i.seed] = {p: sum(v) / len(v) for p, v in counts[i.seed].items()}
    if raw:
        seeds = list(raw)
        x, ids = stats.score_matrix([raw[s] for s in seeds])
        if not ids:
            return Cell(), {}
        est = stats.bootstrap_mean(x, _rng(run, bench), n_boot).scaled(100.0)
        n_min = min(len(counts[s][p]) for s in seeds for p in ids)
        n_max = max(len(counts[s][p]) for s in seeds for p in ids)
        pass_at_k = None
        if n_min > 1:  # sampled: also the unbiased pass@k at the largest k every problem allows
            rows = [[{"problem_id": p, "correct": c} for p in ids for c in counts[s][p]] for s in seeds]
            xk, _ = stats.score_matrix([stats.per_problem_scores(r, n_min) for r in rows])
            pk = stats.bootstrap_mean(xk, _rng(run, bench, "pass"), n_boot).scaled(100.0)
            pass_at_k = Interval(mean=pk.mean, ci_low=pk.lo, ci_high=pk.hi)
        cell = _cell(
            {seed_key(s): 100.0 * float(x[j].mean()) for j, s in enumerate(seeds)},
            est,
            n_problems=len(ids),
            samples_per_problem=n_min if n_min == n_max else None,
            pass_k=n_min if n_min > 1 else None,
            pass_at_k=pass_at_k,
        )
        return cell, {s: {p: raw[s][p] for p in ids} for s in seeds}
    # no per-sample verdicts: the metrics JSON's mean per seed, without a CI
    per_seed, n_problems, spp = {}, None, None
    for i in insts:
        b = (i.bench or {}).get("benchmarks", {}).get(bench) or {}
        if b.get("avg_at_n") is not None:
            per_seed[seed_key(i.seed)] = 100.0 * float(b["avg_at_n"])
            n_problems, spp = b.get("n_problems", n_problems), b.get("n", spp)
    return _cell(per_seed, n_problems=n_problems, samples_per_problem=spp), {}


def _matrices(raw: dict[str, Raw], columns: list[str]) -> tuple[list[Any], list[list[str]], list] | None:
    """Per column the matrix over the seeds that have every column (None when a column has no data)."""
    if not columns or any(not raw.get(c) for c in columns):
        return None
    seeds = [s for s in raw[columns[0]] if all(s in raw[c] for c in columns)]
    if not seeds:
        return None
    mats, ids = [], []
    for c in columns:
        x, i = stats.score_matrix([raw[c][s] for s in seeds])
        if not i:
            return None
        mats.append(x)
        ids.append(i)
    return mats, ids, seeds


def _average_cell(
    run: str, raw: dict[str, Raw], cells: dict[str, Cell], columns: list[str], n_boot: int
) -> Cell:
    m = _matrices(raw, columns)
    if m is None:
        vals = [cells[c].mean for c in columns]
        ok = bool(vals) and all(v is not None for v in vals)
        return Cell(mean=sum(vals) / len(vals) if ok else None)  # type: ignore[arg-type]
    mats, ids, seeds = m
    est = stats.bootstrap_mean(mats, _rng(run, AVERAGE), n_boot).scaled(100.0)
    per_seed = {
        seed_key(s): 100.0 * sum(float(x[j].mean()) for x in mats) / len(mats) for j, s in enumerate(seeds)
    }
    return _cell(per_seed, est, n_problems=sum(len(i) for i in ids))


def paired(
    raw_a: dict[str, Raw],
    raw_b: dict[str, Raw],
    a: str,
    b: str,
    col: str,
    columns: list[str],
    n_boot: int,
    n_perm: int,
    confidence: float = stats.CONFIDENCE,
) -> tuple[stats.Comparison | None, Any]:
    """(paired ``Comparison``, ``Power``) of A - B in points on one benchmark or (``AVERAGE``) on the unweighted
    mean over ``columns``; (None, None) without common problems."""
    cols = columns if col == AVERAGE else [col]
    ma, mb = _matrices(raw_a, cols), _matrices(raw_b, cols)
    if ma is None or mb is None:
        return None, None
    pairs = [stats.align(xa, ia, xb, ib) for xa, ia, xb, ib in zip(ma[0], ma[1], mb[0], mb[1], strict=True)]
    if not all(p[2] for p in pairs):
        return None, None
    xa, xb = [p[0] for p in pairs], [p[1] for p in pairs]
    cmp = stats.paired_diff(xa, xb, _rng(a, b, col), n_boot, n_perm, confidence)
    return cmp.scaled(100.0), paired_power(xa, xb).scaled(100.0)


def comparison_pairs(params: Any, cfg: StudyConfig) -> list[tuple[str, str, str]]:
    """(A, B, role) of every comparison among the study's runs, each pair once: the preregistered
    ``study.primary.comparisons`` (role primary), every trained run against ``report.baseline``, then
    ``report.pairs`` (secondary)."""
    primary = getattr(params.study, "primary", None)
    wanted = [(a, b, "primary") for a, b in (primary.comparisons if primary else [])]
    if cfg.baseline:
        wanted += [(r, cfg.baseline, "secondary") for r in cfg.runs if r not in ("base", cfg.baseline)]
    wanted += [(a, b, "secondary") for a, b in params.report.pairs]
    out: list[tuple[str, str, str]] = []
    seen: set[frozenset[str]] = set()
    for a, b, role in wanted:
        if a in cfg.runs and b in cfg.runs and frozenset((a, b)) not in seen:
            seen.add(frozenset((a, b)))
            out.append((a, b, role))
    return out


def format_mde(mde: float) -> str:
    """An MDE in points at two significant digits' worth: 12, 4.5, 0.45."""
    return f"{mde:.0f}" if mde >= 10 else f"{mde:.1f}" if mde >= 1 else f"{mde:.2f}"


def verdict(diff: Diff | None, mde: float | None, seed_variance_known: bool = True) -> tuple[str, str]:
    """The preregistered decision rule on A - B: ``supports`` when the CI lies above 0, ``contradicts`` when it
    lies below 0, else ``inconclusive at MDE x points`` (the difference this study finds with the rule's power).
    Returns (verdict, the line the report prints); ``n/a`` without paired data."""
    if diff is None:
        return "n/a", "n/a: no paired data yet (not run, or no common problems)"
    if diff.ci_low > 0:
        return "supports", "supports"
    if diff.ci_high < 0:
        return "contradicts", "contradicts"
    if mde is None:
        return "inconclusive", "inconclusive (no MDE)"
    caveat = "" if seed_variance_known else " (problem noise only: 1 seed)"
    return "inconclusive", f"inconclusive at MDE {format_mde(mde)} points{caveat}"


def decision_rule(alpha: float, power: float) -> str:
    conf = f"{100 * (1 - alpha):g} %"
    return (
        f"supports: the {conf} CI of a − b lies above 0; contradicts: it lies below 0; otherwise "
        f"inconclusive at MDE x points, x the smallest difference this study detects with {100 * power:g} % "
        f"power at alpha {alpha:g} (two-sided)"
    )


def measure_columns(measure: str | list[str], columns: list[str]) -> tuple[str, list[str]]:
    """``study.primary.measure`` as (column, the benchmarks it averages): ``avg`` is the mean over every benchmark
    column, a list the mean over its benchmarks (both the ``AVERAGE`` column), a name that one benchmark."""
    if isinstance(measure, list):
        return AVERAGE, list(measure)
    if measure == "avg":
        return AVERAGE, list(columns)
    return measure, [measure]


def _primary(
    params: Any, raw: dict[str, dict[str, Raw]], columns: list[str], n_boot: int, n_perm: int
) -> Primary | None:
    spec = getattr(params.study, "primary", None)
    if spec is None:
        return None
    col, cols = measure_columns(spec.measure, columns)
    results = []
    for a, b in spec.comparisons:
        if a not in raw or b not in raw or any(c not in columns for c in cols):
            results.append(PrimaryResult(a=a, b=b, verdict="n/a", verdict_text="n/a: not in this report"))
            continue
        cmp, pw = paired(raw[a], raw[b], a, b, col, cols, n_boot, n_perm, 1.0 - spec.alpha)
        diff = Diff.of(cmp)
        mde = pw.mde_at(spec.alpha, spec.power) if pw is not None else None
        known = bool(pw is not None and pw.seed_variance_known)
        kind, text = verdict(diff, mde, known)
        results.append(
            PrimaryResult(
                a=a, b=b, diff=diff, mde=mde, seed_variance_known=known, verdict=kind, verdict_text=text
            )
        )
    return Primary(
        question=spec.question,
        measure=spec.measure,
        alpha=spec.alpha,
        power=spec.power,
        rule=decision_rule(spec.alpha, spec.power),
        comparisons=results,
    )


def _regime(metrics_dir: Path) -> tuple[Regime | None, str]:
    path = metrics_dir / REGIME_FILE
    data = read_json(path)
    if data is None:
        why = "absent" if not path.exists() else "unreadable"
        return (
            None,
            f"`{paths.METRICS_DIR.name}/{REGIME_FILE}` {why}: the exploration gap is not measured here.",
        )
    try:
        return Regime.model_validate(data), f"`{paths.METRICS_DIR.name}/{REGIME_FILE}`"
    except ValidationError as e:
        msg = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        return None, f"`{paths.METRICS_DIR.name}/{REGIME_FILE}` has an unexpected shape ({msg[:200]})."


def over_seeds(per_seed: dict[str, float]) -> ProcessMeasure:
    """The per-seed values' mean with its Student-t interval across seeds (an empty measure without seeds)."""
    if not per_seed:
        return ProcessMeasure()
    mean, lo, hi = stats.t_interval(list(per_seed.values()))
    return ProcessMeasure(mean=mean, ci_low=lo, ci_high=hi, n_seeds=len(per_seed), per_seed=per_seed)


def process_measures(files: dict[str, Path]) -> dict[str, ProcessMeasure]:
    """Per ``PROCESS_KEYS`` key: each seed's mean over its finite logged values, and the t interval across the
    seeds that logged the key. ``files``: seed -> step log."""
    logs = {seed: read_steps(f) for seed, f in files.items()}
    out = {}
    for key in PROCESS_KEYS:
        per_seed = {}
        for seed, rows in logs.items():
            vals = [
                float(r[key]) for r in rows if isinstance(r.get(key), int | float) and math.isfinite(r[key])
            ]
            if vals:
                per_seed[seed] = sum(vals) / len(vals)
        out[key] = over_seeds(per_seed)
    return out


def answer_measures(insts: list[InstanceData], columns: list[str]) -> dict[str, ProcessMeasure]:
    """Per ``ANSWER_KEYS`` key: each seed's mean over the ``columns`` benchmarks of its bench file's value
    (``no_answer_rate``, ``mean_tokens``), and the t interval across the seeds that have it."""
    out = {}
    for key in ANSWER_KEYS:
        field = key.split("/", 1)[1]
        per_seed = {}
        for inst in insts:
            benches = (inst.bench or {}).get("benchmarks", {})
            vals = [
                float(m[field])
                for c, m in benches.items()
                if c in columns and isinstance(m.get(field), int | float) and math.isfinite(m[field])
            ]
            if vals:
                per_seed[seed_key(inst.seed)] = sum(vals) / len(vals)
        out[key] = over_seeds(per_seed)
    return out


def training_machines(instances: list[str], metrics_dir: Path) -> tuple[dict[str, list[str]], list[str]]:
    """(machine kind -> instances, instances with a train summary that names no machine), from
    ``metrics/train_<instance>.json``; instances without a summary are left out."""
    kinds: dict[str, list[str]] = {}
    unrecorded = []
    for name in instances:
        summary = read_json(metrics_dir / f"train_{name}.json")
        if summary is None:
            continue
        label = machine.kind(summary.get("machine"))
        if label is None:
            unrecorded.append(name)
        else:
            kinds.setdefault(label, []).append(name)
    return kinds, unrecorded


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


def build_study(
    params: Any,
    runs: list[str] | None = None,
    seeds: list[int] | None = None,
    metrics_dir: Path = paths.METRICS_DIR,
    bench_root: Path = paths.BENCH_DIR,
    n_boot: int | None = None,
    n_perm: int | None = None,
) -> Study:
    """Every cell, average, comparison, the primary verdicts, the regime and the process measures of the study
    (the methods: ``icpo_core.report.stats``)."""
    n_boot = n_boot or stats.N_BOOT
    n_perm = n_perm or stats.N_PERM
    cfg = study_config(params, runs, seeds)
    data = load_instances(cfg, metrics_dir, bench_root)
    columns = _columns(params, [i.bench for insts in data.values() for i in insts])
    raw: dict[str, dict[str, Raw]] = {}
    run_data: dict[str, RunData] = {}
    for run in cfg.runs:
        raw[run], cells = {}, {}
        for c in columns:
            cells[c], raw[run][c] = _make_cell(run, c, data[run], n_boot)
        instances = {seed_key(s): paths.instance(run, s) for s in cfg.seeds_of(run)}
        files = steps_files(run, instances, metrics_dir) if run != "base" else {}
        run_data[run] = RunData(
            label=run_label(params, run),
            instances=instances,
            missing=[i.name for i in data[run] if not i.present],
            benchmarks=cells,
            average=_average_cell(run, raw[run], cells, columns, n_boot),
            process={**(process_measures(files) if files else {}), **answer_measures(data[run], columns)},
        )
    comparisons = {}
    for a, b, role in comparison_pairs(params, cfg):
        pair = Pair(a=a, b=b, role=role)
        for c in [*columns, AVERAGE]:
            cmp, pw = paired(raw[a], raw[b], a, b, c, columns, n_boot, n_perm)
            if c == AVERAGE:
                pair.average = Diff.of(cmp)
            else:
                pair.benchmarks[c] = Diff.of(cmp)
            pair.power[c] = pw
        comparisons[f"{a}-{b}"] = pair
    regime, regime_note = _regime(metrics_dir)
    trained = [name for run, r in run_data.items() if run != "base" for name in r.instances.values()]
    machines, unrecorded = training_machines(trained, metrics_dir)
    return Study(
        profile=str(getattr(params, "profile", "")),
        method=Method(
            confidence=stats.CONFIDENCE,
            n_boot=n_boot,
            n_perm=n_perm,
            rng_seed=stats.RNG_SEED,
            target_difference=float(params.report.target_difference),
            notes=METHOD_NOTES,
        ),
        run_order=list(cfg.runs),
        comparison_order=list(comparisons),
        columns=columns,
        seeds=cfg.seeds,
        ablations=cfg.ablations,
        ablation_seeds=cfg.ablation_seeds,
        baseline=cfg.baseline,
        benchmarks={c: _decoding([i for v in data.values() for i in v], c) for c in columns},
        runs=run_data,
        comparisons=comparisons,
        primary=_primary(params, raw, columns, n_boot, n_perm),
        regime=regime,
        regime_note=regime_note,
        process_keys=[*PROCESS_KEYS, *ANSWER_KEYS],
        machines=machines,
        machines_unrecorded=unrecorded,
        process_interval=PROCESS_INTERVAL,
    )
