"""IEF prompt building: seeded demo draws, the question never its own demo, both formats."""

import numpy as np
import pandas as pd
import pytest

from icpo_core.algorithm import Demo, DemoPool, build_ief_messages

SUFFIX = " Put your final answer within \\boxed{}."


def _pool(n: int = 10) -> DemoPool:
    return DemoPool.from_records(
        [
            {
                "id": str(i),
                "problem": f"What is {i}+1?",
                "solution": f"{i}+1={i + 1}. \\boxed{{{i + 1}}}",
                "answer": str(i + 1),
            }
            for i in range(n)
        ]
    )


def test_sample_is_seeded_distinct_and_excludes_question():
    pool = _pool(10)
    a = pool.sample(3, np.random.default_rng(7), exclude_problem="What is 4+1?")
    b = pool.sample(3, np.random.default_rng(7), exclude_problem="What is 4+1?")
    assert a == b
    assert len({d.problem for d in a}) == 3
    for seed in range(50):
        # with 9 of 10 allowed and k=9 the question must be the one left out, every time
        got = pool.sample(9, np.random.default_rng(seed), exclude_problem="  What is 4+1? ")
        assert "What is 4+1?" not in {d.problem for d in got}
        assert len(got) == 9


def test_sample_covers_the_pool_uniformly_enough():
    pool = _pool(5)
    rng = np.random.default_rng(0)
    counts = {}
    for _ in range(500):
        (d,) = pool.sample(1, rng, exclude_problem="What is 0+1?")
        counts[d.problem] = counts.get(d.problem, 0) + 1
    assert "What is 0+1?" not in counts
    assert set(counts) == {f"What is {i}+1?" for i in range(1, 5)}
    assert min(counts.values()) > 80  # expected 125 each


def test_sample_errors():
    pool = _pool(2)
    with pytest.raises(ValueError, match="only 1"):
        pool.sample(2, np.random.default_rng(0), exclude_problem="What is 0+1?")
    with pytest.raises(ValueError, match="empty"):
        DemoPool([])
    with pytest.raises(ValueError, match="lacks"):
        DemoPool.from_records([{"problem": "x"}])


def test_from_parquet(tmp_path):
    path = tmp_path / "demos.parquet"
    pd.DataFrame(
        {"id": ["a"], "problem": ["p"], "solution": ["s \\boxed{1}"], "answer": ["1"], "source": ["syn"]}
    ).to_parquet(path)
    pool = DemoPool.from_parquet(path)
    assert pool.demos == [Demo("p", "s \\boxed{1}", "1")]


def test_chat_turns_format():
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Q?" + SUFFIX}]
    demos = [Demo("D1?", "sol1 \\boxed{1}", "1"), Demo("D2?", "sol2 \\boxed{2}", "2")]
    out = build_ief_messages(msgs, demos, "chat_turns", SUFFIX)
    assert out == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "D1?" + SUFFIX},
        {"role": "assistant", "content": "sol1 \\boxed{1}"},
        {"role": "user", "content": "D2?" + SUFFIX},
        {"role": "assistant", "content": "sol2 \\boxed{2}"},
        {"role": "user", "content": "Q?" + SUFFIX},
    ]
    assert msgs[1]["content"] == "Q?" + SUFFIX  # input untouched


def test_inline_format_is_the_released_template():
    msgs = [{"role": "user", "content": "Q?" + SUFFIX}]
    out = build_ief_messages(msgs, [Demo("D1?", "sol1", "1"), Demo("D2?", "sol2", "2")], "inline", SUFFIX)
    assert out == [
        {
            "role": "user",
            "content": f"Question: D1?{SUFFIX}\nAnswer: sol1\n\n\nQuestion: D2?{SUFFIX}\nAnswer: sol2"
            f"\n\n\nQuestion: Q?{SUFFIX}\nAnswer:",
        }
    ]


def test_no_demos_and_bad_input():
    msgs = [{"role": "user", "content": "Q"}]
    assert build_ief_messages(msgs, [], "chat_turns", SUFFIX) == msgs
    with pytest.raises(ValueError, match="no user turn"):
        build_ief_messages([{"role": "system", "content": "s"}], [Demo("a", "b", "c")], "chat_turns")
    with pytest.raises(ValueError, match="unknown demo format"):
        build_ief_messages(msgs, [Demo("a", "b", "c")], "xml")  # type: ignore[arg-type]


PAPER_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."


def test_released_format_is_the_released_string_byte_for_byte():
    """Fixture written from the released ICLPromptBuilder template (w_inst, w_prefix, empty system prompt)."""
    from pathlib import Path

    from icpo_core.algorithm import build_ief_prompt, released_icl_prompt

    fixture = (Path(__file__).parent / "fixtures" / "released_icl_prompt_2shot.txt").read_text()
    demos = [
        Demo("Leo has 2 apples and gets 1 more. How many apples does Leo have?", "2 + 1 = 3. The answer is \\boxed{3}.", "3"),
        Demo("What is 7 - 4?", "7 - 4 = 3, so \\boxed{3}.", "3"),
    ]  # fmt: skip
    question = "Tom has 3 marbles and gets 4 more. How many marbles does Tom have?"
    msgs = [{"role": "user", "content": question + PAPER_SUFFIX}]
    out = build_ief_prompt(msgs, demos, "released", PAPER_SUFFIX)
    assert out == fixture
    # the instruction twice in each demo, the literal doubled braces on the target, no trailing space
    assert out.count("within \\boxed{}. Let's think") == 2 and out.endswith("\\boxed{{}}\nAnswer:")
    # the question may be given directly (the trainer passes extra_info.question)
    assert build_ief_prompt(msgs, demos, "released", PAPER_SUFFIX, question=question) == fixture
    # the released builder with an empty demo cache: no instruction, the trailing space kept
    assert released_icl_prompt(question, []) == f"Question: {question}\nAnswer: "
    with pytest.raises(ValueError, match="raw string"):
        build_ief_messages(msgs, demos, "released", PAPER_SUFFIX)
