"""ERRS, replacement and the annealed bonus, by hand and as properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icpo_core.algorithm import annealed_bonus, mix_group, shaped_ief_rewards


def test_errs_keeps_correct_drops_wrong():
    mix = mix_group([0, 0, 1, 0], [1.0, 0.0, 1.0], errs=True, delta=1.0, rng=np.random.default_rng(0))
    assert mix.ief_keep == [0, 2]
    assert mix.ief_rejected == [1]
    assert len(mix.replaced) == 2 and set(mix.replaced) <= {0, 1, 2, 3}
    assert sorted(mix.on_keep + mix.replaced) == [0, 1, 2, 3]
    assert len(mix.on_keep) + len(mix.ief_keep) == 4
    assert mix.n_generated == 3 and mix.n_accepted == 2


def test_delta_threshold_is_inclusive():
    mix = mix_group([0.0] * 4, [0.5, 0.49], errs=True, delta=0.5, rng=np.random.default_rng(0))
    assert mix.ief_keep == [0]


def test_no_errs_accepts_everything():
    mix = mix_group([1, 1, 1], [0.0, 0.0], errs=False, delta=1.0, rng=np.random.default_rng(0))
    assert mix.ief_keep == [0, 1] and mix.ief_rejected == []
    assert len(mix.on_keep) == 1


def test_grpo_is_no_ief():
    mix = mix_group([0, 1, 0, 1], [], errs=True, delta=1.0, rng=np.random.default_rng(0))
    assert mix.on_keep == [0, 1, 2, 3] and mix.ief_keep == [] and mix.replaced == []


def test_replacement_is_seeded_and_uniform():
    picks = [
        mix_group([0] * 4, [1.0], errs=True, delta=1.0, rng=np.random.default_rng(s)).replaced[0]
        for s in range(400)
    ]
    counts = np.bincount(picks, minlength=4)
    assert counts.min() > 60  # expected 100 each
    a = mix_group([0] * 8, [1.0, 1.0], errs=True, delta=1.0, rng=np.random.default_rng(3))
    b = mix_group([0] * 8, [1.0, 1.0], errs=True, delta=1.0, rng=np.random.default_rng(3))
    assert a == b


def test_too_many_ief_rows():
    with pytest.raises(ValueError, match="n_off must be <= n_on"):
        mix_group([0, 0], [1, 1, 1], errs=True, delta=1.0, rng=np.random.default_rng(0))


def test_annealed_bonus():
    assert annealed_bonus(1.0, 0, 400) == 1.0
    assert annealed_bonus(1.0, 400, 400) == 0.0
    assert annealed_bonus(0.5, 100, 400) == pytest.approx(0.375)
    assert annealed_bonus(1.0, 500, 400) == 0.0
    assert annealed_bonus(1.0, 399, 400, constant=True) == 1.0  # the released code's bonus
    with pytest.raises(ValueError):
        annealed_bonus(1.0, 0, 0)


def test_shaped_rewards_only_in_expert_region():
    assert shaped_ief_rewards([1.0, 0.0, 1.0], [0, 2], 0.5, 1.0) == [1.5, 1.5]
    # errs off: a wrong accepted row gets no bonus (as in the released code)
    assert shaped_ief_rewards([1.0, 0.0], [0, 1], 1.0, 1.0) == [2.0, 0.0]


@settings(max_examples=150, deadline=None)
@given(
    n_on=st.integers(1, 16),
    data=st.data(),
    errs=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_mix_properties(n_on, data, errs, seed):
    n_off = data.draw(st.integers(0, n_on))
    on = data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n_on, max_size=n_on))
    ief = data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n_off, max_size=n_off))
    mix = mix_group(on, ief, errs=errs, delta=1.0, rng=np.random.default_rng(seed))
    # the group keeps its size; each accepted row replaces exactly one distinct on-policy row
    assert len(mix.on_keep) + len(mix.ief_keep) == n_on
    assert len(mix.replaced) == len(mix.ief_keep) == len(set(mix.replaced))
    assert sorted(mix.on_keep + mix.replaced) == list(range(n_on))
    assert sorted(mix.ief_keep + mix.ief_rejected) == list(range(n_off))
    expected = [j for j, r in enumerate(ief) if r >= 1.0] if errs else list(range(n_off))
    assert mix.ief_keep == expected  # empty acceptance and n_off > accepted included
