import pytest

from icpo_core.data.answers import ensure_boxed_ending, last_boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $x = \\boxed{5}$.", "5"),
        ("first \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\fbox{7}", "7"),
        ("The answer is \\boxed 42$.", "42"),
        ("\\boxed{{a}, {b}}", "{a}, {b}"),
        ("no box here", None),
        ("unbalanced \\boxed{3", None),
        ("empty \\boxed{}", None),
        ("", None),
        (None, None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_ensure_boxed_ending_appends_only_when_missing():
    assert ensure_boxed_ending("2 + 2 = 4", "4") == "2 + 2 = 4\nThe answer is \\boxed{4}."
    boxed = "So \\boxed{4}."
    assert ensure_boxed_ending(boxed + "  \n", "4") == boxed
