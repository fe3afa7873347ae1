"""Typed experiment parameters: ``params.yaml`` validated before any heavy import or download.

``load_params()`` reads ``params.yaml``, deep-merges the active profile over the base sections, validates the
result with pydantic (unknown keys are errors) and returns a frozen :class:`Params`. Every failure is raised as
:class:`ParamsError`, whose message names the key path, the bad value and what is allowed; the CLI turns it
into exit code 2.

Types are strict where YAML could smuggle nonsense in: a bool is not an int (``steps: true``), ``"8"`` is not
an int, ``1`` is not a bool; a float accepts ints and the string form YAML 1.1 gives ``1e-6``. Every profile is
validated (not only the active one), so a typo in a profile fails on the first ``icpo validate``.

The typed defaults are params.yaml's embedded sections, value for value (``tests/test_config.py`` checks that
``Params()`` equals the repository's params.yaml, profiles aside): a params file that leaves a key out, or code
that builds ``AlgorithmParams()`` / ``Params()``, gets the embedded default, never a third configuration.

This module imports only pydantic and yaml, so validation is instant.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from icpo_core.algorithm import variants

PARAMS_FILE = "params.yaml"
SEED_MAX = 2**32 - 1  # numpy.random.seed / RandomState refuse seeds outside 0 .. 2**32 - 1
# Names that become DVC stage keys (train@<run>), folders and MLflow tags.
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_FLOAT_STRING = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class ParamsError(ValueError):
    """A params.yaml problem, with a message a user can act on."""


def _yaml_float(v: Any) -> Any:
    """YAML 1.1 reads ``1e-6`` (no dot) as a string: accept a plain decimal / exponent string as a number."""
    if isinstance(v, str) and _FLOAT_STRING.match(v.strip()):
        return float(v)
    return v


def _not_bool(v: Any) -> Any:
    if isinstance(v, bool):  # True == 1 would match Literal[1]
        raise ValueError("must be a level 0, 1, 2 or 3, not true/false")
    return v


# A finite number: int or float (not bool, not nan/inf), or the string YAML makes of ``1e-6``.
Float = Annotated[float, BeforeValidator(_yaml_float)]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
Name = Annotated[str, StringConstraints(pattern=_NAME_PATTERN)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
Level = Annotated[Literal[0, 1, 2, 3], BeforeValidator(_not_bool)]


class _Section(BaseModel):
    # strict: no bool -> int, "8" -> int, 1 -> bool or 1 -> "1" coercion (nested sections still take mappings)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------- model / data


def _is_active(info: ValidationInfo) -> bool:
    """Validating the active profile (or plain params), not another profile of the file."""
    return not (isinstance(info.context, dict) and not info.context.get("check_paths", True))


def _missing(path: str, info: ValidationInfo, folder: bool = False) -> str | None:
    """An error message when ``path`` (relative to the project root) does not exist, else None.

    Skipped while validating a profile that is not the active one: its files may live only on the machines
    that run it."""
    if isinstance(info.context, dict) and not info.context.get("check_paths", True):
        return None
    p = Path(path)
    if folder and not p.is_dir():
        return f"{path!r} is not a folder (paths are relative to the project root)"
    if not p.exists():
        return f"{path!r} does not exist (paths are relative to the project root)"
    return None


class ModelParams(_Section):
    source: Literal["smollm2_gguf", "hub", "local"] = "smollm2_gguf"
    name: NonEmptyStr = "HuggingFaceTB/SmolLM2-135M-Instruct"
    revision: NonEmptyStr | None = None
    save_dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @field_validator("name")
    @classmethod
    def _local_folder_exists(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("source") == "local" and (err := _missing(v, info, folder=True)):
            raise ValueError(f"source 'local' needs a Hugging Face model folder here; {err}")
        return v


class TrainDataParams(_Section):
    source: Literal["synthetic", "openr1_46k", "openr1_220k", "local"] = "synthetic"
    # A local parquet/jsonl file (or a folder: a local copy of the hub dataset) read instead of the hub.
    path: NonEmptyStr | None = Field(default=None, validate_default=True)
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
        if v and (err := _missing(v, info)):
            raise ValueError(err)
        return v


class DemoDataParams(_Section):
    source: Literal["synthetic", "math_hub", "local", "pkl"] = "synthetic"
    path: NonEmptyStr | None = Field(default=None, validate_default=True)
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
        if v and (err := _missing(v, info)):
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


def _non_empty_unique(v: list[Any], empty: str, duplicate: str) -> list[Any]:
    """``v`` when it has at least one element and no repeats, else a ValueError with the given message."""
    if not v:
        raise ValueError(empty)
    if len(set(v)) != len(v):
        raise ValueError(duplicate)
    return v


class SyntheticParams(_Section):
    levels: list[Level] = [0, 1]
    train_per_level: int = Field(default=200, gt=0)
    demos_per_level: int = Field(default=100, gt=0)
    eval_per_level: int = Field(default=150, gt=0)
    prompt_suffix: str = " Put your final answer within \\boxed{}."
    # a system turn before every synthetic prompt (training, IEF, the held-out levels); null: none
    system_prompt: NonEmptyStr | None = (
        "Solve the math problem. End your reply with the final answer inside \\boxed{}. "
        "Example: What is 3 + 4? 3 + 4 = 7. The answer is \\boxed{7}."
    )

    @field_validator("levels")
    @classmethod
    def _non_empty_unique(cls, v: list[int]) -> list[int]:
        return _non_empty_unique(v, "needs at least one level", "levels must be unique")


class DataParams(_Section):
    train: TrainDataParams = TrainDataParams()
    demos: DemoDataParams = DemoDataParams()
    synthetic: SyntheticParams = SyntheticParams()


# ------------------------------------------------------------------------------------------------- algorithm


class AlgorithmParams(_Section):
    """ICPO knobs (paper section 3). GRPO is ``n_off == 0``."""

    n_on: int = Field(default=8, ge=2)
    n_off: int = Field(default=4, ge=0)
    k_demos: int = Field(default=1, ge=1)
    demo_format: Literal["chat_turns", "inline", "released"] = "chat_turns"
    errs: bool = True
    delta: Float = 1.0
    reward_shaping: bool = False
    alpha: Float = Field(default=1.0, ge=0)
    gamma: Float = Field(default=0.1, gt=0)
    clip_ratio_low: Float = Field(default=0.2, gt=0, lt=1)
    clip_ratio_high: Float = Field(default=0.2, gt=0)
    clip_ratio_c: Float = Field(default=3.0, gt=1)
    use_kl_loss: bool = True
    kl_coef: Float = Field(default=0.001, ge=0)
    kl_type: Literal["low_var_kl", "kl", "abs", "mse"] = "low_var_kl"
    entropy_coeff: Float = Field(default=0.0, ge=0)
    loss_agg_mode: Literal[
        "token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
    ] = "token-mean"
    norm_adv_by_std: bool = True
    adv_eps: Float = Field(default=1e-6, gt=0)
    released_constant_bonus: bool = False
    released_entropy_bonus: Float = Field(default=0.0, ge=0)
    released_loss_agg: bool = False
    # The method variant: named entries of icpo_core.algorithm.variants, looked up by both engines.
    # off_policy: where the off-policy rows come from (n_off: 0 is always `none`, GRPO): ief (ICPO: the policy
    # with k demos in front) | ief_no_demos (the same rows from the plain prompt) | expert_trace (LUFFY: the
    # row's reference solution). reward: verifier | shuffled | random | format (the controls)
    off_policy: NonEmptyStr = "ief"
    clip_on_policy: bool = True  # false: LUFFY's loss_remove_clip (plain ratio on on-policy tokens)
    reward: NonEmptyStr = "verifier"
    random_reward_p: Float = Field(default=0.5, ge=0, le=1)
    # the training grader's think-block rule (both engines): none (the answer after the last </think>, if any) |
    # luffy (LUFFY's released reward_impl_version 3: no </think> = wrong; the answer after the first </think>)
    think_format: Literal["none", "luffy"] = "none"

    @model_validator(mode="after")
    def _check(self) -> AlgorithmParams:
        if self.n_off > self.n_on:
            raise ValueError(
                f"n_off ({self.n_off}) > n_on ({self.n_on}): accepted IEF trajectories replace on-policy ones, "
                "so n_off must be <= n_on"
            )
        problem = variants.check(self)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def method(self) -> str:
        """The ``icpo.method`` tag MLflow groups runs by (:func:`~icpo_core.algorithm.variants.method_name`)."""
        return variants.method_name(self)


# ------------------------------------------------------------------------------------------------- training


class VerlParams(_Section):
    nnodes: int = Field(default=1, ge=1)
    # GPUs per node; more than one (or several nodes, or a paper profile) is a GPU run: `train.device: auto`
    # then stops before launch in a process that sees no CUDA (icpo_core.engines.devices)
    n_gpus_per_node: int = Field(default=1, ge=1)
    tensor_parallel: int = Field(default=1, ge=1)
    gpu_memory_utilization: Float = Field(default=0.8, gt=0, le=1)
    ppo_micro_batch_size_per_gpu: int = Field(default=2, ge=1)
    log_prob_micro_batch_size_per_gpu: int = Field(default=2, ge=1)
    test_freq: int = Field(default=10, ge=-1)
    val_files: list[NonEmptyStr] = []
    # prepare_val writes these (registry names, suites or local files) to data/val/<name>.parquet
    val_benchmarks: list[NonEmptyStr] = ["synthetic_l0"]
    # the released scripts' val_kwargs (docs/method.md): sampled validation, n samples per problem
    val_n: int = Field(default=2, ge=1)
    val_temperature: Float = Field(default=0.6, gt=0)
    val_top_p: Float = Field(default=0.7, gt=0, le=1)
    val_top_k: int = Field(default=50, ge=-1)  # -1 = off
    # FSDP CPU offload of the actor (verl actor.fsdp_config.param_offload / optimizer_offload): placement only,
    # the same numbers. The colocated vLLM takes gpu_memory_utilization of every GPU while it generates, and what
    # the actor keeps on the GPU meanwhile must fit in the rest (docs/method.md, "Memory and disk")
    param_offload: bool = False
    optimizer_offload: bool = False
    extra_overrides: list[NonEmptyStr] = []


class VllmParams(_Section):
    """Knobs of an offline vLLM engine (CPU build or CUDA), set by ``icpo_core.rollout.vllm_engine``."""

    # auto: bfloat16 on CUDA and on CPUs with bf16 instructions, else float32 (vllm_engine.resolve_dtype)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    kv_cache_gib: int = Field(default=2, ge=1)  # CPU: VLLM_CPU_KVCACHE_SPACE (GiB of RAM for the KV cache)
    # CPU: VLLM_CPU_OMP_THREADS_BIND: nobind | auto | core list such as 0-1 (the engine runs in this process)
    threads_bind: str = Field(default="nobind", pattern=r"^(nobind|auto|[0-9][0-9,\-|]*)$")
    enforce_eager: bool = True  # no torch.compile at start-up (compiling costs ~55 s on 2 cores)


class TrainVllmParams(VllmParams):
    # CUDA: share of GPU memory for the colocated engine (the trainer holds the rest)
    gpu_memory_utilization: float = Field(default=0.3, gt=0, le=1)
    # false: one seed per generate call (torch's RNG, as the hf path); true: a generator per request, so a
    # request's samples do not depend on its batch, at 0.6x the CPU engine's tokens/s (docs/benchmarks.md)
    per_request_seeds: bool = False


# The attention and MLP projections of Llama-style models (Llama, Qwen2/3, SmolLM2, Mistral).
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraParams(_Section):
    """LoRA adapters (peft) instead of full fine-tuning: both engines train only the adapters.

    ``alpha / rank`` scales the adapter update (peft's and verl's convention). LoRA usually needs about 10x the
    full fine-tuning learning rate ("LoRA Without Regret"); ``train.lr`` is that rate (docs/method.md).
    """

    enabled: bool = False
    rank: int = Field(default=16, ge=1, le=512)  # 512: the largest rank verl's vLLM rollout takes
    alpha: int = Field(default=32, ge=1)  # an int: verl's model config types lora_alpha as int
    # module names peft matches (the last parts of module paths); [all-linear]: every linear layer but the LM head
    target_modules: list[NonEmptyStr] = Field(default_factory=lambda: list(LORA_TARGETS))
    dropout: Float = Field(default=0.0, ge=0, lt=1)

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        _non_empty_unique(v, "needs at least one module name, or [all-linear]", "module names must be unique")
        if "all-linear" in v and len(v) > 1:
            raise ValueError("all-linear already names every linear layer: list it alone")
        return v

    @property
    def peft_target_modules(self) -> list[str] | str:
        """``target_modules`` as peft and verl take it: the string ``"all-linear"`` or the list of names."""
        return "all-linear" if self.target_modules == ["all-linear"] else list(self.target_modules)

    @property
    def scaling(self) -> float:
        """The factor of the adapter update ``B @ A`` in the merged weight ``W0 + scaling * B @ A``."""
        return self.alpha / self.rank


class TrainParams(_Section):
    engine: Literal["local", "verl"] = "local"
    rollout_backend: Literal["vllm", "hf"] = "vllm"  # local engine: who generates the rollouts
    vllm: TrainVllmParams = TrainVllmParams()
    steps: int = Field(default=8, ge=1)
    prompts_per_step: int = Field(default=2, ge=1)
    ppo_mini_batch_prompts: int = Field(default=1, ge=1)
    micro_batch_size: int = Field(default=8, ge=1)
    lr: Float = Field(default=2e-5, gt=0)
    weight_decay: Float = Field(default=0.01, ge=0)
    grad_clip: Float = Field(default=1.0, gt=0)
    max_prompt_length: int = Field(default=512, gt=0)
    max_response_length: int = Field(default=64, gt=0)
    temperature: Float = Field(default=1.0, gt=0)
    top_p: Float = Field(default=1.0, gt=0, le=1)
    save_freq: int = Field(default=4, ge=1)
    # deterministic kernels: verl's full_determinism (actor, reference, vLLM: batch-invariant kernels, per-request
    # seeds) / the local engine's torch.use_deterministic_algorithms; slower (docs/method.md, "Determinism")
    deterministic: bool = False
    # checkpoints kept per run (verl trainer.max_actor_ckpt_to_keep); the last one of a finished run has no
    # optimizer state (local engine: nothing resumes from it). The old key max_ckpt_to_keep is read as this one.
    keep_checkpoints: int = Field(default=1, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # local engine: the trainer's forward/backward precision (fp32 master weights and AdamW state either way).
    # auto: bf16 autocast on CUDA, fp32 on CPU; bfloat16: autocast on CPU too; float32: never
    autocast: Literal["auto", "bfloat16", "float32"] = "auto"
    # local engine: the math-verify grader of the rollouts (worker processes, seconds per response)
    grade_workers: int = Field(default=2, ge=1)
    grade_timeout_s: Float = Field(default=5.0, gt=0)
    lora: LoraParams = LoraParams()
    verl: VerlParams = VerlParams()

    @model_validator(mode="before")
    @classmethod
    def _old_keep_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_ckpt_to_keep" in data:
            if "keep_checkpoints" in data:
                raise ValueError(
                    "train.max_ckpt_to_keep is the old name of train.keep_checkpoints: set only one"
                )
            data = {("keep_checkpoints" if k == "max_ckpt_to_keep" else k): v for k, v in data.items()}
        return data

    @property
    def max_ckpt_to_keep(self) -> int:
        """verl's name of :attr:`keep_checkpoints`."""
        return self.keep_checkpoints

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
    # avg: the held-out benchmark average (unweighted mean over the benchmarks), in points; or one benchmark name
    measure: NonEmptyStr = "avg"
    alpha: Float = Field(default=0.05, gt=0, lt=1)
    power: Float = Field(default=0.8, gt=0, lt=1)

    @field_validator("comparisons")
    @classmethod
    def _non_empty(cls, v: list[list[str]]) -> list[list[str]]:
        if not v:
            raise ValueError("needs at least one comparison [a, b]")
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


class TrackingParams(_Section):
    experiment: NonEmptyStr = "icpo-repro"
    tracking_uri: NonEmptyStr | None = None


# ---------------------------------------------------------------------------------------------------- root

# params.yaml `runs` (its comments say what each run is)
DEFAULT_RUNS: dict[str, dict[str, Any]] = {
    "grpo": {"n_off": 0},
    "icpo": {},
    "icpo_no_demos": {"off_policy": "ief_no_demos"},
    "grpo_compute_matched": {"n_off": 0, "n_on": 12},
    "icpo_rs": {"reward_shaping": True},
    "icpo_no_errs": {"errs": False},
    "icpo_released": {
        "errs": False,
        "demo_format": "released",
        "reward_shaping": True,
        "off_policy": "ief_no_demos",
        "released_constant_bonus": True,
        "released_entropy_bonus": 0.001,
        "released_loss_agg": True,
    },
    # the released code's GRPO (stock verl 0.5): its loss averaging; no entropy bonus, no demos (n_off 0)
    "grpo_released": {"n_off": 0, "released_loss_agg": True},
    "luffy": {
        "n_off": 1,
        "off_policy": "expert_trace",
        "errs": False,
        "norm_adv_by_std": False,
        "clip_on_policy": False,
    },
    "grpo_shuffled_reward": {"n_off": 0, "reward": "shuffled"},
    "grpo_random_reward": {"n_off": 0, "reward": "random"},
    "grpo_format_reward": {"n_off": 0, "reward": "format"},
}


class Params(_Section):
    profile: NonEmptyStr = "embedded"
    seed: int = Field(
        default=0, ge=0, le=SEED_MAX
    )  # data: synthetic problems and splits, fixed across the study
    seeds: list[Seed] = [
        0,
        1,
        2,
        3,
    ]  # training seeds of the study: data order, demo draws, sampling, new weights
    study: StudyParams = StudyParams()
    model: ModelParams = ModelParams()
    data: DataParams = DataParams()
    algorithm: AlgorithmParams = AlgorithmParams()
    train: TrainParams = TrainParams()
    runs: dict[Name, dict[str, Any]] = Field(default_factory=lambda: copy.deepcopy(DEFAULT_RUNS))
    bench: BenchParams = BenchParams()
    report: ReportParams = ReportParams()
    tracking: TrackingParams = TrackingParams()
    profiles: dict[Name, dict[str, Any]] = {}

    @model_validator(mode="after")
    def _check_runs(self, info: ValidationInfo) -> Params:
        # Root-level messages name their own key paths (see _format_validation).
        for name, overrides in self.runs.items():
            if name == "base":
                raise ValueError("runs.base: 'base' is reserved for the untrained base model; rename the run")
            try:
                algo = AlgorithmParams.model_validate({**self.algorithm.model_dump(), **overrides})
            except ValidationError as e:
                raise ValueError(_format_validation(e, prefix=f"runs.{name}")) from None
            if (
                self.train.engine == "verl"
                and algo.demo_format == "released"
                and variants.off_policy_source(algo).with_demos
            ):
                raise ValueError(
                    f"runs.{name}.demo_format: 'released' is a raw prompt string without chat template, which "
                    "verl's agent loop cannot send (it chat-templates raw_prompt); use chat_turns or inline with "
                    "train.engine: verl, or the local engine"
                )
        if "runs" in self.study.model_fields_set and not self.study.runs:
            raise ValueError(
                "study.runs: at least one run of `runs` (dvc.yaml trains each at every seed) (got [])"
            )
        for key, names in (("study.runs", self.study.runs), ("study.ablations", self.study.ablations)):
            for name in names:
                if name not in self.runs:
                    raise ValueError(f"{key} names '{name}', which is not in runs: {sorted(self.runs)}")
        overlap = set(self.study.runs) & set(self.study.ablations)
        # an inactive profile that sets its own study.runs meets the top-level ablations of another study (the
        # README's `-S 'study.ablations=[icpo_rs]'` beside the paper profiles' icpo_rs): only the study DVC
        # expands, the active profile's, must list each run once
        if overlap and _is_active(info):
            raise ValueError(f"study.ablations repeats study.runs {sorted(overlap)}: list each run once")
        for i, name in enumerate(self.report.runs):
            if name != "base" and name not in self.runs:
                raise ValueError(
                    f"report.runs[{i}]: 'base' or a name from runs {sorted(self.runs)} (got {name!r})"
                )
        if self.report.baseline is not None and self.report.baseline not in self.runs:
            raise ValueError(
                f"report.baseline: a name from runs {sorted(self.runs)} (got {self.report.baseline!r})"
            )
        for i, pair in enumerate(self.study.primary.comparisons if self.study.primary else []):
            for name in pair:
                if name not in self.study.runs:
                    raise ValueError(
                        f"study.primary.comparisons[{i}]: {name!r} is not in study.runs {self.study.runs} (a "
                        "primary comparison needs both runs at every seed of `seeds`; add it there or change the "
                        "comparison, or set study.primary: null)"
                    )
        return self

    @field_validator("seeds")
    @classmethod
    def _seeds_ok(cls, v: list[int]) -> list[int]:
        return _check_seeds(v)

    def with_seed(self, seed: int) -> Params:
        """These params with the training seed ``seed`` (one instance of the study)."""
        if not 0 <= seed <= SEED_MAX:
            raise ParamsError(f"--seed: must be an integer in 0 .. {SEED_MAX} (got {seed})")
        return self.model_copy(update={"seed": seed})

    @property
    def train_prompt_suffix(self) -> str:
        """The suffix the training prompts carry (IEF demo problems get the same one): ``data.synthetic``'s for
        the synthetic set, else ``data.train``'s."""
        if self.data.train.source == "synthetic":
            return self.data.synthetic.prompt_suffix
        return self.data.train.prompt_suffix

    def run_algorithm(self, run: str) -> AlgorithmParams:
        """The algorithm params of one run: ``algorithm`` with ``runs.<run>`` applied."""
        if run not in self.runs:
            raise ParamsError(f"unknown run '{run}': params.yaml runs has {sorted(self.runs)}")
        return AlgorithmParams.model_validate({**self.algorithm.model_dump(), **self.runs[run]})


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


def _got(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key_path(parts: tuple[Any, ...]) -> str:
    """``("train", "verl", "val_files", 0)`` -> ``train.verl.val_files[0]``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# pydantic's wording -> ours: "Input should be ..." reads as "must be ..."
_MESSAGES = {
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "string_too_short": "must be a non-empty string",
    "bool_type": "must be true or false",
    "finite_number": "must be a finite number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "extra_forbidden": "unknown key (check the spelling; see params.yaml for the allowed keys)",
}


def _loc(e: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(p for p in e["loc"] if not str(p).startswith("function-"))


def _format_error(e: Mapping[str, Any], prefix: str = "") -> str:
    """``key.path: what is allowed (got value)`` for one pydantic error."""
    parts = _loc(e)
    is_key = bool(parts) and parts[-1] == "[key]"  # a mapping key (not its value) is wrong: name the mapping
    parts = parts[:-2] if is_key else parts
    key = ".".join(p for p in (prefix, _key_path(parts)) if p)
    kind = e["type"]
    msg = _MESSAGES.get(kind, e["msg"].removeprefix("Value error, "))
    if msg.startswith("Input should"):
        msg = "must" + msg.removeprefix("Input should")
    if kind == "string_pattern_mismatch":
        msg = "must be a name of letters, digits, '_', '.' or '-' (starting with a letter or digit)"
    if is_key:
        msg = f"keys {msg}"
    if not parts and kind == "value_error":
        return f"{prefix}: {msg}" if prefix else msg  # root validators name their own key paths
    model_check = kind == "value_error" and isinstance(e.get("input"), dict)  # its message has the values
    if "input" in e and kind != "extra_forbidden" and not model_check:
        msg = f"{msg} (got {_got(e['input'])})"
    return f"{key or '<root>'}: {msg}"


def _format_validation(err: ValidationError, prefix: str = "") -> str:
    """One line for all errors: ``key.path: what is allowed (got value)``, joined by ``; ``."""
    return "; ".join(_format_error(e, prefix) for e in err.errors())


def _profiles(raw: Mapping[str, Any]) -> tuple[str, dict[str, dict[str, Any]]]:
    """The active profile's name and every profile's overrides, with their shapes checked."""
    profiles = raw.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ParamsError(f"profiles: must be a mapping of profile name -> overrides (got {_got(profiles)})")
    for name, overrides in profiles.items():
        if not isinstance(name, str) or not re.match(_NAME_PATTERN, name):
            raise ParamsError(
                f"profiles: profile names must be names of letters, digits, '_', '.' or '-' (got {_got(name)})"
            )
        if not isinstance(overrides, dict):
            raise ParamsError(
                f"profiles.{name}: must be a mapping of overrides ({{}} for none) (got {_got(overrides)})"
            )
        if "profiles" in overrides or "profile" in overrides:
            raise ParamsError(f"profiles.{name}: a profile cannot set 'profile' or 'profiles'")
    allowed = sorted({*profiles, "embedded"})
    name = raw.get("profile", "embedded")
    if not isinstance(name, str):
        raise ParamsError(f"profile: must be a profile name, one of {allowed} (got {_got(name)})")
    if name not in allowed:
        raise ParamsError(f"profile: unknown profile; must be one of {allowed} (got {name!r})")
    return name, profiles


def resolve(raw: dict[str, Any]) -> dict[str, Any]:
    """Apply the active profile (``raw['profile']``) over the base sections; raises :class:`ParamsError`."""
    name, profiles = _profiles(raw)
    return deep_merge(raw, profiles.get(name, {}))


def _in_overrides(overrides: Mapping[str, Any], parts: tuple[Any, ...]) -> bool:
    node: Any = overrides
    for p in parts:
        if isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node):
            node = node[p]
            continue
        if not isinstance(node, Mapping) or p not in node:
            return False
        node = node[p]
    return True


_ROOT_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\-]*(?:\[\d+\])*): ")


def _root_message_key(e: Mapping[str, Any]) -> str | None:
    """The key path a root validator's message starts with (``study.runs: ...``), else None."""
    if e["type"] != "value_error":
        return None
    m = _ROOT_KEY.match(e["msg"].removeprefix("Value error, "))
    return m.group(1) if m else None


def _key_parts(key: str) -> tuple[Any, ...]:
    """``study.primary.comparisons[0]`` -> ``("study", "primary", "comparisons", 0)``."""
    out: list[Any] = []
    for part in key.split("."):
        name, *idx = part.replace("]", "").split("[")
        out += [name, *(int(i) for i in idx)]
    return tuple(out)


def _validate_profile(raw: dict[str, Any], name: str, overrides: dict[str, Any], active: bool) -> Params:
    """Validate the base sections with profile ``name`` applied.

    A bad value the profile sets is reported as ``profiles.<name>.<key path>``; so is a cross-field check that
    fails in a section an inactive profile touches (the base sections pass alone). Other errors keep their plain
    key path, noting the profile."""
    merged = deep_merge({**raw, "profile": name}, overrides)

    def set_by_profile(parts: tuple[Any, ...]) -> bool:
        return bool(parts) and (
            _in_overrides(overrides, parts) or (not active and _in_overrides(overrides, parts[:1]))
        )

    try:
        return Params.model_validate(merged, context={"check_paths": active})
    except ValidationError as err:
        lines = []
        for e in err.errors():
            parts = tuple(p for p in _loc(e) if p != "[key]")
            root_key = _root_message_key(e) if not parts else None
            if set_by_profile(parts):
                lines.append(_format_error(e, prefix=f"profiles.{name}"))
            elif root_key and set_by_profile(_key_parts(root_key)):
                # a cross-field check names its own key path: one the profile sets is the profile's
                lines.append(f"profiles.{name}.{_format_error(e)}")
            elif overrides:
                lines.append(f"with profile {name!r}: {_format_error(e)}")
            else:
                lines.append(_format_error(e))
        raise ParamsError("; ".join(lines)) from None


def parse_params(raw: dict[str, Any], source: str = PARAMS_FILE) -> Params:
    """Validate an already-loaded params mapping: the active profile (returned) and every other profile."""
    try:
        if not isinstance(raw, dict):
            raise ParamsError(f"top level must be a mapping (got {_got(raw)})")
        for key in raw:
            if not isinstance(key, str):
                raise ParamsError(f"{_got(key)}: keys must be strings (got {_got(key)})")
        active, profiles = _profiles(raw)
        params = _validate_profile(raw, active, profiles.get(active, {}), active=True)
        for name in sorted({*profiles, "embedded"} - {active}):
            _validate_profile(raw, name, profiles.get(name, {}), active=False)
    except ParamsError as e:
        raise ParamsError(f"{source}: {e}") from None
    return params


def read_raw(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """``params.yaml`` as loaded, before any profile is applied; raises :class:`ParamsError`."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run from the project root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ParamsError(f"{path}: not valid YAML{where}: {' '.join(str(problem).split())}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ParamsError(f"{path}: cannot be read: {e}") from None
    return {} if raw is None else raw


def apply_sets(raw: Any, sets: list[str] | None, source: str = PARAMS_FILE) -> Any:
    """``raw`` with ``KEY=VALUE`` overrides applied (``icpo -S train.device=cpu``, as ``dvc exp run -S`` writes
    them into params.yaml): the dotted key is set in the base sections (a profile still deep-merges over it), the
    value read as YAML. Raises :class:`ParamsError` for a malformed entry."""
    if not sets:
        return raw
    out = copy.deepcopy(raw) if isinstance(raw, dict) else {}
    for entry in sets:
        key, eq, text = entry.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z0-9_.-]+", key) or ".." in key or key.strip(".") != key:
            raise ParamsError(
                f"{source}: -S {entry!r}: expected KEY=VALUE with a dotted key, e.g. train.device=cpu"
            )
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            raise ParamsError(f"{source}: -S {entry!r}: the value is not valid YAML") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def load_params(path: str | Path = PARAMS_FILE, sets: list[str] | None = None) -> Params:
    """Read, resolve and validate ``params.yaml`` (``sets``: :func:`apply_sets` overrides first); raises
    :class:`ParamsError` on any problem."""
    return parse_params(apply_sets(read_raw(path), sets, str(path)), source=str(path))


# ------------------------------------------------------------------------------------------- paper profiles

PAPER_PROFILE_PREFIX = "paper_"
# The keys dvc.yaml expands its train@ / merge@ / bench@ stages from (`${study.runs}`, `${seeds}`, ...).
STUDY_MATRIX_KEYS = ("seeds", "study.runs", "study.ablations", "study.ablation_seeds")


def is_paper_profile(name: str) -> bool:
    """A profile that reproduces the paper's experiment (``paper_*``): a GPU study with the paper's arms."""
    return name.startswith(PAPER_PROFILE_PREFIX)


def _dotted(node: Any, key: str) -> Any:
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _matrix(values: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`STUDY_MATRIX_KEYS` of a params mapping (resolved, or params.yaml as DVC reads it: unset keys take
    the typed defaults)."""
    defaults = StudyParams().model_dump()
    out = {}
    for key in STUDY_MATRIX_KEYS:
        value = _dotted(values, key)
        if value is None:
            value = (
                Params.model_fields["seeds"].default
                if key == "seeds"
                else defaults[key.removeprefix("study.")]
            )
        out[key] = value
    return out


def _stages(m: Mapping[str, Any]) -> set[str]:
    """The train stages dvc.yaml expands from these values (merge@ / bench@ follow them)."""
    return {f"train@{r}-{s}" for r in m["study.runs"] for s in m["seeds"]} | {
        f"train_ablation@{r}-{s}" for r in m["study.ablations"] for s in m["study.ablation_seeds"]
    }


def _flag(value: Any) -> str:
    return "[" + ",".join(str(v) for v in value) + "]"


def study_command(params: Params, raw: Mapping[str, Any] | None = None) -> str:
    """The ``dvc exp run`` line that trains ``params``' study: its profile, and the top-level study keys DVC expands
    set to the profile's values (those that differ from ``raw``, params.yaml as it is; all of them without it),
    with ``study.primary=null`` when the top-level primary comparison would name runs outside them (the profile
    keeps its own)."""
    want = _matrix(params.model_dump())
    have = _matrix(raw) if raw is not None else {k: None for k in STUDY_MATRIX_KEYS}
    flags = [f"-S profile={params.profile}"]
    for key in STUDY_MATRIX_KEYS:
        if key == "study.ablation_seeds" and not want["study.ablations"]:
            continue  # no ablation stage either way
        if have[key] != want[key]:
            flags.append(f"-S '{key}={_flag(want[key])}'")
    top = (raw or {}).get("study") or {}
    primary = top.get("primary") if "primary" in top else PrimaryParams().model_dump()
    named = {r for pair in (primary or {}).get("comparisons") or [] for r in pair}
    if not named <= set(want["study.runs"]):
        flags.append("-S study.primary=null")
    return "dvc exp run " + " ".join(flags)


def dvc_study_problem(raw: dict[str, Any], params: Params) -> str | None:
    """Why DVC would expand other stages than the active profile's study, or None.

    DVC's templating reads ``${study.runs}`` and ``${seeds}`` from params.yaml's top level, before any stage runs;
    it cannot see a profile's deep merge. A profile that sets its own study (the paper profiles: their arms at one
    seed) therefore needs the same values at the top level, which ``dvc exp run -S`` writes (:func:`study_command`)."""
    want, have = _matrix(params.model_dump()), _matrix(raw)
    if _stages(want) == _stages(have):
        return None
    differ = [k for k in STUDY_MATRIX_KEYS if want[k] != have[k]]
    shown = ", ".join(f"{k} {want[k]} (dvc.yaml expands {have[k]})" for k in differ)
    return (
        f"profile {params.profile!r} trains {shown}: dvc.yaml expands its train@/merge@/bench@ stages from "
        "params.yaml's top-level keys, which a profile cannot reach. Run the profile's study with: "
        f"{study_command(params, raw)} (to change a value the profile sets, set profiles.{params.profile}.<key>)"
    )
