"""Power of the paired comparison: SE against simulation, MDE, seeds needed, the one-seed case."""

from __future__ import annotations

import numpy as np
import pytest

from icpo_core.report.power import Z_SUM, detectability, paired_power


def _simulate(rng, n_seeds, n_problems, seed_sd, shift=0.0, difficulty=None):
    """Binary scores: per-problem difficulty shared by the runs, a per-seed shift of the log-odds."""
    if difficulty is None:
        difficulty = rng.normal(0.0, 1.0, n_problems)
    logit = difficulty[None, :] + rng.normal(0.0, seed_sd, (n_seeds, 1)) + shift
    p = 1.0 / (1.0 + np.exp(-logit))
    return (rng.random((n_seeds, n_problems)) < p).astype(float)


@pytest.mark.parametrize("seed_sd", [0.0, 0.8])
def test_standard_error_matches_the_spread_of_the_difference_over_replications(seed_sd):
    rng = np.random.default_rng(3)
    difficulty = rng.normal(0.0, 1.0, 200)
    diffs, ses = [], []
    for _ in range(400):  # the same problems each time: the paired design the report uses
        a = _simulate(rng, 3, 200, seed_sd, difficulty=difficulty)
        b = _simulate(rng, 3, 200, seed_sd, difficulty=difficulty)
        diffs.append(a.mean() - b.mean())
        ses.append(paired_power(a, b).se)
    true_sd = float(np.std(diffs))
    # the estimate is mildly conservative (the interaction is counted twice) and noisy with 3 seeds
    assert 0.9 * true_sd < float(np.mean(ses)) < 1.35 * true_sd


def _expected_mean(difficulty, seed_sd, shift, rng):
    seeds = rng.normal(0.0, seed_sd, (4000, 1))
    return float(np.mean(1.0 / (1.0 + np.exp(-(difficulty[None, :] + seeds + shift)))))


def test_a_difference_of_one_mde_is_found_about_80_percent_of_the_time():
    rng = np.random.default_rng(11)
    difficulty = rng.normal(0.0, 1.0, 300)
    nulls = [
        paired_power(
            _simulate(rng, 4, 300, 0.3, difficulty=difficulty),
            _simulate(rng, 4, 300, 0.3, difficulty=difficulty),
        )
        for _ in range(60)
    ]
    assert all(pw.mde == pytest.approx(Z_SUM * pw.se) for pw in nulls)
    mde = float(
        np.mean([pw.mde for pw in nulls])
    )  # one study's MDE is noisy (4 seeds); its expectation is not
    # the log-odds shift of A whose expected mean is one MDE above B's (bisection)
    target = _expected_mean(difficulty, 0.3, 0.0, rng) + mde
    lo, hi = 0.0, 3.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _expected_mean(difficulty, 0.3, mid, rng) < target else (lo, mid)
    hits = 0
    for _ in range(300):
        a = _simulate(rng, 4, 300, 0.3, shift=lo, difficulty=difficulty)
        b = _simulate(rng, 4, 300, 0.3, difficulty=difficulty)
        hits += (a.mean() - b.mean()) > 1.96 * paired_power(a, b).se
    assert 0.68 < hits / 300 < 0.92


def test_seeds_needed_falls_with_the_difference_and_is_none_when_problems_limit():
    rng = np.random.default_rng(5)
    difficulty = rng.normal(0.0, 1.0, 100)
    pw = paired_power(
        _simulate(rng, 3, 100, 1.0, difficulty=difficulty), _simulate(rng, 3, 100, 1.0, difficulty=difficulty)
    )
    assert pw.seed_variance_known
    big, small = pw.seeds_needed(0.5), pw.seeds_needed(0.2)
    assert big is not None and small is not None and big <= small
    # at the seeds it would need, the predicted MDE is no larger than the difference
    n = pw.seeds_needed(0.3)
    assert n is not None
    assert Z_SUM * np.sqrt(pw.variance_at(n)) <= 0.3 + 1e-12
    assert n == 1 or Z_SUM * np.sqrt(pw.variance_at(n - 1)) > 0.3
    # at the study's own seed count the projection is the measured variance
    assert pw.variance_at(3) == pytest.approx(pw.se**2)
    # a difference below the problem noise alone needs more problems, not seeds
    tiny = Z_SUM * np.sqrt(pw.variance_at(10**12)) * 0.5
    assert pw.seeds_needed(tiny) is None


def test_one_seed_gives_problem_noise_only_and_says_so():
    a = np.array([[1, 0, 1, 1, 0, 1.0]])
    b = np.array([[0, 0, 1, 0, 0, 1.0]])
    pw = paired_power(a, b)
    assert not pw.seed_variance_known and pw.seeds_needed(0.3) is None
    d = a[0] - b[0]
    assert pw.se == pytest.approx(np.sqrt(np.var(d, ddof=1) / d.size))
    assert "1 seed" in detectability(-0.1, -0.5, 0.3, pw.scaled(100))


def test_average_over_benchmarks_weights_each_benchmark_equally():
    rng = np.random.default_rng(2)
    shift = np.array([[0.0], [0.3], [0.6]])  # seed effects, so the training variance is not clipped at 0
    a1, b1 = rng.random((3, 50)) + shift, rng.random((3, 50))
    a2, b2 = rng.random((3, 10)) + shift, rng.random((3, 10))
    pw = paired_power([a1, a2], [b1, b2])
    d1, d2 = a1.mean(0) - b1.mean(0), a2.mean(0) - b2.mean(0)
    expected_prob = (np.var(d1, ddof=1) / 50 + np.var(d2, ddof=1) / 10) / 4
    assert pw.var_problem == pytest.approx(expected_prob)
    seed_a = (a1.mean(1) + a2.mean(1)) / 2
    # the per-seed mean's variance is the training variance plus the residual's share of it
    assert pw.var_seed_a + pw.resid_a == pytest.approx(np.var(seed_a, ddof=1))
    assert 0 < pw.resid_a < np.var(seed_a, ddof=1)
    assert pw.n_problems == 60


def test_detectability_only_for_intervals_spanning_zero_and_json_round_trip():
    rng = np.random.default_rng(0)
    pw = paired_power(rng.random((3, 40)), rng.random((3, 40))).scaled(100.0)
    assert detectability(5.0, 1.0, 9.0, pw) is None
    text = detectability(-2.0, -26.0, 18.0, pw)
    assert text == f"not detectable at this size (MDE {pw.mde:.0f} points)"
    from pydantic import TypeAdapter

    from icpo_core.report.power import Power

    adapter = TypeAdapter(Power)  # study.json holds Power as pydantic serialises the dataclass
    assert adapter.validate_json(adapter.dump_json(pw)) == pw
    with pytest.raises(ValueError, match="same problems"):
        paired_power(rng.random((3, 4)), rng.random((3, 5)))
