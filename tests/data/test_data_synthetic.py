import re

import pytest

from icpo_core.data import synthetic
from icpo_core.grading.extract import last_boxed

EQUATION = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")


@pytest.fixture(scope="module")
def splits():
    return synthetic.generate_splits(synthetic.LEVELS, train=300, demo=150, eval=50, seed=7)


def test_sizes_and_unique_ids(splits):
    assert {k: len(v) for k, v in splits.items()} == {"train": 1200, "demo": 600, "eval": 200}
    ids = [p.id for rows in splits.values() for p in rows]
    assert len(ids) == len(set(ids))


def test_splits_never_share_a_problem(splits):
    texts = {split: {p.problem for p in rows} for split, rows in splits.items()}
    assert len(texts["train"]) == 1200 and len(texts["demo"]) == 600 and len(texts["eval"]) == 200
    assert not texts["train"] & texts["demo"]
    assert not texts["train"] & texts["eval"]
    assert not texts["demo"] & texts["eval"]


def test_solutions_are_worked_correct_and_boxed(splits):
    for p in (p for rows in splits.values() for p in rows):
        assert p.solution.endswith(f"The answer is \\boxed{{{p.answer}}}.")
        assert last_boxed(p.solution) == p.answer and p.answer.lstrip("-").isdigit()
        steps = EQUATION.findall(p.solution)
        assert len(steps) == (2 if p.level in (2, 3) else 1), p.solution
        for a, op, b, result in steps:
            assert eval(f"{a} {op} {b}") == int(result), p.solution  # noqa: S307 -- digits and one operator
        assert int(steps[-1][3]) == int(p.answer)
        assert int(p.answer) >= 0


def test_level_ranges(splits):
    for p in splits["train"]:
        numbers = [int(n) for n in re.findall(r"\d+", p.problem)]
        if p.level == 0:
            assert len(numbers) == 2 and all(1 <= n <= 9 for n in numbers)
            assert int(p.answer) == sum(numbers)
        if p.level == 1:
            assert all(n <= 20 for n in numbers) and int(p.answer) <= 20
        if p.level == 3:
            assert len(numbers) == 3 and "*" in p.solution


def test_deterministic_and_seeded():
    a = synthetic.generate_splits([1], train=20, demo=5, eval=5, seed=3)
    b = synthetic.generate_splits([1], train=20, demo=5, eval=5, seed=3)
    c = synthetic.generate_splits([1], train=20, demo=5, eval=5, seed=4)
    assert a == b
    assert [p.problem for p in a["train"]] != [p.problem for p in c["train"]]


def test_eval_split_does_not_move_when_train_grows():
    small = synthetic.generate_level(3, {"eval": 10, "demo": 5, "train": 5}, seed=0)
    big = synthetic.generate_level(3, {"eval": 10, "demo": 50, "train": 500}, seed=0)
    assert small["eval"] == big["eval"]


def test_varied_names_and_items(splits):
    names = {p.problem.split()[0] for p in splits["train"]}
    assert len(names) > 15


def test_unknown_level():
    with pytest.raises(ValueError, match="unknown synthetic level 7"):
        next(iter(synthetic.problem_stream(7, 0)))
