"""The local engine's step layout: the device and precision, the trained batch, and the step's plan on the
rollout layout (prompt-major: per prompt its on-policy rollouts, then its off-policy rows).

:func:`plan_local_step` is :func:`icpo_core.algorithm.plan_step` read into the rows the trainer trains from;
the step-parity test runs it beside verl's batch transforms on the same rewards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from icpo_core.algorithm import (
    on_policy_rollouts,
    plan_step,
)
from icpo_core.config import AlgorithmParams, Params
from icpo_core.engines import devices
from icpo_core.engines.local.logprobs import (
    SequenceBatch,
)

# ------------------------------------------------------------------------------------------------ helpers


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """``train.autocast`` -> the autocast dtype of forward passes (None: plain fp32). Master weights and AdamW state
    stay fp32 either way, as in verl's FSDP mixed precision. ``auto``: bf16 on CUDA, fp32 on CPU."""
    if setting == "bfloat16" or (setting == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def pick_device(params: Params) -> torch.device:
    """``train.device`` as a torch device: ``auto`` is CUDA when this process sees it, else the CPU only for a run
    that asks for no GPUs; a paper profile without CUDA stops with one line naming the cause
    (:func:`icpo_core.engines.devices.resolve_device`)."""
    return torch.device(devices.resolve_device(params))


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """``train.deterministic``: torch's deterministic kernels for the block (cuBLAS needs its workspace setting
    on CUDA), the process's previous setting restored afterwards. Off: nothing changes."""
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


@dataclass
class StepBatch:
    """The trained rows of one step (prompt-major), with everything the update needs."""

    seqs: SequenceBatch
    advantages: torch.Tensor  # [B]
    ief_mask: torch.Tensor  # [B] bool
    prompt_of_row: list[int]  # prompt index within the step, per row
    old_log_prob: torch.Tensor | None = None
    ref_log_prob: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LocalStepPlan:
    """:func:`plan_step` on the local engine's rollout layout: the trained rows, prompt-major, each group's kept
    on-policy rows then its accepted IEF rows (the order the trainer has always trained them in)."""

    rollout_rows: list[int]  # index into the rollout batch (per prompt: n_on plain rows, then n_off IEF rows)
    rewards: list[float]  # trained reward (expert bonus included)
    off_policy: list[bool]  # IEF row: its tokens get the policy shaping
    prompt_of_row: list[int]  # prompt index within the step
    metrics: dict[str, float]  # StepMetrics names


def plan_local_step(
    rewards: Sequence[float],
    n_prompts: int,
    algo: AlgorithmParams,
    *,
    step: int,
    total_steps: int,
    rng: np.random.Generator,
) -> LocalStepPlan:
    """The step's plan for the rollout batch ``rewards`` (prompt-major: per prompt the on-policy rollouts, then
    the ``n_off`` off-policy rows: IEF generations, or LUFFY's expert traces after ``n_on - n_off`` rollouts)."""
    n_on = on_policy_rollouts(algo)
    per = n_on + algo.n_off
    if len(rewards) != n_prompts * per:
        raise ValueError(f"{len(rewards)} rewards for {n_prompts} prompts x {per} rollouts")
    plan = plan_step(
        [rewards[i * per : i * per + n_on] for i in range(n_prompts)],
        [rewards[i * per + n_on : (i + 1) * per] for i in range(n_prompts)],
        algo,
        step=step,
        total_steps=total_steps,
        rng=rng,
    )
    out = LocalStepPlan([], [], [], [], plan.metrics)
    for i, group in enumerate(plan.groups):
        for r in group.rows:
            out.rollout_rows.append(i * per + r.index + (n_on if r.source == "off" else 0))
            out.rewards.append(r.reward)
            out.off_policy.append(r.off_policy)
            out.prompt_of_row.append(i)
    return out
