"""Benchmark problems from the hub, a URL or a local file, in either common layout, as chat prompts.

Layouts, detected per row (no code change for a new file):

- verl / LUFFY parquet: ``prompt`` (list of ``{role, content}``) + ``reward_model.ground_truth``; the problem
  text is ``extra_info.question`` when present, else the last user turn.
- LIMO jsonl (and most hub datasets): a problem column (``problem`` / ``question`` / ...), ``answer``, optional
  ``solution``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icpo_core.bench.registry import BenchmarkSpec
from icpo_core.errors import DataError
from icpo_core.grading import last_boxed
from icpo_core.io_utils import read_jsonl

_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


@dataclass(frozen=True)
class BenchProblem:
    """One problem: ``id`` is stable across runs (row index + problem hash), ``messages`` the chat prompt."""

    id: str
    problem: str
    answer: str
    messages: list[dict[str, str]]


def _builder(path: str) -> str:
    suffix = Path(path.split("?")[0]).suffix.lower()
    if suffix not in _BUILDERS:
        raise DataError(f"{path}: unsupported file type '{suffix}'; use .jsonl, .json or .parquet")
    return _BUILDERS[suffix]


def load_rows(spec: BenchmarkSpec) -> list[dict[str, Any]]:
    """The raw rows of a benchmark's source, through ``datasets`` (hub id, URL or local file / folder)."""
    import datasets

    src = spec.source
    try:
        if src.get("path"):
            path = Path(src["path"])
            if not path.exists():
                hint = " (run `dvc repro prepare_train` first)" if str(path).startswith("data/eval") else ""
                raise DataError(f"benchmark '{spec.name}': {path} not found{hint}")
            if path.is_dir():
                files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in _BUILDERS)
                if not files:
                    raise DataError(f"benchmark '{spec.name}': {path} holds no .jsonl / .parquet files")
                ds = datasets.load_dataset(_builder(files[0]), data_files=files, split="train")
            elif path.suffix.lower() in (".jsonl", ".json"):
                return _read_jsonl(path, spec.name)  # plain reader: mixed-type columns are common in jsonl
            else:
                ds = datasets.load_dataset(_builder(str(path)), data_files=str(path), split="train")
        elif src.get("url"):
            ds = datasets.load_dataset(_builder(src["url"]), data_files=src["url"], split="train")
        else:
            ds = datasets.load_dataset(src["hub"], src.get("config"), split=src.get("split", "test"))
    except DataError:
        raise
    except Exception as e:  # network / hub / format errors: one clear line
        where = src.get("hub") or src.get("url") or src.get("path")
        raise DataError(f"benchmark '{spec.name}': could not load {where}: {type(e).__name__}: {e}") from None
    return [dict(r) for r in ds]


def _read_jsonl(path: Path, name: str) -> list[dict[str, Any]]:
    return read_jsonl(path, f"benchmark '{name}'")


def _first(row: dict[str, Any], keys: list[str]) -> Any:
    for k in keys:
        if row.get(k) not in (None, ""):
            return row[k]
    return None


def _gold(value: Any) -> str:
    if isinstance(value, list | tuple):  # e.g. OlympiadBench's final_answer list
        return ", ".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def to_problem(row: dict[str, Any], index: int, spec: BenchmarkSpec) -> BenchProblem:
    """One row of either layout -> a :class:`BenchProblem` with the benchmark's prompt applied."""
    prompt = row.get("prompt")
    rm = row.get("reward_model")
    if isinstance(prompt, list | tuple) and isinstance(rm, dict) and "ground_truth" in rm:
        turns = [
            {"role": str(m["role"]), "content": str(m["content"])}
            for m in prompt
            if spec.keep_system or m["role"] != "system"
        ]
        users = [m for m in turns if m["role"] == "user"]
        if not users:
            raise DataError(f"benchmark '{spec.name}': row {index}: prompt has no user turn")
        extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
        problem = str(extra.get("question") or users[-1]["content"])
        answer = _gold(rm["ground_truth"])
        users[-1]["content"] = users[-1]["content"] + spec.prompt_suffix
        messages = turns
    else:
        p, a = _first(row, spec.fields["problem"]), _first(row, spec.fields["answer"])
        if p is None or a is None:
            raise DataError(
                f"benchmark '{spec.name}': row {index} has no problem {spec.fields['problem']} or answer "
                f"{spec.fields['answer']} field (keys: {sorted(row)}); set `fields` in the registry"
            )
        problem, answer = str(p), _gold(a)
        messages = [{"role": "user", "content": problem + spec.prompt_suffix}]
    if spec.system_prompt and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": spec.system_prompt}, *messages]
    if spec.answer_regex:
        m = re.search(spec.answer_regex, answer, flags=re.MULTILINE)
        if m is None:
            raise DataError(f"benchmark '{spec.name}': row {index}: answer_regex finds nothing in {answer!r}")
        answer = m.group(1).replace(",", "").strip()
    if spec.answer_from == "boxed":
        boxed = last_boxed(answer)
        if boxed is None:
            raise DataError(
                f"benchmark '{spec.name}': row {index}: no \\boxed{{}} answer in its answer field"
            )
        answer = boxed.strip()
    digest = hashlib.sha256(problem.encode()).hexdigest()[:10]
    return BenchProblem(id=f"{index}-{digest}", problem=problem, answer=answer, messages=messages)


def load_problems(spec: BenchmarkSpec, limit: int | None = None) -> list[BenchProblem]:
    rows = load_rows(spec)
    if not rows:
        raise DataError(f"benchmark '{spec.name}': no rows in {spec.source}")
    if limit is not None:
        rows = rows[:limit]
    return [to_problem(r, i, spec) for i, r in enumerate(rows)]
