"""Benchmark metrics from per-sample verdicts: avg@n (mean pass@1) and unbiased pass@k.

``pass@k = 1 - C(n - c, k) / C(n, k)`` per problem (Chen et al. 2021), averaged over problems; ``avg@n`` is the
mean fraction of correct samples per problem. Both are in [0, 1].
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from math import comb
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased probability that at least one of k samples (of n, c correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def summarize_benchmark(rows: Iterable[Mapping[str, Any]], ks: Sequence[int] | None = None) -> dict[str, Any]:
    """Metrics of one benchmark from its sample rows (``problem_id`` or ``problem``, ``correct``, optional
    ``timed_out`` / ``extracted`` / ``tokens``). ``ks``: pass@k to report (k above a problem's n is skipped)."""
    by_problem: dict[str, list[bool]] = defaultdict(list)
    n_samples = no_answer = timeouts = 0
    tokens: list[int] = []
    for r in rows:
        key = str(r.get("problem_id", r.get("problem", "")))
        by_problem[key].append(bool(r["correct"]))
        n_samples += 1
        no_answer += r.get("extracted", "") is None
        timeouts += bool(r.get("timed_out", False))
        if r.get("tokens") is not None:
            tokens.append(int(r["tokens"]))
    if not by_problem:
        return {"n_problems": 0, "n_samples": 0, "avg_at_n": None, "accuracy": None}
    counts = [(len(v), sum(v)) for v in by_problem.values()]
    n_min = min(n for n, _ in counts)
    out: dict[str, Any] = {
        "n_problems": len(counts),
        "n_samples": n_samples,
        "n": n_min if n_min == max(n for n, _ in counts) else None,  # None: problems have different n
        "avg_at_n": sum(c / n for n, c in counts) / len(counts),
        "accuracy": sum(c for _, c in counts) / n_samples,  # sample-level (== avg@n when n is uniform)
        "no_answer_rate": no_answer / n_samples,
        "timeouts": timeouts,
    }
    for k in sorted(set(ks or [n_min]) | {n_min}):
        if k <= n_min:
            out[f"pass_at_{k}"] = sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
    if tokens:
        out["mean_tokens"] = sum(tokens) / len(tokens)
    return out


def overall_average(per_benchmark: Mapping[str, Mapping[str, Any]], key: str = "avg_at_n") -> float | None:
    """Unweighted mean of ``key`` over benchmarks (each benchmark counts once, whatever its size)."""
    values = [m[key] for m in per_benchmark.values() if m.get(key) is not None]
    return sum(values) / len(values) if values else None
