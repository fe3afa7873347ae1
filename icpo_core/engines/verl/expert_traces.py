"""LUFFY's expert traces on verl (``off_policy: expert_trace``, arXiv 2504.14945).

- :func:`write_expert_trace_train`: verl's dataset reads every row of its training file, so the launch gives it a
  copy of the training parquet without the rows that have no ``target`` (the local engine drops them at load),
  counted and logged; :func:`expert_trace_train_path` is where that copy lives (the run's folder);
- :class:`TraceBook`: each row's expert trace tokenised once with the policy's chat template
  (:func:`icpo_core.data.expert_traces.expert_trace`, the function the local engine uses, truncated at
  ``max_response_length``) and graded once by the training verifier, the same grade the local engine gives it
  every step.

No torch or verl import here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from icpo_core import paths
from icpo_core.data.expert_traces import ExpertTrace, expert_trace
from icpo_core.errors import DataError

log = logging.getLogger(__name__)

TRAIN_FILE = "expert_trace_train.parquet"

ScoreFn = Callable[..., float]  # verl's compute_score(data_source, solution_str, ground_truth, extra_info)


def expert_trace_train_path(name: str) -> Path:
    """The training file of a LUFFY run on verl: ``runs/<name>/expert_trace_train.parquet`` (relative)."""
    return paths.run_dir(name) / TRAIN_FILE


def has_target(value: Any) -> bool:
    """True when a ``target`` cell holds an expert solution (not null, not blank)."""
    return value is not None and bool(str(value).strip())


def write_expert_trace_train(src: str | Path, dst: str | Path) -> tuple[int, int]:
    """Write the rows of ``src`` that have a ``target`` to ``dst`` (atomically); returns ``(kept, dropped)``.

    A file without a ``target`` column, or without any row that has one, is a :class:`DataError` naming the
    file and the fix.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise DataError(f"{src}: training set not found; run `icpo prepare-train` (dvc repro prepare_train)")
    table = pq.read_table(src)
    fix = "use a source with solutions (synthetic, openr1_46k, openr1_220k) or add a target column"
    if "target" not in table.column_names:
        raise DataError(
            f"{src}: no `target` column (expert solution), which off_policy: expert_trace (LUFFY) trains on; {fix}"
        )
    keep = [has_target(t) for t in table.column("target").to_pylist()]
    kept = sum(keep)
    if not kept:
        raise DataError(
            f"{src}: no row has a `target` (expert solution), which off_policy: expert_trace (LUFFY) trains on; {fix}"
        )
    dropped = len(keep) - kept
    if dropped:
        log.warning(
            "%s: LUFFY expert traces: %d of %d rows without a target dropped", src, dropped, len(keep)
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    pq.write_table(table.filter(pa.array(keep)), tmp)
    os.replace(tmp, dst)
    return kept, dropped


def _messages(raw: Any) -> list[dict[str, str]]:
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in raw]


class TraceBook:
    """Expert traces and their verifier grades, computed on first use per (prompt, target, answer)."""

    def __init__(self, tokenizer: Any, max_response_length: int, score_fn: ScoreFn):
        self.tokenizer = tokenizer
        self.max_response_length = int(max_response_length)
        self.score_fn = score_fn
        self._cache: dict[tuple[str, str, str], tuple[ExpertTrace, float]] = {}

    def get(
        self,
        raw_prompt: Sequence[Mapping[str, str]],
        target: Any,
        ground_truth: str,
        data_source: str | None = None,
        extra_info: Any = None,
    ) -> tuple[ExpertTrace, float]:
        """The trace of one training row and its verifier reward (1.0 / 0.0 for the binary verifier)."""
        messages = _messages(raw_prompt)
        key = (json.dumps(messages, sort_keys=True), str(target or ""), str(ground_truth))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        trace = expert_trace(self.tokenizer, messages, str(target or ""), self.max_response_length)
        if trace is None:
            raise DataError(
                "a LUFFY training row has no `target`: launch through `icpo train` (it drops such rows into "
                f"{TRAIN_FILE}) or give every row of data.train_files an expert solution"
            )
        score = float(self.score_fn(data_source, trace.text, str(ground_truth), extra_info))
        self._cache[key] = (trace, score)
        return trace, score
