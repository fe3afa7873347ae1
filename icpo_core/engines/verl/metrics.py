"""verl's per-launch step logs -> the project's step log ``metrics/steps_<run>.jsonl`` (:mod:`icpo_core.steplog`,
metric names of docs/architecture.md).

verl's ``file`` logger writes ``{"step": N, "data": {...}}`` lines to ``VERL_FILE_LOGGER_PATH`` and truncates
that file when it opens it, so every launch gets its own file under ``runs/<run>/verl_metrics/`` and
:func:`export_steps` merges them (a resumed run's later lines win for a repeated step) and writes the step log
through :func:`icpo_core.steplog.write`. What is here is verl's side only: its file names, its record format,
its metric names.

Multi-node runs cannot hand the per-launch file name to verl's TaskRunner through the hydra config (verl
logs the config as MLflow params, and a value that changes on resume makes MLflow refuse the run): the
launcher passes the stable folder as ``ICPO_VERL_METRICS_DIR`` and the TaskRunner names the file
(:func:`task_runner_log_path`).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from icpo_core import paths, steplog

# verl metric name -> contract name (names already in the contract, e.g. reward/*, icpo/*, adv/*, pass through)
RENAMES = {
    "actor/kl_loss": "actor/kl",
    "response_length/mean": "response/length_mean",
    "timing_s/step": "perf/step_time_s",
    "perf/throughput": "perf/tokens_per_s",
    "perf/total_num_tokens": "perf/gen_tokens",
}
# training/rollout_*: verl's comparison of the rollout engine's token probabilities with the actor's (with
# rollout.calculate_log_probs): the check that the weights pushed to vLLM are the actor's
KEEP_PREFIXES = (
    "reward/",
    "icpo/",
    "luffy/",
    "adv/",
    "actor/",
    "response/",
    "perf/",
    "critic/score",
    "val-core/",
    "training/rollout_",
)


METRICS_DIR_ENV = "ICPO_VERL_METRICS_DIR"
LOG_PATH_ENV = "VERL_FILE_LOGGER_PATH"


def metrics_dir(run: str) -> Path:
    return paths.run_dir(run) / "verl_metrics"


def launch_log_name() -> str:
    """One launch's step-log file name: its start time (files sort in launch order) and a unique tag."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.jsonl"


def task_runner_log_path(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """In the TaskRunner: point ``VERL_FILE_LOGGER_PATH`` into ``ICPO_VERL_METRICS_DIR`` when that is set.

    Returns the path in effect (None when neither variable is set). A ``VERL_FILE_LOGGER_PATH`` already in
    that folder (the launcher's, on one node) is kept.
    """
    folder = environ.get(METRICS_DIR_ENV)
    current = environ.get(LOG_PATH_ENV)
    if folder and (not current or Path(current).parent != Path(folder)):
        Path(folder).mkdir(parents=True, exist_ok=True)
        environ[LOG_PATH_ENV] = str(Path(folder) / launch_log_name())
    return environ.get(LOG_PATH_ENV)


def convert_record(data: dict[str, Any]) -> dict[str, Any]:
    """One verl metrics dict -> contract names (verl's own names kept alongside for everything else)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        name = RENAMES.get(key, key)
        if name.startswith(KEEP_PREFIXES) or key in RENAMES:
            out[name] = value
    return out


def read_launch_log(path: str | Path) -> list[dict[str, Any]]:
    """The ``{"step": N, "data": {...}}`` records of one launch's verl step log, in file order.

    A line that is not a whole record (the last line of a launch SIGKILLed mid-write) is skipped: the step it
    held is retrained by the resumed launch, whose file then holds it whole."""
    records = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            rec["step"] = int(rec["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        records.append(rec)
    return records


def export_steps(run: str, root: str | Path = ".") -> Path | None:
    """Merge ``runs/<run>/verl_metrics/*.jsonl`` into ``metrics/steps_<run>.jsonl``; None if verl logged nothing."""
    root = Path(root)
    files = sorted((root / metrics_dir(run)).glob("*.jsonl"))
    # launch files are named by start time: later launches override earlier steps (steplog.write: last row wins)
    rows = [
        {**convert_record(rec.get("data", {})), "step": rec["step"]}
        for f in files
        for rec in read_launch_log(f)
    ]
    if not rows:
        return None
    return steplog.write(root / paths.train_metrics_jsonl(run), rows)
