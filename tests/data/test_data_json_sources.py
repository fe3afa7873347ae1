"""JSON lines beyond a single .jsonl file: a local folder copy of a hub dataset whose data files are .jsonl, and
.json files. JSON lines are read line by line (a damaged line is one dropped row, named ``<file>:<line>`` in a
folder); a .json document stays with datasets, and a damaged one is one DataError naming the file."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icpo_core.data import loading
from icpo_core.data.demo_sources import build_demos
from icpo_core.data.train_set import build_train_set
from icpo_core.errors import DataError


def _line(obj) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def _plain(i: int) -> dict[str, str]:
    return {"problem": f"What is {i}+1?", "answer": str(i + 1)}


def _hub_folder(root):
    """A hub dataset's layout: data/<split>-0000x-of-0000N.jsonl; the second train file has a non-UTF-8 line
    (2) and a line that is not JSON (4); the test split must not be read."""
    data = root / "data"
    data.mkdir(parents=True)
    (data / "train-00000-of-00002.jsonl").write_bytes(_line(_plain(0)) + _line(_plain(1)))
    (data / "train-00001-of-00002.jsonl").write_bytes(
        _line(_plain(2))
        + '{"problem": "caf\xe9?", "answer": "1"}\n'.encode("latin-1")
        + _line(_plain(3))
        + b'{"problem": "What is 9+9?", "answer": \n'
        + _line(_plain(4))
    )
    (data / "test-00000-of-00001.jsonl").write_bytes(_line({"problem": "held out", "answer": "0"}))
    return root


def test_a_folder_of_jsonl_files_drops_and_counts_damaged_lines(make_params, tmp_path, tokenizer_dir, caplog):
    folder = _hub_folder(tmp_path / "mine")
    params = make_params({"data": {"train": {"source": "local", "path": str(folder)}}})
    with caplog.at_level(logging.WARNING):
        stats = build_train_set(params, tmp_path / "train.parquet", tokenizer_dir)
    rows = pq.read_table(tmp_path / "train.parquet").to_pylist()
    # both train files, in sorted order; not the test split
    assert [r["extra_info"]["question"] for r in rows] == [f"What is {i}+1?" for i in range(5)]
    assert (stats.rows_in, stats.rows_kept, stats.row_unit) == (7, 5, "line")
    assert stats.dropped == {"not_utf8": 1, "bad_json": 1}
    assert stats.first_dropped_row == {
        "not_utf8": "data/train-00001-of-00002.jsonl:2",
        "bad_json": "data/train-00001-of-00002.jsonl:4",
    }
    assert (
        "mine: 2 of 7 rows dropped: bad_json 1 (first: data/train-00001-of-00002.jsonl:4), "
        "not_utf8 1 (first: data/train-00001-of-00002.jsonl:2)"
    ) in caplog.text


def test_a_hub_source_folder_of_jsonl_is_read_line_by_line_too(make_params, tmp_path):
    """``openr1_46k`` from its local copy with one damaged line: the good rows are kept (datasets' loader would
    fail the whole file)."""

    def luffy(i: int) -> dict:
        return {
            "prompt": [{"role": "user", "content": f"Compute {i}+1."}],
            "reward_model": {"ground_truth": str(i + 1), "style": "rule"},
            "target": [{"role": "assistant", "content": f"{i}+1 = \\boxed{{{i + 1}}}"}],
        }

    data = tmp_path / "Openr1-Math-46k-8192" / "data"
    data.mkdir(parents=True)
    (data / "train-00000-of-00001.jsonl").write_bytes(_line(luffy(0)) + b"\xff\xfe\n" + _line(luffy(1)))
    params = make_params({"data": {"train": {"source": "openr1_46k", "path": str(data.parent)}}})
    stats = build_train_set(params, tmp_path / "train.parquet", None)
    assert (stats.rows_in, stats.rows_kept) == (3, 2)
    assert stats.first_dropped_row == {"not_utf8": "data/train-00000-of-00001.jsonl:2"}


def test_a_demo_folder_of_jsonl_files(make_params, tmp_path):
    folder = tmp_path / "demos"
    folder.mkdir()
    demo = {"problem": "2+3?", "solution": "2 + 3 = 5.", "answer": "5"}
    (folder / "a.jsonl").write_bytes(_line(demo) + b"not json\n")
    (folder / "b.jsonl").write_bytes(_line({**demo, "problem": "4+4?", "answer": "8"}) + b"\x80\n")
    params = make_params({"data": {"demos": {"source": "local", "path": str(folder)}}})
    rows, stats = build_demos(params)
    assert [r["problem"] for r in rows] == ["2+3?", "4+4?"]
    assert len({r["id"] for r in rows}) == 2  # ids stay unique across the files
    assert stats.dropped == {"bad_json": 1, "not_utf8": 1} and stats.row_unit == "line"
    assert stats.first_dropped_row == {"bad_json": "a.jsonl:2", "not_utf8": "b.jsonl:2"}


def test_a_json_lines_file_with_a_json_suffix_drops_its_damaged_line(make_params, tmp_path, tokenizer_dir):
    path = tmp_path / "mine.json"
    path.write_bytes(b"\xef\xbb\xbf" + _line(_plain(0)) + b"{cut\n" + _line(_plain(1)))  # with a BOM
    assert loading.is_jsonl(path)
    params = make_params({"data": {"train": {"source": "local", "path": str(path)}}})
    stats = build_train_set(params, tmp_path / "train.parquet", tokenizer_dir)
    assert (stats.rows_in, stats.rows_kept) == (3, 2)
    assert stats.first_dropped_row == {"bad_json": 2} and stats.row_unit == "line"


def test_a_json_document_stays_with_datasets(make_params, tmp_path, tokenizer_dir):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([_plain(0), _plain(1)], indent=2))
    assert not loading.is_jsonl(path) and loading.local_json_lines(path) is None
    params = make_params({"data": {"train": {"source": "local", "path": str(path)}}})
    stats = build_train_set(params, tmp_path / "train.parquet", tokenizer_dir)
    assert (stats.rows_in, stats.rows_kept, stats.row_unit) == (2, 2, "row")


@pytest.mark.parametrize("where", ["file", "folder"])
def test_a_damaged_json_document_is_one_error_naming_the_file(make_params, tmp_path, where):
    folder = tmp_path / "copy"
    (folder / "data").mkdir(parents=True)
    path = folder / "data" / "train.json" if where == "folder" else tmp_path / "mine.json"
    path.write_text(
        '[\n  {"problem": "What is 1+1?", "answer": "2"},\n  {"problem": "What is 2+'
    )  # cut short
    source = folder if where == "folder" else path
    params = make_params({"data": {"train": {"source": "local", "path": str(source)}}})
    with pytest.raises(DataError) as e:
        build_train_set(params, tmp_path / "train.parquet", None)
    msg = str(e.value)
    assert msg.startswith(f"{path}: not valid JSON (Unterminated string starting at: line 3 column 15)")
    assert "the file is damaged or cut short" in msg and "\n" not in msg


def test_a_parquet_folder_stays_with_datasets(tmp_path):
    data = tmp_path / "copy" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([_plain(0)]), data / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([_plain(1)]), data / "train-00001-of-00001.parquet")
    assert loading.local_json_lines(tmp_path / "copy") is None
    assert loading.load_table("", path=tmp_path / "copy").num_rows == 2
