"""ICPO's batch transforms on verl ``DataProto`` batches (paper section 3, steps 1-4), free of Ray and GPUs.

:class:`~icpo_core.engines.verl.manager.ICPOAgentLoopManager` calls them around generation:

1. :func:`expand_with_ief` appends N_off IEF rows per prompt whose ``raw_prompt`` carries k demos, so the rollout
   engine (which renders ``raw_prompt`` through the chat template) samples from [D; q];
2. the rollout generates every row and the streamed reward loop fills ``rm_scores``;
3. :func:`mix_generated` applies the step's plan (:func:`~icpo_core.algorithm.step.plan_step`: ERRS, the
   replacement and the expert bonus per group ``uid``, the same function the local engine calls), restores the
   plain prompt q on the IEF rows (so old / ref / actor log-probs are pi(. | q)), writes the trained rewards into
   ``rm_scores`` and sets the per-row flag ``icpo_ief`` that the loss reads. It returns exactly the B * N_on
   rows the trainer expects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from icpo_core.algorithm import DemoPool, build_ief_messages, plan_step

if TYPE_CHECKING:
    from verl import DataProto

    from icpo_core.config import AlgorithmParams

IEF_KEY = "icpo_ief"  # per-row float flag, 1.0 = IEF trajectory; travels with the batch into the actor's loss


def _question_of(messages: Sequence[Mapping[str, str]], extra_info: Any) -> str | None:
    """The raw problem (our parquet's ``extra_info.question``), else the last user turn."""
    if isinstance(extra_info, Mapping) and extra_info.get("question"):
        return str(extra_info["question"])
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return users[-1] if users else None


def first_row_per_group(uids: np.ndarray) -> list[int]:
    """Index of the first row of each ``uid``, in order of appearance."""
    seen: dict[Any, int] = {}
    for i, u in enumerate(uids):
        seen.setdefault(u, i)
    return list(seen.values())


def expand_with_ief(
    prompts: DataProto,
    algo: AlgorithmParams,
    pool: DemoPool | None,
    suffix: str,
    rng: np.random.Generator,
) -> tuple[DataProto, np.ndarray]:
    """``prompts`` (B * N_on rows, grouped by ``uid``) plus N_off IEF rows per group, appended at the end.

    Each IEF row copies its group's first row and replaces ``raw_prompt`` by the IEF messages (k demos drawn
    from ``pool``, never the question itself). With ``released_demos_skip_generation`` the prompt is left plain,
    like the released code whose vLLM call reused the plain prompt ids. Returns ``(extended, src)`` where
    ``src[j]`` is the source row of IEF row j.
    """
    from verl import DataProto

    uids = prompts.non_tensor_batch["uid"]
    src = np.repeat(np.asarray(first_row_per_group(uids), dtype=np.int64), algo.n_off)
    if len(src) == 0:
        return prompts, src
    ief = prompts.select_idxs(src)
    raw = ief.non_tensor_batch["raw_prompt"].copy()
    extra = ief.non_tensor_batch.get("extra_info")
    for j in range(len(src)):
        messages = list(raw[j])
        if algo.released_demos_skip_generation:
            continue
        if pool is None:
            raise ValueError("ICPO needs a demo pool (icpo.demo_path) unless released_demos_skip_generation")
        question = _question_of(messages, extra[j] if extra is not None else None)
        demos = pool.sample(algo.k_demos, rng, exclude_problem=question)
        raw[j] = build_ief_messages(messages, demos, algo.demo_format, suffix)
    ief.non_tensor_batch["raw_prompt"] = raw
    return DataProto.concat([prompts, ief]), src


def _restore_plain_prompt(
    final: DataProto, slot: int, donor: DataProto, donor_row: int, prompt_len: int
) -> None:
    """Overwrite the prompt part of ``final[slot]`` with the plain prompt of ``donor[donor_row]``.

    The donor is the on-policy row that the IEF row replaces: same ``uid``, same plain prompt q. Every row is
    left-padded to the rollout prompt width, so the prompt block is the first ``prompt_len`` columns.
    """
    from verl.utils.model import compute_position_id_with_mask

    b, d = final.batch, donor.batch
    b["prompts"][slot] = d["prompts"][donor_row]
    b["input_ids"][slot, :prompt_len] = d["input_ids"][donor_row, :prompt_len]
    b["attention_mask"][slot, :prompt_len] = d["attention_mask"][donor_row, :prompt_len]
    if "position_ids" in b.keys():  # noqa: SIM118 (TensorDict has no `in`)
        b["position_ids"][slot] = compute_position_id_with_mask(b["attention_mask"][slot : slot + 1])[0]
    if "raw_prompt" in final.non_tensor_batch and "raw_prompt" in donor.non_tensor_batch:
        final.non_tensor_batch["raw_prompt"][slot] = donor.non_tensor_batch["raw_prompt"][donor_row]


def mix_generated(
    uids: np.ndarray,
    out: DataProto,
    src: np.ndarray,
    algo: AlgorithmParams,
    step: int,
    total_steps: int,
    rng: np.random.Generator,
) -> tuple[DataProto, dict[str, float]]:
    """The step's :func:`plan_step` applied to generated rows; returns ``(B * N_on rows, metrics)``.

    ``out`` holds the ``n = len(uids)`` on-policy rows followed by ``len(src)`` IEF rows (rewards in
    ``rm_scores``). Each accepted IEF row takes the batch slot of the on-policy row it replaces, gets its plain
    prompt back and its trained reward (bonus included) on its last response token. ``step`` is verl's 1-based
    ``global_steps``.
    """
    n = len(uids)
    scores = out.batch["rm_scores"].sum(-1).float()
    groups = rows_per_group(uids)
    ief_of: dict[Any, list[int]] = {}
    for j, s in enumerate(src):
        ief_of.setdefault(uids[s], []).append(n + j)
    on_groups = list(groups.values())
    ief_groups = [ief_of.get(u, []) for u in groups]
    plan = plan_step(
        [[float(scores[i]) for i in rows] for rows in on_groups],
        [[float(scores[j]) for j in rows] for rows in ief_groups],
        algo,
        step=step,
        total_steps=total_steps,
        rng=rng,
    )
    final_idx = list(range(n))
    swaps: list[tuple[int, float]] = []  # (slot, trained reward) for each accepted IEF row
    for on_rows, ief_rows, group in zip(on_groups, ief_groups, plan.groups, strict=True):
        for r in group.accepted_off:
            slot = on_rows[r.slot]
            final_idx[slot] = ief_rows[r.index]
            swaps.append((slot, r.reward))

    final = out.select_idxs(np.asarray(final_idx, dtype=np.int64))
    prompt_len = out.batch["prompts"].shape[1]
    ief_flag = torch.zeros(n, dtype=torch.float32)
    for slot, trained_r in swaps:
        _restore_plain_prompt(final, slot, out, slot, prompt_len)
        ief_flag[slot] = 1.0
        extra = trained_r - float(final.batch["rm_scores"][slot].sum())
        if extra:
            # the reward sits on the last valid response token, as verl's reward loop puts it
            last = int(final.batch["attention_mask"][slot, prompt_len:].sum().item()) - 1
            final.batch["rm_scores"][slot, max(last, 0)] += extra
    final.batch[IEF_KEY] = ief_flag
    if len(src) and "rollout_log_probs" in final.batch.keys():  # noqa: SIM118
        # IEF rows' rollout log-probs are demo-conditioned; keep no mix of pi(.|[D;q]) and pi(.|q) around.
        final.batch.pop("rollout_log_probs")
    return final, defined_metrics(plan.metrics)


def rows_per_group(uids: np.ndarray) -> dict[Any, list[int]]:
    """Row indices of each ``uid``, groups in order of appearance."""
    groups: dict[Any, list[int]] = {}
    for i, u in enumerate(uids):
        groups.setdefault(u, []).append(i)
    return groups


def on_policy_metrics(
    uids: np.ndarray, out: DataProto, algo: AlgorithmParams, step: int, total_steps: int
) -> dict[str, float]:
    """The step metrics of a batch without IEF rows (GRPO): :func:`plan_step` with empty off-policy groups."""
    scores = out.batch["rm_scores"].sum(-1).float()
    on_groups = [[float(scores[i]) for i in rows] for rows in rows_per_group(uids).values()]
    plan = plan_step(
        on_groups,
        [[] for _ in on_groups],
        algo,
        step=step,
        total_steps=total_steps,
        rng=np.random.default_rng(0),  # nothing is replaced: the generator is not read for the result
    )
    return defined_metrics(plan.metrics)


def defined_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """verl's loggers get no NaN: a metric undefined for the step (no IEF row) is left out, read as null."""
    return {k: v for k, v in metrics.items() if not math.isnan(v)}
