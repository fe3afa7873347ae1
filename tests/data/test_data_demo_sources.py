"""The demo cache from every source: worked solutions kept, answers boxed, unusable rows counted."""

from __future__ import annotations

import json
import logging
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icpo_core.data import synthetic
from icpo_core.data.answers import last_boxed
from icpo_core.data.demo_sources import RELEASED_SUFFIX, build_demos
from icpo_core.errors import DataError


def test_synthetic_demos_are_the_demo_split(make_params):
    params = make_params(
        {"data": {"synthetic": {"levels": [1], "demos_per_level": 12, "demo_style": "same"}}}
    )
    rows, stats = build_demos(params)
    assert stats.rows_in == stats.rows_kept == 12 and stats.dropped == {}
    syn = params.data.synthetic
    split = synthetic.generate_splits(
        [1], train=syn.train_per_level, demo=12, eval=syn.eval_per_level, seed=params.seed
    )
    assert [r["problem"] for r in rows] == [p.problem for p in split["demo"]]
    assert all(
        r["source"] == "synthetic_l1" and r["solution"].endswith(f"\\boxed{{{r['answer']}}}.") for r in rows
    )


def test_synthetic_disjoint_demos_are_seeded_and_reproducible(make_params):
    """`demo_style: disjoint`: the disjoint-style demos of the levels, the same rows for the same seed."""
    params = make_params(
        {"data": {"synthetic": {"levels": [0, 3], "demos_per_level": 20, "demo_style": "disjoint"}}}
    )
    assert params.data.synthetic.demo_style == "disjoint"
    rows, stats = build_demos(params)
    again, _ = build_demos(params)
    other, _ = build_demos(params.model_copy(update={"seed": params.seed + 1}))
    assert rows == again and stats.rows_kept == 40 and stats.dropped == {}
    assert [r["problem"] for r in rows] != [r["problem"] for r in other]
    assert [r["problem"] for r in rows] == [
        p.problem for p in synthetic.generate_demos([0, 3], 20, params.seed)
    ]
    assert all(last_boxed(r["solution"]) == r["answer"] for r in rows)
    assert {r["source"] for r in rows} == {"synthetic_l0", "synthetic_l3"}


def test_math_lighteval_layout_keeps_solutions(make_params, tmp_path):
    """DigitalLearningGmbH/MATH-lighteval train: problem, solution, level, type."""
    table = [
        {
            "problem": "What is $\\frac{1}{2}+\\frac{1}{2}$?",
            "solution": "We add: $\\frac{1}{2}+\\frac{1}{2}=\\boxed{1}$.",
            "level": "Level 1",
            "type": "Prealgebra",
        },
        {
            "problem": "Simplify $\\sqrt{8}$.",
            "solution": "$\\sqrt{8}=\\boxed{2\\sqrt{2}}$",
            "level": "Level 2",
            "type": "Algebra",
        },
        {"problem": "No box.", "solution": "The answer is 3.", "level": "Level 1", "type": "Algebra"},
    ]
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(table), path)
    params = make_params({"data": {"demos": {"source": "math_hub", "path": str(path)}}})
    rows, stats = build_demos(params)
    assert stats.dropped == {"no_answer": 1} and stats.rows_kept == 2
    assert rows[0]["solution"] == table[0]["solution"]  # the worked solution is kept verbatim
    assert [r["answer"] for r in rows] == ["1", "2\\sqrt{2}"]
    assert rows[1]["id"] == "math-train-00001" and rows[1]["source"] == "DigitalLearningGmbH/MATH-lighteval"


def test_math_layout_mismatch(make_params, tmp_path):
    path = tmp_path / "math.jsonl"
    path.write_text('{"question": "1+1", "answer": "2"}\n')
    params = make_params({"data": {"demos": {"source": "math_hub", "path": str(path)}}})
    with pytest.raises(DataError, match=r"math\.jsonl: missing column\(s\) \['problem', 'solution'\]"):
        build_demos(params)


def test_local_jsonl_problem_solution_answer(make_params, tmp_path):
    path = tmp_path / "demos.jsonl"
    lines = [
        {"problem": "2+3?", "solution": "2 + 3 = 5.", "answer": "5"},
        {"problem": "4+4?", "solution": "", "answer": "8"},  # no worked solution: dropped
        {"problem": "2+3?", "solution": "again", "answer": "5"},  # duplicate problem
        {"problem": "6-1?", "solution": "6 - 1 = \\boxed{5}"},  # answer from the box
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    params = make_params({"data": {"demos": {"source": "local", "path": str(path), "max_rows": 5}}})
    rows, stats = build_demos(params)
    assert stats.dropped == {"no_solution": 1, "duplicate": 1}
    assert rows[0]["solution"] == "2 + 3 = 5.\nThe answer is \\boxed{5}."
    assert rows[1]["answer"] == "5" and rows[1]["solution"] == "6 - 1 = \\boxed{5}"
    assert {r["source"] for r in rows} == {"demos.jsonl"}


def test_in_context_rl_exemplar_format(make_params, tmp_path):
    """seeds/003: one episode per line, `exemplars: [{prompt, answer}]` (+ queries, ignored)."""
    episodes = [
        {
            "exemplars": [
                {"prompt": "Question: What is 2+2?", "answer": "Answer: 4"},
                {"prompt": "Question: What is the capital of France?", "answer": "Answer: Paris"},
            ],
            "queries": [
                {"prompt": "Question: 5*6?", "preferred_answer": "Answer: 30", "rejected_answer": "25"}
            ],
            "episode_id": "ep1",
            "task_type": "math",
        },
        {
            "exemplars": [{"prompt": "Question: What is 2+2?", "answer": "Answer: 4"}],
            "queries": [],
            "episode_id": "ep2",
            "task_type": "math",
        },
    ]
    path = tmp_path / "icrl.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in episodes))
    params = make_params({"data": {"demos": {"source": "local", "path": str(path)}}})
    rows, stats = build_demos(params)
    assert [(r["problem"], r["answer"]) for r in rows] == [
        ("What is 2+2?", "4"),
        ("What is the capital of France?", "Paris"),
    ]
    assert rows[0]["solution"] == "Answer: 4\nThe answer is \\boxed{4}."
    assert stats.dropped == {"duplicate": 1}


def test_official_pkl_cache_needs_opt_in_and_warns(make_params, tmp_path, caplog):
    question = "What is $1+2$?"
    cache = {
        "entries": {
            0: {
                "uid": 0,
                "question": question + RELEASED_SUFFIX,
                "answer": "We have $1+2=\\boxed{3}$.",
                "reward": 1.0,
                "pass_rate": 1.0,
                "timestamp": 0.0,
                "metadata": {
                    "level": -1,
                    "subject": "DigitalLearningGmbH/MATH-lighteval",
                    "final_answer": "3",
                },
            },
            1: {  # the released pipeline's lost solution: nothing to demonstrate
                "uid": 1,
                "question": "What is $2+2$?" + RELEASED_SUFFIX,
                "answer": "",
                "metadata": {"level": -1, "subject": "x", "final_answer": "4"},
            },
        },
        "stats": {"total_added": 2},
        "max_size": 1000,
        "min_pass_rate": 1.0,
    }
    path = tmp_path / "math_demo.pkl"
    path.write_bytes(pickle.dumps(cache))
    params = make_params({"data": {"demos": {"source": "pkl", "path": str(path), "allow_pickle": True}}})
    with caplog.at_level(logging.WARNING):
        rows, stats = build_demos(params)
    assert "unpickling runs arbitrary code" in caplog.text
    assert rows == [
        {
            "id": "pkl-0",
            "problem": question,
            "solution": "We have $1+2=\\boxed{3}$.",
            "answer": "3",
            "source": "DigitalLearningGmbH/MATH-lighteval",
        }
    ]
    assert stats.dropped == {"no_solution": 1}


def test_pkl_of_wrong_shape(make_params, tmp_path):
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    params = make_params({"data": {"demos": {"source": "pkl", "path": str(path), "allow_pickle": True}}})
    with pytest.raises(DataError, match=r"other\.pkl: not the official demo cache"):
        build_demos(params)


def test_no_usable_demos(make_params, tmp_path):
    path = tmp_path / "empty_solutions.jsonl"
    path.write_text('{"problem": "1+1?", "solution": "", "answer": "2"}\n')
    params = make_params({"data": {"demos": {"source": "local", "path": str(path)}}})
    with pytest.raises(
        DataError, match=r"empty_solutions\.jsonl: no usable demos \(1 rows in; dropped: no_solution 1\)"
    ):
        build_demos(params)


def test_unreachable_hub_for_math(make_params, offline_hub):
    params = make_params({"data": {"demos": {"source": "math_hub"}}})
    with pytest.raises(DataError, match=r"DigitalLearningGmbH/MATH-lighteval.*set data\.demos\.path"):
        build_demos(params)
