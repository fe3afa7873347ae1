"""Math answer grading: the last ``\\boxed{}`` answer + math-verify, bounded in time, never executing model text.

- :mod:`~icpo_core.grading.extract`: the final answer of a text (:func:`last_boxed`, :func:`extract_answer`),
  plain string scanning; also the gold answers of worked solutions (``icpo_core.data``).
- :mod:`~icpo_core.grading.pool`: :class:`Grader`, the warm pool of worker processes that the trainers and the
  bench grade with, one :class:`Verdict` per response.
- :mod:`~icpo_core.grading.worker`: the worker program (math-verify in its own process, killed on overrun).
"""

from icpo_core.grading.extract import (
    FALLBACKS,
    THINK_FORMATS,
    extract_answer,
    graded_text,
    last_boxed,
    luffy_solution,
    strip_thinking,
)
from icpo_core.grading.pool import MAX_ANSWER_CHARS, Grader, Verdict, fast_numeric, normalize_text

__all__ = [
    "FALLBACKS",
    "MAX_ANSWER_CHARS",
    "THINK_FORMATS",
    "Grader",
    "Verdict",
    "extract_answer",
    "fast_numeric",
    "graded_text",
    "last_boxed",
    "luffy_solution",
    "normalize_text",
    "strip_thinking",
]
