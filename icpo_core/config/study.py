"""The params sections around the runs: benchmarks, the regime measurement, the report, the study and tracking."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from icpo_core.config.sections import (
    VllmParams,
    _missing,
)
from icpo_core.config.types import (
    Float,
    Name,
    NonEmptyStr,
    Seed,
    _Section,
)

# -------------------------------------------------------------------------------------------- bench / report


class SamplingOverrides(_Section):
    """Sampling values that override a benchmark's registry defaults (None = keep the registry's)."""

    n: int | None = Field(default=None, ge=1)
    temperature: Float | None = Field(default=None, ge=0)
    top_p: Float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, gt=0)


class BenchParams(SamplingOverrides):
    """``n`` / ``temperature`` / ... apply to every benchmark; ``per_benchmark`` overrides them per name."""

    benchmarks: list[NonEmptyStr] = ["synthetic_l0", "synthetic_l1"]
    backend: Literal["hf", "vllm"] = "vllm"
    per_benchmark: dict[NonEmptyStr, SamplingOverrides] = {}
    # extra benchmarks YAML merged over icpo_core/bench/benchmarks.yaml
    registry: NonEmptyStr | None = None
    batch_size: int = Field(default=32, ge=1)
    grade_workers: int = Field(default=2, ge=1)
    grade_timeout_s: Float = Field(default=5.0, gt=0)
    tensor_parallel: int = Field(default=1, ge=1)
    gpu_memory_utilization: Float = Field(default=0.85, gt=0, le=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    vllm: VllmParams = VllmParams()

    @field_validator("benchmarks")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one benchmark")
        return v

    @field_validator("registry")
    @classmethod
    def _registry_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v and (err := _missing(v, info)):
            raise ValueError(err)
        return v


class RegimeParams(_Section):
    """``icpo regime``: how much signal the base model's 0-shot and demo-conditioned groups carry (metrics/regime.json).

    Sampling follows the training rollouts (``train.temperature``, ``train.top_p``); the demos follow ``run``'s
    IEF (``k_demos``, ``demo_format``)."""

    problems: int = Field(default=128, gt=0)  # training prompts, a seeded sample (all of them when fewer)
    k: int = Field(default=8, ge=2)  # samples per prompt, 0-shot and with demos
    max_tokens: int | None = Field(default=None, gt=0)  # None: train.max_response_length
    backend: Literal["hf", "vllm"] = "vllm"  # vllm falls back to hf (one warning) where it cannot start
    run: Name = "icpo"  # the run whose IEF prompt is measured


def _two_runs(pair: list[str]) -> list[str]:
    if len(pair) != 2 or pair[0] == pair[1]:
        raise ValueError(f"needs two different runs [A, B] (the report shows A - B), got {pair}")
    return pair


# one comparison of the report: [A, B], two different run names
RunPair = Annotated[list[Name], AfterValidator(_two_runs)]


class ReportParams(_Section):
    runs: list[NonEmptyStr] = [
        "base",
        "grpo",
        "luffy",
        "icpo",
        "icpo_no_demos",
        "grpo_compute_matched",
        "grpo_shuffled_reward",
        "grpo_random_reward",
        "grpo_format_reward",
        "icpo_rs",
        "icpo_no_errs",
        "icpo_released",
        "grpo_released",
    ]
    # comparisons beyond "every run - GRPO", e.g. [[icpo, luffy]]: the paper's ICPO vs the expert-guided baseline.
    # The released code's ICPO against the released code's GRPO (the same loss averaging); shown when both ran
    pairs: list[RunPair] = [["icpo_released", "grpo_released"]]
    # the run every other run is compared with (secondary comparisons); null: none
    baseline: Name | None = "grpo"
    # points: the report states how many seeds per run a difference of this size would need (80 % power)
    target_difference: float = Field(10.0, gt=0)

    @field_validator("runs")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one run ('base' or a name from runs)")
        return v


class PrimaryParams(_Section):
    """The preregistered primary comparison, written before any run: the question, the comparisons ``a - b`` on
    ``measure``, and the decision rule's level. The report leads with it: per comparison ``supports`` (the
    ``1 - alpha`` CI of ``a - b`` lies above 0), ``contradicts`` (below 0) or ``inconclusive at MDE x`` (x: the
    smallest difference the study detects with ``power`` at ``alpha``)."""

    question: NonEmptyStr = (
        "Do the in-context demonstrations, not the extra rollouts they come with, make ICPO's gain over GRPO?"
    )
    comparisons: list[RunPair] = [["icpo", "icpo_no_demos"], ["icpo", "grpo"]]
    # avg: the held-out benchmark average (unweighted mean over bench.benchmarks), in points; one benchmark name;
    # or a list of benchmark names (their unweighted mean: e.g. the greedy levels when sampled ones are benched too)
    measure: NonEmptyStr | list[NonEmptyStr] = "avg"
    alpha: Float = Field(default=0.05, gt=0, lt=1)
    power: Float = Field(default=0.8, gt=0, lt=1)

    @field_validator("comparisons")
    @classmethod
    def _non_empty(cls, v: list[list[str]]) -> list[list[str]]:
        if not v:
            raise ValueError("needs at least one comparison [a, b]")
        return v

    @field_validator("measure")
    @classmethod
    def _measure(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and (not v or "avg" in v):
            raise ValueError(
                "a list names one or more benchmarks (not 'avg'); or write avg, or one benchmark name"
            )
        return v


class StudyParams(_Section):
    """What ``dvc repro`` trains, merges and benches: ``runs`` at every seed of ``seeds``, ``ablations`` at
    ``ablation_seeds`` (one DVC stage per run x seed either way); ``primary``: the preregistered comparison."""

    runs: list[Name] = ["grpo", "icpo", "icpo_no_demos"]  # dvc.yaml: each at every seed of `seeds`
    ablations: list[Name] = []
    ablation_seeds: list[Seed] = [0, 1]
    primary: PrimaryParams | None = PrimaryParams()

    @model_validator(mode="before")
    @classmethod
    def _unwritten_primary(cls, data: Any) -> Any:
        """A study that does not write ``primary`` and lacks the default comparisons' runs preregistered no
        primary comparison (None), rather than inheriting one about runs it does not train."""
        if isinstance(data, dict) and "primary" not in data and isinstance(data.get("runs"), list):
            wanted = {name for pair in PrimaryParams().comparisons for name in pair}
            if not wanted <= set(data["runs"]):
                return {**data, "primary": None}
        return data

    @field_validator("runs", "ablations", "ablation_seeds")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError(f"entries must be unique (got {v!r})")
        return v

    @field_validator("ablation_seeds")
    @classmethod
    def _seeds_ok(cls, v: list[int]) -> list[int]:
        return _check_seeds(v)


def _check_seeds(v: list[int]) -> list[int]:
    if not v:
        raise ValueError("needs at least one seed")
    if len(set(v)) != len(v):
        raise ValueError(f"seeds must be unique (got {v})")
    return v


Logger = Literal["mlflow", "wandb"]


class TrackingParams(_Section):
    experiment: NonEmptyStr = "icpo-repro"
    tracking_uri: NonEmptyStr | None = None
    # where a training's metrics, params and tags go: MLflow always (the report, bench and merge read it);
    # `wandb` mirrors them to Weights & Biases (WANDB_MODE=offline: a local run folder, `wandb sync` later)
    loggers: list[Logger] = ["mlflow"]
    # MLflow's system metrics (CPU, memory, disk, network, GPU: `system/...`) on every training and bench run
    system_metrics: bool = False

    @field_validator("loggers")
    @classmethod
    def _loggers_ok(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"entries must be unique (got {v!r})")
        if "mlflow" not in v:
            raise ValueError(
                f"must include 'mlflow' (got {v!r}): the report, bench and merge stages read the MLflow runs; "
                "wandb is a mirror beside it"
            )
        return v
