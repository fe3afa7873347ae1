"""Power of a paired comparison in the study: the minimum detectable effect (MDE) and the seeds a difference needs.

Model. Run A's score matrix ``X_A[seed, problem]`` (the same for B) is read as a two-way layout: a seed effect
(which training run the seed produced), a problem effect (shared by the runs: the same problems), and a residual
(seed x problem interaction plus sampling noise) with variance ``e2_A``, estimated from the residuals of the
two-way fit, ``sum r^2 / ((S - 1)(P - 1))``. The estimate of ``mean(A) - mean(B)`` on the same problems has

    Var(diff) = s2_A / S_A + s2_B / S_B + v_prob

- ``s2_A``: the training (seed) variance of A: the variance over seeds of A's per-seed mean score (``ddof=1``)
  less the residual's share of it, ``e2_A / P`` (clipped at 0);
- ``v_prob``: the variance of the mean of the per-problem paired differences ``d_j = mean_s A[:, j] -
  mean_s B[:, j]``, i.e. ``var(d_j) / P`` (``ddof=1``); the seed effects cancel in ``d_j``, the residuals enter
  it as ``e2_A / S_A + e2_B / S_B`` per problem.

With several benchmarks, everything is for the unweighted average over them, as the report's ``Avg.``: per-seed
means average the benchmarks, ``v_prob`` sums ``var(d_bj) / P_b / B^2``, the residual terms likewise.

MDE (two-sided alpha 0.05, power 0.8): ``(z_0.975 + z_0.8) * sqrt(Var(diff)) = 2.80 SE``, the smallest true
difference the study finds significant four times out of five. Seeds needed for a difference ``delta`` (the same
number ``S`` of seeds for both runs, the same problems): the smallest ``S`` with
``(s2_A + s2_B + r_A + r_B) / S + v_fixed <= (delta / 2.80)^2``, where ``r_A`` is the residual variance of A's
mean over the problems (``e2_A / P``) and ``v_fixed`` is ``v_prob`` without its residual part (the run x problem
difference that more seeds do not average away); none if ``v_fixed`` alone exceeds the budget (more problems are
needed, not more seeds). With one seed per run neither the seed nor the residual variance can be estimated: the
MDE then holds the problem noise only and says so (``seed_variance_known`` False). With 3 seeds the seed
variance is itself very uncertain (2 degrees of freedom: the true value may be 0.3x-40x the estimate at 95 %), so
the MDE and the seed counts are planning figures, not guarantees.

Pure numpy, no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist

import numpy as np

ALPHA = 0.05
POWER = 0.8
# z_{1 - alpha/2} + z_{power}: 1.959964 + 0.841621
Z_SUM = 2.801585


def z_sum(alpha: float = ALPHA, power: float = POWER) -> float:
    """``z_{1 - alpha/2} + z_{power}``: the MDE in standard errors of a two-sided test at ``alpha``."""
    z = NormalDist().inv_cdf
    return z(1.0 - alpha / 2.0) + z(power)


@dataclass
class Power:
    """The power figures of one comparison A - B (in the units of the score matrices; see the module docstring)."""

    se: float  # standard error of the difference
    mde: float  # minimum detectable effect at ALPHA / POWER
    var_seed_a: float | None  # s2_A, training variance of A's per-seed mean (None: one seed)
    var_seed_b: float | None
    var_problem: float  # v_prob: variance of the mean paired per-problem difference
    resid_a: float | None  # r_A = e2_A / P: residual variance of one seed's mean over the problems
    resid_b: float | None
    n_seeds_a: int
    n_seeds_b: int
    n_problems: int
    alpha: float = ALPHA  # the test level and power ``mde`` is at
    power: float = POWER

    @property
    def seed_variance_known(self) -> bool:
        return self.var_seed_a is not None and self.var_seed_b is not None

    def variance_at(self, n_seeds: int) -> float | None:
        """Var(diff) with ``n_seeds`` seeds per run and the same problems (None: seed variance unknown)."""
        if not self.seed_variance_known or n_seeds < 1:
            return None
        ra, rb = self.resid_a or 0.0, self.resid_b or 0.0
        fixed = max(0.0, self.var_problem - ra / self.n_seeds_a - rb / self.n_seeds_b)
        per_seed = float(self.var_seed_a) + float(self.var_seed_b) + ra + rb  # type: ignore[arg-type]
        return per_seed / n_seeds + fixed

    def seeds_needed(self, delta: float, max_seeds: int = 10_000) -> int | None:
        """Seeds per run at which ``|delta|`` reaches the MDE (same problems); None if no number of seeds up to
        ``max_seeds`` does (the problem term alone is too large) or the seed variance is unknown."""
        if not self.seed_variance_known or delta == 0:
            return None
        inf = self.variance_at(10**12)
        budget = (abs(delta) / Z_SUM) ** 2
        if inf is None or inf >= budget:
            return None
        one = self.variance_at(1)
        per_seed = one - inf  # type: ignore[operator]
        n = max(1, math.ceil(per_seed / (budget - inf) - 1e-9))
        return n if n <= max_seeds else None

    def mde_at(self, alpha: float = ALPHA, power: float = POWER) -> float:
        """The minimum detectable effect of a two-sided test at ``alpha`` with ``power``."""
        return z_sum(alpha, power) * self.se

    def scaled(self, f: float) -> Power:
        """The same figures in units ``f`` times larger (fractions -> percentage points: ``f = 100``)."""

        def v(x: float | None) -> float | None:
            return None if x is None else x * f * f

        return replace(
            self,
            se=self.se * f,
            mde=self.mde * f,
            var_seed_a=v(self.var_seed_a),
            var_seed_b=v(self.var_seed_b),
            var_problem=self.var_problem * f * f,
            resid_a=v(self.resid_a),
            resid_b=v(self.resid_b),
        )


def _components(mats: Sequence[np.ndarray]) -> tuple[float | None, float | None]:
    """(s2, r) of one run over benchmarks: training variance of the per-seed mean and the residual variance of
    one seed's mean over the problems (both None with one seed)."""
    n_seeds = mats[0].shape[0]
    if n_seeds < 2:
        return None, None
    n_bench = len(mats)
    resid = 0.0
    for x in mats:
        if x.shape[1] > 1:
            r = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
            e2 = float((r**2).sum()) / ((n_seeds - 1) * (x.shape[1] - 1))
            resid += e2 / x.shape[1] / n_bench**2
    per_seed = np.mean([x.mean(axis=1) for x in mats], axis=0)
    return max(0.0, float(np.var(per_seed, ddof=1)) - resid), resid


def paired_power(a: np.ndarray | Sequence[np.ndarray], b: np.ndarray | Sequence[np.ndarray]) -> Power:
    """:class:`Power` of ``mean(A) - mean(B)``; ``a[i]``, ``b[i]``: ``[seeds, problems]`` of benchmark ``i`` with
    the same problems in the same columns (as :func:`icpo_core.report.stats.paired_diff`)."""
    a = [a] if isinstance(a, np.ndarray) else list(a)
    b = [b] if isinstance(b, np.ndarray) else list(b)
    if not a or len(a) != len(b) or any(x.shape[1] != y.shape[1] for x, y in zip(a, b, strict=True)):
        raise ValueError("paired_power needs the same problems (columns) in A and B")
    if any(x.shape[0] == 0 or x.shape[1] == 0 for x in [*a, *b]):
        raise ValueError(f"empty score matrix: {[x.shape for x in [*a, *b]]}")
    n_bench = len(a)
    var_problem = 0.0
    for x, y in zip(a, b, strict=True):
        d = x.mean(axis=0) - y.mean(axis=0)
        if d.size > 1:
            var_problem += float(np.var(d, ddof=1)) / d.size / n_bench**2
    (vsa, ra), (vsb, rb) = _components(a), _components(b)
    s_a, s_b = a[0].shape[0], b[0].shape[0]
    var = var_problem + (vsa / s_a if vsa is not None else 0.0) + (vsb / s_b if vsb is not None else 0.0)
    se = math.sqrt(max(var, 0.0))
    return Power(se, Z_SUM * se, vsa, vsb, var_problem, ra, rb, s_a, s_b, sum(x.shape[1] for x in a))


def detectability(diff: float, lo: float, hi: float, power: Power | None) -> str | None:
    """The report's verdict for a CI that spans zero: ``"not detectable at this size (MDE 23 points)"``; None
    when the CI excludes zero (the difference is resolved) or there is no power figure."""
    if power is None or not (lo <= 0.0 <= hi):
        return None
    caveat = "" if power.seed_variance_known else ", problem noise only: 1 seed"
    return f"not detectable at this size (MDE {power.mde:.0f} points{caveat})"
