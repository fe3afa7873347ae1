"""The Grader: equivalent forms, the in-process decisions, and hostile outputs that must neither run nor hang."""

from __future__ import annotations

import time

import pytest

from icpo_core.grading import MAX_ANSWER_CHARS, Grader, Verdict, fast_numeric

TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2, timeout_s=TIMEOUT_S) as g:
        yield g


# -------------------------------------------------------------------------------------------------- grading


EQUIVALENT = [
    ("\\boxed{\\frac{1}{2}}", "0.5"),  # fraction vs decimal
    ("\\boxed{0.5}", "\\frac{1}{2}"),
    ("\\boxed{1/2}", "\\dfrac{1}{2}"),  # plain vs LaTeX
    ("\\boxed{\\dfrac{3}{4}}", "0.75"),
    ("\\boxed{(1, 2]}", "(1,2]"),  # intervals
    ("\\boxed{(-\\infty, 3)}", "(-\\infty,3)"),
    ("\\boxed{\\{3, 2, 1\\}}", "\\{1,2,3\\}"),  # sets, any order
    ("\\boxed{5 \\text{ cm}}", "5"),  # units stripped
    ("\\boxed{12\\,\\mathrm{m}}", "12"),
    ("\\boxed{\\text{Monday}}", "Monday"),  # \text answers
    ("\\boxed{\\text{(B)}}", "B"),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\sqrt{2}/2"),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}"),
    ("\\boxed{23}", "023"),  # LUFFY's zero-padded AIME answers
    ("\\boxed{142}", "142.0"),  # LUFFY's AMC float strings
    ("\\boxed{1,000}", "1000"),
    ("<think>hmm</think>The answer is $\\boxed{x^2+2x+1}$", "(x+1)^2"),
]

WRONG = [
    ("\\boxed{0.6}", "\\frac{1}{2}"),
    ("\\boxed{[1,2)}", "(1,2]"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2,3\\}"),
    ("\\boxed{4}", "3"),
    ("\\boxed{\\text{Tuesday}}", "Monday"),
    ("\\boxed{C}", "B"),
]


def test_equivalent_forms_are_correct(grader):
    verdicts = grader.grade([r for r, _ in EQUIVALENT], [g for _, g in EQUIVALENT])
    bad = [(case, v) for case, v in zip(EQUIVALENT, verdicts, strict=True) if not v.correct]
    assert not bad
    assert all(v.reason == "correct" and not v.timed_out for v in verdicts)


def test_wrong_answers_are_wrong(grader):
    verdicts = grader.grade([r for r, _ in WRONG], [g for _, g in WRONG])
    assert [v.correct for v in verdicts] == [False] * len(WRONG)
    assert all(v.reason.startswith("wrong") for v in verdicts)


def test_no_answer_and_several_boxes(grader):
    v_none, v_last, v_first = grader.grade(
        ["I think it is 5.", "\\boxed{3} no wait \\boxed{5}", "\\boxed{5} no wait \\boxed{3}"],
        ["5", "5", "5"],
    )
    assert v_none == Verdict(False, None, False, "no_answer")
    assert v_none.reward == 0.0
    assert v_last.correct and v_last.extracted == "5" and v_last.reward == 1.0
    assert not v_first.correct and v_first.extracted == "3"


def test_cut_off_last_box_has_no_answer(grader):
    """A response cut off inside its last box gets no reward, not the reward of a box it went past."""
    [v] = grader.grade(["\\boxed{5}, no wait, it is \\boxed{\\frac{11}{2"], ["5"])
    assert v == Verdict(False, None, False, "no_answer")


def test_benchmark_fallback_grading(grader):
    [v] = grader.grade(["so the answer is $\\frac{1}{2}$."], ["0.5"], fallbacks=("answer_is",))
    assert v.correct
    [v] = grader.grade(["so the answer is $\\frac{1}{2}$."], ["0.5"])
    assert not v.correct and v.reason == "no_answer"


def test_length_mismatch_is_an_error(grader):
    with pytest.raises(ValueError):
        grader.grade(["a", "b"], ["a"])


# ------------------------------------------------------------------------------------------------- hostile


def test_hostile_outputs_get_a_verdict_in_time_and_nothing_runs(grader, tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    hostile = [
        "\\boxed{9^{9^{9^{9}}}}",  # huge exponent
        "\\boxed{" + "\\frac{1}{" * 400 + "2" + "}" * 400 + "}",  # deep nesting
        "\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}",
        "word " * 200_000 + "\\boxed{7}",  # a megabyte of text
        f"\\boxed{{{code}}}",  # looks like Python
        f"The answer is {code}",
        f"<think></think>$\\boxed{{{code.replace('touch', 'rm -rf')}}}$",
        "\\boxed{\\frac{1}{2}",  # unbalanced braces
        "}}}}\\boxed{{{{1}",
        "\\boxed{" + "1" * 50_000 + "}",  # over the input size guard
    ]
    golds = ["7"] * len(hostile)
    t = time.monotonic()
    verdicts = grader.grade(hostile, golds, fallbacks=("answer_is", "last_number"))
    elapsed = time.monotonic() - t
    assert len(verdicts) == len(hostile)
    assert all(isinstance(v, Verdict) for v in verdicts)
    # every sample is bounded by the limit; at most one timeout per worker slot runs at a time
    assert elapsed < TIMEOUT_S * len(hostile) / 2 + 10
    assert verdicts[0].timed_out and not verdicts[0].correct and verdicts[0].reason == "timeout"
    assert verdicts[3].correct  # the megabyte of text still ends with a valid box
    assert (
        not verdicts[7].correct and verdicts[7].extracted == "2"
    )  # unbalanced: no box, last-number fallback
    assert len(verdicts[9].extracted) == MAX_ANSWER_CHARS
    assert not any(v.correct for i, v in enumerate(verdicts) if i != 3)
    assert not marker.exists()
    # the pool recovered: normal grading still works after kills and restarts
    assert grader.grade(["\\boxed{2}"], ["2"])[0].correct


def test_timeout_kills_and_replaces_worker():
    with Grader(workers=1, timeout_s=1.0) as g:
        t = time.monotonic()
        slow, fine = g.grade(["\\boxed{9^{9^{9^{9}}}}", "\\boxed{\\frac{6}{4}}"], ["1", "1.5"])
        elapsed = time.monotonic() - t
        assert slow.timed_out and fine.correct
        assert g.restarts == 1
        assert elapsed < 1.0 + 30  # 1 s limit + one worker restart on a busy 2-core machine


def test_batch_of_40_is_fast(grader):
    responses = [
        f"Step by step: {i} + {i} = {2 * i}. So the answer is $\\boxed{{\\frac{{{4 * i}}}{{2}}}}$."
        for i in range(40)
    ]
    golds = [str(2 * i) for i in range(40)]
    grader.grade(responses[:2], golds[:2])  # the replaced workers of earlier tests are warm again
    t = time.monotonic()
    verdicts = grader.grade(responses, golds)
    elapsed = time.monotonic() - t
    assert all(v.correct for v in verdicts)
    assert elapsed < 1.0


def test_repeated_answers_are_graded_once(grader):
    before = grader.cache_hits
    verdicts = grader.grade(["\\boxed{0.125}"] * 5 + ["\\boxed{0.126}"], ["\\frac{1}{8}"] * 6)
    assert [v.correct for v in verdicts] == [True] * 5 + [False]
    assert grader.cache_hits - before == 4
    [again] = grader.grade(["so \\boxed{0.125}"], ["\\frac{1}{8}"])
    assert again.correct and again.reason == "correct" and grader.cache_hits - before == 5


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("42", "42", True),
        ("42", "43", False),
        ("1,000", "1000", True),
        ("142", "142.0", True),
        ("023", "23", True),
        ("-3", "3", False),
        ("0.3333333", "0.333333", None),  # unequal decimals: math-verify's rounding decides
        ("\\frac{1}{2}", "0.5", None),
        ("1" * 70, "1", None),  # over the numeral size guard
    ],
)
def test_plain_numerals_are_decided_without_a_worker(answer, gold, expected):
    assert fast_numeric(answer, gold) is expected


def test_worker_ready_long_before_first_grade_is_not_a_failed_start():
    # Regression: workers spawned without waiting, then left alone for longer than the startup limit (as a
    # trainer does during its first slow step), have their "ready" line waiting unread in the pipe.
    g = Grader(workers=1, timeout_s=10.0, startup_timeout_s=4.0).start(wait=False)
    try:
        time.sleep(7.0)
        (v,) = g.grade([r"so \boxed{\frac{1}{2}}"], ["0.5"])
        assert v.correct and not v.timed_out
    finally:
        g.close()
