"""Answer extraction: the last box decides, the edge cases, and one definition for gold answers and grading."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icpo_core.data.openr1 import normalize_plain
from icpo_core.grading import extract_answer, last_boxed, luffy_solution, strip_thinking

# (text, the answer last_boxed finds): the edge cases of the one definition.
EDGE_CASES = [
    # plain, several boxes: the last one
    ("so the answer is \\boxed{42}.", "42"),
    ("\\boxed{1} first, then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{3} no wait \\boxed{5}", "5"),
    # nested braces are matched; escaped braces do not count
    ("nested \\boxed{\\frac{\\sqrt{2}}{2}} ok", "\\frac{\\sqrt{2}}{2}"),
    ("\\boxed{{a}, {b}}", "{a}, {b}"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("\\boxed{x \\\\}", "x \\\\"),  # a TeX line break before the closing brace
    # \fbox is a box too, the later of the two commands wins
    ("\\fbox{7}", "7"),
    ("\\boxed{1} then \\fbox{2}", "2"),
    ("\\fbox{1} then \\boxed{2}", "2"),
    # TeX's one-token argument
    ("$\\boxed 5$", "5"),
    ("The answer is \\boxed 42$.", "42"),
    ("\\boxed {5}", "5"),
    # unbalanced last box: None, never the earlier complete box
    ("\\boxed{12} ... \\boxed{3", None),
    ("\\boxed{3} and then \\boxed{4", None),
    ("\\boxed{\\frac{1}{2}", None),
    ("}}}}\\boxed{{{{1}", None),
    ("\\boxed{a \\}", None),  # the escaped brace does not close it
    # empty or missing argument of the last box: None
    ("\\boxed{}", None),
    ("\\boxed{   }", None),
    ("\\boxed{5} then an empty \\boxed{}", None),
    ("ends with \\boxed", None),
    ("\\boxed5", None),
    # no box
    ("no box here, the answer is 3", None),
    ("", None),
    # \boxedx is another command, not a box
    ("\\boxedx{3}", None),
    ("\\boxed{3} and \\boxedfoo{4}", "3"),
]


@pytest.mark.parametrize(("text", "expected"), EDGE_CASES)
def test_last_boxed_edge_cases(text, expected):
    assert last_boxed(text) == expected
    assert extract_answer(text) == expected  # a response without thinking: the same answer


def test_none_text_has_no_box():
    assert last_boxed(None) is None


@pytest.mark.parametrize(("text", "expected"), EDGE_CASES)
def test_gold_extraction_and_grading_agree(text, expected):
    """A worked solution's gold (data side) is what the grader extracts from the same text as a response."""
    out = normalize_plain({"problem": ["p"], "solution": [f"Worked solution. {text}"]})
    gold = out["answer"][0] or None
    assert gold == extract_answer(f"Worked solution. {text}") == expected
    assert out["drop"][0] == ("" if expected is not None else "no_answer")


def test_thinking_only_text_after_close_is_graded():
    assert extract_answer("<think>maybe \\boxed{1}</think> final: \\boxed{2}") == "2"
    assert extract_answer("<think>maybe \\boxed{1}</think> I give up") is None
    # cut off inside thinking: no answer, even with a boxed guess in the thoughts
    assert extract_answer("<think>let me see ... \\boxed{1} hmm, wait") is None
    assert strip_thinking("<think>let me see") is None
    # prompt ended with <think>: the response holds only the close tag
    assert extract_answer("reasoning \\boxed{9}\n</think>\nSo \\boxed{8}") == "8"


def test_luffy_think_format_needs_a_closed_block_and_reads_after_the_first_close():
    """LUFFY's released reward (reward_impl_version 3) on "<think>\\n" + response: both tags or a format error,
    then split("</think>")[1]. Its template opens the block in the prompt, so a response needs the close tag."""
    assert luffy_solution("<think>a</think> b </think> c") == " b "
    assert luffy_solution("a</think>b") == "b" and luffy_solution("<think>a") is None
    assert extract_answer("<think>\\boxed{1}</think> so \\boxed{2}", think_format="luffy") == "2"
    assert extract_answer("\\boxed{2}", think_format="luffy") is None  # no think block: wrong
    assert extract_answer("\\boxed{2}") == "2"  # the default grades it
    # the first close counts (the default reads after the last)
    text = "<think>x</think> \\boxed{3} <think>y</think> \\boxed{4}"
    assert extract_answer(text, think_format="luffy") == "3" and extract_answer(text) == "4"
    with pytest.raises(ValueError, match="unknown think_format"):
        extract_answer("x", think_format="qwen")


def test_fallbacks_only_when_declared():
    text = "Adding them up, the final answer is 17."
    assert extract_answer(text) is None  # training: strict boxed
    assert extract_answer(text, ("answer_is",)) == "17"
    assert extract_answer("we get 3 then 12 apples", ("answer_is", "last_number")) == "12"
    assert extract_answer("reasoning...\nANSWER: C", ("answer_letter",)) == "C"
    assert extract_answer("\\boxed{4}. The answer is 5", ("answer_is",)) == "4"  # a box always wins
    # an unbalanced last box is no box: the declared fallbacks apply, not the earlier box
    assert extract_answer("\\boxed{4} so 7 then \\boxed{\\frac{1}{2", ("last_number",)) == "2"
    with pytest.raises(ValueError, match="unknown answer fallback"):
        extract_answer("x", ("guess",))


def test_extraction_is_linear_on_huge_inputs():
    t = time.monotonic()
    assert last_boxed("{" * 1_000_000 + "\\boxed{" + "{" * 100_000) is None
    assert last_boxed("\\boxed{1}" + "\\boxedx" * 200_000) == "1"
    assert last_boxed("\\boxed{" * 200_000) is None
    assert extract_answer("x " * 500_000 + "\\boxed{1}") == "1"
    assert time.monotonic() - t < 2.0


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="\\{}boxedfx 12$", max_size=60))
def test_any_text_gives_none_or_a_stripped_piece_of_it(text):
    found = last_boxed(text)
    assert found is None or (found and found == found.strip() and found in text)


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="ab1 {}\\", max_size=30),  # no box command can be spelled from these
    st.text(alphabet="ab1+ ", min_size=1, max_size=20).filter(str.strip),
)
def test_a_final_box_is_found_after_any_text(before, answer):
    assert last_boxed(f"{before} \\boxed{{{answer}}}") == answer.strip()
