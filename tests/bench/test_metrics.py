"""avg@n and unbiased pass@k."""

from __future__ import annotations

import itertools
from math import isclose

import pytest

from icpo_core.bench.metrics import overall_average, pass_at_k, summarize_benchmark


@pytest.mark.parametrize(("n", "c", "k"), [(4, 1, 2), (8, 3, 4), (5, 0, 3), (5, 5, 1), (6, 2, 6), (3, 1, 1)])
def test_pass_at_k_matches_enumeration(n, c, k):
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
    assert isclose(pass_at_k(n, c, k), brute)


def test_pass_at_k_rejects_bad_inputs():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_summary_per_problem_then_mean():
    rows = [
        *({"problem_id": "a", "correct": c, "tokens": 10} for c in (True, True, False, False)),
        *({"problem_id": "b", "correct": False, "extracted": None} for _ in range(4)),
        *({"problem_id": "c", "correct": True, "timed_out": False} for _ in range(4)),
    ]
    m = summarize_benchmark(rows, [1, 2, 8])
    assert m["n_problems"] == 3 and m["n_samples"] == 12 and m["n"] == 4
    assert isclose(m["avg_at_n"], (0.5 + 0 + 1) / 3)
    assert isclose(m["pass_at_1"], m["avg_at_n"])
    assert isclose(m["pass_at_4"], (1 + 0 + 1) / 3)
    assert isclose(m["pass_at_2"], (1 - 1 / 6 + 0 + 1) / 3)
    assert "pass_at_8" not in m  # k > n is not reported
    assert isclose(m["no_answer_rate"], 4 / 12)
    assert m["mean_tokens"] == 10


def test_unweighted_average_over_benchmarks():
    per = {"big": {"avg_at_n": 0.9}, "small": {"avg_at_n": 0.1}, "empty": {"avg_at_n": None}}
    assert isclose(overall_average(per), 0.5)
    assert overall_average({}) is None
    assert summarize_benchmark([])["avg_at_n"] is None
