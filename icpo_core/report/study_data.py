"""The seed study's data: which runs at which seeds, the files each instance left, and the study's results.

One training run at one seed is an instance ``<run>_s<seed>``; ``base`` has the single instance ``base``. Per
instance the study reads ``bench/<instance>/samples.jsonl`` (per-sample verdicts), ``metrics/bench_<instance>
.json`` and ``metrics/steps_<instance>.jsonl``; ``metrics/regime.json`` (the exploration gap) once per study.

:class:`Study` is what ``reports/study.json`` holds (numbers in percent, n/a as ``null``): a pydantic model, so
the file is ``Study.model_dump`` and ``icpo compare`` reads it back with ``Study.model_validate``. The numbers
come from ``icpo_core.report.study_stats``; the markdown from ``icpo_core.report.markdown``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from icpo_core import paths
from icpo_core.report.power import Power
from icpo_core.report.stats import Comparison, ci_decimals

log = logging.getLogger(__name__)

AVERAGE = "average"  # the column of the unweighted mean over the benchmarks
REGIME_FILE = "regime.json"  # under metrics/: groups with reward signal 0-shot vs with demos


# ----------------------------------------------------------------------------------------- runs and files
@dataclass
class StudyConfig:
    """Which runs the study holds and at which seeds (``params.seeds`` / ``params.study``)."""

    seeds: list[int]
    runs: list[str]  # base first, then the study runs, then the ablations
    ablations: list[str]
    ablation_seeds: list[int]
    baseline: str | None  # report.baseline: the run every other one is compared with

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
    baseline = params.report.baseline if params.report.baseline in runs else None
    return StudyConfig(all_seeds, list(runs), ablations, abl_seeds, baseline)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is missing, unreadable (logged) or not an object."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); it shows as n/a", path, e)
        return None
    return data if isinstance(data, dict) else None


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
        insts = [load(run, s, paths.instance(run, s)) for s in cfg.seeds_of(run)]
        if run != "base" and not any(i.present for i in insts):
            legacy = load(run, None, run)
            if legacy.present:
                insts = [legacy]
        out[run] = insts
    return out


def steps_files(
    run: str, instances: dict[str, str], metrics_dir: Path = paths.METRICS_DIR
) -> dict[str, Path]:
    """seed -> step log of ``run``'s ``instances`` (seed -> instance name; ``metrics/steps_<instance>.jsonl``),
    or ``{"-": steps_<run>.jsonl}`` of the single-seed layout when none of those exists."""
    files = {seed: metrics_dir / paths.train_metrics_jsonl(name).name for seed, name in instances.items()}
    bare = metrics_dir / paths.train_metrics_jsonl(run).name
    if not any(f.exists() for f in files.values()) and bare.exists():
        return {seed_key(None): bare}
    return files


def seed_key(seed: int | None) -> str:
    return "-" if seed is None else str(seed)


# ------------------------------------------------------------------------------------- the study's results
class _Model(BaseModel):
    # unknown keys are ignored: `icpo compare` reads study.json files that older or newer reports wrote
    model_config = ConfigDict(extra="ignore")


class Interval(_Model):
    mean: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


class Cell(Interval):
    """One run x benchmark (or the average): mean over seeds and problems with its CI, and the seeds behind it.
    Without per-sample verdicts the mean comes from the bench metrics and has no CI."""

    n_seeds: int = 0
    n_problems: int | None = None
    samples_per_problem: int | None = None
    per_seed: dict[str, float] = {}  # seed ("-": the single-seed layout) -> score
    seed_min: float | None = None
    seed_max: float | None = None
    seed_sd: float | None = None
    pass_k: int | None = None  # sampled benchmarks: the unbiased pass@k at k = samples per problem
    pass_at_k: Interval | None = None

    @property
    def has_ci(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None

    def decimals(self) -> int:
        return ci_decimals(self.ci_low, self.ci_high) if self.has_ci else 1  # type: ignore[arg-type]


class Diff(_Model):
    """A - B with its paired bootstrap CI, p over problems (sign flips) and over seeds (permutations)."""

    diff: float
    ci_low: float
    ci_high: float
    p: float
    p_seeds: float | None = None
    p_seeds_min: float | None = None
    n_seeds_a: int
    n_seeds_b: int
    n_problems: int

    @classmethod
    def of(cls, c: Comparison | None) -> Diff | None:
        if c is None:
            return None
        return cls(
            diff=c.diff,
            ci_low=c.lo,
            ci_high=c.hi,
            p=c.p,
            p_seeds=c.p_seeds,
            p_seeds_min=c.p_seeds_min,
            n_seeds_a=c.n_seeds_a,
            n_seeds_b=c.n_seeds_b,
            n_problems=c.n_problems,
        )


class Pair(_Model):
    """One comparison A - B per benchmark and on the average, with the power figures of each."""

    a: str
    b: str
    role: Literal["primary", "secondary"] = "secondary"
    benchmarks: dict[str, Diff | None] = {}
    average: Diff | None = None
    power: dict[str, Power | None] = {}  # benchmark | "average" -> power figures

    def at(self, col: str) -> Diff | None:
        return self.average if col == AVERAGE else self.benchmarks.get(col)


class PrimaryResult(_Model):
    """One preregistered comparison on the measure, and the verdict its decision rule gives."""

    a: str
    b: str
    diff: Diff | None = None
    mde: float | None = None  # at the rule's alpha and power
    seed_variance_known: bool = False
    verdict: Literal["supports", "contradicts", "inconclusive", "n/a"] = "n/a"
    verdict_text: str = ""


class Primary(_Model):
    """``study.primary`` as it was preregistered, and its comparisons' results."""

    question: str
    measure: str | list[str]
    alpha: float
    power: float
    rule: str
    comparisons: list[PrimaryResult] = []


class RegimeArm(_Model):
    groups_with_signal: float
    ci: tuple[float, float]
    mean_reward: float | None = None


class Regime(_Model):
    """``metrics/regime.json``: the share of on-policy groups with reward signal 0-shot and with demos."""

    problems: int
    k: int
    levels: list[Any] = []
    zero_shot: RegimeArm
    with_demos: RegimeArm


class ProcessMeasure(_Model):
    """A training-process measure of one run: per seed the mean over its logged steps; over the seeds the mean
    with a Student-t interval (n/a with one seed)."""

    mean: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_seeds: int = 0
    per_seed: dict[str, float] = {}


class RunData(_Model):
    label: str
    instances: dict[str, str] = {}  # seed -> instance name (the seeds the run is meant to have)
    missing: list[str] = []  # instances with no files yet
    benchmarks: dict[str, Cell] = {}
    average: Cell = Cell()
    process: dict[str, ProcessMeasure] = {}  # step-log key -> measure

    def cell(self, col: str) -> Cell:
        return self.average if col == AVERAGE else self.benchmarks.get(col) or Cell()


class Decoding(_Model):
    n: int | None = None
    temperature: float | None = None
    mode: str = "avg@n"


class Method(_Model):
    confidence: float
    n_boot: int
    n_perm: int
    rng_seed: int
    target_difference: float = 5.0
    notes: dict[str, str] = {}  # what each interval and test is


class Study(_Model):
    """Everything ``reports/study.json`` holds. ``runs`` and ``comparisons`` keep the report's order
    (``run_order`` / ``comparison_order``: the JSON file's keys are sorted)."""

    schema_version: int = 2
    profile: str = ""
    unit: str = "percent"
    method: Method
    run_order: list[str] = []
    comparison_order: list[str] = []
    columns: list[str] = []
    seeds: list[int] = []
    ablations: list[str] = []
    ablation_seeds: list[int] = []
    baseline: str | None = None
    benchmarks: dict[str, Decoding] = {}  # decoding per benchmark
    runs: dict[str, RunData] = {}
    comparisons: dict[str, Pair] = {}
    primary: Primary | None = None
    regime: Regime | None = None
    regime_note: str = ""  # where the regime came from, or why there is none
    process_keys: list[str] = []
    process_interval: str = ""
    # machine kind (icpo_core.machine.kind) -> the instances that trained on it; instances whose train summary
    # names no machine
    machines: dict[str, list[str]] = {}
    machines_unrecorded: list[str] = []

    @model_validator(mode="after")
    def _ordered(self) -> Study:
        def order(d: dict[str, Any], first: list[str]) -> dict[str, Any]:
            return {k: d[k] for k in [*(k for k in first if k in d), *(k for k in d if k not in first)]}

        self.runs = order(self.runs, self.run_order)
        self.comparisons = order(self.comparisons, self.comparison_order)
        for r in self.runs.values():
            for c in r.benchmarks:
                if c not in self.columns:
                    self.columns.append(c)
        return self

    @property
    def labels(self) -> dict[str, str]:
        return {run: r.label for run, r in self.runs.items()}

    def cell(self, run: str, col: str) -> Cell:
        return self.runs[run].cell(col)

    def to_json(self) -> dict[str, Any]:
        """``reports/study.json``."""
        return self.model_dump(mode="json")
