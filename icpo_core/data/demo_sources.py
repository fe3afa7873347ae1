"""The demo cache: solved problems WITH worked solutions, from any source, as rows of ``data/demos.parquet``.

Sources (``data.demos.source``):

- ``synthetic``: the generator's demo split (disjoint from the train and eval splits).
- ``math_hub``: MATH train (``DigitalLearningGmbH/MATH-lighteval``: problem, solution, level, type); the answer
  is the last ``\\boxed{}`` of the solution, rows without one are dropped. The solution text is kept (the
  released demo-cache script lost it).
- ``local``: jsonl / parquet with problem + solution (+ answer), or the in-context RL exemplar format
  (one episode per line: ``{"exemplars": [{"prompt", "answer"}], "queries": [...]}``; each exemplar is a demo).
- ``pkl``: the official repository's ``.pkl`` demo cache (``{"entries": {uid: {question, answer, metadata}}}``),
  only with ``data.demos.allow_pickle: true``: unpickling runs code from the file.

Every stored solution is non-empty and boxes its answer (:func:`~icpo_core.data.answers.ensure_boxed_ending`).
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icpo_core.data import synthetic
from icpo_core.data.answers import ensure_boxed_ending
from icpo_core.data.loading import (
    WRONG_TYPE,
    JsonlRows,
    dropped_summary,
    load_table,
    local_json_lines,
    require_column_names,
    require_columns,
    warn_dropped,
    where_label,
)
from icpo_core.data.openr1 import answer_problem, text_field
from icpo_core.errors import DataError
from icpo_core.grading.extract import last_boxed

if TYPE_CHECKING:
    from icpo_core.config import Params

log = logging.getLogger(__name__)

MATH_HUB_ID = "DigitalLearningGmbH/MATH-lighteval"
MATH_COLUMNS = ("problem", "solution")
# The suffix the released code appended to every cached question; stripped so demos hold the raw problem.
RELEASED_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."
_LABEL = re.compile(r"^\s*(question|problem|answer|solution)\s*:\s*", re.IGNORECASE)


@dataclass
class DemoStats:
    source: str
    dataset: str
    rows_in: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    # reason -> the first dropped row's number in the source (1-based; a JSONL file's line number, or
    # "<file>:<line>" in a folder of JSONL files), in source order
    first_dropped_row: dict[str, int | str] = field(default_factory=dict)
    row_unit: str = "row"


@dataclass
class Candidate:
    """A raw demo before checks: ``answer`` may be None (then the solution's last box is used).

    ``row``: where it is in the source, for messages (its row, a JSONL file's line, ``<file>:<line>`` in a
    folder's files); ``drop``: a reason already known (a damaged line) -- the candidate is counted and
    dropped."""

    id: str
    problem: Any
    solution: Any
    answer: Any
    source: str
    row: int | str | None = None
    drop: str = ""


# What a usable demo holds: the fix named when none is.
DEMO_NEEDS = (
    "a demo needs a text problem, a non-empty worked text solution and a gold answer (text or number, or a "
    "\\boxed{} in the solution)"
)


def _check(c: Candidate) -> tuple[str, str, str, str]:
    """(problem, solution, answer, drop reason or "") of one candidate, its fields type-checked."""
    if c.drop:
        return "", "", "", c.drop
    problem, bad_problem = text_field(c.problem)
    solution, bad_solution = text_field(c.solution)
    answer, bad_answer = text_field(c.answer, number_ok=True)
    if bad := bad_problem or bad_solution or bad_answer:
        return "", "", "", bad
    problem, solution = problem.strip(), solution.strip()
    answer, reason = answer_problem(answer if answer.strip() else last_boxed(solution))
    if not problem:
        reason = "no_problem"
    elif not solution:
        reason = "no_solution"
    return problem, solution, answer, reason


def _clean(candidates: Iterable[Candidate], stats: DemoStats) -> list[dict[str, str]]:
    """Apply the demo rules, counting every dropped row by reason (and its first row number)."""
    dropped: Counter[str] = Counter()
    seen: set[str] = set()
    rows = []
    for c in candidates:
        stats.rows_in += 1
        problem, solution, answer, reason = _check(c)
        if not reason and problem in seen:
            reason = "duplicate"
        if reason:
            dropped[reason] += 1
            if c.row is not None:
                stats.first_dropped_row.setdefault(reason, c.row)
            continue
        seen.add(problem)
        solution = ensure_boxed_ending(solution, answer)
        rows.append(
            {"id": c.id, "problem": problem, "solution": solution, "answer": answer, "source": c.source}
        )
    stats.dropped.update(dropped)
    return rows


Row = tuple[int, int | str, dict[str, Any] | None, str]  # (number, where, row or None, drop reason)


def _jsonl_items(table: JsonlRows) -> Iterator[Row]:
    """A JSON-lines table's rows and damaged lines in source order (a damaged line is one dropped row)."""
    items = sorted(
        [(n, row, "") for n, row in zip(table.lines, table.rows, strict=True)]
        + [(n, None, reason) for n, reason in table.bad],
        key=lambda x: x[0],
    )
    return ((n, table.where(n), row, drop) for n, row, drop in items)


def _rows(path: str, what: str, table: JsonlRows | None) -> tuple[list[str], Iterator[Row]]:
    """(columns, rows) of a local source: ``table``, its JSON lines read line by line
    (:func:`~icpo_core.data.loading.local_json_lines`), else the file or folder through ``datasets``."""
    if table is not None:
        return table.columns, _jsonl_items(table)
    ds = load_table("", path=path, what=what)
    return ds.column_names, ((i + 1, i + 1, row, "") for i, row in enumerate(ds))


# ------------------------------------------------------------------------------------------------- sources


def _synthetic(params: Params) -> Iterator[Candidate]:
    splits = synthetic.splits_for(params)
    for p in splits["demo"]:
        yield Candidate(p.id, p.problem, p.solution, p.answer, synthetic.eval_name(p.level))


def _math_hub(path: str | None, table: JsonlRows | None) -> Iterator[Candidate]:
    if path is not None and table is not None:
        columns, rows = _rows(path, "data.demos", table)
        if columns:
            require_column_names(
                columns, MATH_COLUMNS, source=path, layout="MATH (problem, solution, level, type)"
            )
    else:
        ds = load_table(MATH_HUB_ID, path=path, split="train", what="data.demos")
        require_columns(
            ds, MATH_COLUMNS, source=path or MATH_HUB_ID, layout="MATH (problem, solution, level, type)"
        )
        rows = ((i + 1, i + 1, row, "") for i, row in enumerate(ds))
    for n, where, row, drop in rows:
        row = row or {}
        solution = row.get("solution")
        boxed = last_boxed(solution) if isinstance(solution, str) else None
        yield Candidate(
            f"math-train-{n - 1:05d}", row.get("problem"), solution, boxed or "", MATH_HUB_ID, where, drop
        )


def _strip_label(text: Any) -> str:
    return _LABEL.sub("", str(text or ""), count=1).strip()


def _local(path: str, table: JsonlRows | None) -> Iterator[Candidate]:
    columns, rows = _rows(path, "data.demos", table)
    cols = set(columns)
    source = Path(path).name
    if "exemplars" in cols:  # in-context RL episodes: every exemplar is a solved problem
        for n, where, episode, drop in rows:
            exemplars = (episode or {}).get("exemplars") or []
            if drop or not isinstance(exemplars, list):
                yield Candidate(f"{source}-{n}", None, None, None, source, where, drop or WRONG_TYPE)
                continue
            for j, ex in enumerate(exemplars):
                if not isinstance(ex, dict):
                    yield Candidate(f"{source}-{n}-{j}", None, None, None, source, where, WRONG_TYPE)
                    continue
                text, bad = text_field(ex.get("answer"))
                prompt, bad_prompt = text_field(ex.get("prompt"))
                text = text.strip()
                answer = last_boxed(text) or _strip_label(text)
                yield Candidate(
                    f"{source}-{n - 1}-{j}",
                    _strip_label(prompt),
                    text,
                    answer,
                    source,
                    where,
                    bad or bad_prompt,
                )
        return
    if columns and ("problem" not in cols or "solution" not in cols):
        raise DataError(
            f"{path}: missing column(s) {sorted({'problem', 'solution'} - cols)}; a local demo file needs "
            f"problem + solution (+ answer), or the exemplar layout (exemplars: [{{prompt, answer}}]); "
            f"found {columns}"
        )
    for n, where, row, drop in rows:
        row = row or {}
        uid = row.get("id")
        uid = str(uid) if isinstance(uid, str | int) and str(uid) else f"{source}-{n - 1}"
        yield Candidate(uid, row.get("problem"), row.get("solution"), row.get("answer"), source, where, drop)


def _pkl(path: str) -> Iterator[Candidate]:
    import pickle

    log.warning(
        "loading the pickle %s: unpickling runs arbitrary code from the file (data.demos.allow_pickle: true)",
        path,
    )
    try:
        with open(path, "rb") as f:
            cache = pickle.load(f)  # noqa: S301 -- explicit opt-in via data.demos.allow_pickle
    except Exception as e:
        raise DataError(f"{path}: cannot unpickle the demo cache ({type(e).__name__}: {e})") from None
    entries = cache.get("entries") if isinstance(cache, dict) else None
    if not isinstance(entries, dict):
        raise DataError(
            f"{path}: not the official demo cache: expected a dict with 'entries': {{uid: {{...}}}}"
        )
    for uid, entry in entries.items():
        entry = entry if isinstance(entry, dict) else {}
        question = str(entry.get("question") or "").removesuffix(RELEASED_SUFFIX)
        meta = entry.get("metadata") or {}
        answer = meta.get("final_answer") if isinstance(meta, dict) else None
        yield Candidate(
            f"pkl-{uid}", question, entry.get("answer"), answer, str(meta.get("subject") or "pkl")
        )


def build_demos(params: Params) -> tuple[list[dict[str, str]], DemoStats]:
    """Demo rows (id, problem, solution, answer, source) and the stats; DataError when none is usable."""
    demos = params.data.demos
    # a local file or folder of JSON lines, read line by line (None: datasets reads it)
    table = local_json_lines(demos.path) if demos.source in ("math_hub", "local") else None
    if demos.source == "synthetic":
        name, candidates = "synthetic", _synthetic(params)
    elif demos.source == "math_hub":
        name, candidates = demos.path or MATH_HUB_ID, _math_hub(demos.path, table)
    elif demos.source == "local":
        name, candidates = str(demos.path), _local(str(demos.path), table)
    else:
        name, candidates = str(demos.path), _pkl(str(demos.path))
    stats = DemoStats(source=demos.source, dataset=name, row_unit="line" if table is not None else "row")
    rows = _clean(candidates, stats)
    warn_dropped(log, name, "demos", stats.rows_in, stats.dropped, stats.first_dropped_row, stats.row_unit)
    if not rows:
        reasons = dropped_summary(stats.dropped, {})
        first = next(iter(stats.first_dropped_row.values()), None)  # the earliest: they are in source order
        where = f" (the first at {where_label(stats.row_unit, first)})" if first is not None else ""
        raise DataError(
            f"{name}: no usable demos ({stats.rows_in} rows in; dropped: {reasons}){where}; {DEMO_NEEDS}: fix "
            "the file (data.demos.path), or use another data.demos.source"
        )
    if demos.max_rows is not None and len(rows) > demos.max_rows:
        picked = sorted(random.Random(params.seed).sample(range(len(rows)), demos.max_rows))
        stats.dropped["over_max_rows"] = len(rows) - demos.max_rows
        rows = [rows[i] for i in picked]
    stats.rows_kept = len(rows)
    return rows, stats
