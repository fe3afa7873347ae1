"""The params sections of the run itself: model, data, algorithm (the method) and training (both engines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from icpo_core.algorithm import variants
from icpo_core.config.types import (
    Float,
    Level,
    NonEmptyStr,
    _Section,
)

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
    # the demo cache (data.demos.source: synthetic): disjoint = another distribution than the items (other
    # phrasings and contexts, MATH-style LaTeX solutions; icpo_core.data.synthetic); same = the items' generator
    demo_style: Literal["disjoint", "same"] = "same"
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
