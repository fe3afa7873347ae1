"""The params a run's checkpoints were trained with, and the check that a resume still has them (both engines).

A run records :func:`training_params` (the run's resolved ``algorithm`` section, the ``train`` section and the
seed, flattened to dotted keys, minus the keys its engine may change on resume) and their :func:`params_hash`:
the local engine in each checkpoint's extra state, the verl engine in a file of its checkpoint root
(:mod:`icpo_core.engines.verl.resume`). When ``params.yaml`` is edited while a run is under way (between a kill
and its rerun, or mid-run under ``dvc repro``), the resumed steps would silently train with other settings than
the steps already done: :func:`check_resume` refuses instead, naming every changed key with its old and new
value and the two fixes. One implementation for both engines, so the two refuse the same edits the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from icpo_core.config import AlgorithmParams, Params, TrainParams
from icpo_core.errors import UserError

Engine = Literal["local", "verl"]

# Keys a resume may change on either engine: they decide where the run executes, how often and how many
# checkpoints are kept, how fast the rollouts and grading go -- not what a step computes.
_COMMON_SAFE = (
    "train.save_freq",  # when checkpoints are written (the steps between are the same steps)
    "train.keep_checkpoints",  # how many are kept on disk
    "train.device",  # where it runs: a run may move to another machine (numerics equal up to rounding)
    "train.grade_workers",  # grader processes: parallelism only, the same grades
    "train.vllm.gpu_memory_utilization",  # rollout engine memory / threads / compilation: same samples
    "train.vllm.kv_cache_gib",
    "train.vllm.threads_bind",
    "train.vllm.enforce_eager",
)
LOCAL_SAFE_KEYS = (
    *_COMMON_SAFE,
    "train.verl",  # the verl engine's knobs: the local engine never reads them
)
VERL_SAFE_KEYS = (
    *_COMMON_SAFE,
    # the local engine's knobs: verl never reads them (overrides.py maps none of them to a hydra key; verl's
    # rollout dtype, micro batches and reward timeout are its own settings)
    "train.rollout_backend",
    "train.micro_batch_size",
    "train.autocast",
    "train.grade_timeout_s",
    "train.vllm.dtype",
    "train.vllm.per_request_seeds",
    # verl's launch-only knobs: rollout parallelism and memory, gradient-accumulation / log-prob chunking (the
    # same gradient up to rounding: ppo_mini_batch_prompts, compared, fixes the update's batch) and the
    # validation runs (what is measured between steps, not what a step trains)
    "train.verl.tensor_parallel",
    "train.verl.gpu_memory_utilization",
    "train.verl.ppo_micro_batch_size_per_gpu",
    "train.verl.log_prob_micro_batch_size_per_gpu",
    "train.verl.test_freq",
    "train.verl.val_files",
    "train.verl.val_benchmarks",
    "train.verl.val_n",
    "train.verl.val_temperature",
    "train.verl.val_top_p",
    "train.verl.val_top_k",
    # the actor's FSDP CPU offload: where its weights / AdamW state wait between phases, the same numbers
    "train.verl.param_offload",
    "train.verl.optimizer_offload",
)
# Compared on verl although under train.verl: extra_overrides (any hydra key: the loss, the rollout sampling, the
# optimizer can all be set there, and they win over params.yaml's own keys) and nnodes / n_gpus_per_node (verl's
# FSDP checkpoint is one shard per rank of the world size that wrote it: another world size cannot load it and
# would fail only after Ray and every worker started, and the data-parallel split of a step changes with it).
SAFE_KEYS: dict[str, tuple[str, ...]] = {"local": LOCAL_SAFE_KEYS, "verl": VERL_SAFE_KEYS}
# Compared, although a user may expect otherwise: train.steps (T enters every step's expert bonus alpha * (1 - t/T),
# paper section 3.3, so a longer run is a different run), train.rollout_backend / train.vllm.dtype /
# train.autocast on the local engine (other samples and numerics), train.grade_timeout_s there (a timeout
# grades 0). Not compared either, as they are not in the hashed sections at all: tracking (MLflow), progress
# bars / logging (command-line flags), bench, report, study. The inputs (data/*.parquet, the base model, the data
# and model sections) are in the local engine's config fingerprint: a changed input starts the run over
# (local/trainer.py).


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def _safe(key: str, engine: Engine) -> bool:
    return any(key == s or key.startswith(s + ".") for s in SAFE_KEYS[engine])


def training_params(params: Params, run: str, engine: Engine) -> dict[str, Any]:
    """The params that decide what ``run``'s steps compute on ``engine``: ``{"algorithm.<k>": v,
    "train.<k>": v, "seed": s}`` (the run's overrides resolved, nested sections flattened), minus
    :data:`SAFE_KEYS` of the engine."""
    flat: dict[str, Any] = {}
    _flatten("algorithm", params.run_algorithm(run).model_dump(mode="json"), flat)
    _flatten("train", params.train.model_dump(mode="json"), flat)
    flat["seed"] = params.seed
    return {k: v for k, v in sorted(flat.items()) if not _safe(k, engine)}


def params_hash(values: Mapping[str, Any]) -> str:
    """A short sha256 of :func:`training_params` (key order does not matter)."""
    return hashlib.sha256(json.dumps(dict(values), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value, default=str)


_ABSENT = object()


def typed_defaults() -> dict[str, Any]:
    """The typed defaults of every ``algorithm.*`` / ``train.*`` key, flattened as :func:`training_params`."""
    flat: dict[str, Any] = {}
    _flatten("algorithm", AlgorithmParams().model_dump(mode="json"), flat)
    _flatten("train", TrainParams().model_dump(mode="json"), flat)
    return flat


def changed_keys(saved: Mapping[str, Any], now: Mapping[str, Any], engine: Engine) -> list[str]:
    """``["train.lr: 2e-05 -> 1e-05", ...]`` for every key whose value differs, is new, or is gone (a key the
    engine's :data:`SAFE_KEYS` now name, recorded by an older version, is not reported; nor is a key added since
    the checkpoint was recorded whose value now is its typed default, the behaviour before the key existed)."""
    out = []
    defaults = typed_defaults()
    for key in sorted(set(saved) | set(now)):
        old, new = saved.get(key, _ABSENT), now.get(key, _ABSENT)
        if old is _ABSENT and key in defaults and new == defaults[key]:
            continue
        if old != new and not _safe(key, engine):
            out.append(f"{key}: {_show(old)} -> {_show(new)}")
    return out


def check_resume(
    state: Mapping[str, Any], now: Mapping[str, Any], *, engine: Engine, step: int, ckpt_root: str
) -> bool:
    """Raise :class:`UserError` when the recorded params (``state["params"]``) differ from ``now``.

    Returns False for a state that records no params (made before they were recorded: it resumes unchecked,
    the caller warns once), True when it was checked and matches."""
    saved = state.get("params")
    if not isinstance(saved, Mapping):
        return False
    if state.get("params_hash") == params_hash(now):
        return True
    changes = changed_keys(saved, now, engine)
    if not changes:  # the same values under another hash (a stored dict edited by hand): still the same
        return True
    raise UserError(
        f"params.yaml changed since the checkpoint at step {step} of {ckpt_root}: {'; '.join(changes)}. "
        f"Restore the value{'s' if len(changes) > 1 else ''} to resume, or delete {ckpt_root} to start over"
    )
