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

LUFFY (``off_policy: expert_trace``): :func:`expert_trace_rows` picks the ``n_on - n_off`` rows per group that
are rolled out, :func:`insert_expert_traces` fills the other ``n_off`` slots with the row's expert trace (flagged
``icpo_ief``: the loss shapes its tokens as it shapes IEF tokens) and :func:`plan_expert_traces` plans the step.
Reward controls (``reward: shuffled | random | format``): :func:`apply_reward_control` replaces the rewards after grading and
before the plan, as the local engine does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from icpo_core.algorithm import (
    DemoPool,
    OffPolicySource,
    build_ief_messages,
    on_policy_rollouts,
    plan_step,
    reward_variant,
    training_rewards,
)
from icpo_core.algorithm.batch_keys import IEF_KEY

if TYPE_CHECKING:
    from verl import DataProto

    from icpo_core.config import AlgorithmParams
    from icpo_core.data.expert_traces import ExpertTrace


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
    source: OffPolicySource,
    pool: DemoPool | None,
    suffix: str,
    rng: np.random.Generator,
) -> tuple[DataProto, np.ndarray]:
    """``prompts`` (B * N_on rows, grouped by ``uid``) plus the source's generated off-policy rows per group,
    appended at the end.

    Each IEF row copies its group's first row; its ``raw_prompt`` becomes the IEF messages when the source draws
    demos (:meth:`OffPolicySource.draw_demos`: k demos from ``pool``, never the question itself) and stays the
    plain prompt otherwise (``ief_no_demos``, like the released code whose vLLM call reused the plain prompt
    ids). Returns ``(extended, src)`` where ``src[j]`` is the source row of IEF row j.
    """
    from verl import DataProto

    uids = prompts.non_tensor_batch["uid"]
    per = source.generated_off_per_prompt(algo)
    src = np.repeat(np.asarray(first_row_per_group(uids), dtype=np.int64), per)
    if len(src) == 0:
        return prompts, src
    ief = prompts.select_idxs(src)
    raw = ief.non_tensor_batch["raw_prompt"].copy()
    extra = ief.non_tensor_batch.get("extra_info")
    for j in range(len(src)):
        messages = list(raw[j])
        question = _question_of(messages, extra[j] if extra is not None else None)
        demos = source.draw_demos(algo, pool, rng, question)
        if demos is not None:
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
        set_row_reward(final, slot, trained_r)
    final.batch[IEF_KEY] = ief_flag
    if len(src) and "rollout_log_probs" in final.batch.keys():  # noqa: SIM118
        # IEF rows' rollout log-probs are demo-conditioned; keep no mix of pi(.|[D;q]) and pi(.|q) around.
        final.batch.pop("rollout_log_probs")
    return final, defined_metrics(plan.metrics)


def set_row_reward(batch: DataProto, row: int, reward: float) -> None:
    """Make ``rm_scores[row]`` sum to ``reward``: the difference goes on the last valid response token, where
    verl's reward loop puts the reward."""
    extra = float(reward) - float(batch.batch["rm_scores"][row].sum())
    if extra:
        prompt_len = batch.batch["prompts"].shape[1]
        last = int(batch.batch["attention_mask"][row, prompt_len:].sum().item()) - 1
        batch.batch["rm_scores"][row, max(last, 0)] += extra


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


# ------------------------------------------------------------------------------ LUFFY: expert traces in the batch


def expert_trace_rows(uids: np.ndarray, algo: AlgorithmParams) -> tuple[np.ndarray, np.ndarray]:
    """``(generated, trace_slots)``: per group (``uid``, N_on rows) the first ``n_on - n_off`` rows are rolled
    out, the last ``n_off`` slots take the expert trace (LUFFY's group: rollouts, then traces)."""
    n_gen = on_policy_rollouts(algo)
    gen: list[int] = []
    slots: list[int] = []
    for uid, rows in rows_per_group(uids).items():
        if len(rows) != algo.n_on:
            raise ValueError(f"group {uid} has {len(rows)} rows, expected rollout.n = n_on = {algo.n_on}")
        gen += rows[:n_gen]
        slots += rows[n_gen:]
    return np.asarray(gen, dtype=np.int64), np.asarray(slots, dtype=np.int64)


def insert_expert_traces(
    uids: np.ndarray,
    out: DataProto,
    generated: np.ndarray,
    slots: np.ndarray,
    traces: Sequence[ExpertTrace],
    rewards: Sequence[float],
    pad_token_id: int,
) -> DataProto:
    """The B * N_on rows of a LUFFY step: the rollouts ``out`` (row k generated for slot ``generated[k]``) and one
    expert-trace row per slot of ``slots`` (``traces[j]`` with verifier reward ``rewards[j]``), in slot order,
    with the ``icpo_ief`` off-policy flag on the trace rows.

    A trace row copies a rollout of its group (the same plain prompt, prompt tensors and non-tensor fields) and
    replaces the response in verl's layout: ``responses`` right-padded with ``pad_token_id`` to the rollout's
    response width, ``response_mask`` / the response half of ``attention_mask`` set on the trace tokens,
    ``input_ids`` = prompt + response, ``position_ids`` from the mask, the reward on its last token (and in the
    reward loop's ``acc`` field). Rollout log-probs are dropped (a trace has none); verl computes old / ref
    log-probs of every row itself.
    """
    from verl import DataProto
    from verl.utils.model import compute_position_id_with_mask

    first_of: dict[Any, int] = {}
    for k, slot in enumerate(generated):
        first_of.setdefault(uids[slot], k)
    rows = out.select_idxs(np.asarray([first_of[uids[s]] for s in slots], dtype=np.int64))
    b = rows.batch
    prompt_len, width = b["prompts"].shape[1], b["responses"].shape[1]
    for j, trace in enumerate(traces):
        ids = torch.tensor(trace.ids, dtype=b["responses"].dtype)
        if len(ids) > width:
            raise ValueError(f"an expert trace of {len(ids)} tokens exceeds the response width {width}")
        mask = torch.zeros(width, dtype=b["attention_mask"].dtype)
        mask[: len(ids)] = 1
        b["responses"][j] = pad_token_id
        b["responses"][j, : len(ids)] = ids
        b["input_ids"][j, prompt_len:] = b["responses"][j]
        b["attention_mask"][j, prompt_len:] = mask
        if "response_mask" in b.keys():  # noqa: SIM118
            b["response_mask"][j] = mask.to(b["response_mask"].dtype)
        if "position_ids" in b.keys():  # noqa: SIM118
            b["position_ids"][j] = compute_position_id_with_mask(b["attention_mask"][j : j + 1])[0]
        b["rm_scores"][j] = 0.0
        b["rm_scores"][j, max(len(ids) - 1, 0)] = float(rewards[j])
    if "acc" in rows.non_tensor_batch:  # the reward loop's per-row verifier score (a float compute_score)
        rows.non_tensor_batch["acc"][:] = np.asarray(rewards, dtype=rows.non_tensor_batch["acc"].dtype)
    order = np.empty(len(uids), dtype=np.int64)
    order[generated] = np.arange(len(generated))
    order[slots] = len(generated) + np.arange(len(slots))
    final = DataProto.concat([out, rows]).select_idxs(order)
    final.meta_info = dict(
        out.meta_info
    )  # the generation's meta info (timing, reward keys), never merged twice
    flag = torch.zeros(len(uids), dtype=torch.float32)
    flag[torch.as_tensor(slots)] = 1.0
    final.batch[IEF_KEY] = flag
    if "rollout_log_probs" in final.batch.keys():  # noqa: SIM118
        final.batch.pop("rollout_log_probs")
    return final


def plan_expert_traces(
    uids: np.ndarray, final: DataProto, algo: AlgorithmParams, step: int, total_steps: int
) -> dict[str, float]:
    """:func:`plan_step` on a LUFFY batch (:func:`insert_expert_traces`): per group its rollouts as on-policy
    rows and its trace rows as off-policy rows, every row trained; the trained rewards are written back into
    ``rm_scores`` (for LUFFY they equal the verifier's: no bonus, nothing replaced). Returns the step metrics."""
    scores = final.batch["rm_scores"].sum(-1).float()
    off = final.batch[IEF_KEY].bool()
    groups = list(rows_per_group(uids).values())
    on_rows = [[i for i in rows if not off[i]] for rows in groups]
    off_rows = [[i for i in rows if off[i]] for rows in groups]
    plan = plan_step(
        [[float(scores[i]) for i in rows] for rows in on_rows],
        [[float(scores[i]) for i in rows] for rows in off_rows],
        algo,
        step=step,
        total_steps=total_steps,
        rng=np.random.default_rng(0),  # LUFFY's plan draws nothing
    )
    for on, offs, group in zip(on_rows, off_rows, plan.groups, strict=True):
        for r in group.rows:
            set_row_reward(final, (offs if r.source == "off" else on)[r.index], r.reward)
    return defined_metrics(plan.metrics)


def trace_metrics(traces: Sequence[ExpertTrace]) -> dict[str, float]:
    """``luffy/trace_truncated`` (trace rows cut at the response length) and ``perf/expert_tokens``, as locally."""
    return {
        "luffy/trace_truncated": float(sum(t.truncated for t in traces)),
        "perf/expert_tokens": float(sum(len(t.ids) for t in traces)),
    }


# ------------------------------------------------------------------------------ reward controls


def group_major_order(uids: np.ndarray, off_policy: Sequence[bool]) -> list[int]:
    """Row indices prompt by prompt (groups in order of first appearance): each group's on-policy rows, then its
    off-policy rows, each in batch order. The local engine's trajectory order within a step."""
    groups: dict[Any, tuple[list[int], list[int]]] = {}
    for i, u in enumerate(uids):
        groups.setdefault(u, ([], []))[1 if off_policy[i] else 0].append(i)
    return [i for on, off in groups.values() for i in (*on, *off)]


def response_texts(batch: DataProto, tokenizer: Any, rows: Sequence[int]) -> list[str]:
    """The decoded responses of ``rows`` (valid tokens only, special tokens skipped, as the grader reads them)."""
    b = batch.batch
    prompt_len = b["prompts"].shape[1]
    out = []
    for i in rows:
        n = int(b["attention_mask"][i, prompt_len:].sum())
        out.append(tokenizer.decode(b["responses"][i, :n].tolist(), skip_special_tokens=True))
    return out


def apply_reward_control(
    batch: DataProto,
    uids: np.ndarray,
    off_policy: Sequence[bool],
    algo: AlgorithmParams,
    rng: np.random.Generator,
    tokenizer: Any = None,
) -> dict[str, float]:
    """Replace the verifier's ``rm_scores`` by ``algorithm.reward``'s control reward (:func:`training_rewards`),
    drawn from ``rng`` (:func:`~icpo_core.algorithm.control_rewards.control_rng` of the step) over the rows in
    :func:`group_major_order` (``uids[i]`` / ``off_policy[i]``: row i's group and whether it is an IEF or trace
    row), so trajectory i of a step gets the flip it gets on the local engine. ``format`` decodes the responses
    with ``tokenizer``. Returns ``reward/verifier_on_policy``, the verifier's mean over the on-policy rows (the
    local engine logs it for controls). ``verifier`` changes nothing."""
    variant = reward_variant(algo)
    if not variant.control:
        return {}
    order = group_major_order(uids, off_policy)
    scores = batch.batch["rm_scores"].sum(-1).float()
    verifier = [float(scores[i]) for i in order]
    if variant.needs_text and tokenizer is None:
        raise ValueError(f"reward: {algo.reward} needs the policy's tokenizer to read the responses")
    texts = response_texts(batch, tokenizer, order) if variant.needs_text else [""] * len(order)
    new = training_rewards(algo, verifier, texts, rng)
    for i, r in zip(order, new, strict=True):
        set_row_reward(batch, i, r)
    on = [float(scores[i]) for i in order if not off_policy[i]]
    return {"reward/verifier_on_policy": float(np.mean(on)) if on else math.nan}
