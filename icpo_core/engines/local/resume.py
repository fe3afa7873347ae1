"""The params a local-engine checkpoint was trained with, and the check that a resume still has them.

A checkpoint records :func:`training_params` (the run's resolved ``algorithm`` section, the ``train`` section and
the seed, flattened to dotted keys) and their :func:`params_hash`. When ``params.yaml`` is edited while a run is
under way (between a kill and its rerun, or mid-run under ``dvc repro``), the resumed steps would silently train
with other settings than the steps already done: :func:`check_resume` refuses instead, naming every changed key
with its old and new value and the two fixes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from icpo_core.errors import UserError

if TYPE_CHECKING:
    from icpo_core.config import Params

# Keys a resume may change, not compared: they decide where the run executes, how often and how many checkpoints
# are kept, how fast the rollouts and grading go, or belong to the other engine -- not what a step computes.
RESUME_SAFE_KEYS = (
    "train.save_freq",  # when checkpoints are written (the steps between are the same steps)
    "train.keep_checkpoints",  # how many are kept on disk
    "train.device",  # where it runs: a run may move to another machine (numerics equal up to rounding)
    "train.grade_workers",  # grader processes: parallelism only, the same grades
    "train.verl",  # the verl engine's knobs: the local engine never reads them
    "train.vllm.gpu_memory_utilization",  # rollout engine memory / threads / compilation: same samples
    "train.vllm.kv_cache_gib",
    "train.vllm.threads_bind",
    "train.vllm.enforce_eager",
)
# Compared, although a user may expect otherwise: train.steps (T enters every step's expert bonus alpha * (1 - t/T),
# paper section 3.3, so a longer run is a different run), train.rollout_backend / train.vllm.dtype /
# train.autocast (other samples and numerics), train.grade_timeout_s (a timeout grades 0).
# Not compared either, as they are not in the hashed sections at all: tracking (MLflow), progress bars / logging
# (command-line flags), bench, report, study. The inputs (data/*.parquet, the base model, the data and model
# sections) are in the run's config fingerprint: a changed input starts the run over (trainer.py).


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def _safe(key: str) -> bool:
    return any(key == s or key.startswith(s + ".") for s in RESUME_SAFE_KEYS)


def training_params(params: Params, run: str) -> dict[str, Any]:
    """The params that decide what ``run``'s steps compute: ``{"algorithm.<k>": v, "train.<k>": v, "seed": s}``
    (the run's overrides resolved, nested sections flattened), minus :data:`RESUME_SAFE_KEYS`."""
    flat: dict[str, Any] = {}
    _flatten("algorithm", params.run_algorithm(run).model_dump(mode="json"), flat)
    _flatten("train", params.train.model_dump(mode="json"), flat)
    flat["seed"] = params.seed
    return {k: v for k, v in sorted(flat.items()) if not _safe(k)}


def params_hash(values: Mapping[str, Any]) -> str:
    """A short sha256 of :func:`training_params` (key order does not matter)."""
    return hashlib.sha256(json.dumps(dict(values), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value, default=str)


_ABSENT = object()


def changed_keys(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``["train.lr: 2e-05 -> 1e-05", ...]`` for every key whose value differs, is new, or is gone."""
    out = []
    for key in sorted(set(saved) | set(now)):
        old, new = saved.get(key, _ABSENT), now.get(key, _ABSENT)
        if old != new and not _safe(key):
            out.append(f"{key}: {_show(old)} -> {_show(new)}")
    return out


def check_resume(state: Mapping[str, Any], now: Mapping[str, Any], *, step: int, ckpt_root: str) -> bool:
    """Raise :class:`UserError` when the checkpoint's params (``state["params"]``) differ from ``now``.

    Returns False for a checkpoint that records no params (made before they were recorded: it resumes
    unchecked, the caller warns once), True when it was checked and matches."""
    saved = state.get("params")
    if not isinstance(saved, Mapping):
        return False
    if state.get("params_hash") == params_hash(now):
        return True
    changes = changed_keys(saved, now)
    if (
        not changes
    ):  # the same values under another hash (hash of a stored dict edited by hand): still the same
        return True
    raise UserError(
        f"params.yaml changed since the checkpoint at step {step} of {ckpt_root}: {'; '.join(changes)}. "
        f"Restore the value{'s' if len(changes) > 1 else ''} to resume, or delete {ckpt_root} to start over"
    )
