"""Damaged inputs through the CLI: broken rows are dropped and counted in the stage's metrics; a file with no
usable row, a demo cache without a usable demo, params.yaml edited mid-run and a corrupt checkpoint each give
one line naming the file / row / key and the fix, exit code 2, no traceback, and leave what exists untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from icpo_core.cli import main


def _icpo(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_error_line(err: str, command: str) -> str:
    """The stage's error: one line (the last), no traceback; other stderr lines are progress bars."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("icpo ")]
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith(f"icpo {command}: error: ")
    return lines[0]


@pytest.fixture
def tokenizer_folder(tmp_path) -> Path:
    from icpo_core.models.tiny import build_tokenizer

    folder = tmp_path / "tok"
    folder.mkdir()
    build_tokenizer().save(str(folder / "tokenizer.json"))
    return folder


def test_prepare_train_counts_broken_rows_then_refuses_an_unusable_file(project, tokenizer_folder, capsys):
    Path("mine.jsonl").write_bytes(
        b'{"problem": "What is 1+1?", "answer": "2"}\n'
        b'{"problem": ["a list"], "answer": "2"}\n'
        b'{"problem": "caf\xe9", "answer": "1"}\n'
        b'{"answer": "4"}\n'
        b'{"problem": "What is 2+2?", "answer": 4}\n'
    )
    root = project({"data": {"train": {"source": "local", "path": "mine.jsonl"}}})
    rc, out, err = _icpo(capsys, "prepare-train", "--model", str(tokenizer_folder))
    assert rc == 0, err
    assert "mine.jsonl (plain): 5 rows in, 2 kept, dropped: no_problem 1, not_utf8 1, wrong_type 1" in out
    metrics = json.loads((root / "metrics/prepare_train.json").read_text())
    assert metrics["dropped"] == {"wrong_type": 1, "not_utf8": 1, "no_problem": 1}
    assert metrics["first_dropped_row"] == {"wrong_type": 2, "not_utf8": 3, "no_problem": 4}
    assert metrics["row_unit"] == "line" and metrics["rows_kept"] == 2
    before = (root / "data/train.parquet").read_bytes()

    Path("mine.jsonl").write_bytes(b'{"problem": 1, "answer": "2"}\n\xff\xff\n')
    rc, out, err = _icpo(capsys, "prepare-train", "--model", str(tokenizer_folder))
    assert rc == 2 and out == ""
    line = _one_error_line(err, "prepare-train")
    assert "mine.jsonl: no rows left after filtering (2 rows in; dropped: not_utf8 1, wrong_type 1)" in line
    assert "(the first at line 1). A row must hold a text 'problem' and a gold 'answer'" in line
    assert (root / "data/train.parquet").read_bytes() == before  # the last good output is untouched
    assert json.loads((root / "metrics/prepare_train.json").read_text()) == metrics


def test_prepare_demos_counts_broken_rows_then_refuses_an_empty_cache(project, capsys):
    Path("demos.jsonl").write_bytes(
        b'{"problem": "2+3?", "solution": "2 + 3 = 5.", "answer": "5"}\n'
        b'{"problem": "4+4?", "solution": 8, "answer": "8"}\n'
        b"\x80 not text\n"
    )
    root = project({"data": {"demos": {"source": "local", "path": "demos.jsonl"}}})
    rc, out, err = _icpo(capsys, "prepare-demos")
    assert rc == 0, err
    assert "demos.jsonl (local): 3 rows in, 1 kept, dropped: not_utf8 1, wrong_type 1" in out
    metrics = json.loads((root / "metrics/prepare_demos.json").read_text())
    assert metrics["first_dropped_row"] == {"wrong_type": 2, "not_utf8": 3}
    before = (root / "data/demos.parquet").read_bytes()

    Path("demos.jsonl").write_bytes(b"")
    rc, out, err = _icpo(capsys, "prepare-demos")
    assert rc == 2 and out == ""
    line = _one_error_line(err, "prepare-demos")
    assert "demos.jsonl: no usable demos (0 rows in; dropped: none); a demo needs a text problem" in line
    assert "fix the file (data.demos.path)" in line
    assert (root / "data/demos.parquet").read_bytes() == before


# ------------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tiny(tmp_path, monkeypatch, mlflow_uri):
    from icpo_core.engines.local.tiny import make_tiny_project

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    root = make_tiny_project(tmp_path / "p", train={"steps": 4, "save_freq": 1})
    monkeypatch.chdir(root)
    return root


def _train_two_steps(root: Path, run: str) -> None:
    from icpo_core.config import load_params
    from icpo_core.engines.local.trainer import train_local

    def parity(texts, golds):
        return [float(len(t) % 2 == 0) for t in texts]

    params = load_params(root / "params.yaml")
    train_local(params, run, root=root, reward_fn=parity, progress=False, stop_after=2)


def test_train_refuses_a_demo_cache_without_usable_demos(tiny, capsys):
    rows = [{"id": "d0", "problem": "1+1?", "solution": "", "answer": "2", "source": "s"}]
    pq.write_table(pa.Table.from_pylist(rows), tiny / "data/demos.parquet")
    rc, _, err = _icpo(capsys, "train", "--run", "icpo", "--no-progress")
    assert rc == 2
    line = _one_error_line(err, "train")
    assert "data/demos.parquet: 0 usable demos (1 rows), the run needs at least algorithm.k_demos = 1" in line
    assert "rerun `icpo prepare-demos`" in line
    assert not (tiny / "metrics/steps_icpo.jsonl").exists()

    # GRPO does not read the demo cache: it trains
    rc, _, err = _icpo(capsys, "train", "--run", "grpo", "--no-progress")
    assert rc == 0, err


@pytest.mark.parametrize("damage", ["truncated_weights", "garbage_extra_state"])
def test_train_with_a_corrupt_checkpoint_prints_one_line(tiny, capsys, damage):
    _train_two_steps(tiny, "grpo")
    actor = tiny / "runs/grpo/checkpoints/global_step_2/actor"
    name = "model" if damage == "truncated_weights" else "extra_state"
    path = actor / f"{name}_world_size_1_rank_0.pt"
    if damage == "truncated_weights":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(b"not a torch file")
    steps_before = (tiny / "metrics/steps_grpo.jsonl").read_text()
    rc, out, err = _icpo(capsys, "train", "--run", "grpo", "--no-progress")
    assert rc == 2
    line = _one_error_line(err, "train")
    assert (
        f"runs/grpo/checkpoints/global_step_2/actor/{name}_world_size_1_rank_0.pt: damaged checkpoint" in line
    )
    assert "delete runs/grpo/checkpoints/global_step_2 to resume from an older checkpoint" in line
    assert (tiny / "metrics/steps_grpo.jsonl").read_text() == steps_before  # no step log cut or rewritten
    assert (actor.parent.parent / "global_step_1").is_dir()  # the older checkpoint is still there


def test_train_after_params_yaml_was_edited_names_the_changed_keys(tiny, capsys):
    _train_two_steps(tiny, "icpo")
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["train"]["lr"] = 1e-05
    raw["algorithm"]["n_on"] = 6
    raw["train"]["keep_checkpoints"] = 3  # resume-safe: not named
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    steps_before = Path("metrics/steps_icpo.jsonl").read_text()
    rc, out, err = _icpo(capsys, "train", "--run", "icpo", "--no-progress")
    assert rc == 2
    line = _one_error_line(err, "train")
    assert (
        "params.yaml changed since the checkpoint at step 2 of runs/icpo/checkpoints: algorithm.n_on: 4 -> 6; "
        "train.lr: 0.001 -> 1e-05. Restore the values to resume, or delete runs/icpo/checkpoints to start over"
    ) in line
    assert "keep_checkpoints" not in line
    assert Path("metrics/steps_icpo.jsonl").read_text() == steps_before
    assert sorted(p.name for p in Path("runs/icpo/checkpoints").glob("global_step_*")) == [
        "global_step_1",
        "global_step_2",
    ]


class _Launched(Exception):
    """Raised where the verl launch would go on (its preflight): the test stops before Ray or verl start."""


def test_verl_train_after_params_yaml_was_edited_is_refused_before_the_launch(project, capsys, monkeypatch):
    import torch

    from icpo_core import checkpoint_layout as layout
    from icpo_core.engines.verl import job
    from icpo_core.engines.verl.resume import PARAMS_FILE

    reached: list[str] = []

    def preflight(params, run, root=".", instance=None):
        reached.append(run)
        raise _Launched

    monkeypatch.setattr(job, "run_preflight", preflight)
    project({"train": {"engine": "verl", "lr": 1e-3}})
    with pytest.raises(_Launched):  # a fresh start records the params, then launches
        main(["train", "--run", "icpo"])
    ckpt_root = Path("runs/icpo/checkpoints")
    assert (ckpt_root / PARAMS_FILE).is_file() and reached == ["icpo"]

    # verl wrote step 2 (one rank), then params.yaml was edited
    actor = layout.actor_dir(ckpt_root, 2)
    actor.mkdir(parents=True)
    torch.save({"lr_scheduler": None, "rng": {}}, actor / "extra_state_world_size_1_rank_0.pt")
    (ckpt_root / layout.LATEST_FILE).write_text("2\n")
    project({"train": {"engine": "verl", "lr": 1e-5, "keep_checkpoints": 3}})
    rc, _, err = _icpo(capsys, "train", "--run", "icpo")
    assert rc == 2 and reached == ["icpo"]  # refused before the launch went on
    line = _one_error_line(err, "train")
    assert line.endswith(
        "params.yaml changed since the checkpoint at step 2 of runs/icpo/checkpoints: train.lr: 0.001 -> 1e-05. "
        "Restore the value to resume, or delete runs/icpo/checkpoints to start over"
    )
    assert not Path("metrics").exists()  # nothing launched, nothing written

    # the value restored (a resume-safe key still changed): the launch goes on
    project({"train": {"engine": "verl", "lr": 1e-3, "keep_checkpoints": 3}})
    with pytest.raises(_Launched):
        main(["train", "--run", "icpo"])
    assert reached == ["icpo", "icpo"]


def test_merge_of_a_damaged_final_checkpoint_prints_one_line(tiny, capsys):
    from icpo_core.config import load_params
    from icpo_core.engines.local.trainer import train_local

    params = load_params(tiny / "params.yaml")
    train_local(params, "grpo", root=tiny, reward_fn=lambda t, g: [0.0] * len(t), progress=False)
    weights = tiny / "runs/grpo/checkpoints/global_step_4/actor/huggingface/model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a disk error / cut copy
    rc, _, err = _icpo(capsys, "merge", "--run", "grpo")
    assert rc == 2
    line = _one_error_line(err, "merge")
    assert (
        "runs/grpo/checkpoints/global_step_4/actor/huggingface/model.safetensors: damaged checkpoint" in line
    )
    assert "delete runs/grpo/checkpoints/global_step_4 and rerun the training" in line
    assert not (tiny / "runs/grpo/merged").exists()  # nothing that looks like a merged model
