"""Damaged local files: broken rows (missing fields, wrong types, non-UTF-8 bytes, not JSON, a 10 MB string) are
dropped and counted with the first offending row, the good rows kept; a file with no usable row is one error
naming the file and what a row must hold."""

from __future__ import annotations

import json
import logging
import time
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icpo_core.data import loading
from icpo_core.data.demo_sources import build_demos
from icpo_core.data.train_set import build_train_set
from icpo_core.errors import DataError

BIG = "x" * 10_000_000  # a 10 MB string


def _line(obj) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def damaged_train_jsonl(path) -> None:
    """Lines 1, 4 and 9 are good; every other line is broken in its own way."""
    path.write_bytes(
        b"".join(
            [
                _line({"problem": "What is 1+1?", "answer": "2"}),  # 1 good
                _line({"answer": "3"}),  # 2 missing problem
                _line({"problem": 12, "answer": "3"}),  # 3 a number as the problem
                _line({"problem": "What is 2+5?", "answer": 7}),  # 4 good (a number is a fine answer)
                _line({"problem": "What is 3+3?", "answer": ["6"]}),  # 5 a list as the answer
                '{"problem": "caf\xe9?", "answer": "1"}\n'.encode("latin-1"),  # 6 not UTF-8
                b'{"problem": "What is 4+4?", "answer": \n',  # 7 cut JSON
                _line(["What is 5+5?", "10"]),  # 8 not an object
                b"\n",  # blank: skipped, not a row
                _line({"problem": "What is 6+6?", "solution": "6+6 = \\boxed{12}"}),  # 10 good
                _line({"problem": BIG, "answer": "1"}),  # 11 a 10 MB string (over the line cap)
                _line(
                    {"problem": "What is 7+7?", "answer": "14", "solution": "y" * 500_000}
                ),  # 12 oversized text
            ]
        )
    )


def test_read_jsonl_keeps_good_lines_and_names_bad_ones(tmp_path):
    path = tmp_path / "mine.jsonl"
    damaged_train_jsonl(path)
    table = loading.read_jsonl(path)
    assert table.lines == [1, 2, 3, 4, 5, 10, 12]
    assert table.bad == [(6, "not_utf8"), (7, "bad_json"), (8, "not_an_object"), (11, "oversized_text")]
    assert table.columns == ["problem", "answer", "solution"]


def test_a_10mb_line_is_skipped_without_holding_it(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_bytes(_line({"problem": BIG, "answer": "1"}) + _line({"problem": "1+1?", "answer": "2"}))
    tracemalloc.start()
    try:
        table = loading.read_jsonl(path, max_line_bytes=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert table.bad == [(1, "oversized_text")] and table.lines == [2]
    assert peak < 5 * 1_000_000 <= len(BIG) // 2  # bounded by the cap, never the whole 10 MB line


def test_line_cap_is_exact(tmp_path):
    row = b'{"problem": "1+1?", "answer": "2"}'  # 34 bytes
    path = tmp_path / "cap.jsonl"
    path.write_bytes(
        row + b"\n" + row + b" \n" + row + b"  "
    )  # 34, 35 and 36 bytes (the last without newline)
    assert loading.read_jsonl(path, max_line_bytes=34).bad == [(2, "oversized_text"), (3, "oversized_text")]
    table = loading.read_jsonl(path, max_line_bytes=35)
    assert table.lines == [1, 2] and table.bad == [(3, "oversized_text")]
    assert loading.read_jsonl(path, max_line_bytes=36).lines == [1, 2, 3]


def test_local_train_jsonl_drops_and_counts_broken_rows(make_params, tmp_path, tokenizer_dir, caplog):
    path = tmp_path / "mine.jsonl"
    damaged_train_jsonl(path)
    params = make_params({"data": {"train": {"source": "local", "path": str(path)}}})
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        stats = build_train_set(params, tmp_path / "train.parquet", tokenizer_dir)
    assert time.perf_counter() - t0 < 30  # the long texts never reach the tokenizer
    rows = pq.read_table(tmp_path / "train.parquet").to_pylist()
    assert [r["extra_info"]["question"] for r in rows] == ["What is 1+1?", "What is 2+5?", "What is 6+6?"]
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["2", "7", "12"]
    assert stats.rows_in == 11 and stats.rows_kept == 3
    assert stats.dropped == {
        "no_problem": 1,
        "wrong_type": 2,
        "not_utf8": 1,
        "bad_json": 1,
        "not_an_object": 1,
        "oversized_text": 2,
    }
    assert stats.first_dropped_row == {
        "no_problem": 2,
        "wrong_type": 3,
        "not_utf8": 6,
        "bad_json": 7,
        "not_an_object": 8,
        "oversized_text": 11,
    }
    assert stats.row_unit == "line"
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "mine.jsonl: 8 of 11 rows dropped:" in m
        and "not_utf8 1 (first: line 6)" in m
        and "wrong_type 2 (first: line 3)" in m
        for m in warning
    ), warning


def test_parquet_with_a_10mb_string_and_wrong_types(make_params, tmp_path, tokenizer_dir):
    path = tmp_path / "mine.parquet"
    rows = [
        {"problem": "What is 1+1?", "answer": "2", "solution": None},
        {"problem": BIG, "answer": "3", "solution": None},
        {"problem": "What is 2+2?", "answer": "4", "solution": "z" * 500_000},
        {"problem": "What is 3+3?", "answer": "6", "solution": "3+3 = 6"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    params = make_params({"data": {"train": {"source": "local", "path": str(path)}}})
    stats = build_train_set(params, tmp_path / "train.parquet", tokenizer_dir)
    assert (stats.rows_in, stats.rows_kept) == (4, 2)
    assert stats.dropped == {"oversized_text": 2} and stats.first_dropped_row == {"oversized_text": 2}
    assert stats.row_unit == "row"

    # a column of numbers where the problem text is expected: no row is usable
    pq.write_table(pa.Table.from_pylist([{"problem": i, "answer": str(i)} for i in range(3)]), path)
    with pytest.raises(DataError) as e:
        build_train_set(params, tmp_path / "train.parquet", tokenizer_dir)
    msg = str(e.value)
    assert (
        "mine.parquet: no rows left after filtering (3 rows in; dropped: wrong_type 3) (the first at row 1)"
        in msg
    )
    assert "A row must hold a text 'problem' and a gold 'answer'" in msg


def test_luffy_jsonl_with_wrong_types(make_params, tmp_path):
    def row(prompt, gold):
        return {"prompt": prompt, "reward_model": {"ground_truth": gold, "style": "rule"}, "target": "t"}

    path = tmp_path / "luffy.jsonl"
    path.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                row([{"role": "user", "content": "Compute 3+4."}], "7"),
                row([{"role": "user", "content": 34}], "7"),  # a number as the problem text
                row("Compute 1+1.", ["2"]),  # a list as the gold answer
                row(42, "1"),  # a number as the prompt
                {"prompt": [{"role": "user", "content": "Compute 2+2."}], "reward_model": "4"},  # not a dict
            ]
        )
    )
    params = make_params({"data": {"train": {"source": "openr1_46k", "path": str(path)}}})
    stats = build_train_set(params, tmp_path / "train.parquet", None)
    assert (stats.rows_in, stats.rows_kept) == (5, 1)
    assert stats.dropped == {"wrong_type": 4} and stats.first_dropped_row == {"wrong_type": 2}


def test_a_stray_row_in_another_layout_does_not_change_the_files_layout(make_params, tmp_path, tokenizer_dir):
    path = tmp_path / "mine.jsonl"
    stray = {"prompt": [{"role": "user", "content": "Compute 3+4."}], "reward_model": {"ground_truth": "7"}}
    rows = [{"problem": f"What is {i}+1?", "answer": str(i + 1)} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in [rows[0], stray, *rows[1:]]))
    params = make_params({"data": {"train": {"source": "local", "path": str(path)}}})
    stats = build_train_set(params, tmp_path / "train.parquet", tokenizer_dir)
    assert stats.layout == "plain" and stats.rows_kept == 3
    assert stats.dropped == {"no_problem": 1} and stats.first_dropped_row == {"no_problem": 2}


def test_jsonl_with_no_usable_line_names_the_file_and_a_row(make_params, tmp_path, tokenizer_dir):
    path = tmp_path / "broken.jsonl"
    path.write_bytes(b"\xff\xfe not text\n[1, 2]\n{cut\n")
    params = make_params({"data": {"train": {"source": "local", "path": str(path)}}})
    with pytest.raises(DataError) as e:
        build_train_set(params, tmp_path / "train.parquet", tokenizer_dir)
    msg = str(e.value)
    assert "broken.jsonl: no usable row (3 lines; dropped: " in msg
    assert "bad_json 1 (first: line 3), not_an_object 1 (first: line 2), not_utf8 1 (first: line 1)" in msg
    assert "each line must be a JSON object (UTF-8) with a text 'problem'" in msg
    assert not (tmp_path / "train.parquet").exists()


# ---------------------------------------------------------------------------------------------------- demos


def test_local_demo_jsonl_drops_and_counts_broken_rows(make_params, tmp_path, caplog):
    path = tmp_path / "demos.jsonl"
    path.write_bytes(
        b"".join(
            [
                _line({"problem": "2+3?", "solution": "2 + 3 = 5.", "answer": "5"}),  # 1 good
                _line({"problem": "4+4?", "answer": "8"}),  # 2 missing solution
                _line({"problem": 7, "solution": "7", "answer": "7"}),  # 3 a number as the problem
                _line({"problem": "1+2?", "solution": "1 + 2 = 3", "answer": ["3"]}),  # 4 a list as answer
                '{"problem": "\xe9?", "solution": "s", "answer": "1"}\n'.encode("latin-1"),  # 5 not UTF-8
                _line({"problem": "6-1?", "solution": BIG, "answer": "5"}),  # 6 a 10 MB string
                _line({"problem": "9-1?", "solution": "9 - 1 = \\boxed{8}", "answer": 8}),  # 7 good
                b"not json\n",  # 8
            ]
        )
    )
    params = make_params({"data": {"demos": {"source": "local", "path": str(path)}}})
    with caplog.at_level(logging.WARNING):
        rows, stats = build_demos(params)
    assert [(r["problem"], r["answer"]) for r in rows] == [("2+3?", "5"), ("9-1?", "8")]
    assert stats.rows_in == 8 and stats.rows_kept == 2
    assert stats.dropped == {
        "no_solution": 1,
        "wrong_type": 2,
        "not_utf8": 1,
        "oversized_text": 1,
        "bad_json": 1,
    }
    assert stats.first_dropped_row == {
        "no_solution": 2,
        "wrong_type": 3,
        "not_utf8": 5,
        "oversized_text": 6,
        "bad_json": 8,
    }
    assert "demos.jsonl: 6 of 8 demos dropped: bad_json 1 (first: line 8)" in caplog.text


def test_exemplar_layout_with_broken_episodes(make_params, tmp_path):
    path = tmp_path / "icrl.jsonl"
    path.write_text(
        "".join(
            json.dumps(e) + "\n"
            for e in [
                {"exemplars": [{"prompt": "Question: What is 2+2?", "answer": "Answer: 4"}, "not a dict"]},
                {"exemplars": "not a list"},
                {"exemplars": [{"prompt": 5, "answer": "Answer: 5"}]},
            ]
        )
    )
    params = make_params({"data": {"demos": {"source": "local", "path": str(path)}}})
    rows, stats = build_demos(params)
    assert [r["problem"] for r in rows] == ["What is 2+2?"]
    assert stats.dropped == {"wrong_type": 3} and stats.first_dropped_row == {"wrong_type": 1}


@pytest.mark.parametrize(
    ("content", "counts"),
    [
        (b"", "0 rows in; dropped: none"),
        (b"\xff\n" + _line({"problem": 1, "solution": 2}), "2 rows in; dropped: not_utf8 1, wrong_type 1"),
    ],
    ids=["empty", "all_broken"],
)
def test_demo_file_without_a_usable_demo(make_params, tmp_path, content, counts):
    path = tmp_path / "demos.jsonl"
    path.write_bytes(content)
    params = make_params({"data": {"demos": {"source": "local", "path": str(path)}}})
    with pytest.raises(DataError) as e:
        build_demos(params)
    msg = str(e.value)
    assert f"demos.jsonl: no usable demos ({counts})" in msg
    assert "a demo needs a text problem, a non-empty worked text solution and a gold answer" in msg
    assert "fix the file (data.demos.path)" in msg


def test_math_layout_jsonl_with_a_broken_line(make_params, tmp_path):
    path = tmp_path / "math.jsonl"
    path.write_bytes(
        _line({"problem": "1+1?", "solution": "So \\boxed{2}.", "level": "Level 1", "type": "Algebra"})
        + b"\x80\x81\n"
        + _line({"problem": "2+2?", "solution": ["\\boxed{4}"], "level": "Level 1", "type": "Algebra"})
    )
    params = make_params({"data": {"demos": {"source": "math_hub", "path": str(path)}}})
    rows, stats = build_demos(params)
    assert [r["answer"] for r in rows] == ["2"]
    assert stats.dropped == {"not_utf8": 1, "wrong_type": 1}
    assert stats.first_dropped_row == {"not_utf8": 2, "wrong_type": 3}
