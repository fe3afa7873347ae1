"""Row adapters for the training sets' real column layouts, and the token-length filter.

Layouts (each adapter maps a batch to the normalised columns ``problem``, ``answer``, ``target``, ``level``,
``drop``; ``drop`` is "" for a usable row, else the reason it is dropped):

- **LUFFY / verl** (``Elliott/Openr1-Math-46k-8192`` as released, and any verl parquet): ``prompt`` (chat messages,
  LUFFY's system prompt + the user problem), ``reward_model.ground_truth``, ``target`` (a list holding one
  assistant message with the R1 trace), ``data_source``, ``extra_info``. The problem is the last user turn
  (as the released ICPO script, which drops LUFFY's system prompt).
- **OpenR1-Math** (``open-r1/OpenR1-Math-220k``): ``problem``, ``solution``, ``answer``, ``question_type``,
  ``generations`` (2-4 R1 traces), ``correctness_math_verify``, ``correctness_llama``, ``is_reasoning_complete``,
  ... The trace kept is the first complete one judged correct (math-verify, else the Llama judge); rows with none
  are dropped, as in LUFFY's 46k subset.
- **plain** (local files): ``problem`` + ``answer`` (or a ``solution`` whose last ``\\boxed{}`` is the answer),
  optional ``solution`` / ``target`` kept as the target text.

The functions are module-level and take plain arguments so ``datasets.map(num_proc=N)`` can ship them to workers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from icpo_core.data.answers import last_boxed

LUFFY_COLUMNS = ("prompt", "reward_model")
OPENR1_COLUMNS = ("problem", "answer", "generations", "correctness_math_verify")
PLAIN_COLUMNS = ("problem",)

# Gold answers that cannot be graded by a rule-based verifier (NuminaMath marks proofs like this).
_UNUSABLE_ANSWERS = {"proof", "notfound", "not found", "none", "null", "n/a", "-", "?"}

Batch = dict[str, list[Any]]


def detect_layout(columns: Sequence[str]) -> str | None:
    """'luffy', 'openr1' or 'plain' for a table with these columns; None when none fits."""
    cols = set(columns)
    if cols.issuperset(LUFFY_COLUMNS):
        return "luffy"
    if cols.issuperset(OPENR1_COLUMNS):
        return "openr1"
    if "problem" in cols and ({"answer", "solution"} & cols):
        return "plain"
    return None


def answer_problem(answer: Any) -> tuple[str, str]:
    """(normalised gold answer, drop reason or "")."""
    if answer is None or (isinstance(answer, float) and answer != answer):  # None / NaN
        return "", "no_answer"
    text = str(answer).strip()
    if not text:
        return "", "no_answer"
    if text.lower() in _UNUSABLE_ANSWERS:
        return text, "unusable_answer"
    return text, ""


def _message_text(message: Any) -> str:
    if isinstance(message, dict):
        return str(message.get("content") or "")
    return "" if message is None else str(message)


def _last_user_turn(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m for m in (prompt or []) if isinstance(m, dict) and m.get("role") == "user"]
    return _message_text(users[-1]) if users else ""


def _target_text(target: Any) -> str:
    if isinstance(target, list):  # LUFFY: [{"role": "assistant", "content": trace}]
        return _message_text(target[0]) if target else ""
    return _message_text(target)


def _result(problem: str, answer: Any, target: str, level: int, extra_drop: str = "") -> dict[str, Any]:
    gold, drop = answer_problem(answer)
    problem = (problem or "").strip()
    if not problem:
        drop = "no_problem"
    return {"problem": problem, "answer": gold, "target": target, "level": level, "drop": drop or extra_drop}


def _collect(rows: list[dict[str, Any]]) -> Batch:
    keys = ("problem", "answer", "target", "level", "drop")
    return {k: [r[k] for r in rows] for k in keys}


def normalize_luffy(batch: Batch) -> Batch:
    """LUFFY / verl layout -> normalised columns."""
    n = len(batch["prompt"])
    targets = batch.get("target") or [None] * n
    rows = []
    for prompt, rm, target in zip(batch["prompt"], batch["reward_model"], targets, strict=True):
        gold = rm.get("ground_truth") if isinstance(rm, dict) else None
        rows.append(_result(_last_user_turn(prompt), gold, _target_text(target), -1))
    return _collect(rows)


def pick_verified_trace(
    generations: Sequence[str] | None,
    math_verify: Sequence[bool | None] | None,
    llama: Sequence[bool | None] | None = None,
    complete: Sequence[bool | None] | None = None,
) -> str | None:
    """First complete R1 trace judged correct by math-verify, else by the Llama judge; None if there is none."""
    generations = list(generations or [])
    for judge in (math_verify, llama):
        judge = list(judge or [])
        for i, text in enumerate(generations):
            ok = i < len(judge) and judge[i] is True
            finished = complete is None or (i < len(complete) and complete[i] is not False)
            if ok and finished and text:
                return text
    return None


def normalize_openr1(batch: Batch) -> Batch:
    """OpenR1-Math layout -> normalised columns (target = the verified R1 trace)."""
    n = len(batch["problem"])
    llama = batch.get("correctness_llama") or [None] * n
    complete = batch.get("is_reasoning_complete") or [None] * n
    qtype = batch.get("question_type") or [None] * n
    rows = []
    for i in range(n):
        trace = pick_verified_trace(
            batch["generations"][i], batch["correctness_math_verify"][i], llama[i], complete[i]
        )
        row = _result(
            batch["problem"][i], batch["answer"][i], trace or "", -1, "" if trace else "no_verified_trace"
        )
        if not row["drop"] and qtype[i] == "proof":
            row["drop"] = "unusable_answer"
        rows.append(row)
    return _collect(rows)


def normalize_plain(batch: Batch) -> Batch:
    """problem / answer / solution layout -> normalised columns (answer from the solution's last box if absent)."""
    n = len(batch["problem"])
    answers = batch.get("answer") or [None] * n
    solutions = batch.get("solution") or batch.get("target") or [None] * n
    levels = batch.get("level") or [-1] * n
    rows = []
    for problem, answer, solution, level in zip(batch["problem"], answers, solutions, levels, strict=True):
        solution = _target_text(solution)
        if answer is None or str(answer).strip() == "":
            answer = last_boxed(solution)
        level = level if isinstance(level, int) else -1
        rows.append(_result(str(problem or ""), answer, solution, level))
    return _collect(rows)


NORMALIZERS = {"luffy": normalize_luffy, "openr1": normalize_openr1, "plain": normalize_plain}


# ------------------------------------------------------------------------------------------ token-length filter


@functools.lru_cache(maxsize=4)
def load_tokenizer(tokenizer_dir: str) -> Any:
    """The model folder's fast tokenizer (``tokenizers`` library: quick to load in every worker process)."""
    path = Path(tokenizer_dir) / "tokenizer.json"
    if path.exists():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path))
    from transformers import AutoTokenizer  # slow-tokenizer-only models

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _lengths(tok: Any, texts: list[str]) -> list[int]:
    if hasattr(tok, "encode_batch"):
        return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def count_tokens(batch: Batch, tokenizer_dir: str, suffix: str) -> Batch:
    """``n_tokens`` = tokens of the user prompt (problem + suffix) + tokens of the target trace."""
    tok = load_tokenizer(tokenizer_dir)
    prompt = _lengths(tok, [p + suffix for p in batch["problem"]])
    target = _lengths(tok, [t or "" for t in batch["target"]])
    return {"n_tokens": [a + b for a, b in zip(prompt, target, strict=True)]}
