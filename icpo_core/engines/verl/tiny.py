"""A tiny verl-on-CPU project: the smallest sizes at which every piece of verl's loop runs on CPU (local Ray, FSDP2
actor + reference, vLLM-CPU rollouts in hybrid mode, verl's checkpoints), built offline in a few seconds.

Used by the verl end-to-end tests and by ``scripts/kill_check_verl.py``; nothing here is needed for real training.
The model is the random Llama of :func:`icpo_core.models.tiny.write_tiny_model` with 4 heads of 64 (vLLM-CPU's
attention refuses smaller heads); a step is 2 prompts x (n_on + n_off) rows x 8 tokens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from icpo_core.config import deep_merge, parse_params
from icpo_core.engines.local.tiny import make_tiny_project
from icpo_core.models.tiny import write_tiny_model

#: An environment variable a caller sets to a fresh value for one run: every descendant inherits it (Ray's workers
#: and vLLM's server too), so :func:`marked_pids` finds what is left of that run, process group or not.
MARK_VAR = "ICPO_TINY_MARK"
BENCH_REGISTRY = Path(__file__).resolve().parents[2] / "bench" / "benchmarks.yaml"

#: params.yaml overrides of the tiny verl-on-CPU project (callers add their own on top, ``extra_overrides`` too).
VERL_CPU_TINY: dict[str, Any] = {
    "seeds": [0],
    "algorithm": {"n_on": 4, "n_off": 1},
    "train": {
        "engine": "verl",
        "device": "cpu",
        "steps": 2,
        "save_freq": 1,
        "keep_checkpoints": 2,
        "prompts_per_step": 2,
        "ppo_mini_batch_prompts": 2,
        "lr": 1e-3,
        "max_prompt_length": 96,
        "max_response_length": 8,
        "verl": {
            "val_benchmarks": [],
            "ppo_micro_batch_size_per_gpu": 4,
            "log_prob_micro_batch_size_per_gpu": 4,
        },
    },
}


def make_tiny_verl_project(
    root: str | Path,
    base_params: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    dvc_yaml: Path | None = None,
) -> Path:
    """A folder verl can train in on CPU: models/base (head_dim 64), data/train.parquet, data/demos.parquet, an empty
    data/val, and params.yaml = ``base_params`` (a project's params.yaml) + :data:`VERL_CPU_TINY` + ``overrides``,
    validated. With ``dvc_yaml`` it is also a DVC project (``dvc init --no-scm``) with that stage graph and the
    bench registry its bench stages depend on."""
    root = Path(root)
    make_tiny_project(root)
    shutil.rmtree(root / "models" / "base")
    write_tiny_model(root / "models" / "base", hidden=256)
    (root / "data" / "val").mkdir(exist_ok=True)  # a dependency of the train stages (no validation sets here)
    raw = deep_merge(
        yaml.safe_load(Path(base_params).read_text()), deep_merge(VERL_CPU_TINY, overrides or {})
    )
    parse_params(raw, str(root / "params.yaml"))  # valid params, or one clear error here
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    if dvc_yaml is not None:
        shutil.copy(dvc_yaml, root / "dvc.yaml")
        registry = root / "icpo_core" / "bench" / "benchmarks.yaml"  # dvc.yaml names it as a bench dependency
        registry.parent.mkdir(parents=True)
        shutil.copy(BENCH_REGISTRY, registry)
        dvc = str(Path(sys.executable).parent / "dvc")
        subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=root, check=True)
        subprocess.run([dvc, "config", "core.analytics", "false"], cwd=root, check=True)
    return root


def marked_pids(mark: str) -> list[int]:
    """The processes whose environment has ``MARK_VAR=mark``."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK_VAR) == mark:
                found.append(proc.pid)
        except (psutil.Error, OSError):  # gone meanwhile, or not ours to read
            continue
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)  # PermissionError too means a member is still there
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def wait_gone(mark: str, timeout_s: float = 60.0, *, pgid: int | None = None) -> bool:
    """True once no process has ``MARK_VAR=mark`` and, with ``pgid``, no process of that group is left, not even
    one still exiting (Ray's actors exit seconds after their driver; a SIGKILLed process whose environment can no
    longer be read still holds its pid, and DVC takes a live pid in its lock file for a running ``dvc``). False if
    some are still there after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while marked_pids(mark) or (pgid is not None and _group_alive(pgid)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
