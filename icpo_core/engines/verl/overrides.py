"""params.yaml -> the hydra overrides of one verl run: ``override_list(params, run)``, a pure mapping.

Every run (GRPO and ICPO alike) composes config/icpo_trainer.yaml with these overrides; GRPO is ``n_off: 0``,
where the ICPO manager passes generation through, and the project's loss (installed for every run, see
:mod:`.trainer`) is GRPO's clipped PPO loss. For the paper profiles the resolved values equal the released
scripts' (docs/method.md, "Paper-scale settings"; tests/engines/verl checks them on the composed hydra config).

No side effects here: nothing is started, written or logged (:mod:`.job` does that). The machine is only
read (:func:`on_cpu`, :func:`flash_attn_available`). The ``icpo`` block's keys come from :mod:`.icpo_block`
(every :class:`~icpo_core.config.AlgorithmParams` field), which also reads them back, typed, on the verl side.

No verl / torch import here: ``icpo verl-cmd`` prints instantly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from icpo_core import paths
from icpo_core.algorithm import off_policy_source
from icpo_core.algorithm.losses import effective_entropy_coeff
from icpo_core.bench.registry import val_parquet_paths
from icpo_core.config import Params, ParamsError
from icpo_core.engines import devices
from icpo_core.engines.verl import preflight
from icpo_core.engines.verl.expert_traces import expert_trace_train_path
from icpo_core.engines.verl.icpo_block import icpo_overrides
from icpo_core.engines.verl.metrics import LOG_PATH_ENV, METRICS_DIR_ENV
from icpo_core.tracking import WANDB_ENV_KEYS

_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")  # hydra-safe unquoted values (identifiers, dotted names)
VERL_ADV_EPS = 1e-6  # the epsilon verl's advantage estimators always run with
MANAGER_FQN = "icpo_core.engines.verl.manager.ICPOAgentLoopManager"
REWARD_PATH = "pkg://icpo_core.engines.verl.reward"

# Settings of the official code's launch scripts that params.yaml does not expose (docs/method.md, "Paper-scale
# settings").
RELEASED_FIXED = {
    "actor_rollout_ref.rollout.top_k": -1,
    "actor_rollout_ref.rollout.enforce_eager": True,
    "actor_rollout_ref.rollout.val_kwargs.do_sample": True,
    "actor_rollout_ref.model.use_remove_padding": True,
    "actor_rollout_ref.model.enable_gradient_checkpointing": True,
    "actor_rollout_ref.actor.optim.lr_scheduler_type": "constant",
    "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio": 0.0,
    "actor_rollout_ref.actor.ppo_epochs": 1,
    "actor_rollout_ref.actor.use_dynamic_bsz": False,
    "actor_rollout_ref.ref.fsdp_config.param_offload": True,
    "algorithm.use_kl_in_reward": False,
    "data.filter_overlong_prompts": True,
    "data.truncation": "error",
    "data.shuffle": True,
    "trainer.critic_warmup": 0,
}
# The released scripts ran verl 0.5's FSDP1; the ICPO loss is tested on FSDP2 (the CPU tests, world sizes 1 and
# 2), and FSDP1's sync_module_states cannot run on a CPU, so every verl run uses FSDP2 (the reference follows;
# docs/method.md lists it with the other differences from the released code).
STRATEGY = {"actor_rollout_ref.actor.strategy": "fsdp2"}


def _fmt(value: Any) -> str:
    """A value in hydra override syntax (strings quoted so spaces, quotes and backslashes survive)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_fmt(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    # hydra quoted string: a backslash run is literal unless it precedes a quote or the closing quote,
    # where it is doubled; then quotes are escaped
    text = re.sub(r'(\\+)(?="|$)', lambda m: m.group(1) * 2, text)
    text = text.replace('"', '\\"').replace("${", "\\${")  # no interpolation
    return '"' + text + '"'


_FP32 = {"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
CPU_RAY_CPUS = 16  # logical CPUs of the local Ray cluster: scheduling slots, not cores (cpu_overrides)
# the weight push's shared-memory bucket (verl's default 2 GB; /dev/shm is small in CI)
CPU_WEIGHT_BUCKET_MB = 256


def on_cpu(params: Params) -> bool:
    """True when verl runs without an accelerator: ``train.device: cpu``, or ``auto`` without CUDA for a run that
    asks for no GPUs (the embedded default). A run that asks for GPUs (a paper profile, several GPUs) and sees
    no CUDA raises :class:`~icpo_core.errors.UserError` naming the cause (:func:`.devices.resolve_device`):
    there is no silent CPU path on a GPU node. ``train.device: cuda`` is the GPU path without a look at the
    machine (the command is printed for another node; the launch checks it there)."""
    if params.train.device == "cuda":
        return False
    return devices.resolve_device(params) == "cpu"


def determinism_overrides(params: Params) -> dict[str, Any]:
    """The run's seed in verl's own seeding, and ``train.deterministic`` as verl's ``full_determinism``.

    ``rollout.seed`` seeds vLLM's sampling (the engine's seed is the replica rank + it; verl's default 42 would give
    every study seed the same rollout stream) and the actor's / reference's ``fsdp_config.seed`` seeds
    ``enable_full_determinism``. With ``train.deterministic`` verl sets ``full_determinism`` on the actor and the
    reference (deterministic torch / cuBLAS / NCCL / flash-attn kernels) and on the rollout (vLLM's
    batch-invariant kernels, per-request seeds, deterministic request routing)."""
    ar = "actor_rollout_ref"
    det = params.train.deterministic
    return {
        f"{ar}.rollout.seed": params.seed,
        f"{ar}.rollout.full_determinism": det,
        f"{ar}.actor.fsdp_config.seed": params.seed,
        f"{ar}.actor.fsdp_config.full_determinism": det,
        f"{ar}.ref.fsdp_config.seed": params.seed,
        f"{ar}.ref.fsdp_config.full_determinism": det,
    }


def cpu_overrides(params: Params, prompt_len: int) -> dict[str, Any]:
    """The hydra keys that let verl's whole loop run on a CPU (none of them is set on a GPU machine).

    Each answers one verl default that needs an accelerator (docs/gpu_smoke.md names the calls): FSDP2 (FSDP1's
    ``sync_module_states`` needs a device), SDPA attention and no packed sequences (flash-attn), fp32 (the
    reference and the mixed-precision defaults are bf16, and these CPUs have no bf16 instructions), no
    ``torch.compile`` of the entropy kernel, no vLLM sleep mode / cache freeing (vLLM-CPU has no sleep mode),
    a 256 MB weight bucket in /dev/shm instead of 2 GB, one agent-loop and one reward worker, one rank on one
    "node" of logical Ray CPUs (the CPU resource pools of ``cpu_shims``).
    """
    t = params.train
    ar = "actor_rollout_ref"
    return {
        "trainer.device": "cpu",
        "trainer.nnodes": 1,
        "trainer.n_gpus_per_node": 1,
        "+ray_kwargs.ray_init.num_cpus": CPU_RAY_CPUS,
        f"{ar}.actor.strategy": "fsdp2",
        f"{ar}.ref.strategy": "fsdp2",
        f"+{ar}.model.override_config.attn_implementation": "sdpa",
        f"{ar}.model.use_remove_padding": False,
        f"{ar}.model.enable_gradient_checkpointing": False,
        f"+{ar}.actor.fsdp_config.mixed_precision": _FP32,
        f"+{ar}.ref.fsdp_config.mixed_precision": _FP32,
        f"{ar}.ref.fsdp_config.model_dtype": "fp32",
        f"{ar}.actor.use_torch_compile": False,
        f"{ar}.actor.fsdp_config.use_torch_compile": False,
        f"{ar}.ref.fsdp_config.use_torch_compile": False,
        f"{ar}.rollout.tensor_model_parallel_size": 1,
        f"+{ar}.rollout.enable_sleep_mode": False,
        f"{ar}.rollout.free_cache_engine": False,
        f"{ar}.rollout.dtype": "float32",
        f"{ar}.rollout.enforce_eager": True,
        f"{ar}.rollout.enable_chunked_prefill": False,
        f"{ar}.rollout.max_model_len": prompt_len + t.max_response_length,
        # vLLM: the token budget must cover max_num_seqs (256); tiny prompts would go under it
        f"{ar}.rollout.max_num_batched_tokens": max(prompt_len + t.max_response_length, 512),
        f"{ar}.rollout.checkpoint_engine.update_weights_bucket_megabytes": CPU_WEIGHT_BUCKET_MB,
        f"{ar}.rollout.agent.num_workers": 1,
        "reward.num_workers": 1,
    }


# verl's model config defaults attn_implementation to flash_attention_2, and use_remove_padding (released: true)
# packs sequences for flash-attn's varlen kernel; without flash-attn both fail at the first forward.
SDPA_FALLBACK = {
    "+actor_rollout_ref.model.override_config.attn_implementation": "sdpa",
    "actor_rollout_ref.model.use_remove_padding": False,
}


def flash_attn_available() -> bool:
    """Whether the ``flash_attn`` package is importable (found, not imported: no torch / CUDA start-up here)."""
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def _abs(path: str | Path, root: Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else (root / p).resolve())


def verl_overrides(
    params: Params,
    run: str,
    root: str | Path = ".",
    env: Mapping[str, str] | None = None,
    instance: str | None = None,
) -> dict[str, Any]:
    """Every hydra key -> value of one run, in order (``runs.<run>`` applied over ``algorithm``).

    ``env`` is the launch environment (:func:`.job.launch_env`). With ``train.verl.nnodes > 1`` the driver joins a
    running cluster (``ray_init.address=auto``) and the TaskRunner gets the raylet's environment, not the
    launcher's, so these variables also go through ``ray_init.runtime_env.env_vars`` (verl merges that into
    every actor's runtime env). The paths in them must then be on a filesystem every node shares.
    """
    root = Path(root).resolve()
    name = instance or run  # the study instance <run>_s<seed> names the outputs
    algo = params.run_algorithm(run)
    if algo.adv_eps != VERL_ADV_EPS:
        # verl's compute_advantage never passes an epsilon to the estimator; refuse rather than ignore the knob
        raise ParamsError(
            f"runs.{run}: algorithm.adv_eps must be {VERL_ADV_EPS} with train.engine verl (got {algo.adv_eps})"
        )
    t, v = params.train, params.train.verl
    icpo = algo.n_off > 0  # ICPO and LUFFY: off-policy rows, the project's estimator name and loss
    prompt_len = preflight.ief_prompt_length(params, algo)
    # the prepare_val stage's benchmarks (data/val/<name>.parquet), then any extra parquet files
    val_files = [_abs(f, root) for f in [*val_parquet_paths(params), *v.val_files]]
    ov: dict[str, Any] = {
        "algorithm.adv_estimator": "icpo" if icpo else "grpo",
        "algorithm.norm_adv_by_std_in_grpo": algo.norm_adv_by_std,
        # LUFFY: the training parquet without rows lacking a target, written at launch (job.prepare_train_file)
        "data.train_files": [_abs(train_file(params, run, name), root)],
        # verl always builds a validation set; with no val_benchmarks / val_files it reads a tiny stand-in (the
        # train file) and never validates
        "data.val_files": val_files or [_abs(paths.TRAIN_PARQUET, root)],
        "data.val_max_samples": -1 if val_files else 8,  # the stand-in val set is never used: keep it tiny
        "data.train_batch_size": t.prompts_per_step,
        "data.max_prompt_length": t.max_prompt_length,
        "data.max_response_length": t.max_response_length,
        "data.seed": params.seed,
        "actor_rollout_ref.model.path": _abs(paths.BASE_MODEL_DIR, root),
        "actor_rollout_ref.actor.optim.lr": t.lr,
        "actor_rollout_ref.actor.optim.weight_decay": t.weight_decay,
        # verl 0.9.1's FSDP engine clips with optim.clip_grad (actor.grad_clip is read by no 0.9.1 worker)
        "actor_rollout_ref.actor.optim.clip_grad": t.grad_clip,
        "actor_rollout_ref.actor.ppo_mini_batch_size": t.ppo_mini_batch_prompts,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": v.ppo_micro_batch_size_per_gpu,
        # the actor's FSDP CPU offload (released: both off; paper_qwen3_8b offloads the AdamW state)
        "actor_rollout_ref.actor.fsdp_config.param_offload": v.param_offload,
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": v.optimizer_offload,
        "actor_rollout_ref.actor.use_kl_loss": algo.use_kl_loss,
        "actor_rollout_ref.actor.kl_loss_coef": algo.kl_coef,
        "actor_rollout_ref.actor.kl_loss_type": algo.kl_type,
        "actor_rollout_ref.actor.entropy_coeff": effective_entropy_coeff(algo),
        "actor_rollout_ref.actor.clip_ratio_low": algo.clip_ratio_low,
        "actor_rollout_ref.actor.clip_ratio_high": algo.clip_ratio_high,
        "actor_rollout_ref.actor.clip_ratio_c": algo.clip_ratio_c,
        "actor_rollout_ref.actor.loss_agg_mode": algo.loss_agg_mode,
        "actor_rollout_ref.actor.policy_loss.loss_mode": "icpo" if icpo else "vanilla",
        "actor_rollout_ref.rollout.name": "vllm",
        "actor_rollout_ref.rollout.n": algo.n_on,
        "actor_rollout_ref.rollout.prompt_length": prompt_len,
        "actor_rollout_ref.rollout.response_length": t.max_response_length,
        "actor_rollout_ref.rollout.max_num_batched_tokens": prompt_len + t.max_response_length,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": v.tensor_parallel,
        "actor_rollout_ref.rollout.gpu_memory_utilization": v.gpu_memory_utilization,
        "actor_rollout_ref.rollout.temperature": t.temperature,
        "actor_rollout_ref.rollout.top_p": t.top_p,
        "actor_rollout_ref.rollout.val_kwargs.n": v.val_n,
        "actor_rollout_ref.rollout.val_kwargs.temperature": v.val_temperature,
        "actor_rollout_ref.rollout.val_kwargs.top_p": v.val_top_p,
        "actor_rollout_ref.rollout.val_kwargs.top_k": v.val_top_k,
        # IEF rows' rollout log-probs are demo-conditioned: only debug metrics use them; off for both arms
        "actor_rollout_ref.rollout.calculate_log_probs": False,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": v.log_prob_micro_batch_size_per_gpu,
        "actor_rollout_ref.rollout.agent.agent_loop_manager_class": MANAGER_FQN,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": v.log_prob_micro_batch_size_per_gpu,
        "reward.custom_reward_function.path": REWARD_PATH,
        "reward.custom_reward_function.name": "compute_score",
        # the training grader's think-block rule (LUFFY's released reward: think_format luffy), verl passes
        # reward_kwargs to compute_score as keyword arguments
        "+reward.custom_reward_function.reward_kwargs.think_format": algo.think_format,
        "trainer.use_v1": False,
        "trainer.nnodes": v.nnodes,
        "trainer.n_gpus_per_node": v.n_gpus_per_node,
        "trainer.total_training_steps": t.steps,
        "trainer.total_epochs": 1000,  # the step cap ends the run
        "trainer.save_freq": t.save_freq,
        "trainer.max_actor_ckpt_to_keep": t.max_ckpt_to_keep,
        "trainer.test_freq": v.test_freq if val_files else -1,
        "trainer.val_before_train": bool(val_files),
        "trainer.default_local_dir": _abs(paths.checkpoints_dir(name), root),
        "trainer.resume_mode": "auto",
        "trainer.logger": verl_loggers(params),
        "trainer.project_name": params.tracking.experiment,
        "trainer.experiment_name": run,
        **RELEASED_FIXED,
        **STRATEGY,
        **determinism_overrides(params),
        "hydra.run.dir": _abs(paths.run_dir(name) / "hydra", root),
    }
    if on_cpu(params):
        ov.update(cpu_overrides(params, prompt_len))
    elif not flash_attn_available():
        ov.update(SDPA_FALLBACK)
    ov.update(lora_overrides(params))
    ov.update(
        icpo_overrides(
            algo,
            demo_path=_abs(paths.DEMOS_PARQUET, root),
            prompt_suffix=params.train_prompt_suffix,
            seed=params.seed,
        )
    )
    if v.nnodes > 1:
        ov["+ray_kwargs.ray_init.address"] = "auto"  # join the cluster started with `ray start` on every node
        for key, value in ray_env_vars(env or {}).items():
            ov[f"+ray_kwargs.ray_init.runtime_env.env_vars.{key}"] = value
    return ov


def verl_loggers(params: Params) -> list[str]:
    """verl's ``trainer.logger``: the console, ``tracking.loggers`` (mlflow; wandb when listed: verl's own wandb
    logger, configured by :func:`icpo_core.tracking.wandb_env`) and ``file``, verl's step log that
    ``metrics/steps_<run>.jsonl`` is exported from (:mod:`.metrics`): always there, whatever the loggers."""
    return ["console", *(x for x in params.tracking.loggers if x != "file"), "file"]


def supplies_traces(params: Params, run: str) -> bool:
    """The run's off-policy rows come from the data (LUFFY's expert traces), not from generation."""
    algo = params.run_algorithm(run)
    return off_policy_source(algo).supplied_off_per_prompt(algo) > 0


def train_file(params: Params, run: str, name: str) -> Path:
    """verl's ``data.train_files`` (relative): the training parquet, or for LUFFY (``off_policy: expert_trace``)
    its copy without rows lacking a ``target`` (:func:`.expert_traces.expert_trace_train_path`, written by
    :func:`.job.prepare_train_file`)."""
    if supplies_traces(params, run):
        return expert_trace_train_path(name)
    return paths.TRAIN_PARQUET


def lora_overrides(params: Params) -> dict[str, Any]:
    """``train.lora`` as verl 0.9.1's FSDP LoRA keys (none when off: verl's default ``lora_rank: 0``).

    verl then wraps the actor with peft (``lora_rank`` > 0), uses the actor with its adapters disabled as the
    reference policy (``ref_in_actor``: no reference worker weights), and serves the adapters in vLLM.
    ``target_modules`` is a list of names or the string ``all-linear``, the two forms verl's model config takes.
    """
    cfg = params.train.lora
    if not cfg.enabled:
        return {}
    if cfg.dropout:
        # verl builds its LoraConfig without lora_dropout; refuse rather than ignore the knob
        raise ParamsError(f"train.lora.dropout: must be 0.0 with train.engine verl (got {cfg.dropout})")
    return {
        "actor_rollout_ref.model.lora_rank": cfg.rank,
        "actor_rollout_ref.model.lora_alpha": cfg.alpha,
        "actor_rollout_ref.model.target_modules": cfg.peft_target_modules,
    }


def ray_env_vars(env: Mapping[str, str]) -> dict[str, str]:
    """What of the launch env goes through ``ray_init.runtime_env.env_vars`` (multi-node), all stable on resume.

    verl logs its config as MLflow params and drops MLflow for the run when a resume changes one, so the
    per-launch step-log file is not passed; its folder is (``ICPO_VERL_METRICS_DIR``, see :mod:`.metrics`).
    For the same reason the wandb tags go without ``git_commit`` (a resume on a newer commit would change it);
    MLflow's run has it.
    """
    keys = ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI", *WANDB_ENV_KEYS)
    out = {k: str(env[k]) for k in keys if env.get(k)}
    if "WANDB_TAGS" in out:
        out["WANDB_TAGS"] = ",".join(
            t for t in out["WANDB_TAGS"].split(",") if not t.startswith("git_commit=")
        )
    if env.get(LOG_PATH_ENV):
        out[METRICS_DIR_ENV] = str(Path(env[LOG_PATH_ENV]).parent)
    return dict(sorted(out.items()))


def format_overrides(overrides: Mapping[str, Any]) -> list[str]:
    """``key -> value`` as hydra's ``key=value`` command-line overrides (:func:`_fmt` quoting)."""
    return [f"{k}={_fmt(v)}" for k, v in overrides.items()]


def override_list(
    params: Params,
    run: str,
    root: str | Path = ".",
    env: Mapping[str, str] | None = None,
    instance: str | None = None,
) -> list[str]:
    """``key=value`` hydra overrides, ``train.verl.extra_overrides`` appended last (they win)."""
    return format_overrides(verl_overrides(params, run, root, env, instance)) + list(
        params.train.verl.extra_overrides
    )
