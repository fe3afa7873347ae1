"""Typed experiment parameters: ``params.yaml`` validated before any heavy import or download.

``load_params()`` reads ``params.yaml``, deep-merges the active profile over the base sections, validates the
result with pydantic (unknown keys are errors) and returns a frozen :class:`Params`. Every failure is raised as
:class:`ParamsError`, whose message names the key path, the bad value and what is allowed; the CLI turns it
into exit code 2.

This module imports only pydantic and yaml, so validation is instant.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

PARAMS_FILE = "params.yaml"


class ParamsError(ValueError):
    """A params.yaml problem, with a message a user can act on."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------- model / data


def _missing(path: str, folder: bool = False) -> str | None:
    """An error message when ``path`` (relative to the project root) does not exist, else None."""
    p = Path(path)
    if folder and not p.is_dir():
        return f"{path!r} is not a folder (paths are relative to the project root)"
    if not p.exists():
        return f"{path!r} does not exist (paths are relative to the project root)"
    return None


class ModelParams(_Section):
    source: Literal["smollm2_gguf", "hub", "local"] = "smollm2_gguf"
    name: str = Field(default="HuggingFaceTB/SmolLM2-135M-Instruct", min_length=1)
    revision: str | None = None
    save_dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @field_validator("name")
    @classmethod
    def _local_folder_exists(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("source") == "local" and (err := _missing(v, folder=True)):
            raise ValueError(f"source 'local' needs a Hugging Face model folder here; {err}")
        return v


class TrainDataParams(_Section):
    source: Literal["synthetic", "openr1_46k", "openr1_220k", "local"] = "synthetic"
    # A local parquet/jsonl file (or a folder: a local copy of the hub dataset) read instead of the hub.
    path: str | None = Field(default=None, validate_default=True)
    max_rows: int | None = Field(default=None, gt=0)
    max_tokens: int = Field(default=8192, gt=0)
    num_proc: int = Field(default=2, ge=1)
    prompt_suffix: str = " Let's think step by step and output the final answer within \\boxed{}."

    @field_validator("path")
    @classmethod
    def _check_path(cls, v: str | None, info: ValidationInfo) -> str | None:
        source = info.data.get("source")
        if source == "local" and not v:
            raise ValueError("source 'local' needs a .parquet / .jsonl file (or a folder of them)")
        if v and source == "synthetic":
            raise ValueError("set, but source 'synthetic' generates its data; remove path or change source")
        if v and (err := _missing(v)):
            raise ValueError(err)
        return v


class DemoDataParams(_Section):
    source: Literal["synthetic", "math_hub", "local", "pkl"] = "synthetic"
    path: str | None = Field(default=None, validate_default=True)
    allow_pickle: bool = Field(default=False, validate_default=True)
    max_rows: int | None = Field(default=None, gt=0)

    @field_validator("path")
    @classmethod
    def _check_path(cls, v: str | None, info: ValidationInfo) -> str | None:
        source = info.data.get("source")
        if source in ("local", "pkl") and not v:
            raise ValueError(f"source '{source}' needs a file here")
        if v and source == "synthetic":
            raise ValueError("set, but source 'synthetic' generates its data; remove path or change source")
        if v and (err := _missing(v)):
            raise ValueError(err)
        return v

    @field_validator("allow_pickle")
    @classmethod
    def _pickle_opt_in(cls, v: bool, info: ValidationInfo) -> bool:
        if info.data.get("source") == "pkl" and not v:
            raise ValueError(
                "source 'pkl' loads a pickle, and unpickling runs arbitrary code; set "
                "data.demos.allow_pickle: true only for a file you trust"
            )
        return v


class SyntheticParams(_Section):
    levels: list[Literal[0, 1, 2, 3]] = [0, 1, 3]
    train_per_level: int = Field(default=200, gt=0)
    demos_per_level: int = Field(default=100, gt=0)
    eval_per_level: int = Field(default=32, gt=0)
    prompt_suffix: str = " Put your final answer within \\boxed{}."

    @field_validator("levels")
    @classmethod
    def _non_empty_unique(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("needs at least one level")
        if len(set(v)) != len(v):
            raise ValueError("levels must be unique")
        return v


class DataParams(_Section):
    train: TrainDataParams = TrainDataParams()
    demos: DemoDataParams = DemoDataParams()
    synthetic: SyntheticParams = SyntheticParams()


# ------------------------------------------------------------------------------------------------- algorithm


class AlgorithmParams(_Section):
    """ICPO knobs (paper section 3). GRPO is ``n_off == 0``."""

    n_on: int = Field(default=8, ge=2)
    n_off: int = Field(default=1, ge=0)
    k_demos: int = Field(default=1, ge=1)
    demo_format: Literal["chat_turns", "inline", "released"] = "chat_turns"
    errs: bool = True
    delta: float = 1.0
    reward_shaping: bool = False
    alpha: float = Field(default=1.0, ge=0)
    gamma: float = Field(default=0.1, gt=0)
    clip_ratio_low: float = Field(default=0.2, gt=0, lt=1)
    clip_ratio_high: float = Field(default=0.2, gt=0)
    clip_ratio_c: float = Field(default=3.0, gt=1)
    use_kl_loss: bool = True
    kl_coef: float = Field(default=0.001, ge=0)
    kl_type: Literal["low_var_kl", "kl", "abs", "mse"] = "low_var_kl"
    entropy_coeff: float = Field(default=0.0, ge=0)
    loss_agg_mode: Literal[
        "token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
    ] = "token-mean"
    norm_adv_by_std: bool = True
    adv_eps: float = Field(default=1e-6, gt=0)
    released_demos_skip_generation: bool = False
    released_constant_bonus: bool = False
    released_entropy_bonus: float = Field(default=0.0, ge=0)
    released_loss_agg: bool = False

    @model_validator(mode="after")
    def _check(self) -> AlgorithmParams:
        if self.n_off > self.n_on:
            raise ValueError(
                f"n_off ({self.n_off}) > n_on ({self.n_on}): accepted IEF trajectories replace on-policy ones, "
                "so n_off must be <= n_on"
            )
        return self

    @property
    def method(self) -> str:
        """'grpo' when no IEF rollouts are drawn, else 'icpo'."""
        return "grpo" if self.n_off == 0 else "icpo"


# ------------------------------------------------------------------------------------------------- training


class VerlParams(_Section):
    nnodes: int = Field(default=1, ge=1)
    n_gpus_per_node: int = Field(default=8, ge=1)
    tensor_parallel: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.8, gt=0, le=1)
    ppo_micro_batch_size_per_gpu: int = Field(default=2, ge=1)
    log_prob_micro_batch_size_per_gpu: int = Field(default=2, ge=1)
    test_freq: int = Field(default=10, ge=-1)
    val_files: list[str] = []
    # prepare_val writes these (registry names, suites or local files) to data/val/<name>.parquet
    val_benchmarks: list[str] = []
    # the released val_kwargs (DESIGN.md section 5): sampled validation, n samples per problem
    val_n: int = Field(default=2, ge=1)
    val_temperature: float = Field(default=0.6, gt=0)
    val_top_p: float = Field(default=0.7, gt=0, le=1)
    val_top_k: int = Field(default=50, ge=-1)  # -1 = off
    extra_overrides: list[str] = []


class VllmParams(_Section):
    """Knobs of an offline vLLM engine (CPU build or CUDA), set by ``icpo_core.engines.local.vllm_engine``."""

    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: float32 on CPU, bfloat16 on CUDA
    kv_cache_gib: int = Field(default=2, ge=1)  # CPU: VLLM_CPU_KVCACHE_SPACE (GiB of RAM for the KV cache)
    # CPU: VLLM_CPU_OMP_THREADS_BIND: nobind | auto | core list such as 0-1 (the engine runs in this process)
    threads_bind: str = Field(default="nobind", pattern=r"^(nobind|auto|[0-9][0-9,\-|]*)$")
    enforce_eager: bool = True  # no torch.compile at start-up (compiling costs ~55 s on 2 cores)


class TrainVllmParams(VllmParams):
    # CUDA: share of GPU memory for the colocated engine (the trainer holds the rest)
    gpu_memory_utilization: float = Field(default=0.3, gt=0, le=1)


class TrainParams(_Section):
    engine: Literal["local", "verl"] = "local"
    rollout_backend: Literal["vllm", "hf"] = "hf"  # local engine: who generates the rollouts
    vllm: TrainVllmParams = TrainVllmParams()
    steps: int = Field(default=8, ge=1)
    prompts_per_step: int = Field(default=4, ge=1)
    ppo_mini_batch_prompts: int = Field(default=4, ge=1)
    micro_batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=1e-6, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    max_prompt_length: int = Field(default=512, gt=0)
    max_response_length: int = Field(default=64, gt=0)
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    save_freq: int = Field(default=4, ge=1)
    max_ckpt_to_keep: int = Field(default=2, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    verl: VerlParams = VerlParams()

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        if self.ppo_mini_batch_prompts > self.prompts_per_step:
            raise ValueError(
                f"ppo_mini_batch_prompts ({self.ppo_mini_batch_prompts}) > prompts_per_step "
                f"({self.prompts_per_step})"
            )
        if self.prompts_per_step % self.ppo_mini_batch_prompts:
            raise ValueError(
                f"prompts_per_step ({self.prompts_per_step}) must be a multiple of ppo_mini_batch_prompts "
                f"({self.ppo_mini_batch_prompts})"
            )
        return self


# -------------------------------------------------------------------------------------------- bench / report


class SamplingOverrides(_Section):
    """Sampling values that override a benchmark's registry defaults (None = keep the registry's)."""

    n: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, gt=0)


class BenchParams(SamplingOverrides):
    """``n`` / ``temperature`` / ... apply to every benchmark; ``per_benchmark`` overrides them per name."""

    benchmarks: list[str] = ["synthetic_l0", "synthetic_l1", "synthetic_l3"]
    backend: Literal["hf", "vllm"] = "hf"
    per_benchmark: dict[str, SamplingOverrides] = {}
    registry: str | None = None  # extra benchmarks YAML merged over icpo_core/bench/benchmarks.yaml
    batch_size: int = Field(default=32, ge=1)
    grade_workers: int = Field(default=2, ge=1)
    grade_timeout_s: float = Field(default=5.0, gt=0)
    tensor_parallel: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    vllm: VllmParams = VllmParams()

    @field_validator("benchmarks")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one benchmark")
        return v


class ReportParams(_Section):
    runs: list[str] = ["base", "grpo", "icpo", "icpo_rs", "icpo_no_errs", "icpo_released"]


class StudyParams(_Section):
    """What ``dvc repro`` trains, merges and benches: ``runs`` at every seed of ``seeds``, ``ablations`` at
    ``ablation_seeds`` (one DVC stage per run x seed either way)."""

    runs: list[str] = []  # empty: every run of `runs` (params.yaml names them: dvc.yaml expands this list)
    ablations: list[str] = []
    ablation_seeds: list[int] = [0]

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
    bad = [s for s in v if not 0 <= s < 2**32]
    if bad:
        raise ValueError(f"seeds must be integers in [0, 2**32) (got {bad})")
    if len(set(v)) != len(v):
        raise ValueError(f"seeds must be unique (got {v})")
    return v


class TrackingParams(_Section):
    experiment: str = "icpo-repro"
    tracking_uri: str | None = None


# ---------------------------------------------------------------------------------------------------- root


class Params(_Section):
    profile: str = "embedded"
    seed: int = 0  # data: synthetic problems and splits, fixed across the study
    seeds: list[int] = [0]  # training seeds of the study: data order, demo draws, sampling, new weights
    study: StudyParams = StudyParams()
    model: ModelParams = ModelParams()
    data: DataParams = DataParams()
    algorithm: AlgorithmParams = AlgorithmParams()
    train: TrainParams = TrainParams()
    runs: dict[str, dict[str, Any]] = {}
    bench: BenchParams = BenchParams()
    report: ReportParams = ReportParams()
    tracking: TrackingParams = TrackingParams()
    profiles: dict[str, dict[str, Any]] = {}

    @model_validator(mode="after")
    def _check_runs(self) -> Params:
        for name, overrides in self.runs.items():
            if name == "base":
                raise ValueError("'base' is reserved for the untrained base model; rename runs.base")
            try:
                algo = AlgorithmParams(**{**self.algorithm.model_dump(), **(overrides or {})})
            except ValidationError as e:
                raise ValueError(_format_validation(e, prefix=f"runs.{name}")) from None
            if (
                self.train.engine == "verl"
                and algo.demo_format == "released"
                and algo.n_off > 0
                and not algo.released_demos_skip_generation
            ):
                raise ValueError(
                    f"runs.{name}.demo_format: 'released' is a raw prompt string without chat template, which "
                    "verl's agent loop cannot send (it chat-templates raw_prompt); use chat_turns or inline with "
                    "train.engine: verl, or the local engine"
                )
        for key, names in (("study.runs", self.study.runs), ("study.ablations", self.study.ablations)):
            for name in names:
                if name not in self.runs:
                    raise ValueError(f"{key} names '{name}', which is not in runs: {sorted(self.runs)}")
        if overlap := set(self.study.runs) & set(self.study.ablations):
            raise ValueError(f"study.ablations repeats study.runs {sorted(overlap)}: list each run once")
        for name in self.report.runs:
            if name != "base" and name not in self.runs:
                raise ValueError(
                    f"report.runs names '{name}', which is not in runs: {sorted(self.runs)} or 'base'"
                )
        return self

    @field_validator("seeds")
    @classmethod
    def _seeds_ok(cls, v: list[int]) -> list[int]:
        return _check_seeds(v)

    def seeds_of(self, run: str) -> list[int]:
        """The training seeds of ``run`` in the study (``seeds`` for study runs, else ``ablation_seeds``)."""
        study = self.study.runs or [r for r in self.runs if r not in self.study.ablations]
        return list(self.seeds) if run in study else list(self.study.ablation_seeds)

    def with_seed(self, seed: int) -> Params:
        """These params with the training seed ``seed`` (one instance of the study)."""
        if not 0 <= seed < 2**32:
            raise ParamsError(f"--seed: must be an integer in [0, 2**32) (got {seed})")
        return self.model_copy(update={"seed": seed})

    def run_algorithm(self, run: str) -> AlgorithmParams:
        """The algorithm params of one run: ``algorithm`` with ``runs.<run>`` applied."""
        if run not in self.runs:
            raise ParamsError(f"unknown run '{run}': params.yaml runs has {sorted(self.runs)}")
        return AlgorithmParams(**{**self.algorithm.model_dump(), **(self.runs[run] or {})})


# ---------------------------------------------------------------------------------------------------- loading


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _format_validation(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        key = ".".join(p for p in (prefix, loc) if p)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see params.yaml for the allowed keys)"
        elif e["type"] in ("literal_error", "enum"):
            msg = f"{msg} (got {e.get('input')!r})"
        elif "input" in e and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{key or '<root>'}: {msg}")
    return "; ".join(lines)


def resolve(raw: dict[str, Any]) -> dict[str, Any]:
    """Apply the active profile (``raw['profile']``) over the base sections."""
    profiles = raw.get("profiles") or {}
    name = raw.get("profile", "embedded")
    if name not in profiles and name != "embedded":
        raise ParamsError(f"profile: unknown profile '{name}'; allowed: {sorted(profiles) or ['embedded']}")
    overrides = profiles.get(name) or {}
    if not isinstance(overrides, dict):
        raise ParamsError(f"profiles.{name}: must be a mapping of overrides, got {type(overrides).__name__}")
    if "profiles" in overrides or "profile" in overrides:
        raise ParamsError(f"profiles.{name}: a profile cannot set 'profile' or 'profiles'")
    return deep_merge(raw, overrides)


def parse_params(raw: dict[str, Any], source: str = PARAMS_FILE) -> Params:
    """Validate an already-loaded params mapping (profile applied here)."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    merged = resolve(raw)
    try:
        return Params(**merged)
    except ValidationError as e:
        where = (
            f" (profile '{merged.get('profile')}')" if merged.get("profile", "embedded") != "embedded" else ""
        )
        raise ParamsError(f"{source}{where}: {_format_validation(e)}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read, resolve and validate ``params.yaml``; raises :class:`ParamsError` on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run from the project root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    return parse_params(raw, source=str(path))
