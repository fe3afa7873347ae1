"""Both common layouts load without code changes; prompts carry the benchmark's suffix / system prompt."""

from __future__ import annotations

import json

import pytest
from bench_helpers import make_params, write_limo_jsonl, write_verl_parquet

from icpo_core.bench.loaders import load_problems
from icpo_core.bench.registry import resolve_benchmarks
from icpo_core.errors import DataError

ROWS = [("What is 1+1?", "2"), ("What is half of 1?", "\\frac{1}{2}")]


def spec_for(path, registry=None, tmp_path=None, **extra):
    if extra:
        reg = tmp_path / "reg.yaml"
        body = {"benchmarks": {"toy": {"source": {"path": str(path)}, **extra}}}
        reg.write_text(json.dumps(body))
        return resolve_benchmarks(["toy"], make_params(bench={"registry": str(reg)}))[0]
    return resolve_benchmarks([str(path)], make_params())[0]


@pytest.mark.parametrize("key", ["problem", "question"])
def test_limo_jsonl(tmp_path, key):
    path = write_limo_jsonl(tmp_path / "toy.jsonl", ROWS, key=key)
    problems = load_problems(spec_for(path))
    assert [(p.problem, p.answer) for p in problems] == ROWS
    assert problems[0].messages == [
        {
            "role": "user",
            "content": "What is 1+1? Let's think step by step and output the final answer within \\boxed{}.",
        }
    ]
    assert len({p.id for p in problems}) == 2
    assert load_problems(spec_for(path))[1].id == problems[1].id  # stable ids (resume relies on them)


def test_verl_parquet_drops_system_and_appends_suffix(tmp_path):
    path = write_verl_parquet(tmp_path / "toy.parquet", ROWS)
    problems = load_problems(spec_for(path, tmp_path=tmp_path, prompt_suffix=" BOX."))
    assert [(p.problem, p.answer) for p in problems] == ROWS
    assert problems[1].messages == [{"role": "user", "content": "What is half of 1? BOX."}]
    kept = load_problems(spec_for(path, tmp_path=tmp_path, keep_system=True))
    assert kept[0].messages[0]["role"] == "system" and len(kept[0].messages) == 2


def test_hub_source_goes_through_datasets(tmp_path):
    # A hub dataset repo checked out locally has the same shape as the hub: <repo>/test.jsonl
    repo = tmp_path / "org_gsm"
    repo.mkdir()
    with (repo / "test.jsonl").open("w") as f:
        f.write(
            json.dumps({"question": "Sum 1,000 and 234?", "answer": "1000 + 234 = 1234\n#### 1,234"}) + "\n"
        )
    reg = tmp_path / "reg.yaml"
    reg.write_text(
        json.dumps(
            {
                "benchmarks": {
                    "gsm": {
                        "source": {"hub": str(repo), "split": "test"},
                        "fields": {"problem": "question", "answer": "answer"},
                        "answer_regex": "####\\s*(.+?)\\s*$",
                        "system_prompt": "Be brief.",
                    }
                }
            }
        )
    )
    [spec] = resolve_benchmarks(["gsm"], make_params(bench={"registry": str(reg)}))
    [p] = load_problems(spec)
    assert p.answer == "1234"
    assert p.messages[0] == {"role": "system", "content": "Be brief."}


def test_bad_inputs_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_problems(spec_for(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no problem field"}\n')
    with pytest.raises(DataError, match="no problem"):
        load_problems(spec_for(bad))
    bad.write_text("not json\n")
    with pytest.raises(DataError, match="not valid JSON"):
        load_problems(spec_for(bad))
    with pytest.raises(DataError, match="could not load"):
        load_problems(
            spec_for(tmp_path / "reg.parquet", tmp_path=tmp_path, source={"hub": str(tmp_path / "nohub")})
        )


def test_a_gold_answer_read_from_a_worked_solutions_last_box(tmp_path):
    """NuminaMath-CoT has no answer column: ``answer_from: boxed`` reads the last \\boxed{} of its solution (the
    registry's numinamath entry), nested braces kept; a solution without a box is a data error naming the row."""
    path = tmp_path / "numina.jsonl"
    rows = [
        {"problem": "Half of 1?", "solution": "Try \\boxed{2}. No: it is \\boxed{\\frac{1}{2}}."},
        {"problem": "1+1?", "solution": "Clearly $\\boxed{2}$."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fields = {"problem": "problem", "answer": "solution"}
    problems = load_problems(spec_for(path, tmp_path=tmp_path, fields=fields, answer_from="boxed"))
    assert [p.answer for p in problems] == ["\\frac{1}{2}", "2"]
    path.write_text(json.dumps({"problem": "?", "solution": "no box here"}) + "\n")
    with pytest.raises(DataError, match="row 0: no .*boxed"):
        load_problems(spec_for(path, tmp_path=tmp_path, fields=fields, answer_from="boxed"))
