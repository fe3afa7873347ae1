"""Helpers of the bench / report / stage tests: benchmark files in both common layouts, params with overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def make_params(**sections: Any):
    """The repository's params.yaml with ``sections`` deep-merged over it, validated."""
    from icpo_core.config import deep_merge, parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return parse_params(deep_merge(raw, sections))


def write_limo_jsonl(path: Path, rows: list[tuple[str, str]], key: str = "problem") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for problem, answer in rows:
            f.write(
                json.dumps({key: problem, "answer": answer, "solution": f"so \\boxed{{{answer}}}"}) + "\n"
            )
    return path


def write_verl_parquet(path: Path, rows: list[tuple[str, str]]) -> Path:
    """LUFFY's layout: a system + user chat prompt and reward_model.ground_truth."""
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    records = [
        {
            "data_source": "toy",
            "prompt": [
                {
                    "role": "system",
                    "content": "Your task is to follow a systematic, thorough reasoning process.",
                },
                {"role": "user", "content": problem},
            ],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": answer},
            "extra_info": {"index": i, "split": "default"},
        }
        for i, (problem, answer) in enumerate(rows)
    ]
    pd.DataFrame(records).to_parquet(path)
    return path
