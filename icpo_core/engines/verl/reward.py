"""The training reward for verl's reward loop: last ``\\boxed{}`` + math-verify, binary (paper / released).

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info)`` per row from threads of its
reward-loop workers (``reward.custom_reward_function.path=pkg://icpo_core.engines.verl.reward``). Grading goes
through :class:`icpo_core.grading.Grader`, whose worker processes hold the hard time limit (math-verify's own
signal timeouts fail in threads). One grader per process, started on first use.

``think_format`` (the run's ``algorithm.think_format``) reaches it through verl's
``reward.custom_reward_function.reward_kwargs`` (:mod:`.overrides`): ``luffy`` grades as LUFFY's released reward does
(:func:`icpo_core.grading.luffy_solution`), the local engine's grader the same way.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

from icpo_core.grading import Grader

_grader = None
_lock = threading.Lock()


def _get_grader():
    global _grader
    with _lock:
        if _grader is None:
            workers = int(os.environ.get("ICPO_REWARD_WORKERS", "2"))
            timeout_s = float(os.environ.get("ICPO_REWARD_TIMEOUT_S", "5"))
            _grader = Grader(workers=workers, timeout_s=timeout_s)
            atexit.register(_shutdown)
        return _grader


def _shutdown() -> None:
    """Stop the grader's workers and drop it while the interpreter is still whole (not at module teardown)."""
    global _grader
    if _grader is not None:
        _grader.close()
        _grader = None


def compute_score(
    data_source: str | None = None,
    solution_str: str = "",
    ground_truth: str = "",
    extra_info: Any = None,
    think_format: str = "none",
    **_: Any,
) -> float:
    """1.0 when the response's last ``\\boxed{}`` answer matches ``ground_truth``, else 0.0 (``think_format``:
    :func:`icpo_core.grading.extract_answer`)."""
    (verdict,) = _get_grader().grade([solution_str], [str(ground_truth)], think_format=think_format)
    return float(verdict.reward)
