"""Prefect tasks that hand work to DVC: one stage (`dvc repro --single-item`), or one experiment (`dvc exp run`).

Prefect's own result caching is off (``NO_CACHE``): DVC's hashes and run cache decide what is stale, and a
Prefect cache keyed on the stage name would skip a stage whose data or params changed. Retries with backoff are
set only for the download stages; GPU stages carry the ``gpu`` tag, whose concurrency limit (one slot, see
``ensure_gpu_limit``) keeps two flows from sharing an accelerator. DVC's repository lock is respected by
``project_lock``: one flow at a time drives DVC in a checkout.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import Task, exponential_backoff

from tasks.planning import DOWNLOAD_STAGES, is_gpu_stage
from tasks.streaming import stream_command

GPU_TAG = "gpu"
DOWNLOAD_RETRIES = 3
DOWNLOAD_BACKOFF_S = 10.0  # 10 s, 20 s, 40 s (+ jitter)


class StageFailed(RuntimeError):
    """A DVC stage (or experiment) exited non-zero; the message carries its last output lines."""


@dataclass(frozen=True)
class StageResult:
    stage: str
    outcome: str  # "ran" | "skipped" (DVC: unchanged) | "restored" (DVC run cache)
    seconds: float


def dvc_executable() -> str:
    """The `dvc` next to this interpreter (a venv's), else the one on PATH."""
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else (shutil.which("dvc") or "dvc")


def _outcome(stage: str, tail: Sequence[str]) -> str:
    text = "\n".join(tail)
    if re.search(rf"'{re.escape(stage)}' didn't change, skipping", text):
        return "skipped"
    if "is cached - skipping run" in text:
        return "restored"
    return "ran"


def _run_streamed(cmd: list[str], what: str, project_dir: str, extra_env: Mapping[str, str] | None):
    logger = get_run_logger()
    logger.info("$ %s", " ".join(cmd))
    env = {**os.environ, **(extra_env or {})}
    # stage commands (`icpo ...`) live next to this interpreter, also when the venv is not activated
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    result = stream_command(cmd, cwd=project_dir, env=env, on_line=lambda line: logger.info("%s", line))
    if not result.ok:
        tail = "\n".join(result.tail[-20:])
        logger.error("%s failed (exit %d); last output lines:\n%s", what, result.returncode, tail)
        raise StageFailed(f"{what} failed with exit code {result.returncode}; last output lines:\n{tail}")
    return result


@task(name="dvc-stage", task_run_name="{stage}", cache_policy=NO_CACHE, tags=["dvc"])
def run_stage(
    stage: str, project_dir: str = ".", force: bool = False, extra_env: dict[str, str] | None = None
) -> StageResult:
    """`dvc repro --single-item <stage>`, its output streamed into the Prefect logs line by line.

    ``extra_env`` is added to this process's environment (the ICPO_TAG_* / MLflow variables of the flow).
    """
    cmd = [dvc_executable(), "repro", "--single-item", *(["--force"] if force else []), stage]
    result = _run_streamed(cmd, f"stage {stage}", project_dir, extra_env)
    return StageResult(stage=stage, outcome=_outcome(stage, result.tail), seconds=round(result.seconds, 2))


def stage_task(stage: str, retries: int = DOWNLOAD_RETRIES, backoff_s: float = DOWNLOAD_BACKOFF_S) -> Task:
    """``run_stage`` with the options of this stage's kind: download stages retry ``retries`` times after
    ``backoff_s``, 2x, 4x ... seconds (network errors are transient; a failed training is not); GPU stages
    carry the ``gpu`` tag."""
    if stage in DOWNLOAD_STAGES:
        return run_stage.with_options(
            retries=retries,
            retry_delay_seconds=exponential_backoff(backoff_factor=backoff_s) if backoff_s > 0 else 0,
            retry_jitter_factor=0.2,
            tags={"dvc", "download"},
        )
    if is_gpu_stage(stage):
        return run_stage.with_options(tags={"dvc", GPU_TAG})
    return run_stage


@task(name="dvc-exp-run", task_run_name="exp {name}", cache_policy=NO_CACHE, tags=["dvc", GPU_TAG])
def run_experiment(
    name: str,
    project_dir: str = ".",
    overrides: Sequence[str] = (),
    targets: Sequence[str] = (),
    force: bool = False,
    extra_env: dict[str, str] | None = None,
) -> StageResult:
    """`dvc exp run --temp -n <name> -S ... [targets]`: the overrides never touch the workspace's params.yaml.

    ``--temp`` runs in a scratch copy of the workspace; the results are saved as experiment ``name``
    (`dvc exp show`, `dvc exp apply <name>`), and a following experiment does not stack on this one's params.
    """
    cmd = [dvc_executable(), "exp", "run", "--temp", "-n", name, *(["--force"] if force else [])]
    for override in overrides:
        cmd += ["-S", override]
    cmd += list(targets)
    result = _run_streamed(cmd, f"experiment {name}", project_dir, extra_env)
    return StageResult(stage=name, outcome="ran", seconds=round(result.seconds, 2))


@contextlib.contextmanager
def project_lock(project_dir: str | Path, poll_s: float = 30.0) -> Iterator[None]:
    """Hold this checkout's flow lock: flows drive DVC one at a time, so DVC's own repo lock never collides.

    The lock file lives in DVC's scratch folder (`.dvc/tmp`, git-ignored); it guards one checkout, which is
    exactly the scope of DVC's lock. A second flow waits here (logging every ``poll_s``) instead of failing
    with DVC's LockError halfway through a run.
    """
    from filelock import FileLock, Timeout

    path = Path(project_dir) / ".dvc" / "tmp" / "prefect-flow.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    logger = get_run_logger()
    while True:
        try:
            lock.acquire(timeout=poll_s)
            break
        except Timeout:
            logger.info("waiting for another flow that drives DVC in %s (lock %s)", project_dir, path)
    try:
        yield
    finally:
        lock.release()


def ensure_gpu_limit(slots: int = 1) -> None:
    """Create the ``gpu`` tag's concurrency limit if there is none (an existing one, e.g. raised for a multi-GPU
    host with `prefect gcl update tag:gpu --limit 4`, is left alone)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    name = f"tag:{GPU_TAG}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
