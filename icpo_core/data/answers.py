"""Demo solutions that teach the answer format: every stored solution ends with a ``\\boxed{}`` answer.

Gold answers are read with :func:`icpo_core.grading.extract.last_boxed`, the same extraction the grader applies to
responses. Pure string handling; nothing is evaluated.
"""

from __future__ import annotations

from icpo_core.grading.extract import last_boxed


def ensure_boxed_ending(solution: str, answer: str) -> str:
    """``solution`` unchanged if it already boxes an answer, else with ``The answer is \\boxed{answer}.`` appended.

    Demos teach the answer format by example, so every stored solution carries a ``\\boxed{}``.
    """
    solution = solution.rstrip()
    if last_boxed(solution) is not None:
        return solution
    return f"{solution}\nThe answer is \\boxed{{{answer}}}."
