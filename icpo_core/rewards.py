"""Math answer grading: last ``\\boxed{}`` answer + math-verify, bounded in time, never executing model text.

Model output is untrusted. Extraction is plain string scanning in the calling process (linear time, no regex
backtracking, no recursion); the symbolic check (math-verify's ``parse`` / ``verify``) runs in warm worker
*processes*, one sample at a time, each under a hard wall-clock limit enforced by the parent: a worker that
overruns is killed and replaced, and its sample gets a ``timed_out`` verdict. math-verify's own signal-based
timeouts are switched off (they fail outside a main thread, and with them off a hostile answer such as
``9^{9^{9^{9}}}`` could run forever), so the parent's kill is the only clock. Workers also run under an
address-space limit, so an answer that tries to build a gigantic number fails with a MemoryError instead of
swapping the machine.

    with Grader(workers=2, timeout_s=5.0) as g:
        verdicts = g.grade(responses, golds)          # training reward: strict last \\boxed{}, binary
        rewards = [v.reward for v in verdicts]
        bench = g.grade(responses, golds, fallbacks=("answer_is", "last_number"))   # declared per benchmark

Thinking models (``<think> ... </think>``): only the text after the last ``</think>`` is graded; a response
that opens ``<think>`` and never closes it (cut off while thinking) has no answer.

The module doubles as the worker program: ``python -m icpo_core.rewards --worker`` (started by
:class:`Grader`; reads one JSON task per line on stdin, answers one JSON line on stdout).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: The candidate answer is cut to this many characters before math-verify sees it (a real final answer is short).
MAX_ANSWER_CHARS = 2000
#: Fallback extractors look only at the tail of a response (the final answer is at the end).
FALLBACK_TAIL_CHARS = 4000
#: Names of the benchmark-only fallbacks, tried in the order given when a response has no ``\boxed{}``.
FALLBACKS = ("answer_is", "answer_letter", "last_number")

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_BOX_COMMANDS = ("\\boxed", "\\fbox")


@dataclass(frozen=True)
class Verdict:
    """The grade of one response. ``reason``: correct | wrong | no_answer | timeout | error: <detail>."""

    correct: bool
    extracted: str | None
    timed_out: bool = False
    reason: str = ""

    @property
    def reward(self) -> float:
        return float(self.correct)

    def to_dict(self) -> dict[str, Any]:
        return {
            "correct": self.correct,
            "extracted": self.extracted,
            "timed_out": self.timed_out,
            "reason": self.reason,
        }


# ------------------------------------------------------------------------------------------------ extraction


def strip_thinking(response: str) -> str | None:
    """The part of a response that is graded: after the last ``</think>``; None if cut off inside thinking."""
    close = response.rfind(THINK_CLOSE)
    if close >= 0:
        return response[close + len(THINK_CLOSE) :]
    if THINK_OPEN in response:
        return None
    return response


def _match_braces(text: str, open_at: int) -> int | None:
    """Index just past the ``}`` matching the ``{`` at ``open_at``; None when unbalanced. Linear, iterative."""
    depth = 0
    i = open_at
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":  # an escaped brace (\{ \}) does not count
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
    for command in _BOX_COMMANDS:
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
    """The final answer of a response: the last ``\\boxed{}``, else the declared ``fallbacks`` in order.

    Training rewards use no fallbacks (strict boxed, like the paper); benchmarks declare theirs in
    ``benchmarks.yaml`` (``answer_is``: "The answer is X"; ``answer_letter``: "ANSWER: C"; ``last_number``).
    Returns None for no answer, including a response cut off inside ``<think>``.
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


_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,;:! ]|\\left|\\right|\\displaystyle|\s+")


def normalize_text(answer: str) -> str:
    """A conservative normal form for string comparison (no maths): drops $, spacing, \\text{} wrappers, case."""
    s = answer.strip().strip("$")
    s = _TEXT_WRAP.sub(r"\1", s)
    s = _SPACING.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return s.rstrip(".").lower()


_PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d{1,60})(?:\.\d{1,60})?")


def fast_numeric(answer: str, gold: str) -> bool | None:
    """Plain numerals on both sides (``42``, ``-3.50``, ``1,000``): decided here, exactly, without a worker.

    Integers: equal or not (what math-verify says too). Decimals: equal values are correct; unequal ones return
    None so math-verify applies its own rounding rules. Anything else (LaTeX, units, %): None.
    """
    a = normalize_text(answer).replace("{,}", ",")
    g = normalize_text(gold).replace("{,}", ",")
    if not (_PLAIN_NUMBER.fullmatch(a) and _PLAIN_NUMBER.fullmatch(g)):
        return None
    from decimal import Decimal

    da, dg = Decimal(a.replace(",", "")), Decimal(g.replace(",", ""))
    if da == dg:
        return True
    if "." not in a and "." not in g:
        return False
    return None


# --------------------------------------------------------------------------------------------------- worker


def _worker_main(mem_mb: int) -> int:
    """The worker loop (its own process): JSON task lines in, JSON verdict lines out."""
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr
    _die_with_parent()
    if mem_mb > 0:
        import resource

        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (mem_mb * 2**20, mem_mb * 2**20))
    logging.basicConfig(level=logging.ERROR)
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    from functools import lru_cache

    from math_verify import LatexExtractionConfig, parse, verify

    # Model text goes through the LaTeX parser only (it never reaches sympy's eval-based parse_expr).
    answer_config = [LatexExtractionConfig()]

    @lru_cache(maxsize=4096)
    def parse_gold(gold: str) -> list:
        # Signal timeouts off: the parent's kill is the clock (see the module docstring).
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


def _die_with_parent() -> None:
    """Linux: ask the kernel to kill this worker if the parent dies (a stuck worker must not outlive it)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Worker:
    """One grading process and its line-buffered stdout."""

    def __init__(self, mem_mb: int) -> None:
        env = dict(os.environ)
        # One thread each: the workers are the parallelism.
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="0")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "icpo_core.rewards", "--worker", "--mem-mb", str(mem_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.ready = False
        self.started = time.monotonic()
        self.task: int | None = None  # index of the sample in flight
        self.deadline = 0.0

    def send(self, index: int, answer: str, gold: str, deadline: float) -> None:
        self.task, self.deadline = index, deadline
        self.proc.stdin.write((json.dumps({"i": index, "a": answer, "g": gold}) + "\n").encode())
        self.proc.stdin.flush()

    def read_lines(self) -> list[dict] | None:
        """Complete JSON lines available now; None when the process has closed its stdout (died)."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        return [json.loads(x) for x in lines if x.strip()]

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()


# --------------------------------------------------------------------------------------------------- grader


class Grader:
    """A warm pool of grading processes with a hard per-sample time limit.

    Create it once and reuse it (training calls :meth:`grade` every step). Thread-safe: calls are serialised.
    Verdicts of (answer, gold) pairs are memoised (``CACHE_SIZE`` pairs), so repeated answers cost nothing.
    """

    CACHE_SIZE = 200_000

    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 5.0,
        *,
        mem_mb: int = 3072,
        startup_timeout_s: float = 120.0,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.n_workers = workers
        self.timeout_s = float(timeout_s)
        self.mem_mb = mem_mb
        self.startup_timeout_s = startup_timeout_s
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self.restarts = 0  # workers killed on timeout or found dead
        # (answer, gold) -> (correct, reason): grading is deterministic, and samples of one prompt often repeat
        # an answer. Timeouts are not cached (a loaded machine can time out an answer that is fine).
        self._cache: dict[tuple[str, str], tuple[bool, str]] = {}
        self.cache_hits = 0
        self.worker_calls = 0  # samples that needed math-verify (the rest were decided in this process)

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self, wait: bool = False) -> Grader:
        """Start the workers (idempotent); ``wait``: block until they have imported math-verify."""
        if not self._workers:
            self._workers = [_Worker(self.mem_mb) for _ in range(self.n_workers)]
        if wait:
            self._run([], [], [])
        return self

    def close(self) -> None:
        for w in self._workers:
            w.kill()
        self._workers = []

    def __enter__(self) -> Grader:
        return self.start(wait=True)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # grading -------------------------------------------------------------------------------------------
    def grade(
        self, responses: Sequence[str], golds: Sequence[str], *, fallbacks: Sequence[str] = ()
    ) -> list[Verdict]:
        """One :class:`Verdict` per response, in order. ``fallbacks``: see :func:`extract_answer`."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        verdicts: list[Verdict | None] = [None] * len(responses)
        extracted: list[str | None] = []
        todo: list[int] = []
        for i, (resp, gold) in enumerate(zip(responses, golds, strict=True)):
            ans = extract_answer(resp if isinstance(resp, str) else str(resp), fallbacks)
            if ans is not None:
                ans = ans[:MAX_ANSWER_CHARS]
            extracted.append(ans)
            if ans is None:
                verdicts[i] = Verdict(False, None, False, "no_answer")
            elif normalize_text(ans) == normalize_text(str(gold)):
                verdicts[i] = Verdict(True, ans, False, "correct")  # identical text: no maths needed
            elif (num := fast_numeric(ans, str(gold))) is not None:
                verdicts[i] = Verdict(num, ans, False, "correct" if num else "wrong")
            elif (ans, str(gold)) in self._cache:
                ok, reason = self._cache[(ans, str(gold))]
                verdicts[i] = Verdict(ok, ans, False, reason)
                self.cache_hits += 1
            else:
                todo.append(i)
        if todo:
            # One worker call per distinct (answer, gold) pair of the batch.
            first: dict[tuple[str, str], int] = {}
            for i in todo:
                first.setdefault((extracted[i], str(golds[i])), i)  # type: ignore[arg-type]
            with self._lock:
                results = self._run(sorted(first.values()), extracted, [str(g) for g in golds])
                self.worker_calls += len(first)
            if len(self._cache) > self.CACHE_SIZE:
                self._cache.clear()
            for i, (ok, timed_out, reason) in results.items():
                if not timed_out:
                    self._cache[(extracted[i], str(golds[i]))] = (ok, reason)  # type: ignore[index]
            for i in todo:
                j = first[(extracted[i], str(golds[i]))]  # type: ignore[index]
                ok, timed_out, reason = results[j]
                verdicts[i] = Verdict(ok, extracted[i], timed_out, reason)
                self.cache_hits += i != j
        return verdicts  # type: ignore[return-value]

    def grade_one(self, response: str, gold: str, *, fallbacks: Sequence[str] = ()) -> Verdict:
        return self.grade([response], [gold], fallbacks=fallbacks)[0]

    def _replace(self, w: _Worker) -> _Worker:
        w.kill()
        self.restarts += 1
        new = _Worker(self.mem_mb)
        self._workers[self._workers.index(w)] = new
        return new

    def _run(
        self, todo: list[int], answers: list[str | None], golds: list[str]
    ) -> dict[int, tuple[bool, bool, str]]:
        self.start()
        queue = list(reversed(todo))
        results: dict[int, tuple[bool, bool, str]] = {}
        # With nothing to grade, the loop still runs until every worker is ready (start(wait=True)).
        while len(results) < len(todo) or (not todo and not all(w.ready for w in self._workers)):
            now = time.monotonic()
            for w in list(self._workers):
                if w.ready and w.task is None and queue:
                    i = queue.pop()
                    try:
                        w.send(i, answers[i], golds[i], now + self.timeout_s)  # type: ignore[arg-type]
                    except (BrokenPipeError, OSError):
                        queue.append(i)
                        self._replace(w)
            busy = [w for w in self._workers if w.task is not None]
            waits = [w.deadline - now for w in busy] + [1.0]
            readable, _, _ = select.select([w.fd for w in self._workers], [], [], max(0.0, min(waits)))
            now = time.monotonic()
            for w in list(self._workers):
                if w.fd in readable:
                    lines = w.read_lines()
                    if lines is None:  # died (e.g. a crash in the parser): the sample in flight is an error
                        if w.task is not None:
                            results[w.task] = (False, False, "error: grading worker died")
                        elif not w.ready:
                            raise RuntimeError(
                                f"grading worker exited at start (code {w.proc.wait()}); "
                                "run `python -m icpo_core.rewards --worker` to see why"
                            )
                        self._replace(w)
                        continue
                    for msg in lines:
                        if "ready" in msg:
                            w.ready = True
                        elif msg.get("i") == w.task:
                            results[w.task] = (bool(msg["ok"]), False, str(msg["reason"]))
                            w.task = None
                elif w.task is not None and now >= w.deadline:
                    # Over the limit: the only safe stop for arbitrary C-level work is killing the process.
                    results[w.task] = (False, True, "timeout")
                    log.debug(
                        "grading sample %d timed out after %.1fs; restarting its worker",
                        w.task,
                        self.timeout_s,
                    )
                    self._replace(w)
            # Checked only after reading: a worker spawned long ago (e.g. warm before a slow first training
            # step) has its "ready" line waiting in the pipe and must not be mistaken for a failed start.
            for w in self._workers:
                if not w.ready and time.monotonic() - w.started > self.startup_timeout_s:
                    raise RuntimeError(
                        f"grading worker did not start within {self.startup_timeout_s:.0f}s "
                        "(is math-verify installed in this environment?)"
                    )
        return results


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="grading worker (started by icpo_core.rewards.Grader)")
    p.add_argument("--worker", action="store_true", required=True)
    p.add_argument("--mem-mb", type=int, default=3072)
    args = p.parse_args(argv)
    return _worker_main(args.mem_mb)


if __name__ == "__main__":
    sys.exit(main())
