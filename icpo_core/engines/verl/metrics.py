"""verl's per-step log -> the project's ``metrics/steps_<run>.jsonl`` (metric names of docs/architecture.md).

verl's ``file`` logger writes ``{"step": N, "data": {...}}`` lines to ``VERL_FILE_LOGGER_PATH`` and truncates
that file when it opens it, so every launch gets its own file under ``runs/<run>/verl_metrics/`` and
:func:`export_steps` merges them (a resumed run's later lines win for a repeated step).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from icpo_core import paths
from icpo_core.io_utils import atomic_write_text

# verl metric name -> contract name (names already in the contract, e.g. reward/*, icpo/*, adv/*, pass through)
RENAMES = {
    "actor/kl_loss": "actor/kl",
    "response_length/mean": "response/length_mean",
    "timing_s/step": "perf/step_time_s",
    "perf/throughput": "perf/tokens_per_s",
    "perf/total_num_tokens": "perf/gen_tokens",
}
KEEP_PREFIXES = ("reward/", "icpo/", "adv/", "actor/", "response/", "perf/", "critic/score", "val-core/")


def metrics_dir(run: str) -> Path:
    return paths.run_dir(run) / "verl_metrics"


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


def export_steps(run: str, root: str | Path = ".") -> Path | None:
    """Merge ``runs/<run>/verl_metrics/*.jsonl`` into ``metrics/steps_<run>.jsonl``; None if verl logged nothing."""
    root = Path(root)
    files = sorted((root / metrics_dir(run)).glob("*.jsonl"))
    steps: dict[int, dict[str, Any]] = {}
    for f in files:  # launch files are named by start time: later launches override earlier steps
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            steps[int(rec["step"])] = {"step": int(rec["step"]), **convert_record(rec.get("data", {}))}
    if not steps:
        return None
    target = root / paths.train_metrics_jsonl(run)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, "".join(json.dumps(steps[s]) + "\n" for s in sorted(steps)))
    return target
