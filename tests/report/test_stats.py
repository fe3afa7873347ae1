"""Known-answer and simulation checks of the report's statistics (``icpo_core.report.stats``)."""

from __future__ import annotations

import numpy as np
import pytest

from icpo_core.report import stats


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_score_matrix_uses_the_problems_every_seed_has_in_a_fixed_order():
    s0 = stats.per_problem_scores(
        [{"problem_id": "b", "correct": True}, {"problem_id": "b", "correct": False}]
        + [{"problem_id": "a", "correct": True}, {"problem_id": "a", "correct": True}]
    )
    s1 = {"a": 0.0, "b": 1.0, "c": 1.0}  # "c" only in seed 1: dropped
    x, ids = stats.score_matrix([s0, s1])
    assert ids == ["a", "b"]
    np.testing.assert_allclose(x, [[1.0, 0.5], [0.0, 1.0]])
    # unbiased pass@k per problem: 1 of 2 correct -> pass@2 = 1, pass@1 = 0.5
    rows = [{"problem_id": "p", "correct": c} for c in (True, False)]
    assert stats.per_problem_scores(rows, k=2) == {"p": 1.0}
    assert stats.per_problem_scores(rows, k=1) == {"p": 0.5}


def test_resample_counts_are_draws_of_n_items():
    c = stats.resample_counts(rng(), 7, 500)
    assert c.shape == (500, 7) and np.all(c.sum(axis=1) == 7)
    assert 0.9 < c.mean() / 1.0 < 1.1 and c.max() > 1  # with replacement: some items drawn twice


def test_all_equal_scores_give_a_zero_width_ci():
    e = stats.bootstrap_mean(np.full((3, 40), 0.25), rng())
    assert e.mean == pytest.approx(0.25) and e.hi - e.lo < 1e-12
    assert (e.n_seeds, e.n_problems) == (3, 40)


def test_ci_widens_with_seed_to_seed_noise():
    r = rng(1)
    base = r.binomial(1, 0.5, size=200).astype(float)
    same = np.tile(base, (3, 1))  # three seeds that answer identically: only problem noise
    shifted = np.clip(same + np.array([[-0.2], [0.0], [0.2]]), 0, 1)  # seeds differ by 20 points
    w_same = stats.bootstrap_mean(same, rng(2))
    w_shift = stats.bootstrap_mean(shifted, rng(2))
    assert (w_shift.hi - w_shift.lo) > 1.5 * (w_same.hi - w_same.lo)


def test_large_true_difference_is_detected():
    r = rng(3)
    a = r.binomial(1, 0.7, size=(3, 200)).astype(float)
    b = r.binomial(1, 0.3, size=(3, 200)).astype(float)
    c = stats.paired_diff(a, b, rng(4), n_boot=2000, n_perm=4000)
    assert c.diff == pytest.approx(a.mean() - b.mean())
    assert c.p < 0.01 and c.lo > 0 and c.lo < c.diff < c.hi
    assert (c.n_seeds_a, c.n_seeds_b, c.n_problems) == (3, 3, 200)
    # with 3 + 3 seeds the seed-level exact test cannot go below 2 / C(6, 3) = 0.1
    assert c.p_seeds == pytest.approx(0.1) and c.p_seeds_min == pytest.approx(0.1)


def test_identical_runs_give_p_one_and_a_ci_covering_zero():
    a = rng(5).binomial(1, 0.5, size=(3, 150)).astype(float)
    c = stats.paired_diff(a, a.copy(), rng(6), n_boot=2000, n_perm=2000)
    assert c.diff == 0.0 and c.p == 1.0 and c.lo < 0 < c.hi


def test_sign_flip_is_exact_for_few_problems():
    # 3 problems all +1: of the 8 sign patterns, 2 reach |mean| = 1 -> p = 2 / 8
    assert stats.sign_flip_p([np.ones(3)], rng()) == pytest.approx(0.25)
    # a paired shift that is small per problem but consistent is significant with many problems
    d = np.full(300, 0.1) + rng(7).normal(0, 0.2, 300)  # z about 8
    assert stats.sign_flip_p([d], rng(8), n_perm=4000) < 0.01


def test_average_over_benchmarks_shares_the_seed_draw():
    # two benchmarks, seed 1 is better on both: a shared seed draw keeps the benchmarks' seed effects together,
    # so the average's CI is as wide as one benchmark's (independent draws would narrow it by about sqrt 2)
    x = np.array([[0.2] * 50, [0.8] * 50])
    e_one = stats.bootstrap_mean(x, rng(9))
    e_avg = stats.bootstrap_mean([x, x.copy()], rng(9))
    assert e_avg.mean == pytest.approx(0.5) and e_avg.n_problems == 100
    assert (e_avg.hi - e_avg.lo) == pytest.approx(e_one.hi - e_one.lo, rel=0.05)
    with pytest.raises(ValueError):
        stats.bootstrap_mean([x, x[:1]], rng())


@pytest.mark.parametrize("seed_sd", [0.0, 0.04])
def test_ci_coverage_on_simulated_binomial_data(seed_sd):
    """200 simulated studies: problem difficulties ~ Beta(2, 3) (true mean 0.4), 3 seeds (optionally shifted by
    a seed effect of sd ``seed_sd``), 4 samples per problem. The 95 % CI must cover 0.4 in 90-99 % of them."""
    r = rng(10)
    covered = 0
    for _ in range(200):
        p = r.beta(2, 3, size=100)
        x = np.array([r.binomial(4, np.clip(p + r.normal(0, seed_sd), 0, 1)) / 4 for _ in range(3)])
        e = stats.bootstrap_mean(x, r, n_boot=1000)
        covered += e.lo <= 0.4 <= e.hi
    assert 0.90 * 200 <= covered <= 0.99 * 200


@pytest.mark.parametrize(
    ("mean", "lo", "hi", "signed", "text"),
    [
        (41.23, 38.1, 44.4, False, "41 [38, 44]"),  # half-width 3.15 -> units
        (12.43, 11.94, 12.89, False, "12.4 [11.9, 12.9]"),  # 0.475 -> one decimal
        (0.5012, 0.47, 0.53, False, "0.50 [0.47, 0.53]"),  # 0.03 -> two decimals
        (55.0, 55.0, 55.0, False, "55.0 [55.0, 55.0]"),  # zero width: one decimal
        (3.4, -1.2, 8.1, True, "+3 [-1, +8]"),
        (-0.04, -1.3, 1.2, True, "0 [-1, +1]"),  # never "-0"
        (None, None, None, False, "n/a"),
        (41.23, None, None, False, "41.2 (no CI)"),
    ],
)
def test_format_ci_digits(mean, lo, hi, signed, text):
    assert stats.format_ci(mean, lo, hi, signed) == text


def test_ci_decimals_and_p_format():
    assert [stats.ci_decimals(0, w) for w in (40, 6.4, 0.9, 0.08, 1e-7)] == [0, 0, 1, 2, 4]
    assert [stats.format_p(p) for p in (0.5, 0.012, 0.0042, 0.0001, None)] == [
        "0.50",
        "0.01",
        "0.004",
        "<0.001",
        "n/a",
    ]
