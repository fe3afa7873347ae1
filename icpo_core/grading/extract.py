"""Answer extraction: the final answer of a text by plain string scanning; nothing is parsed as maths or evaluated.

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


def _box_content(text: str, start: int, command: str) -> str | None:
    """The argument of a box command found at ``start``: ``\\boxed{...}`` or ``\\boxed 5``."""
    i = start + len(command)
    if i < len(text) and text[i].isalpha():  # \boxedfoo is another command
        return None
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text):
        return None
    if text[i] == "{":
        end = _match_braces(text, i)
        return None if end is None else text[i + 1 : end - 1]
    if i == start + len(command):  # \boxed5 without a space is not a box
        return None
    # \boxed 5 (TeX's one-token argument): up to the next whitespace, $ or end.
    j = i
    while j < len(text) and not text[j].isspace() and text[j] != "$":
        j += 1
    return text[i:j]


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed ``\\boxed{}`` / ``\\fbox{}`` / ``\\boxed x`` in ``text`` (None if none).

    An unbalanced box (e.g. cut off by the token limit) is skipped in favour of the one before it.
    """
    positions = []
    for command in BOX_COMMANDS:
        p = text.find(command)
        while p >= 0:
            positions.append((p, command))
            p = text.find(command, p + 1)
    for start, command in sorted(positions, reverse=True):
        content = _box_content(text, start, command)
        if content is not None and content.strip():
            return content.strip()
    return None


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


def extract_answer(response: str, fallbacks: Sequence[str] = ()) -> str | None:
    """The final answer of a response: :func:`last_boxed`, else the declared ``fallbacks`` in order.

    Training rewards use no fallbacks (strict boxed, like the paper); benchmarks declare theirs in
    ``benchmarks.yaml`` (``answer_is``: "The answer is X"; ``answer_letter``: "ANSWER: C"; ``last_number``).
    Only the text after the last ``</think>`` counts (:func:`strip_thinking`). Returns None for no answer,
    including a response cut off inside ``<think>``. Raises ValueError for a fallback name not in
    :data:`FALLBACKS`.
    """
    for name in fallbacks:
        if name not in FALLBACKS:
            raise ValueError(f"unknown answer fallback {name!r}; allowed: {list(FALLBACKS)}")
    text = strip_thinking(response)
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
