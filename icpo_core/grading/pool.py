"""The Grader: a warm pool of grading processes with a hard per-sample time limit; model text never runs.

    with Grader(workers=2, timeout_s=5.0) as g:
        verdicts = g.grade(responses, golds)          # training reward: strict last \\boxed{}, binary
        rewards = [v.reward for v in verdicts]
        bench = g.grade(responses, golds, fallbacks=("answer_is", "last_number"))   # declared per benchmark

Per response, in the calling process: the answer is extracted (:func:`~icpo_core.grading.extract.extract_answer`:
the last ``\\boxed{}``, only the text after the last ``</think>``, no answer when cut off inside ``<think>``) and
cut to :data:`MAX_ANSWER_CHARS`; no answer, a text-identical answer (:func:`normalize_text`), plain numerals
(:func:`fast_numeric`) and a memoised (answer, gold) pair are decided here. The rest go to the worker processes
(:mod:`icpo_core.grading.worker`: math-verify's ``parse`` / ``verify``), one sample at a time per worker, each
under a wall-clock limit kept by this process: a worker that overruns is killed and replaced, and its sample gets
a ``timed_out`` verdict; a worker that dies gets its sample an ``error`` verdict and is replaced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from icpo_core.grading.extract import extract_answer

log = logging.getLogger(__name__)

#: The candidate answer is cut to this many characters before math-verify sees it (a real final answer is short).
MAX_ANSWER_CHARS = 2000
#: The worker program (:mod:`icpo_core.grading.worker`), named from this package so that it follows a rename.
#: Not imported here: ``python -m`` of a module the package already imported runs it twice.
WORKER_MODULE = f"{__package__}.worker"


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
    da, dg = Decimal(a.replace(",", "")), Decimal(g.replace(",", ""))
    if da == dg:
        return True
    if "." not in a and "." not in g:
        return False
    return None


class _Worker:
    """One grading process and its line-buffered stdout."""

    def __init__(self, mem_mb: int) -> None:
        env = dict(os.environ)
        # One thread each: the workers are the parallelism.
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="0")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE, "--mem-mb", str(mem_mb)],
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
    """A warm pool of ``workers`` grading processes with a hard per-sample limit of ``timeout_s`` seconds.

    Create it once and reuse it (training calls :meth:`grade` every step). Thread-safe: calls are serialised.
    Verdicts of (answer, gold) pairs are memoised (``CACHE_SIZE`` pairs), so repeated answers cost nothing.
    ``mem_mb``: each worker's address-space limit in MiB (0: none). ``startup_timeout_s``: a worker not ready
    (math-verify imported and warm) this long after its start raises RuntimeError, as does a worker that exits
    at start. Raises ValueError for ``workers < 1`` or ``timeout_s <= 0``.
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
        self,
        responses: Sequence[str],
        golds: Sequence[str],
        *,
        fallbacks: Sequence[str] = (),
        think_format: str = "none",
    ) -> list[Verdict]:
        """One :class:`Verdict` per response, in order; ValueError if the lengths differ.

        ``fallbacks``, ``think_format``: see :func:`~icpo_core.grading.extract.extract_answer`. Every response gets a verdict within
        about ``timeout_s`` of reaching a worker, whatever its text: ``timeout`` and ``error`` verdicts are wrong.
        """
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        verdicts: list[Verdict | None] = [None] * len(responses)
        extracted: list[str | None] = []
        todo: list[int] = []
        for i, (resp, gold) in enumerate(zip(responses, golds, strict=True)):
            ans = extract_answer(resp if isinstance(resp, str) else str(resp), fallbacks, think_format)
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

    def grade_one(
        self, response: str, gold: str, *, fallbacks: Sequence[str] = (), think_format: str = "none"
    ) -> Verdict:
        return self.grade([response], [gold], fallbacks=fallbacks, think_format=think_format)[0]

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
                                f"run `python -m {WORKER_MODULE}` to see why"
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
