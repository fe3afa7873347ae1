"""ICPO's batch transforms on verl ``DataProto`` batches (paper section 3, steps 1-4), free of Ray and GPUs.

:class:`~icpo_core.engines.verl.manager.ICPOAgentLoopManager` calls them around generation:

1. :func:`expand_with_ief` appends N_off IEF rows per prompt whose ``raw_prompt`` carries k demos, so the rollout
   engine (which renders ``raw_prompt`` through the chat template) samples from [D; q];
2. the rollout generates every row and the streamed reward loop fills ``rm_scores``;
3. :func:`mix_generated` applies ERRS and the replacement per group (``uid``), restores the plain prompt q on the
   IEF rows (so old / ref / actor log-probs are pi(. | q)), adds the expert bonus to ``rm_scores`` and sets the
   per-row flag ``icpo_ief`` that the loss reads. It returns exactly the B * N_on rows the trainer expects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from icpo_core.algorithm import (
    DemoPool,
    build_ief_messages,
    mix_group,
    shaped_ief_rewards,
    step_bonus,
)

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
    """ERRS + replacement + prompt restore + bonus over generated rows; returns ``(B * N_on rows, metrics)``.

    ``out`` holds the ``n = len(uids)`` on-policy rows followed by ``len(src)`` IEF rows (rewards in
    ``rm_scores``). ``step`` is verl's 1-based ``global_steps``; the bonus is :func:`step_bonus` (t = step - 1: the
    first step gets alpha and step T gets alpha / T, as in the local engine).
    """
    n = len(uids)
    scores = out.batch["rm_scores"].sum(-1).float()
    groups: dict[Any, list[int]] = {}
    for i, u in enumerate(uids):
        groups.setdefault(u, []).append(i)
    ief_of: dict[Any, list[int]] = {}
    for j, s in enumerate(src):
        ief_of.setdefault(uids[s], []).append(n + j)

    bonus = step_bonus(
        algo.alpha,
        step,
        total_steps,
        reward_shaping=algo.reward_shaping,
        constant=algo.released_constant_bonus,
    )
    final_idx = list(range(n))
    swaps: list[tuple[int, float]] = []  # (slot, shaped reward) for each accepted IEF row
    accepted_rewards: list[float] = []
    for u, on_rows in groups.items():
        ief_rows = ief_of.get(u, [])
        on_r = [float(scores[i]) for i in on_rows]
        ief_r = [float(scores[j]) for j in ief_rows]
        mix = mix_group(on_r, ief_r, errs=algo.errs, delta=algo.delta, rng=rng)
        shaped = shaped_ief_rewards(ief_r, mix.ief_keep, bonus, algo.delta)
        for slot_pos, j, r in zip(mix.replaced, mix.ief_keep, shaped, strict=True):
            slot = on_rows[slot_pos]
            final_idx[slot] = ief_rows[j]
            swaps.append((slot, r))
            accepted_rewards.append(ief_r[j])

    final = out.select_idxs(np.asarray(final_idx, dtype=np.int64))
    prompt_len = out.batch["prompts"].shape[1]
    ief_flag = torch.zeros(n, dtype=torch.float32)
    for slot, shaped_r in swaps:
        _restore_plain_prompt(final, slot, out, slot, prompt_len)
        ief_flag[slot] = 1.0
        extra = shaped_r - float(final.batch["rm_scores"][slot].sum())
        if extra:
            # the reward sits on the last valid response token, as verl's reward loop puts it
            last = int(final.batch["attention_mask"][slot, prompt_len:].sum().item()) - 1
            final.batch["rm_scores"][slot, max(last, 0)] += extra
    final.batch[IEF_KEY] = ief_flag
    if len(src) and "rollout_log_probs" in final.batch.keys():  # noqa: SIM118
        # IEF rows' rollout log-probs are demo-conditioned; keep no mix of pi(.|[D;q]) and pi(.|q) around.
        final.batch.pop("rollout_log_probs")

    final_scores = final.batch["rm_scores"].sum(-1).float()
    metrics = group_metrics(uids, scores[:n], final_scores, scores[n:], len(swaps), bonus)
    if accepted_rewards:
        metrics["reward/expert_region"] = float(np.mean(accepted_rewards))
    return final, metrics


def group_metrics(
    uids: np.ndarray,
    on_scores: torch.Tensor,
    final_scores: torch.Tensor,
    ief_scores: torch.Tensor,
    n_accepted: int,
    bonus: float,
) -> dict[str, float]:
    """Per-step metrics of docs/architecture.md (reward/*, icpo/*) plus the share of groups with signal."""
    groups: dict[Any, list[int]] = {}
    for i, u in enumerate(uids):
        groups.setdefault(u, []).append(i)
    with_signal = [float(final_scores[rows].max() != final_scores[rows].min()) for rows in groups.values()]
    on_signal = [float(on_scores[rows].max() != on_scores[rows].min()) for rows in groups.values()]
    n_gen = int(ief_scores.numel())
    return {
        "reward/on_policy": float(on_scores.mean()),
        "reward/overall": float(final_scores.mean()),
        "icpo/ief_generated": float(n_gen),
        "icpo/ief_accepted": float(n_accepted),
        "icpo/accept_rate": n_accepted / n_gen if n_gen else 0.0,
        "icpo/ief_reward": float(ief_scores.mean()) if n_gen else 0.0,
        "icpo/bonus": float(bonus),
        "icpo/groups_with_signal": float(np.mean(with_signal)),
        "icpo/on_policy_groups_with_signal": float(np.mean(on_signal)),
    }
