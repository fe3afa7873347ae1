"""A tiny project (the random model of :func:`icpo_core.models.tiny.write_tiny_model`, data, params.yaml), built
offline in ~1 s.

Used by the tests and by smoke runs of the local engine: it exercises the same code paths as the real model
(chat template, left padding, EOS stop, tied embeddings, verl merge) at a size where a training step takes
milliseconds. Nothing here is needed for real training.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from icpo_core.models.tiny import write_tiny_model


def make_tiny_project(
    root: str | Path,
    *,
    train: dict | None = None,
    algorithm: dict | None = None,
    runs: dict | None = None,
    n_problems: int = 24,
) -> Path:
    """A project folder a tiny training can run in: models/base, data/*.parquet (contract schemas), params.yaml."""
    root = Path(root)
    write_tiny_model(root / "models" / "base")
    suffix = " Put your final answer within \\boxed{}."
    train_rows, demo_rows = [], []
    for i in range(n_problems):
        a, b = i % 7 + 1, (3 * i) % 5 + 2
        q = f"Tom has {a} marbles and gets {b} more. How many marbles does Tom have?"
        train_rows.append(
            {
                "data_source": "synthetic_l0",
                "prompt": [{"role": "user", "content": q + suffix}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(a + b)},
                "extra_info": {"index": i, "split": "train", "question": q, "level": 0},
                "target": f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}.",
            }
        )
        c, d = i % 4 + 2, i % 3 + 1
        demo_rows.append(
            {
                "id": f"demo-{i}",
                "problem": f"Leo has {c} apples and gets {d} more. How many apples does Leo have?",
                "solution": f"{c} + {d} = {c + d}. The answer is \\boxed{{{c + d}}}.",
                "answer": str(c + d),
                "source": "synthetic_l0",
            }
        )
    (root / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(train_rows), root / "data" / "train.parquet")
    pq.write_table(pa.Table.from_pylist(demo_rows), root / "data" / "demos.parquet")
    runs = runs or {"grpo": {"n_off": 0}, "icpo": {"n_off": 1}}
    params = {
        "seed": 0,
        "seeds": [0],
        "study": {"runs": list(runs)},
        "algorithm": {"n_on": 4, "n_off": 1, **(algorithm or {})},
        "train": {
            "steps": 4,
            "prompts_per_step": 2,
            "ppo_mini_batch_prompts": 2,
            "micro_batch_size": 4,
            "lr": 1e-3,
            "max_prompt_length": 256,
            "max_response_length": 12,
            "save_freq": 2,
            "keep_checkpoints": 2,
            "device": "cpu",
            "rollout_backend": "hf",
            **(train or {}),
        },
        "runs": runs,
        "bench": {"backend": "hf"},
        "report": {"runs": ["base"]},
        "tracking": {"experiment": "icpo-test"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root
