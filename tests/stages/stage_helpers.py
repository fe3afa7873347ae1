"""Helpers of the stage tests that run `icpo` as DVC does: real subprocesses on a tiny project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def env(**extra: str) -> dict[str, str]:
    """The environment of a stage subprocess: no MLflow / icpo settings of the calling shell."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ICPO_"))}
    out.update(TOKENIZERS_PARALLELISM="false", **extra)
    return out


def icpo(root: Path, *args: str, environ: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """``python -m icpo_core.cli <args>`` in ``root``, to the end (``environ``: default :func:`env`)."""
    return subprocess.run(
        [sys.executable, "-m", "icpo_core.cli", *args],
        cwd=root,
        env=environ or env(),
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


def steps(root: Path, run: str) -> list[int]:
    """The steps in ``metrics/steps_<run>.jsonl``, in file order."""
    return [r["step"] for r in step_rows(root, run)]


def step_rows(root: Path, run: str) -> list[dict]:
    """The rows of ``metrics/steps_<run>.jsonl``; a last line still being written (no newline yet) is left out."""
    path = root / "metrics" / f"steps_{run}.jsonl"
    if not path.is_file():
        return []
    complete = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in complete if line.strip()]


def reap(pgid: int, timeout_s: float = 10.0) -> None:
    """Wait until no process of the killed group ``pgid`` is left (grader workers die with it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
