"""Gold answers from worked solutions: the last ``\\boxed{...}`` (MATH convention), parsed with brace matching.

Pure string handling; nothing is evaluated.
"""

from __future__ import annotations

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed(text: str | None) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed X`` in ``text``; None if there is none.

    Nested braces are matched (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``). An unbalanced box yields None.
    """
    if not text:
        return None
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    rest = text[start + len(cmd) :]
    if rest.startswith(" "):  # "\boxed 5": the argument runs to the next '$' or whitespace
        arg = rest[1:].split("$", 1)[0].split()
        return arg[0].strip() if arg else None
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(rest):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                content = rest[1:i].strip()
                return content or None
    return None


def ensure_boxed_ending(solution: str, answer: str) -> str:
    """``solution`` unchanged if it already boxes an answer, else with ``The answer is \\boxed{answer}.`` appended.

    Demos teach the answer format by example, so every stored solution carries a ``\\boxed{}``.
    """
    solution = solution.rstrip()
    if last_boxed(solution) is not None:
        return solution
    return f"{solution}\nThe answer is \\boxed{{{answer}}}."
