"""LUFFY's expert traces on verl: the training file without target-less rows (written at launch, the path verl's
``data.train_files`` names) and the traces tokenised and graded once (:class:`TraceBook`)."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest
from verl_fixtures import boxed_tokenizer, project_rows

from icpo_core.engines.verl.expert_traces import TraceBook, write_expert_trace_train
from icpo_core.errors import DataError


def test_rows_without_target_are_dropped_and_counted(tmp_path):
    df = project_rows(5)
    df["target"] = [df["target"][0], None, "", "   ", df["target"][4]]
    src = tmp_path / "train.parquet"
    df.to_parquet(src)
    dst = tmp_path / "runs" / "luffy" / "expert_trace_train.parquet"
    assert write_expert_trace_train(src, dst) == (2, 3)
    kept = pq.read_table(dst).to_pandas()
    assert list(kept.columns) == list(df.columns)
    assert [e["index"] for e in kept["extra_info"]] == [0, 4]
    assert not dst.with_name(dst.name + ".tmp").exists()


def test_no_target_is_one_clear_error(tmp_path):
    df = project_rows(2)
    src = tmp_path / "train.parquet"
    df.drop(columns=["target"]).to_parquet(src)
    with pytest.raises(DataError, match=r"train\.parquet: no `target` column.*openr1_46k"):
        write_expert_trace_train(src, tmp_path / "out.parquet")
    df.assign(target=["", None]).to_parquet(src)
    with pytest.raises(DataError, match=r"train\.parquet: no row has a `target`"):
        write_expert_trace_train(src, tmp_path / "out.parquet")
    with pytest.raises(DataError, match="prepare-train"):
        write_expert_trace_train(tmp_path / "missing.parquet", tmp_path / "out.parquet")


def test_trace_book_tokenises_and_grades_once():
    tok = boxed_tokenizer()
    calls = []

    def score(data_source, text, ground_truth, extra_info):
        calls.append((data_source, text, ground_truth))
        return float(text.endswith("\\boxed{4}") and ground_truth == "4")

    book = TraceBook(tok, 8, score)
    msgs = [{"role": "user", "content": "What is 2 plus 2 ?"}]
    trace, reward = book.get(msgs, "2 plus 2 = 4 \\boxed{4}", "4", "synthetic")
    assert reward == 1.0 and not trace.truncated
    assert trace.ids[-1] == tok.eos_token_id and trace.text == "2 plus 2 = 4 \\boxed{4}"
    assert book.get(msgs, "2 plus 2 = 4 \\boxed{4}", "4")[0] is trace and len(calls) == 1
    long_trace, long_reward = book.get(msgs, "2 plus 2 = " + "2 " * 8 + "\\boxed{4}", "4")
    assert long_trace.truncated and len(long_trace.ids) == 8 and long_reward == 0.0  # cut before its answer
    with pytest.raises(DataError, match="no `target`"):
        book.get(msgs, "", "4")


def test_launch_writes_the_file_verl_reads(tmp_path):
    """``prepare_train_file`` (called by launch) writes exactly the path ``data.train_files`` names."""
    from pathlib import Path

    from icpo_core.config import load_params
    from icpo_core.engines.verl import job
    from icpo_core.engines.verl import overrides as ov

    root = tmp_path / "p"
    (root / "data").mkdir(parents=True)
    df = project_rows(3)
    df["target"] = [df["target"][0], None, df["target"][2]]
    df.to_parquet(root / "data" / "train.parquet")
    params = load_params(Path(__file__).resolve().parents[3] / "params.yaml")  # runs.luffy: expert traces
    path = job.prepare_train_file(params, "luffy", root, instance="luffy_s2")
    assert path == root / "runs" / "luffy_s2" / "expert_trace_train.parquet"
    assert len(pd.read_parquet(path)) == 2
    assert ov.verl_overrides(params, "luffy", root, instance="luffy_s2")["data.train_files"] == [
        str(path.resolve())
    ]
    assert job.prepare_train_file(params, "grpo", root) == root / "data" / "train.parquet"
    assert not (root / "runs" / "grpo").exists()
