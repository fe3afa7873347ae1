"""The method-variant registry: each built-in entry's contract, and that a new entry needs no engine edit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from icpo_core.algorithm import (
    Demo,
    DemoPool,
    OffPolicySource,
    method_label,
    method_name,
    off_policy_source,
    plan_step,
    register_off_policy,
    variants,
)
from icpo_core.config import AlgorithmParams, Params

POOL = DemoPool([Demo(problem=f"p{i}", solution=f"s{i}", answer=str(i)) for i in range(5)])


def test_n_off_zero_is_grpo_whatever_off_policy_says():
    for name in ("ief", "ief_no_demos"):
        algo = AlgorithmParams(n_off=0, off_policy=name)
        assert off_policy_source(algo).name == "none" and method_name(algo) == "grpo"


@pytest.mark.parametrize(
    ("overrides", "on", "gen_off", "supplied", "demos", "method"),
    [
        ({"n_off": 0}, 8, 0, 0, False, "grpo"),
        ({}, 8, 4, 0, True, "icpo"),
        ({"off_policy": "ief_no_demos"}, 8, 4, 0, False, "icpo_no_demos"),
        (
            {"n_off": 1, "off_policy": "expert_trace", "errs": False, "clip_on_policy": False},
            7,
            0,
            1,
            False,
            "luffy",
        ),
        ({"n_off": 0, "n_on": 12}, 12, 0, 0, False, "grpo"),
    ],
)
def test_each_source_says_what_it_generates(overrides, on, gen_off, supplied, demos, method):
    algo = AlgorithmParams(**{"n_on": 8, "n_off": 4, **overrides})
    s = off_policy_source(algo)
    assert s.rollouts_per_prompt(algo) == on
    assert s.generated_off_per_prompt(algo) == gen_off
    assert s.supplied_off_per_prompt(algo) == supplied
    assert s.with_demos is demos
    assert method_name(algo) == method


def test_no_demos_source_draws_nothing_and_ief_never_shows_a_row_its_own_question():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    no_demos = AlgorithmParams(off_policy="ief_no_demos")
    assert off_policy_source(no_demos).draw_demos(no_demos, POOL, rng, "p1") is None
    assert rng.bit_generator.state == state
    ief = AlgorithmParams(k_demos=2)
    for _ in range(20):
        demos = off_policy_source(ief).draw_demos(ief, POOL, rng, "p1")
        assert len(demos) == 2 and all(d.problem != "p1" for d in demos)
    with pytest.raises(ValueError, match="demo cache"):
        off_policy_source(ief).draw_demos(ief, None, rng, "p1")


def test_no_demos_trains_its_rows_exactly_as_icpo_does():
    """The control differs from ICPO only in the prompt: the same rewards give the same plan."""
    on = [[0.0] * 8, [1.0, 0.0] * 4]
    off = [[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    plans = [
        plan_step(
            on, off, AlgorithmParams(off_policy=name), step=1, total_steps=8, rng=np.random.default_rng(5)
        )
        for name in ("ief", "ief_no_demos")
    ]
    assert plans[0] == plans[1]
    assert plans[0].metrics["icpo/ief_accepted"] == 3


def test_labels_mark_information_and_controls():
    luffy = AlgorithmParams(n_off=1, off_policy="expert_trace", errs=False)
    assert "reference solution" in method_label(luffy) and off_policy_source(luffy).extra_information
    assert method_label(AlgorithmParams(n_off=0, reward="shuffled")) == "GRPO, shuffled reward"
    assert method_name(AlgorithmParams(n_off=0, reward="shuffled")) == "grpo_shuffled_reward"


def test_invalid_combinations_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="off_policy 'none' \\(GRPO\\) needs n_off: 0"):
        AlgorithmParams(off_policy="none", n_off=2)
    with pytest.raises(ValueError, match="not registered: one of none, ief, ief_no_demos, expert_trace"):
        AlgorithmParams(off_policy="demos")
    with pytest.raises(ValueError, match="expert_trace \\(LUFFY\\) has no ERRS"):
        AlgorithmParams(n_off=1, off_policy="expert_trace")


def test_a_registered_source_is_a_valid_run_and_is_planned_by_its_placement(monkeypatch):
    monkeypatch.setattr(variants, "OFF_POLICY", dict(variants.OFF_POLICY))
    base = variants.OFF_POLICY["ief"]
    register_off_policy(dataclasses.replace(base, name="ief_twice", method="icpo_twice", label="ICPO x2"))
    with pytest.raises(ValueError, match="already registered"):
        register_off_policy(base)
    algo = AlgorithmParams(off_policy="ief_twice")
    assert isinstance(off_policy_source(algo), OffPolicySource) and method_name(algo) == "icpo_twice"
    plan = plan_step([[0.0] * 8], [[1.0] * 4], algo, step=1, total_steps=8, rng=np.random.default_rng(0))
    assert plan.metrics["icpo/ief_accepted"] == 4


def test_the_default_runs_cover_the_studys_arms():
    p = Params()
    assert off_policy_source(p.run_algorithm("icpo_no_demos")).name == "ief_no_demos"
    matched = p.run_algorithm("grpo_compute_matched")
    icpo = p.run_algorithm("icpo")
    assert matched.n_off == 0 and matched.n_on == icpo.n_on + icpo.n_off  # the same rollouts per prompt
    assert p.run_algorithm("grpo_shuffled_reward").reward == "shuffled"
