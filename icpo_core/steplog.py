"""The step log ``metrics/steps_<instance>.jsonl`` (:func:`icpo_core.paths.train_metrics_jsonl`), a stage contract:
one JSON object per training step (``step`` plus the metric names of docs/architecture.md), sorted keys, NaN / inf
written as null.

The one reader and writer of that file. The local engine appends each step whole as it trains (:func:`append`,
after :func:`reset` on a resume); the verl engine rewrites it from verl's per-launch logs after each launch
(:func:`write`, see :mod:`icpo_core.engines.verl.metrics`); the report, the curves and ``icpo sync-mlflow`` read it
(:func:`read_steps`). No torch import: the report and the stages import this at module top."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from icpo_core.io_utils import atomic_write_text


def _clean(v: Any) -> Any:
    # JSON has no NaN / inf: a metric that is undefined for a step (no accepted IEF row, ...) is null.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_steps(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a step log sorted by step, the last line winning for a repeated step (a resumed verl run); a
    line cut by a kill, or one without ``step``, is ignored. A missing file has no rows."""
    path = Path(path)
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(row, dict)
            and isinstance(row.get("step"), int | float)
            and not isinstance(row["step"], bool)
        ):
            by_step[int(row["step"])] = row
    return [by_step[s] for s in sorted(by_step)]


def _row(step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {**{k: _clean(v) for k, v in metrics.items() if k != "step"}, "step": int(step)}


def _line(row: Mapping[str, Any]) -> str:
    return json.dumps(row, sort_keys=True) + "\n"


def write(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Rewrite the whole log atomically with ``rows`` (each a mapping with ``step``), one line per step in step
    order, the last row winning for a repeated step. Returns ``path``."""
    by_step = {int(r["step"]): _row(r["step"], r) for r in rows}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, "".join(_line(by_step[s]) for s in sorted(by_step)))


def reset(path: str | Path, keep_through_step: int | None) -> list[dict[str, Any]]:
    """Keep one line per step ``<= keep_through_step`` (none when None), rewrite the file atomically."""
    rows = (
        [] if keep_through_step is None else [r for r in read_steps(path) if r["step"] <= keep_through_step]
    )
    write(path, rows)
    return rows


def append(path: str | Path, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Append one step as a single write of one line (O_APPEND), flushed to disk."""
    row = _row(step, metrics)
    data = _line(row).encode()
    fd = os.open(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            if os.write(fd, data) != len(data):  # a short write: the disk filled up mid-line
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # no half line left behind
            raise
    finally:
        os.close(fd)
    return row
