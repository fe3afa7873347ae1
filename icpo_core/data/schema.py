"""Output schemas of the data stages (docs/architecture.md) and their exact Arrow types.

- ``data/train.parquet``: verl's RL schema plus ``target`` (the R1 trace / worked solution).
- ``data/demos.parquet``: the demo cache, solved problems with worked solutions.
- ``data/eval/<benchmark>.jsonl``: LIMO layout (problem / answer / solution).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from icpo_core.errors import DataError

ABILITY = "math"
TRAIN_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info", "target")
DEMO_COLUMNS = ("id", "problem", "solution", "answer", "source")
EVAL_FIELDS = ("problem", "answer", "solution")

TRAIN_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct(
                [
                    ("index", pa.int64()),
                    ("split", pa.string()),
                    ("question", pa.string()),
                    ("level", pa.int64()),
                ]
            ),
        ),
        ("target", pa.string()),
    ]
)
DEMO_SCHEMA = pa.schema([(name, pa.string()) for name in DEMO_COLUMNS])


def train_features() -> Any:
    """``datasets.Features`` equal to :data:`TRAIN_SCHEMA` (for ``Dataset.map(features=...)``)."""
    import datasets

    return datasets.Features.from_arrow_schema(TRAIN_SCHEMA)


def train_row(
    *,
    data_source: str,
    problem: str,
    answer: str,
    index: int,
    suffix: str,
    split: str = "train",
    level: int = -1,
    target: str = "",
    system: str | None = None,
) -> dict[str, Any]:
    """One verl row: a single user turn (problem + suffix) after an optional system turn, the rule-based gold,
    the raw question in extra_info."""
    head = [{"role": "system", "content": system}] if system else []
    return {
        "data_source": data_source,
        "prompt": [*head, {"role": "user", "content": problem + suffix}],
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {"index": index, "split": split, "question": problem, "level": level},
        "target": target,
    }


def check_schema(path: str | Path, expected: pa.Schema) -> pa.Schema:
    """Raise DataError when the parquet at ``path`` does not carry ``expected``'s columns and types."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    problems = []
    for field in expected:
        if field.name not in schema.names:
            problems.append(f"missing column '{field.name}' ({field.type})")
        elif not schema.field(field.name).type.equals(field.type):
            problems.append(
                f"column '{field.name}' is {schema.field(field.name).type}, expected {field.type}"
            )
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems))
    return schema


def write_demos(rows: Iterable[Mapping[str, str]], path: str | Path) -> int:
    """Write demo rows (id, problem, solution, answer, source) as parquet; returns the row count."""
    table = pa.Table.from_pylist([{c: str(r[c]) for c in DEMO_COLUMNS} for r in rows], schema=DEMO_SCHEMA)
    pq.write_table(table, path)
    return table.num_rows


def write_eval_jsonl(rows: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """LIMO-layout benchmark file: one JSON object per line with problem / answer / solution (+ extras)."""
    n = 0
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(dict(r), ensure_ascii=False) + "\n")
            n += 1
    return n
