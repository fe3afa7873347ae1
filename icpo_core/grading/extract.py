"""Answer extraction: the final answer of a text by plain string scanning; nothing is parsed as maths or evaluated.

One definition for both sides of a comparison: the gold answer of a worked solution (``icpo_core.data``) and the
answer of a model response (:class:`~icpo_core.grading.Grader`) are found by the same :func:`last_boxed`, so a
solution and a response that end alike give the same answer.

Model output is untrusted: every function here runs in linear time in the length of its input (``str.find`` /
``rfind`` and one pass of brace counting; no regex on the box scan, no recursion) and returns text only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: Fallback extractors look only at the tail of a response (the final answer is at the end).
FALLBACK_TAIL_CHARS = 4000
#: Names of the benchmark-only fallbacks, tried in the order given when a response has no ``\boxed{}``.
FALLBACKS = ("answer_is", "answer_letter", "last_number")

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
#: How a response's think block is treated (``algorithm.think_format``): ``none``, :func:`strip_thinking`;
#: ``luffy``, :func:`luffy_solution` (LUFFY's released training reward).
THINK_FORMATS = ("none", "luffy")
#: The box commands whose argument is an answer.
BOX_COMMANDS = ("\\boxed", "\\fbox")


def strip_thinking(response: str) -> str | None:
    """The part of a response that is graded: after the last ``</think>``; None if cut off inside thinking."""
    close = response.rfind(THINK_CLOSE)
    if close >= 0:
        return response[close + len(THINK_CLOSE) :]
    if THINK_OPEN in response:
        return None
    return response


def luffy_solution(response: str) -> str | None:
    """The part LUFFY's released reward (``reward_impl_version`` 3) grades: the text between the first ``</think>``
    and the next one (its ``split("</think>")[1]``); None -- wrong, a format error -- without ``</think>``.

    LUFFY's reward requires both think tags in ``"<think>\\n" + response`` (its chat template opens the block in
    the prompt, and the reward prepends the tag), so for a response the rule is: a ``</think>`` must close the
    block; an opening ``<think>`` the model wrote itself (Qwen3's template leaves it to the model) is allowed."""
    parts = response.split(THINK_CLOSE)
    return parts[1] if len(parts) > 1 else None


def graded_text(response: str, think_format: str = "none") -> str | None:
    """The text whose answer is graded under ``think_format`` (:data:`THINK_FORMATS`), or None for no answer."""
    if think_format == "none":
        return strip_thinking(response)
    if think_format == "luffy":
        return luffy_solution(response)
    raise ValueError(f"unknown think_format {think_format!r}; allowed: {list(THINK_FORMATS)}")


def _match_braces(text: str, open_at: int) -> int | None:
    """Index just past the ``}`` matching the ``{`` at ``open_at``; None when unbalanced. Linear, iterative.

    A backslash escapes the next character: ``\\{`` and ``\\}`` are literal braces and do not count.
    """
    depth = 0
    i = open_at
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _last_box_command(text: str) -> tuple[int, str] | None:
    """Position and name of the last box command in ``text``; None if there is none.

    ``\\boxedfoo`` is another command (a letter continues a TeX command name), so it is skipped, not a box.
    """
    best: tuple[int, str] | None = None
    for command in BOX_COMMANDS:
        end = len(text)
        while (p := text.rfind(command, 0, end)) >= 0:
            after = p + len(command)
            if after < len(text) and text[after].isalpha():
                end = p
                continue
            if best is None or p > best[0]:
                best = (p, command)
            break
    return best


def _box_argument(text: str, start: int, command: str) -> str | None:
    """The argument of the box command at ``start``: ``\\boxed{...}`` (braces matched) or ``\\boxed 5``.

    None when it has none: an unbalanced ``{``, nothing after the command, or ``\\boxed5`` / ``\\boxed$``.
    """
    i = start + len(command)
    n = len(text)
    j = i
    while j < n and text[j] in " \t":
        j += 1
    if j >= n:
        return None
    if text[j] == "{":
        end = _match_braces(text, j)
        return None if end is None else text[j + 1 : end - 1]
    if j == i:
        return None
    # \boxed 5 (TeX's one-token argument): up to the next whitespace, $ or the end.
    k = j
    while k < n and not text[k].isspace() and text[k] != "$":
        k += 1
    return text[j:k]


def last_boxed(text: str | None) -> str | None:
    """The argument of the last ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x`` in ``text``, stripped.

    Nested braces are matched (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``); escaped braces do not count
    (``\\boxed{\\{1,2\\}}`` -> ``\\{1,2\\}``). None when ``text`` is None or empty or has no box command.

    The last box command decides, and only it. When its argument is unbalanced (``\\boxed{12} ... \\boxed{3``,
    typically a response cut off by the token limit in the middle of its answer), empty (``\\boxed{}``) or
    missing, the result is None, never an earlier box: the text went past the earlier box, so that box is not
    its final answer (``\\boxed{3}, no wait, \\boxed{4`` must not score 3), and a worked solution whose final box
    is broken yields no gold rather than an intermediate result. This is the MATH reference's rule
    (``last_boxed_only_string``: the last box, None when its braces do not close).
    """
    if not text:
        return None
    found = _last_box_command(text)
    if found is None:
        return None
    content = _box_argument(text, *found)
    if content is None:
        return None
    return content.strip() or None


_ANSWER_IS = re.compile(r"(?:final answer|answer)(?: is|:)[ \t]*:?[ \t]*([^\n]{1,200})", re.IGNORECASE)
_ANSWER_LETTER = re.compile(r"answer[ \t]*:[ \t]*\(?([A-J])\)?(?![A-Za-z])", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def _fallback(text: str, name: str) -> str | None:
    tail = text[-FALLBACK_TAIL_CHARS:]
    if name == "answer_is":
        matches = _ANSWER_IS.findall(tail)
        if not matches:
            return None
        ans = matches[-1].strip().strip("$").strip()
        return ans.rstrip(".").strip() or None
    if name == "answer_letter":
        matches = _ANSWER_LETTER.findall(tail)
        return matches[-1].upper() if matches else None
    if name == "last_number":
        matches = _NUMBER.findall(tail)
        return matches[-1].replace(",", "") if matches else None
    raise ValueError(f"unknown answer fallback {name!r}; allowed: {list(FALLBACKS)}")


def extract_answer(response: str, fallbacks: Sequence[str] = (), think_format: str = "none") -> str | None:
    """The final answer of a response: :func:`last_boxed`, else the declared ``fallbacks`` in order.

    Training rewards use no fallbacks (strict boxed, like the paper); benchmarks declare theirs in
    ``benchmarks.yaml`` (``answer_is``: "The answer is X"; ``answer_letter``: "ANSWER: C"; ``last_number``).
    Only the text after the last ``</think>`` counts (:func:`strip_thinking`); with ``think_format: luffy`` the
    text after the first ``</think>``, and no ``</think>`` is no answer (:func:`luffy_solution`). Returns None
    for no answer, including a response cut off inside ``<think>``. Raises ValueError for a fallback name not in
    :data:`FALLBACKS` or an unknown ``think_format``.
    """
    for name in fallbacks:
        if name not in FALLBACKS:
            raise ValueError(f"unknown answer fallback {name!r}; allowed: {list(FALLBACKS)}")
    text = graded_text(response, think_format)
    if text is None:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    for name in fallbacks:
        ans = _fallback(text, name)
        if ans:
            return ans
    return None
