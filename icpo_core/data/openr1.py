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

Every field is type-checked (:func:`text_field`): a row with a field of the wrong type (a number where the problem
text is expected, a list as the answer) is dropped as ``wrong_type``, one with a text over
:data:`~icpo_core.data.loading.MAX_TEXT_CHARS` as ``oversized_text``; the rows of a JSONL file may have any types,
line by line, as they come from :func:`~icpo_core.data.loading.read_jsonl`.

The functions are module-level and take plain arguments so ``datasets.map(num_proc=N)`` can ship them to workers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from icpo_core.data.loading import MAX_TEXT_CHARS, OVERSIZED, WRONG_TYPE
from icpo_core.grading.extract import last_boxed

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


def text_field(value: Any, *, number_ok: bool = False) -> tuple[str, str]:
    """(text, drop reason or "") of one field a row must hold as text.

    None (or NaN) is an absent field: ``("", "")``, the caller decides whether it may be absent. A string, or with
    ``number_ok`` an int / float (a gold answer such as 7), is its text; any other type (a list, a dict, a bool,
    a number where text is expected) is ``wrong_type``; a text over :data:`~icpo_core.data.loading.MAX_TEXT_CHARS`
    is ``oversized_text`` (it exceeds any token budget, and is never handed to the tokenizer).
    """
    if value is None or (isinstance(value, float) and value != value):
        return "", ""
    if isinstance(value, str):
        text = value
    elif number_ok and isinstance(value, int | float) and not isinstance(value, bool):
        text = str(value)
    else:
        return "", WRONG_TYPE
    if len(text) > MAX_TEXT_CHARS:
        return "", OVERSIZED
    return text, ""


def _message_text(message: Any) -> tuple[str, str]:
    if isinstance(message, dict):
        return text_field(message.get("content"))
    return text_field(message)


def _last_user_turn(prompt: Any) -> tuple[str, str]:
    if prompt is None or isinstance(prompt, str):
        return text_field(prompt)
    if not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
        return "", WRONG_TYPE
    users = [m for m in prompt if m.get("role") == "user"]
    return _message_text(users[-1]) if users else ("", "")


def _target_text(target: Any) -> tuple[str, str]:
    if isinstance(target, list):  # LUFFY: [{"role": "assistant", "content": trace}]
        return _message_text(target[0]) if target else ("", "")
    return _message_text(target)


def _result(
    problem: str, answer: Any, target: str, level: int, extra_drop: str = "", bad: str = ""
) -> dict[str, Any]:
    """A normalised row; ``bad`` (a damaged field: wrong_type / oversized_text) wins over every other reason."""
    gold, drop = answer_problem(answer)
    problem = (problem or "").strip()
    if not problem:
        drop = "no_problem"
    drop = bad or drop or extra_drop
    if drop:  # a dropped row keeps nothing of its (maybe huge, maybe odd) content
        return {"problem": "", "answer": "", "target": "", "level": -1, "drop": drop}
    return {"problem": problem, "answer": gold, "target": target, "level": level, "drop": ""}


def _collect(rows: list[dict[str, Any]]) -> Batch:
    keys = ("problem", "answer", "target", "level", "drop")
    return {k: [r[k] for r in rows] for k in keys}


def normalize_luffy(batch: Batch) -> Batch:
    """LUFFY / verl layout -> normalised columns."""
    n = len(batch["prompt"])
    targets = batch.get("target") or [None] * n
    rows = []
    for prompt, rm, target in zip(batch["prompt"], batch["reward_model"], targets, strict=True):
        problem, bad_problem = _last_user_turn(prompt)
        gold, bad_gold = "", ""
        if isinstance(rm, dict):
            gold, bad_gold = text_field(rm.get("ground_truth"), number_ok=True)
        elif rm is not None:
            bad_gold = WRONG_TYPE
        trace, bad_trace = _target_text(target)
        rows.append(_result(problem, gold, trace, -1, bad=bad_problem or bad_gold or bad_trace))
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


def _list_of(value: Any, kind: type | tuple[type, ...]) -> bool:
    """None, or a list whose items are None or of ``kind``."""
    return value is None or (isinstance(value, list) and all(v is None or isinstance(v, kind) for v in value))


def normalize_openr1(batch: Batch) -> Batch:
    """OpenR1-Math layout -> normalised columns (target = the verified R1 trace)."""
    n = len(batch["problem"])
    llama = batch.get("correctness_llama") or [None] * n
    complete = batch.get("is_reasoning_complete") or [None] * n
    qtype = batch.get("question_type") or [None] * n
    rows = []
    for i in range(n):
        problem, bad = text_field(batch["problem"][i])
        answer, bad_answer = text_field(batch["answer"][i], number_ok=True)
        gens, mv = batch["generations"][i], batch["correctness_math_verify"][i]
        lists_ok = _list_of(gens, str) and all(_list_of(x, bool) for x in (mv, llama[i], complete[i]))
        trace, bad_trace = "", ""
        if lists_ok:
            trace, bad_trace = text_field(pick_verified_trace(gens, mv, llama[i], complete[i]))
        bad = bad or bad_answer or ("" if lists_ok else WRONG_TYPE) or bad_trace
        row = _result(problem, answer, trace, -1, "" if trace else "no_verified_trace", bad=bad)
        if not row["drop"] and qtype[i] == "proof":
            row = _result("", "", "", -1, bad="unusable_answer")
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
        problem, bad_problem = text_field(problem)
        solution, bad_solution = _target_text(solution)
        answer, bad_answer = text_field(answer, number_ok=True)
        gold = answer if answer.strip() else last_boxed(solution)
        level = level if isinstance(level, int) and not isinstance(level, bool) else -1
        rows.append(_result(problem, gold, solution, level, bad=bad_problem or bad_answer or bad_solution))
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
