"""Training prompts for the local engine: the verl parquet, tokenized once, served in seeded epoch order."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from icpo_core.algorithm.demos import Demo, DemoPool
from icpo_core.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptRow:
    """One training prompt of ``data/train.parquet`` (verl schema)."""

    messages: list[dict[str, str]]  # chat prompt: one user turn (problem + suffix), maybe a system turn
    gold: str  # reward_model.ground_truth
    question: str  # extra_info.question: the raw problem (demos exclude it)
    suffix: str  # the prompt suffix, re-used for the IEF demos' questions
    prompt_ids: tuple[int, ...]  # chat-templated plain prompt, with the generation prompt
    target: str = ""  # the expert solution (R1 trace / worked solution): LUFFY's off-policy response


def chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat prompt ending in the assistant generation prompt (no extra BOS: the template has it)."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _suffix_of(messages: list[dict[str, str]], question: str, default: str) -> str:
    users = [m["content"] for m in messages if m.get("role") == "user"]
    if users and question and users[-1].startswith(question):
        return users[-1][len(question) :]
    return default


def load_prompts(
    path: str | Path, tokenizer: Any, max_prompt_length: int, default_suffix: str
) -> list[PromptRow]:
    """Read and tokenize the training parquet; prompts longer than ``max_prompt_length`` are dropped (logged)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: training set not found; run `icpo prepare-train` (dvc repro prepare_train)")
    try:
        names = set(pq.read_schema(path).names)
        columns = ["prompt", "reward_model", "extra_info", *(["target"] if "target" in names else [])]
        records = pq.read_table(path, columns=columns).to_pylist()
    except Exception as e:  # pyarrow raises several types for a wrong schema / corrupt file
        raise DataError(
            f"{path}: not a verl training parquet (prompt, reward_model, extra_info): {e}"
        ) from None
    rows, too_long = [], 0
    for r in records:
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in r["prompt"]]
        question = str((r.get("extra_info") or {}).get("question") or "")
        ids = chat_ids(tokenizer, messages)
        if len(ids) > max_prompt_length:
            too_long += 1
            continue
        rows.append(
            PromptRow(
                messages=messages,
                gold=str(r["reward_model"]["ground_truth"]),
                question=question,
                suffix=_suffix_of(messages, question, default_suffix),
                prompt_ids=tuple(ids),
                target=str(r.get("target") or ""),
            )
        )
    if too_long:
        log.warning(
            "%s: %d prompts longer than max_prompt_length=%d dropped", path, too_long, max_prompt_length
        )
    if not rows:
        raise DataError(f"{path}: no usable training prompts (empty, or all longer than max_prompt_length)")
    return rows


def load_demo_pool(path: str | Path, k_demos: int) -> DemoPool:
    """The demo cache of an ICPO run (``data/demos.parquet``): its usable demos (a non-empty text problem,
    solution and answer; others are dropped with one warning), at least ``k_demos`` of them, else a DataError
    naming the file and the fix -- not an error deep in the first step's sampling."""
    import pyarrow.parquet as pq

    path = Path(path)
    fix = "rerun `icpo prepare-demos` (dvc repro prepare_demos), or train a run with n_off: 0"
    if not path.is_file():
        raise DataError(f"{path}: demo cache not found; run `icpo prepare-demos`")
    try:
        records = pq.read_table(path, columns=["problem", "solution", "answer"]).to_pylist()
    except Exception as e:  # pyarrow raises several types for a missing column / corrupt file
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise DataError(
            f"{path}: not a readable demo cache (problem, solution, answer: {first}); {fix}"
        ) from None
    demos = [
        Demo(r["problem"], r["solution"], r["answer"])
        for r in records
        if all(isinstance(r[k], str) and r[k].strip() for k in ("problem", "solution", "answer"))
    ]
    if len(demos) < len(records):
        log.warning(
            "%s: %d of %d demos without a problem, a solution or an answer dropped",
            path,
            len(records) - len(demos),
            len(records),
        )
    if len(demos) < max(k_demos, 1):
        raise DataError(
            f"{path}: {len(demos)} usable demos ({len(records)} rows), the run needs at least "
            f"algorithm.k_demos = {k_demos} (a demo is a non-empty problem, solution and answer); {fix}"
        )
    return DemoPool(demos)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of epoch ``epoch`` (a pure function of seed and epoch: resumable from a position)."""
    return np.random.default_rng([seed, epoch, 0x1CF0]).permutation(n)


def take(n_rows: int, seed: int, position: int, count: int) -> list[int]:
    """Row indices ``position .. position+count`` of the endless seeded sequence of shuffled epochs."""
    out, orders = [], {}
    for pos in range(position, position + count):
        epoch, offset = divmod(pos, n_rows)
        if epoch not in orders:
            orders[epoch] = epoch_order(n_rows, seed, epoch)
        out.append(int(orders[epoch][offset]))
    return out
