"""Grading throughput: samples/s of ``icpo_core.grading.Grader`` with 1 vs 2 worker processes.

Generates realistic responses (a few sentences of step-by-step reasoning, then a boxed final answer in one of
many forms: integers, fractions, decimals, LaTeX expressions, intervals, sets, units, \\text answers; some
wrong, some unboxed, thinking-model responses, and a small share of hostile ones), grades them, and prints one
Markdown table row per configuration.

    python scripts/bench_grading.py                      # 5,000 responses, workers 1 and 2, timeout 5 s
    python scripts/bench_grading.py --n 1000 --hostile 0  # clean mix only
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from collections import Counter

from icpo_core.grading import Grader

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def random_answer(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """(gold, equivalent forms a model might write, wrong forms) with random values, so pairs rarely repeat."""
    kind = rng.randrange(10)
    a, b = rng.randint(2, 99), rng.randint(2, 12)
    if kind == 0:
        k = rng.randint(0, 5000)
        right = [str(k), f"{k}.0", f"{k} \\text{{ apples}}", f"{k:,}"]
        return str(k), right, [str(k + 1), str(k - 1)]
    if kind == 1:
        p, q = rng.choice([(1, 2), (3, 4), (5, 8), (7, 10), (2, 5), (9, 20)])
        p, q = p * 1, q
        dec = f"{p / q:g}"
        return (
            f"\\frac{{{p}}}{{{q}}}",
            [dec, f"{p}/{q}", f"\\dfrac{{{p}}}{{{q}}}"],
            [f"\\frac{{{p + 1}}}{{{q}}}", f"{p / q + 0.1:g}"],
        )
    if kind == 2:
        s = rng.choice([2, 3, 5, 6, 7])
        return f"{b}\\sqrt{{{s}}}", [f"\\sqrt{{{b * b * s}}}", f"{b} \\sqrt {s}"], [f"{b + 1}\\sqrt{{{s}}}"]
    if kind == 3:
        lo, hi = -a, a + b
        return (
            f"({lo}, {hi}]",
            [f"({lo},{hi}]", f"\\left({lo}, {hi}\\right]"],
            [f"[{lo}, {hi})", f"({lo}, {hi})"],
        )
    if kind == 4:
        xs = rng.sample(range(-20, 40), 3)
        perm = rng.sample(xs, 3)
        gold = "\\{" + ", ".join(map(str, xs)) + "\\}"
        return (
            gold,
            ["\\{" + ", ".join(map(str, perm)) + "\\}", ", ".join(map(str, perm))],
            ["\\{" + ", ".join(map(str, xs[:2])) + "\\}"],
        )
    if kind == 5:
        return f"x^2 + {2 * b}x + {b * b}", [f"(x+{b})^2", f"x^{{2}}+{2 * b}x+{b * b}"], [f"x^2+{b * b}"]
    if kind == 6:
        return str(a), [f"{a} \\, \\mathrm{{cm}}", f"{a}\\text{{ cm}}"], [f"{a + 2} \\text{{ cm}}"]
    if kind == 7:
        d = rng.randrange(7)
        return f"\\text{{{DAYS[d]}}}", [f"\\text{{{DAYS[d]}}}", DAYS[d]], [f"\\text{{{DAYS[(d + 1) % 7]}}}"]
    if kind == 8:
        return f"-\\frac{{{a}}}{{{b}}}", [f"\\frac{{-{a}}}{{{b}}}", f"-{a}/{b}"], [f"\\frac{{{a}}}{{{b}}}"]
    return (
        f"\\frac{{{a}\\pi}}{{{b}}}",
        [f"{a}\\pi/{b}", f"\\frac{{{a}}}{{{b}}}\\pi"],
        [f"\\frac{{{a}\\pi}}{{{b + 1}}}"],
    )


HOSTILE = [
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
    "\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}",
    "\\boxed{__import__('os').system('echo pwned')}",
    "\\boxed{" + "1" * 20000 + "}",
    "\\boxed{\\frac{1}{2}",
    "word " * 200_000 + "\\boxed{1}",
]
FILLER = [
    "First, let's understand what the problem asks.",
    "We can set up an equation for the unknown quantity.",
    "Substituting the values, we simplify step by step.",
    "Multiplying both sides by the denominator gives a cleaner form.",
    "Let me double-check this computation to be safe.",
    "Therefore the expression simplifies nicely.",
    "Note that the constraint rules out the negative solution.",
    "Combining like terms, we get the result below.",
]


def make_responses(n: int, hostile_share: float, seed: int = 0) -> tuple[list[str], list[str], Counter]:
    rng = random.Random(seed)
    responses, golds = [], []
    kinds: Counter = Counter()
    for _ in range(n):
        gold, right, wrong = random_answer(rng)
        reasoning = " ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 25)))
        r = rng.random()
        if r < hostile_share:
            kind, text = "hostile", rng.choice(HOSTILE)
        elif r < hostile_share + 0.55:
            kind, text = "right", f"{reasoning}\n\nThe answer is $\\boxed{{{rng.choice(right)}}}$."
        elif r < hostile_share + 0.80:
            kind, text = "wrong", f"{reasoning}\n\nSo the answer is $\\boxed{{{rng.choice(wrong)}}}$."
        elif r < hostile_share + 0.88:
            kind, text = "no_box", f"{reasoning}\n\nThe answer is {rng.choice(right)}."
        elif r < hostile_share + 0.94:
            kind = "several_boxes"
            text = f"Maybe \\boxed{{{rng.choice(wrong)}}}. {reasoning} Final: \\boxed{{{rng.choice(right)}}}"
        else:
            kind = "thinking"
            text = f"<think>{reasoning} maybe \\boxed{{{rng.choice(wrong)}}}</think>\n\\boxed{{{rng.choice(right)}}}"
        kinds[kind] += 1
        responses.append(text)
        golds.append(gold)
    return responses, golds, kinds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--hostile", type=float, default=0.002, help="share of hostile responses (default 0.2%%)")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=0, help="grade in batches of this size (0: one call)")
    args = ap.parse_args()

    responses, golds, kinds = make_responses(args.n, args.hostile)
    mean_chars = sum(map(len, responses)) / len(responses)
    print(f"{args.n} responses, mean {mean_chars:.0f} chars; mix: {dict(kinds)}; timeout {args.timeout}s")
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    print(
        "| workers | samples | wall s | samples/s | to math-verify | correct | no answer | timeouts | restarts |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in (int(x) for x in args.workers.split(",")):
        with Grader(workers=w, timeout_s=args.timeout) as g:  # warm-up (worker start) is not timed
            t = time.perf_counter()
            size = args.batch or len(responses)
            verdicts = []
            for s in range(0, len(responses), size):
                verdicts += g.grade(responses[s : s + size], golds[s : s + size])
            wall = time.perf_counter() - t
            restarts, worker_calls = g.restarts, g.worker_calls
        correct = sum(v.correct for v in verdicts)
        no_answer = sum(v.reason == "no_answer" for v in verdicts)
        timeouts = sum(v.timed_out for v in verdicts)
        print(
            f"| {w} | {len(verdicts)} | {wall:.1f} | {len(verdicts) / wall:.0f} | {worker_calls} | {correct} | "
            f"{no_answer} | "
            f"{timeouts} | {restarts} |"
        )


if __name__ == "__main__":
    main()
