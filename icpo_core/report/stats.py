"""Statistics of the report: seed x problem score matrices, hierarchical bootstrap CIs, paired tests, digits.

Data. One run (GRPO, ICPO, an ablation) is trained once per seed; every seed's model answers the same problems of
a benchmark. Per run and benchmark the unit of data is a score matrix ``X[seed, problem]``: the mean correctness
of that seed's samples on that problem (greedy decoding: 0 or 1; ``k`` samples: the fraction correct, i.e. the
problem's avg@k; or the unbiased per-problem pass@k). The reported score is ``mean(X)`` over seeds and problems.

Confidence interval (``bootstrap_mean``). A two-level bootstrap for the crossed seed x problem design: each of
``n_boot`` replicates draws the seeds with replacement (``S`` of ``S``) and, independently, the problems with
replacement (``P`` of ``P``), the same problem draw for every drawn seed (problems are shared by the seeds, not
nested in them), and takes the mean of the resampled matrix. The 95 % CI is the 2.5 / 97.5 percentile interval
of the replicates. Resampling both factors captures both sources of noise: which problems the benchmark happens
to hold, and which training runs the seeds happened to produce. Caveats, stated in the report: with one seed the
interval holds the problem noise only; with few seeds (3) the seed component is under-estimated (a bootstrap of
``S`` values has variance ``(S - 1) / S`` of the sample variance and cannot see tails), so the interval is then
somewhat too narrow about training variance. For the average over benchmarks the seed draw is shared by all
benchmarks (one seed is one trained model that answers every benchmark) and each benchmark's problems are drawn
on their own.

Paired comparison (``paired_diff``). ``mean(A) - mean(B)`` for runs A (e.g. ICPO) and B (GRPO) on the same
problems. CI: the same two-level bootstrap, paired over problems (one problem draw per replicate, used by both
runs) and with the seeds of A and of B drawn independently (the seeds of two runs are independent trainings; seed
``i`` of A has nothing to do with seed ``i`` of B). p-value (``sign_flip_p``): a two-sided paired sign-flip
(permutation) test over problems. Per problem ``d_j = mean_seeds A[:, j] - mean_seeds B[:, j]``; under the null
hypothesis the labels "A" and "B" are exchangeable within each problem, so each ``d_j`` is as likely to have the
opposite sign; the test flips the signs of all ``d_j`` independently (``n_perm`` random flips, exact enumeration
when ``2^P <= n_perm``), and ``p = (1 + #{|T*| >= |T|}) / (1 + n_perm)`` with ``T = mean_j d_j`` (the exact test
counts the identity among its ``2^P`` flips). It conditions on the trained models: it asks whether these models
differ on the problem population, not whether a new training would. ``seed_permutation_p`` is the complement: an
exact permutation test over seeds (it exchanges whole trained models between the two runs, statistic the
difference of the per-seed mean scores); with 3 + 3 seeds its smallest possible p is 2 / 20 = 0.1, which is why
it is reported next to, not instead of, the problem-level p.

Digits (``format_ci``). A cell shows the mean and its CI rounded at the first significant digit of the CI
half-width ``(hi - lo) / 2``: half-width 3.2 -> "41 [38, 44]", 0.45 -> "12.4 [11.9, 12.9]", 0.03 -> 2 decimals.
Decimals are clipped to 0..4; a zero-width CI (all scores equal) shows 1 decimal.

Everything is numpy; every random draw comes from a ``numpy.random.Generator`` the caller seeds.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from icpo_core.bench.metrics import pass_at_k

CONFIDENCE = 0.95
N_BOOT = 4000
N_PERM = 10000
RNG_SEED = 20251
MAX_DECIMALS = 4

Matrix = np.ndarray  # float [n_seeds, n_problems]


# --------------------------------------------------------------------------------------------- score matrices
def per_problem_scores(rows: Iterable[Mapping[str, Any]], k: int | None = None) -> dict[str, float]:
    """``problem_id -> score`` from one seed's sample rows of one benchmark: the fraction of correct samples
    (``k`` None), or the unbiased pass@k of the problem (``k`` <= its number of samples)."""
    by_problem: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        by_problem[str(r.get("problem_id", r.get("problem", "")))].append(bool(r["correct"]))
    if k is None:
        return {p: sum(v) / len(v) for p, v in by_problem.items()}
    return {p: pass_at_k(len(v), sum(v), k) for p, v in by_problem.items() if len(v) >= k}


def score_matrix(per_seed: Sequence[Mapping[str, float]]) -> tuple[Matrix, list[str]]:
    """Stack per-seed ``problem -> score`` maps into ``X[seed, problem]`` over the problems every seed has
    (sorted ids, so two runs' matrices line up column by column)."""
    if not per_seed:
        return np.zeros((0, 0)), []
    common = set(per_seed[0]).intersection(*per_seed[1:])
    ids = sorted(common)
    return np.array([[s[p] for p in ids] for s in per_seed], dtype=float).reshape(
        len(per_seed), len(ids)
    ), ids


def align(
    a: Matrix, a_ids: Sequence[str], b: Matrix, b_ids: Sequence[str]
) -> tuple[Matrix, Matrix, list[str]]:
    """The columns of two runs' matrices restricted to their common problems, in the same order."""
    common = sorted(set(a_ids) & set(b_ids))
    ia = {p: i for i, p in enumerate(a_ids)}
    ib = {p: i for i, p in enumerate(b_ids)}
    return a[:, [ia[p] for p in common]], b[:, [ib[p] for p in common]], common


# ------------------------------------------------------------------------------------------------- bootstrap
def resample_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """``[n_boot, n]`` multiplicities of a draw of ``n`` items with replacement (each row sums to ``n``)."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (idx + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)


def _replicate_means(x: Matrix, seed_counts: np.ndarray, problem_counts: np.ndarray) -> np.ndarray:
    """Mean of the resampled matrix per replicate: ``c_s^T X c_p / (S P)``, vectorised over replicates."""
    s, p = x.shape
    return np.einsum("bs,sp,bp->b", seed_counts, x, problem_counts, optimize=True) / (s * p)


@dataclass
class Estimate:
    """A mean over seeds and problems (averaged over benchmarks when several) with its bootstrap CI."""

    mean: float
    lo: float
    hi: float
    n_seeds: int
    n_problems: int  # summed over benchmarks for an average

    def scaled(self, f: float) -> Estimate:
        return Estimate(self.mean * f, self.lo * f, self.hi * f, self.n_seeds, self.n_problems)


def _interval(reps: np.ndarray, confidence: float) -> tuple[float, float]:
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(reps, [a, 1.0 - a])
    return float(lo), float(hi)


def _check(mats: Sequence[Matrix]) -> None:
    if not mats:
        raise ValueError("no score matrix")
    seeds = {m.shape[0] for m in mats}
    if len(seeds) != 1 or 0 in seeds or any(m.shape[1] == 0 for m in mats):
        raise ValueError(f"need non-empty matrices with the same seeds, got shapes {[m.shape for m in mats]}")


def bootstrap_replicates(
    mats: Sequence[Matrix], rng: np.random.Generator, n_boot: int = N_BOOT
) -> tuple[float, np.ndarray]:
    """(point estimate, ``[n_boot]`` replicates) of the unweighted mean over benchmarks of ``mean(X_b)``.
    ``mats``: one matrix per benchmark, rows = the same seeds in the same order. One seed draw per replicate,
    shared by the benchmarks; one problem draw per benchmark."""
    _check(mats)
    seed_counts = resample_counts(rng, mats[0].shape[0], n_boot)
    reps = np.mean(
        [_replicate_means(x, seed_counts, resample_counts(rng, x.shape[1], n_boot)) for x in mats], axis=0
    )
    return float(np.mean([x.mean() for x in mats])), reps


def bootstrap_mean(
    mats: Matrix | Sequence[Matrix],
    rng: np.random.Generator,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
) -> Estimate:
    """Mean over seeds and problems with its two-level percentile bootstrap CI (see the module docstring)."""
    mats = [mats] if isinstance(mats, np.ndarray) else list(mats)
    point, reps = bootstrap_replicates(mats, rng, n_boot)
    lo, hi = _interval(reps, confidence)
    return Estimate(point, lo, hi, mats[0].shape[0], sum(x.shape[1] for x in mats))


# --------------------------------------------------------------------------------------------- paired tests
@dataclass
class Comparison:
    """``mean(A) - mean(B)`` with its paired bootstrap CI and p-values."""

    diff: float
    lo: float
    hi: float
    p: float  # sign-flip test over problems
    p_seeds: float | None  # exact permutation test over seeds (None: fewer than 2 seeds per run in total)
    p_seeds_min: float | None  # the smallest p the seed test can reach with these seed counts
    n_seeds_a: int
    n_seeds_b: int
    n_problems: int

    def scaled(self, f: float) -> Comparison:
        return Comparison(
            self.diff * f,
            self.lo * f,
            self.hi * f,
            self.p,
            self.p_seeds,
            self.p_seeds_min,
            self.n_seeds_a,
            self.n_seeds_b,
            self.n_problems,
        )


def sign_flip_p(diffs: Sequence[np.ndarray], rng: np.random.Generator, n_perm: int = N_PERM) -> float:
    """Two-sided p of the paired sign-flip test. ``diffs``: per benchmark, the per-problem differences ``d_j``;
    the statistic is the unweighted mean over benchmarks of ``mean_j d_j``; every problem's sign flips
    independently (see the module docstring)."""
    d = np.concatenate([np.asarray(x, dtype=float) for x in diffs])
    w = np.concatenate([np.full(len(x), 1.0 / (len(x) * len(diffs))) for x in diffs])  # benchmark weights
    wd = w * d
    t_obs = abs(wd.sum())
    tol = 1e-12 * max(1.0, float(np.abs(wd).sum()))
    if len(d) <= 20 and 2 ** len(d) <= n_perm:  # exact: every sign pattern once
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        return float(np.mean(np.abs(signs @ wd) >= t_obs - tol))
    hits = 0
    for start in range(0, n_perm, 2000):  # chunks bound the memory of [n_perm, n_problems]
        m = min(2000, n_perm - start)
        signs = rng.choice((-1.0, 1.0), size=(m, len(d)))
        hits += int(np.sum(np.abs(signs @ wd) >= t_obs - tol))
    return (1 + hits) / (1 + n_perm)


def seed_permutation_p(
    a_seed_scores: np.ndarray, b_seed_scores: np.ndarray
) -> tuple[float | None, float | None]:
    """(p, smallest attainable p) of the exact two-sided permutation test over seeds: the per-seed mean scores
    of A and B are pooled and every split into groups of the original sizes is enumerated (statistic: difference
    of the group means). ``(None, None)`` when there is nothing to permute (one seed in total per side and fewer
    than 3 in all) or the enumeration would be large (> 20 000 splits)."""
    a, b = np.asarray(a_seed_scores, float), np.asarray(b_seed_scores, float)
    pooled = np.concatenate([a, b])
    na, n = len(a), len(a) + len(b)
    if na == 0 or na == n or n < 3 or math.comb(n, na) > 20000:
        return None, None
    t_obs = abs(a.mean() - b.mean())
    tol = 1e-12 * max(1.0, float(np.abs(pooled).max()))
    stats = []
    for idx in itertools.combinations(range(n), na):
        mask = np.zeros(n, bool)
        mask[list(idx)] = True
        stats.append(abs(pooled[mask].mean() - pooled[~mask].mean()))
    total = len(stats)
    # splits that give the same |T| as the observed one by symmetry (swap the groups) when na == n - na
    p_min = (2 if na == n - na else 1) / total
    return float(np.mean(np.array(stats) >= t_obs - tol)), p_min


def paired_diff(
    a: Matrix | Sequence[Matrix],
    b: Matrix | Sequence[Matrix],
    rng: np.random.Generator,
    n_boot: int = N_BOOT,
    n_perm: int = N_PERM,
    confidence: float = CONFIDENCE,
) -> Comparison:
    """A - B on the same problems (column ``j`` of ``a[i]`` and ``b[i]`` is the same problem of benchmark
    ``i``); several benchmarks give the difference of their unweighted averages. See the module docstring."""
    a = [a] if isinstance(a, np.ndarray) else list(a)
    b = [b] if isinstance(b, np.ndarray) else list(b)
    _check(a)
    _check(b)
    if len(a) != len(b) or any(x.shape[1] != y.shape[1] for x, y in zip(a, b, strict=True)):
        raise ValueError("paired_diff needs the same problems (columns) in A and B")
    sa = resample_counts(rng, a[0].shape[0], n_boot)
    sb = resample_counts(rng, b[0].shape[0], n_boot)
    reps = np.zeros(n_boot)
    for x, y in zip(a, b, strict=True):
        cp = resample_counts(rng, x.shape[1], n_boot)  # one problem draw for both runs: paired
        reps += _replicate_means(x, sa, cp) - _replicate_means(y, sb, cp)
    reps /= len(a)
    diff = float(np.mean([x.mean() - y.mean() for x, y in zip(a, b, strict=True)]))
    lo, hi = _interval(reps, confidence)
    p = sign_flip_p([x.mean(axis=0) - y.mean(axis=0) for x, y in zip(a, b, strict=True)], rng, n_perm)
    a_seed = np.mean([x.mean(axis=1) for x in a], axis=0)
    b_seed = np.mean([y.mean(axis=1) for y in b], axis=0)
    p_seeds, p_min = seed_permutation_p(a_seed, b_seed)
    return Comparison(
        diff, lo, hi, p, p_seeds, p_min, a[0].shape[0], b[0].shape[0], sum(x.shape[1] for x in a)
    )


# ------------------------------------------------------------------------------------- intervals over seeds
def _t_two_sided(t: float, df: int) -> float:
    """``P(|T| <= t)`` of Student's t with integer ``df`` (closed form, Abramowitz & Stegun 26.7.3 / 26.7.4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(3, df - 1, 2):  # 1 + 2/3 c^2 + (2*4)/(3*5) c^4 + ...
            term *= c2 * (k - 1) / k
            total += term
        return (2.0 / math.pi) * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    term, total = 1.0, 1.0
    for k in range(2, df - 1, 2):  # 1 + 1/2 c^2 + (1*3)/(2*4) c^4 + ...
        term *= c2 * (k - 1) / k
        total += term
    return s * total


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student-t critical value: ``P(|T| <= q) = confidence`` with ``df`` degrees of freedom."""
    if df < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"t_quantile needs df >= 1 and 0 < confidence < 1, got {df}, {confidence}")
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, df) < confidence:
        hi *= 2.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < confidence else (lo, mid)
    return (lo + hi) / 2.0


def t_interval(
    values: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float | None, float | None]:
    """(mean, lo, hi) of the Student-t interval of the mean of ``values`` (one value per seed): ``mean +- t *
    sd / sqrt(n)``, ``sd`` with ddof 1. It asks what another set of trainings would give, assuming the seeds'
    values are roughly normal; with 2-3 seeds ``t`` is large (12.7 / 4.3), as it must be. One value: no
    interval (None, None)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return mean, None, None
    half = t_quantile(confidence, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


# ------------------------------------------------------------------------------------------------- formatting
def ci_decimals(lo: float, hi: float) -> int:
    """Decimals a value with CI ``[lo, hi]`` supports: the position of the first significant digit of the
    half-width (0.45 -> 1, 3.2 -> 0, 0.03 -> 2), clipped to 0..MAX_DECIMALS; 1 for a zero-width CI."""
    half = (hi - lo) / 2.0
    if not math.isfinite(half) or half <= 1e-9:
        return 1
    return int(min(MAX_DECIMALS, max(0, -math.floor(math.log10(half)))))


def format_value(v: float, decimals: int, signed: bool = False) -> str:
    """``v`` at ``decimals`` decimals (``signed``: with + or -); a value that rounds to zero prints as an unsigned
    0 (never "-0.0" or "+0")."""
    r = round(v, decimals)
    if r == 0:
        return f"{0.0:.{decimals}f}"
    return f"{r:+.{decimals}f}" if signed else f"{r:.{decimals}f}"


def format_ci(mean: float | None, lo: float | None, hi: float | None, signed: bool = False) -> str:
    """``"41 [38, 44]"``: mean and percentile CI at the digits the CI supports (``ci_decimals``); ``signed``
    prefixes + / - (differences). ``"n/a"`` without a mean; a mean without CI gets 1 decimal and "(no CI)"."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if lo is None or hi is None:
        return f"{format_value(mean, 1, signed)} (no CI)"
    d = ci_decimals(lo, hi)
    return f"{format_value(mean, d, signed)} [{format_value(lo, d, signed)}, {format_value(hi, d, signed)}]"


def format_p(p: float | None) -> str:
    """p-values: 2 decimals from 0.01, 3 below, "<0.001" below that (the resolution of 10^4 sign flips)."""
    if p is None or not math.isfinite(p):
        return "n/a"
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}" if p < 0.01 else f"{p:.2f}"
