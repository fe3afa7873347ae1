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
from icpo_core.data.answers import ensure_boxed_ending, last_boxed
from icpo_core.data.loading import load_table, require_columns
from icpo_core.data.openr1 import answer_problem
from icpo_core.errors import DataError

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


@dataclass
class Candidate:
    """A raw demo before checks: ``answer`` may be None (then the solution's last box is used)."""

    id: str
    problem: Any
    solution: Any
    answer: Any
    source: str


def _clean(candidates: Iterable[Candidate], stats: DemoStats) -> list[dict[str, str]]:
    """Apply the demo rules, counting every dropped row by reason."""
    dropped: Counter[str] = Counter()
    seen: set[str] = set()
    rows = []
    for c in candidates:
        stats.rows_in += 1
        problem = str(c.problem or "").strip()
        solution = str(c.solution or "").strip()
        answer = c.answer if c.answer not in (None, "") else last_boxed(solution)
        answer, reason = answer_problem(answer)
        if not problem:
            reason = "no_problem"
        elif not solution:
            reason = "no_solution"
        elif problem in seen:
            reason = "duplicate"
        if reason:
            dropped[reason] += 1
            continue
        seen.add(problem)
        solution = ensure_boxed_ending(solution, answer)
        rows.append(
            {"id": c.id, "problem": problem, "solution": solution, "answer": answer, "source": c.source}
        )
    stats.dropped.update(dropped)
    return rows


# ------------------------------------------------------------------------------------------------- sources


def _synthetic(params: Params) -> Iterator[Candidate]:
    splits = synthetic.splits_for(params)
    for p in splits["demo"]:
        yield Candidate(p.id, p.problem, p.solution, p.answer, synthetic.eval_name(p.level))


def _math_hub(path: str | None) -> Iterator[Candidate]:
    ds = load_table(MATH_HUB_ID, path=path, split="train", what="data.demos")
    require_columns(
        ds, MATH_COLUMNS, source=path or MATH_HUB_ID, layout="MATH (problem, solution, level, type)"
    )
    for i, row in enumerate(ds):
        boxed = last_boxed(row["solution"])
        yield Candidate(f"math-train-{i:05d}", row["problem"], row["solution"], boxed or "", MATH_HUB_ID)


def _strip_label(text: Any) -> str:
    return _LABEL.sub("", str(text or ""), count=1).strip()


def _local(path: str) -> Iterator[Candidate]:
    ds = load_table("", path=path, what="data.demos")
    cols = set(ds.column_names)
    source = Path(path).name
    if "exemplars" in cols:  # in-context RL episodes: every exemplar is a solved problem
        for i, episode in enumerate(ds):
            for j, ex in enumerate(episode["exemplars"] or []):
                ex = ex or {}
                text = str(ex.get("answer") or "").strip()
                answer = last_boxed(text) or _strip_label(text)
                yield Candidate(f"{source}-{i}-{j}", _strip_label(ex.get("prompt")), text, answer, source)
        return
    if "problem" not in cols or "solution" not in cols:
        raise DataError(
            f"{path}: missing column(s) {sorted({'problem', 'solution'} - cols)}; a local demo file needs "
            f"problem + solution (+ answer), or the exemplar layout (exemplars: [{{prompt, answer}}]); "
            f"found {ds.column_names}"
        )
    for i, row in enumerate(ds):
        yield Candidate(
            str(row.get("id") or f"{source}-{i}"), row["problem"], row["solution"], row.get("answer"), source
        )


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
    if demos.source == "synthetic":
        name, candidates = "synthetic", _synthetic(params)
    elif demos.source == "math_hub":
        name, candidates = demos.path or MATH_HUB_ID, _math_hub(demos.path)
    elif demos.source == "local":
        name, candidates = str(demos.path), _local(str(demos.path))
    else:
        name, candidates = str(demos.path), _pkl(str(demos.path))
    stats = DemoStats(source=demos.source, dataset=name)
    rows = _clean(candidates, stats)
    if not rows:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.dropped.items())) or "none"
        raise DataError(
            f"{name}: no usable demos ({stats.rows_in} rows in; dropped: {reasons}); a demo needs a problem, a "
            "non-empty worked solution and a gold answer"
        )
    if demos.max_rows is not None and len(rows) > demos.max_rows:
        picked = sorted(random.Random(params.seed).sample(range(len(rows)), demos.max_rows))
        stats.dropped["over_max_rows"] = len(rows) - demos.max_rows
        rows = [rows[i] for i in picked]
    stats.rows_kept = len(rows)
    return rows, stats
