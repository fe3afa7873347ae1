"""Demo solutions end with a boxed answer; their gold is read by the grader's own extraction.

The extraction's edge cases (nested, unbalanced, empty, \\fbox, no box) are tested in
``tests/grading/test_grading_extract.py``, with the check that gold extraction and grading agree.
"""

from icpo_core.data.answers import ensure_boxed_ending


def test_ensure_boxed_ending_appends_only_when_missing():
    assert ensure_boxed_ending("2 + 2 = 4", "4") == "2 + 2 = 4\nThe answer is \\boxed{4}."
    boxed = "So \\boxed{4}."
    assert ensure_boxed_ending(boxed + "  \n", "4") == boxed


def test_ensure_boxed_ending_treats_a_broken_or_empty_last_box_as_missing():
    for solution in ("So \\boxed{4} or \\boxed{5", "So \\boxed{4} then \\boxed{}"):
        assert ensure_boxed_ending(solution, "4") == f"{solution}\nThe answer is \\boxed{{4}}."
