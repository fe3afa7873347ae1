"""The training set from every source, with small local files in the hub datasets' real column layouts."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icpo_core.data import schema
from icpo_core.data.loading import load_table
from icpo_core.data.train_set import build_train_set
from icpo_core.errors import DataError

SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."
LUFFY_SYSTEM = "Your task is to follow a systematic, thorough reasoning process ..."


def luffy_46k_rows() -> list[dict]:
    """Rows in Elliott/Openr1-Math-46k-8192's layout (LUFFY's parquet: system + user prompt, target list)."""
    rows = []
    for i, (problem, gold) in enumerate(
        [("Compute $3+4$.", "7"), ("Find $x$ if $2x=10$.", "5"), ("Prove it.", "")]
    ):
        rows.append(
            {
                "data_source": "openr1",
                "prompt": [{"role": "system", "content": LUFFY_SYSTEM}, {"role": "user", "content": problem}],
                "target": [
                    {"role": "assistant", "content": f"<think>\nworking {i}\n</think>\n\\boxed{{{gold}}}"}
                ],
                "ability": "math",
                "reward_model": {"ground_truth": gold, "style": "rule"},
                "extra_info": {"index": i, "split": "default"},
            }
        )
    return rows


def openr1_220k_rows(long_trace: str) -> list[dict]:
    """Rows in open-r1/OpenR1-Math-220k's layout (the columns of its dataset card)."""

    def row(problem, answer, gens, mv, llama=None, complete=None, qtype="math-word-problem"):
        return {
            "problem": problem,
            "solution": "reference solution",
            "answer": answer,
            "problem_type": "Algebra",
            "question_type": qtype,
            "source": "olympiads",
            "uuid": f"uuid-{problem[:8]}",
            "is_reasoning_complete": complete or [True] * len(gens),
            "generations": gens,
            "correctness_math_verify": mv,
            "correctness_llama": llama,
            "finish_reasons": ["stop"] * len(gens),
            "correctness_count": sum(bool(x) for x in mv),
            "messages": [{"role": "user", "content": problem}, {"role": "assistant", "content": gens[0]}],
        }

    return [
        row("What is 2+2?", "4", ["wrong trace", "right trace A", "right trace B"], [False, True, True]),
        row(
            "What is 3*3?", "9", ["unfinished 9", "judge says ok"], [True, False], [None, True], [False, True]
        ),
        row("What is 5-1?", "4", ["bad", "bad again"], [False, False]),  # no verified trace
        row("Show that n^2 >= 0.", "proof", ["trace"], [True], qtype="proof"),  # ungradable
        row("What is 6+1?", "", ["trace"], [True]),  # no gold answer
        row("What is 9+9?", "18", [long_trace], [True]),  # too long for the token budget
    ]


def write_parquet(rows: list[dict], path) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def read_rows(path) -> list[dict]:
    schema.check_schema(path, schema.TRAIN_SCHEMA)
    return pq.read_table(path).to_pylist()


def test_synthetic_train_set(make_params, tmp_path):
    params = make_params({"data": {"synthetic": {"levels": [0, 3], "train_per_level": 10}}})
    stats = build_train_set(params, tmp_path / "train.parquet", None)
    rows = read_rows(tmp_path / "train.parquet")
    assert stats.rows_in == stats.rows_kept == len(rows) == 20
    suffix, system = params.data.synthetic.prompt_suffix, params.data.synthetic.system_prompt
    head = [{"role": "system", "content": system}] if system else []
    for i, r in enumerate(rows):
        assert r["data_source"] == "synthetic" and r["ability"] == "math"
        assert r["prompt"] == [*head, {"role": "user", "content": r["extra_info"]["question"] + suffix}]
        assert r["reward_model"]["style"] == "rule"
        assert r["target"].endswith(f"\\boxed{{{r['reward_model']['ground_truth']}}}.")
        assert r["extra_info"]["index"] == i and r["extra_info"]["split"] == "train"
    assert {r["extra_info"]["level"] for r in rows} == {0, 3}


def test_synthetic_system_prompt_comes_first_in_every_row(make_params, tmp_path):
    system = "Answer inside \\boxed{}."
    params = make_params(
        {"data": {"synthetic": {"levels": [0], "train_per_level": 5, "system_prompt": system}}}
    )
    build_train_set(params, tmp_path / "train.parquet", None)
    rows = read_rows(tmp_path / "train.parquet")
    suffix = params.data.synthetic.prompt_suffix
    assert [r["prompt"] for r in rows] == [
        [
            {"role": "system", "content": system},
            {"role": "user", "content": r["extra_info"]["question"] + suffix},
        ]
        for r in rows
    ]


def test_openr1_46k_layout_as_released(make_params, tmp_path):
    path = write_parquet(luffy_46k_rows(), tmp_path / "openr1_46k.parquet")
    params = make_params({"data": {"train": {"source": "openr1_46k", "path": path}}})
    stats = build_train_set(params, tmp_path / "train.parquet", None)
    rows = read_rows(tmp_path / "train.parquet")
    assert (stats.rows_in, stats.rows_kept, stats.dropped) == (3, 2, {"no_answer": 1})
    assert stats.max_tokens is None  # as released: no further length filter
    first = rows[0]
    assert first["data_source"] == "Elliott/Openr1-Math-46k-8192"
    assert first["prompt"] == [
        {"role": "user", "content": "Compute $3+4$." + SUFFIX}
    ]  # system prompt dropped
    assert first["reward_model"] == {"style": "rule", "ground_truth": "7"}
    assert first["target"].startswith("<think>\nworking 0")
    assert first["extra_info"] == {"index": 0, "split": "train", "question": "Compute $3+4$.", "level": -1}


def test_openr1_220k_layout_with_token_filter(make_params, tmp_path, tokenizer_dir):
    long_trace = "step " * 400
    path = write_parquet(openr1_220k_rows(long_trace), tmp_path / "train-00000-of-00010.parquet")
    params = make_params({"data": {"train": {"source": "openr1_220k", "path": path, "max_tokens": 200}}})
    stats = build_train_set(params, tmp_path / "train.parquet", tokenizer_dir)
    rows = read_rows(tmp_path / "train.parquet")
    assert stats.rows_in == 6 and stats.rows_kept == 2
    assert stats.dropped == {"no_verified_trace": 1, "unusable_answer": 1, "no_answer": 1, "too_long": 1}
    assert [r["target"] for r in rows] == ["right trace A", "judge says ok"]  # first complete verified trace
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["4", "9"]
    assert rows[0]["data_source"] == "open-r1/OpenR1-Math-220k"
    assert stats.max_tokens == 200 and stats.tokens["max"] > 400


def test_token_filter_counts_prompt_and_trace(make_params, tmp_path, tokenizer_dir):
    from icpo_core.data.openr1 import count_tokens, load_tokenizer

    tok = load_tokenizer(str(tokenizer_dir))
    batch = {"problem": ["What is 2+2?"], "target": ["four " * 10]}
    n = count_tokens(batch, str(tokenizer_dir), SUFFIX)["n_tokens"][0]
    expected = len(tok.encode("What is 2+2?" + SUFFIX).ids) + len(tok.encode("four " * 10).ids)
    assert n == expected
    # The budget is inclusive: a row of exactly max_tokens is kept, one token less drops it.
    path = write_parquet(
        [{"problem": "What is 2+2?", "answer": "4", "solution": "four " * 10}], tmp_path / "one.parquet"
    )
    for budget, kept in ((n, 1), (n - 1, 0)):
        params = make_params({"data": {"train": {"source": "local", "path": path, "max_tokens": budget}}})
        if kept:
            assert build_train_set(params, tmp_path / "t.parquet", tokenizer_dir).rows_kept == 1
        else:
            with pytest.raises(DataError, match=r"one\.parquet: no rows left after filtering.*too_long 1"):
                build_train_set(params, tmp_path / "t.parquet", tokenizer_dir)


def test_token_filter_multiprocess_matches_single(make_params, tmp_path, tokenizer_dir):
    rows = [
        {"problem": f"What is {i} + {i}?", "answer": str(2 * i), "solution": "x " * (i % 97)}
        for i in range(2400)
    ]
    path = write_parquet(rows, tmp_path / "many.parquet")
    kept = {}
    for procs in (1, 2):
        params = make_params(
            {"data": {"train": {"source": "local", "path": path, "max_tokens": 80, "num_proc": procs}}}
        )
        stats = build_train_set(params, tmp_path / f"t{procs}.parquet", tokenizer_dir)
        kept[procs] = [r["extra_info"]["question"] for r in read_rows(tmp_path / f"t{procs}.parquet")]
        assert stats.dropped["too_long"] == 2400 - stats.rows_kept > 0
    assert kept[1] == kept[2]


def test_local_plain_jsonl_answer_from_solution(make_params, tmp_path, tokenizer_dir):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"problem": "1+1?", "solution": "1+1=2, so \\\\boxed{2}"}\n'
        '{"problem": "2+5?", "answer": 7}\n'
        '{"problem": "", "answer": "3"}\n'
    )
    params = make_params({"data": {"train": {"source": "local", "path": str(path)}}})
    stats = build_train_set(params, tmp_path / "train.parquet", tokenizer_dir)
    rows = read_rows(tmp_path / "train.parquet")
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["2", "7"]
    assert rows[0]["target"] == "1+1=2, so \\boxed{2}" and rows[1]["target"] == ""
    assert rows[0]["data_source"] == "local"
    assert stats.dropped == {"no_problem": 1}


def test_local_folder_copy_of_hub_dataset(make_params, tmp_path):
    """A downloaded hub folder (data/train-0000x-of-0000N.parquet) loads as one table."""
    folder = tmp_path / "Openr1-Math-46k-8192" / "data"
    folder.mkdir(parents=True)
    rows = luffy_46k_rows()
    write_parquet(rows[:2], folder / "train-00000-of-00002.parquet")
    write_parquet(rows[2:], folder / "train-00001-of-00002.parquet")
    params = make_params({"data": {"train": {"source": "openr1_46k", "path": str(folder.parent)}}})
    assert build_train_set(params, tmp_path / "train.parquet", None).rows_in == 3


def test_hub_folder_copy_reads_the_same_config(make_params, tmp_path, tokenizer_dir):
    """A downloaded OpenR1-Math-220k folder: its card's `default` config (data/), not `extended/`."""
    root = tmp_path / "OpenR1-Math-220k"
    (root / "data").mkdir(parents=True)
    (root / "extended").mkdir()
    rows = openr1_220k_rows("short")
    write_parquet(rows[:2], root / "data" / "train-00000-of-00001.parquet")
    write_parquet(rows[2:], root / "extended" / "train-00000-of-00001.parquet")
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
        "- config_name: extended\n  data_files:\n  - split: train\n    path: extended/train-*\n---\n"
    )
    params = make_params({"data": {"train": {"source": "openr1_220k", "path": str(root)}}})
    stats = build_train_set(params, tmp_path / "train.parquet", tokenizer_dir)
    assert (stats.rows_in, stats.rows_kept) == (2, 2)


def test_max_rows_is_a_seeded_subset(make_params, tmp_path):
    params = make_params({"data": {"train": {"max_rows": 7}}})
    stats = build_train_set(params, tmp_path / "a.parquet", None)
    again = build_train_set(params, tmp_path / "b.parquet", None)
    syn = params.data.synthetic
    n_rows = len(syn.levels) * syn.train_per_level
    assert stats.rows_kept == 7 and stats.dropped == {"over_max_rows": n_rows - 7}
    assert read_rows(tmp_path / "a.parquet") == read_rows(tmp_path / "b.parquet") and again.rows_kept == 7


def test_schema_mismatch_names_file_and_columns(make_params, tmp_path):
    path = write_parquet([{"problem": "1+1?", "answer": "2"}], tmp_path / "not_openr1.parquet")
    params = make_params({"data": {"train": {"source": "openr1_220k", "path": path}}})
    with pytest.raises(DataError) as e:
        build_train_set(params, tmp_path / "train.parquet", None)
    msg = str(e.value)
    assert "not_openr1.parquet" in msg and "'generations'" in msg and "'correctness_math_verify'" in msg


def test_unknown_local_layout(make_params, tmp_path):
    path = write_parquet([{"question": "1+1?", "label": "2"}], tmp_path / "odd.parquet")
    params = make_params({"data": {"train": {"source": "local", "path": path}}})
    with pytest.raises(DataError, match=r"odd\.parquet: unknown layout.*found \['question', 'label'\]"):
        build_train_set(params, tmp_path / "train.parquet", None)


def test_corrupt_parquet_names_the_file(make_params, tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    params = make_params({"data": {"train": {"source": "openr1_46k", "path": str(path)}}})
    with pytest.raises(DataError, match=r"broken\.parquet: cannot read it"):
        build_train_set(params, tmp_path / "train.parquet", None)


def test_empty_after_filtering_names_dataset_and_filter(make_params, tmp_path):
    rows = luffy_46k_rows()
    for r in rows:
        r["reward_model"]["ground_truth"] = ""
    path = write_parquet(rows, tmp_path / "no_gold.parquet")
    params = make_params({"data": {"train": {"source": "openr1_46k", "path": path}}})
    with pytest.raises(
        DataError, match=r"no_gold\.parquet: no rows left after filtering \(3 rows in; dropped: no_answer 3\)"
    ):
        build_train_set(params, tmp_path / "train.parquet", None)


def test_unreachable_hub_says_how_to_use_a_local_copy(offline_hub):
    with pytest.raises(DataError) as e:
        load_table("open-r1/OpenR1-Math-220k", config="default", what="data.train")
    assert "open-r1/OpenR1-Math-220k" in str(e.value) and "set data.train.path" in str(e.value)
