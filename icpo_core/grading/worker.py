"""The grading worker program: math-verify on one (answer, gold) pair at a time, in its own process.

Started by :class:`~icpo_core.grading.Grader` as ``python -m icpo_core.grading.worker --mem-mb N`` (run it by
hand the same way to see why a worker fails to start). Protocol, one JSON object per line:

- stdout, once, after math-verify is imported and warm: ``{"ready": <pid>}``;
- stdin, per task: ``{"i": <index>, "a": <extracted answer>, "g": <gold>}``;
- stdout, per task, in order: ``{"i": <index>, "ok": <bool>, "reason": "correct" | "wrong ..." | "error: ..."}``.

A parser failure is a wrong answer (``error: <exception type>``), never a dead worker. The worker keeps no
clock: math-verify's signal-based timeouts are off (they fail outside a main thread, and with them off a hostile
answer such as ``9^{9^{9^{9}}}`` may run forever), so the parent's kill is the only time limit. The worker runs
under an address-space limit (``--mem-mb``), so an answer that builds a gigantic number fails with a MemoryError
instead of swapping the machine, and on Linux it dies with its parent. Model text goes through math-verify's
LaTeX parser only, never through sympy's eval-based ``parse_expr``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from functools import lru_cache

#: The address-space limit of a worker started by hand; the Grader passes its own.
DEFAULT_MEM_MB = 3072


def _die_with_parent() -> None:
    """Linux: ask the kernel to kill this worker if the parent dies (a stuck worker must not outlive it)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _limit_memory(mem_mb: int) -> None:
    """Cap this process's address space at ``mem_mb`` MiB (0: no cap)."""
    if mem_mb <= 0:
        return
    import resource  # Unix only

    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (mem_mb * 2**20, mem_mb * 2**20))


def serve(mem_mb: int) -> int:
    """The worker loop (this process): JSON task lines on stdin, JSON verdict lines on stdout, until EOF."""
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr
    _die_with_parent()
    _limit_memory(mem_mb)
    logging.basicConfig(level=logging.ERROR)
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # Heavy (sympy, the LaTeX grammar): imported by the worker only, never by the process that grades.
    from math_verify import LatexExtractionConfig, parse, verify

    answer_config = [LatexExtractionConfig()]

    @lru_cache(maxsize=4096)
    def parse_gold(gold: str) -> list:
        # parsing_timeout=None: signal timeouts off, the parent's kill is the clock (module docstring).
        if "\\boxed" in gold or "$" in gold:
            parsed = parse(gold, parsing_timeout=None)
            if parsed:
                return parsed
        return parse(f"${gold}$", parsing_timeout=None) or parse(gold, parsing_timeout=None)

    def check(answer: str, gold: str) -> tuple[bool, str]:
        gold_parsed = parse_gold(gold)
        ans_parsed = parse(f"\\boxed{{{answer}}}", answer_config, parsing_timeout=None)
        if not ans_parsed:
            ans_parsed = parse(f"${answer}$", answer_config, parsing_timeout=None)
        if gold_parsed and ans_parsed and verify(gold_parsed, ans_parsed, timeout_seconds=None):
            return True, "correct"
        if not gold_parsed:
            return False, "wrong (gold unparsable: compared as text)"
        return False, "wrong"

    # Warm up the parser (grammar, sympy caches) before reporting ready: the first real sample's clock starts
    # only after this, so a cold start cannot eat its time limit.
    with contextlib.suppress(Exception):
        check("\\frac{1}{2}", "0.5")
        check("(1, 2]", "\\{1, 2\\}")
    print(json.dumps({"ready": os.getpid()}), file=proto)
    for line in sys.stdin:
        task = json.loads(line)
        try:
            ok, reason = check(task["a"], task["g"])
            out = {"i": task["i"], "ok": ok, "reason": reason}
        except MemoryError:
            out = {"i": task["i"], "ok": False, "reason": "error: memory limit"}
        except BaseException as e:  # a parser failure is a wrong answer, never a dead worker
            out = {"i": task["i"], "ok": False, "reason": f"error: {type(e).__name__}"}
        print(json.dumps(out), file=proto)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="grading worker (started by icpo_core.grading.Grader)")
    p.add_argument("--mem-mb", type=int, default=DEFAULT_MEM_MB, help="address-space limit in MiB (0: none)")
    args = p.parse_args(argv)
    return serve(args.mem_mb)


if __name__ == "__main__":
    sys.exit(main())
