"""``icpo prepare-val``: validation benchmarks -> verl parquet through the benchmark registry and loaders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from icpo_core.bench.registry import val_parquet_paths
from icpo_core.cli import main
from icpo_core.config import load_params
from icpo_core.data.schema import TRAIN_SCHEMA, check_schema
from icpo_core.engines.verl import overrides as ov

TRAIN_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."


def _icpo(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def _paper_trio_locally(root: Path) -> Path:
    """Local copies of the paper's three benchmarks, in three layouts, and a registry pointing at them.

    The registry entries keep their names (math500, amc23, aime24) and only change ``source``: the same
    registry -> loader path the hub copies take.
    """
    (root / "local").mkdir()
    with open(root / "local/math500.jsonl", "w") as f:  # LIMO / hub columns
        for i in range(5):
            f.write(json.dumps({"problem": f"What is {i} + {i}?", "answer": str(2 * i), "level": 3}) + "\n")
    # amc23: `question` column and float answers, as math-ai/amc23 stores them
    pq.write_table(
        pa.Table.from_pylist(
            [{"question": "Compute 6 * 7.", "answer": 42.0}, {"question": "1/2?", "answer": 0.5}]
        ),
        root / "local/amc23.parquet",
    )
    # aime24 as a verl / LUFFY parquet (stored system turn dropped, extra_info.question kept)
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "prompt": [
                        {"role": "system", "content": "sys"},
                        {"role": "user", "content": "Find x if x - 1 = 2."},
                    ],
                    "reward_model": {"style": "rule", "ground_truth": "3"},
                    "extra_info": {"question": "Find x if x - 1 = 2."},
                }
            ]
        ),
        root / "local/aime24.parquet",
    )
    registry = {
        "benchmarks": {
            "math500": {"source": {"hub": None, "path": "local/math500.jsonl"}},
            "amc23": {"source": {"hub": None, "path": "local/amc23.parquet"}},
            "aime24": {"source": {"hub": None, "path": "local/aime24.parquet"}},
        }
    }
    (root / "registry.yaml").write_text(yaml.safe_dump(registry))
    return root / "registry.yaml"


def test_paper_trio_through_the_registry(project, capsys):
    root = project()
    registry = _paper_trio_locally(root)
    root = project({"profile": "paper_qwen3_1_7b", "bench": {"registry": str(registry)}})
    params = load_params("params.yaml")
    assert params.train.verl.val_benchmarks == ["math500", "amc23", "aime24"]

    rc, out, err = _icpo(capsys, "prepare-val")
    assert rc == 0, err
    assert out.startswith("prepare-val: math500 5, amc23 2, aime24 1 -> data/val")
    assert sorted(p.name for p in (root / "data/val").iterdir()) == [
        "aime24.parquet",
        "amc23.parquet",
        "math500.parquet",
    ]
    metrics = json.loads((root / "metrics/prepare_val.json").read_text())
    assert metrics["benchmarks"] == {"math500": 5, "amc23": 2, "aime24": 1} and metrics["rows"] == 8

    for name in ("math500", "amc23", "aime24"):  # exactly the training parquet's schema
        check_schema(root / f"data/val/{name}.parquet", TRAIN_SCHEMA)
    math = _rows(root / "data/val/math500.parquet")
    assert math[3] == {
        "data_source": "math500",
        "prompt": [{"role": "user", "content": "What is 3 + 3?" + TRAIN_SUFFIX}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "6"},
        "extra_info": {"index": 3, "split": "test", "question": "What is 3 + 3?", "level": -1},
        "target": "",
    }
    amc = _rows(root / "data/val/amc23.parquet")
    assert [r["reward_model"]["ground_truth"] for r in amc] == ["42", "0.5"]
    assert amc[0]["prompt"][0]["content"] == "Compute 6 * 7." + TRAIN_SUFFIX
    (aime,) = _rows(root / "data/val/aime24.parquet")
    assert aime["prompt"] == [{"role": "user", "content": "Find x if x - 1 = 2." + TRAIN_SUFFIX}]
    assert aime["extra_info"]["question"] == "Find x if x - 1 = 2."

    # the verl launch validates on exactly these files, with the released sampling settings (the GPU command:
    # this machine may have no CUDA, where a paper profile's launch stops)
    gpu = params.model_copy(update={"train": params.train.model_copy(update={"device": "cuda"})})
    o = ov.verl_overrides(gpu, "icpo", root)
    assert o["data.val_files"] == [
        str(root / f"data/val/{n}.parquet") for n in ("math500", "amc23", "aime24")
    ]
    assert o["data.val_files"] == [str((root / p).resolve()) for p in val_parquet_paths(params)]
    assert all(Path(f).is_file() for f in o["data.val_files"])
    assert (o["trainer.test_freq"], o["trainer.val_before_train"], o["data.val_max_samples"]) == (
        10,
        True,
        -1,
    )


def test_embedded_default_validates_on_synthetic_level(project, capsys):
    root = project()
    (root / "data/eval").mkdir(parents=True)
    rows = [{"problem": "2 + 5 = ?", "answer": "7", "solution": "\\boxed{7}"}]
    (root / "data/eval/synthetic_l0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    rc, out, err = _icpo(capsys, "prepare-val")
    assert rc == 0, err
    (row,) = _rows(root / "data/val/synthetic_l0.parquet")
    params = load_params("params.yaml")
    assert row["data_source"] == "synthetic_l0"
    syn = params.data.synthetic
    # the training prompt layout: the format system turn of the embedded default, then problem + suffix
    assert syn.system_prompt
    assert row["prompt"] == [
        {"role": "system", "content": syn.system_prompt},
        {"role": "user", "content": "2 + 5 = ?" + syn.prompt_suffix},
    ]
    assert row["reward_model"]["ground_truth"] == "7"
    assert ov.verl_overrides(params, "grpo", root)["data.val_files"] == [
        str(root / "data/val/synthetic_l0.parquet")
    ]


def test_unloadable_benchmark_is_a_data_error_and_keeps_the_old_output(project, capsys):
    root = project()
    (root / "data/val").mkdir(parents=True)
    (root / "data/val/keep.parquet").write_text("old")
    root = project({"train": {"verl": {"val_benchmarks": ["synthetic_l0"]}}})  # data/eval was never prepared

    rc, _, err = _icpo(capsys, "prepare-val")
    assert rc == 2
    assert "benchmark 'synthetic_l0': data/eval/synthetic_l0.jsonl not found" in err
    assert (root / "data/val/keep.parquet").read_text() == "old"  # atomic: nothing half-written
    assert sorted(p.name for p in (root / "data").iterdir()) == ["val"]  # no temporary left behind

    project({"train": {"verl": {"val_benchmarks": ["no_such_benchmark"]}}})
    rc, _, err = _icpo(capsys, "prepare-val")
    assert rc == 2 and "unknown benchmark 'no_such_benchmark'" in err

    (root / "empty.jsonl").write_text("")
    project({"train": {"verl": {"val_benchmarks": ["empty.jsonl"]}}})
    rc, _, err = _icpo(capsys, "prepare-val")
    assert rc == 2 and "benchmark 'empty': no rows" in err


def test_no_benchmarks_keeps_the_stand_in(project, capsys):
    root = project({"train": {"verl": {"val_benchmarks": []}}})
    rc, out, err = _icpo(capsys, "prepare-val")
    assert rc == 0, err
    assert "none (train.verl.val_benchmarks is empty)" in out
    assert (root / "data/val").is_dir() and not any((root / "data/val").iterdir())
    o = ov.verl_overrides(load_params("params.yaml"), "icpo", root)
    assert o["data.val_files"] == [str(root / "data/train.parquet")]  # the never-used stand-in
    assert (o["trainer.test_freq"], o["trainer.val_before_train"], o["data.val_max_samples"]) == (
        -1,
        False,
        8,
    )


def test_verl_reads_the_val_parquet_as_its_validation_set(project, capsys, tmp_path_factory):
    """verl's own dataset class (what create_rl_dataset builds for data.val_files) loads the written files."""
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from icpo_core.models.tiny import write_tiny_model

    root = project()
    (root / "data/eval").mkdir(parents=True)
    rows = [{"problem": f"{i} + 1 = ?", "answer": str(i + 1)} for i in range(3)]
    (root / "data/eval/synthetic_l0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _icpo(capsys, "prepare-val")[0] == 0

    tokenizer = AutoTokenizer.from_pretrained(write_tiny_model(tmp_path_factory.mktemp("tiny")))
    cfg = OmegaConf.create(
        {"max_prompt_length": 256, "filter_overlong_prompts": True, "return_raw_chat": True}
    )
    val_files = ov.verl_overrides(load_params("params.yaml"), "icpo", root)["data.val_files"]
    ds = RLHFDataset(val_files, tokenizer, cfg)
    assert len(ds) == 3
    item = ds[2]
    assert item["data_source"] == "synthetic_l0"
    assert item["reward_model"]["ground_truth"] == "3"
    system, user = item["raw_prompt"]  # the embedded default's format system turn, then the problem
    assert system["role"] == "system" and user["content"].startswith("2 + 1 = ?")
